"""Blocks whose parent is not known yet, held (with who sent them) until the parent
arrives. An orphan's proofs cannot be checked without its parent (the VDF seed comes from
it), so the bounds are what protect: at most MAX_ORPHANS blocks and MAX_ORPHAN_BYTES of
them in all; past either, the oldest held goes first."""

from __future__ import annotations

import collections
from typing import Generic, Optional, TypeVar

from archivas.chain.block import Block

MAX_ORPHANS = 256
MAX_ORPHAN_BYTES = 8 * 1024 * 1024  # encoded size of all held blocks together

Source = TypeVar("Source")


class OrphanPool(Generic[Source]):
    def __init__(self, size: int = MAX_ORPHANS, max_bytes: int = MAX_ORPHAN_BYTES) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self._blocks: collections.OrderedDict[bytes, tuple[Block, Optional[Source]]] = collections.OrderedDict()
        self._sizes: dict[bytes, int] = {}
        self._children: dict[bytes, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._blocks

    def add(self, block: Block, source: Optional[Source] = None) -> None:
        if block.hash in self._blocks:
            return
        size = len(block.encode())
        if size > self.max_bytes:
            return
        self._blocks[block.hash] = (block, source)
        self._sizes[block.hash] = size
        self.bytes += size
        self._children.setdefault(block.header.parent_hash, set()).add(block.hash)
        while len(self._blocks) > self.size or self.bytes > self.max_bytes:
            _, (oldest, _) = self._blocks.popitem(last=False)
            self._unlink(oldest)

    def _unlink(self, block: Block) -> None:
        self.bytes -= self._sizes.pop(block.hash, 0)
        siblings = self._children.get(block.header.parent_hash)
        if siblings is not None:
            siblings.discard(block.hash)
            if not siblings:
                del self._children[block.header.parent_hash]

    def has_children(self, parent_hash: bytes) -> bool:
        return parent_hash in self._children

    def take_children(self, parent_hash: bytes) -> list[tuple[Block, Optional[Source]]]:
        """Remove and return the orphans whose parent is `parent_hash`, with their sources."""
        out = []
        for h in self._children.pop(parent_hash, set()):
            entry = self._blocks.pop(h, None)
            if entry is not None:
                out.append(entry)
        return sorted(out, key=lambda entry: entry[0].hash)

    def root_of(self, block: Block) -> Optional[Block]:
        """The oldest held ancestor of `block` (whose own parent is missing)."""
        current = block
        while current.header.parent_hash in self._blocks:
            current = self._blocks[current.header.parent_hash][0]
        return current
