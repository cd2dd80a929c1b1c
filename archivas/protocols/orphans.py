"""Blocks whose parent is not known yet, held until the parent arrives (bounded)."""

from __future__ import annotations

import collections
from typing import Optional

from archivas.chain.block import Block

MAX_ORPHANS = 256


class OrphanPool:
    def __init__(self, size: int = MAX_ORPHANS) -> None:
        self.size = size
        self._blocks: collections.OrderedDict[bytes, Block] = collections.OrderedDict()
        self._children: dict[bytes, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._blocks

    def add(self, block: Block) -> None:
        if block.hash in self._blocks:
            return
        self._blocks[block.hash] = block
        self._children.setdefault(block.header.parent_hash, set()).add(block.hash)
        while len(self._blocks) > self.size:
            _, oldest = self._blocks.popitem(last=False)
            self._unlink(oldest)

    def _unlink(self, block: Block) -> None:
        siblings = self._children.get(block.header.parent_hash)
        if siblings is not None:
            siblings.discard(block.hash)
            if not siblings:
                del self._children[block.header.parent_hash]

    def take_children(self, parent_hash: bytes) -> list[Block]:
        """Remove and return the orphans whose parent is `parent_hash`."""
        out = []
        for h in self._children.pop(parent_hash, set()):
            block = self._blocks.pop(h, None)
            if block is not None:
                out.append(block)
        return sorted(out, key=lambda b: b.hash)

    def root_of(self, block: Block) -> Optional[Block]:
        """The oldest held ancestor of `block` (whose own parent is missing)."""
        current = block
        while current.header.parent_hash in self._blocks:
            current = self._blocks[current.header.parent_hash]
        return current
