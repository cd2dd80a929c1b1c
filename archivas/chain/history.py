"""verify-history's chain part: the history 0..H of a database loaded from a snapshot,
validated in full into a separate scratch database, and its state at H compared with the
snapshot's (docs/snapshots.md).

Pure and synchronous (no reactor): the node's HistoryVerifier (archivas/history.py)
fetches the blocks and runs `add` and `finish` in a thread of its own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping, Optional, Sequence

from archivas.chain.block import Block
from archivas.chain.blockchain import ADDED_TIP, KNOWN, Chain
from archivas.chain.params import NetworkParams
from archivas.chain.snapshot import Manifest, state_hash_at_tip
from archivas.chain.storage import decode_stored


class HistoryMismatch(Exception):
    """The history validated to H does not give the snapshot's state. One line."""


class HistoryRefused(Exception):
    """What a peer served is not the next blocks of a valid history (its fault, maybe)."""


class HistoryOtherChain(HistoryRefused):
    """A peer served valid blocks of another chain than the snapshot's: its history says
    nothing of the snapshot (the scratch chain is started afresh)."""


class HistoryCheck:
    """A scratch chain from genesis, fed main-chain blocks 1..H in order, every rule
    checked (proofs, signatures, context, state). Reopened where it stopped: a node
    restarted during the check goes on from the scratch chain's tip."""

    def __init__(self, directory: str | os.PathLike[str], params: NetworkParams, manifest: Manifest,
                 expected: Optional[Mapping[int, bytes]] = None) -> None:
        """`expected`: the snapshot's own main chain (height -> hash) as far down as the
        node holds it (the blocks it carried, H-n+1..H); H's hash is the manifest's."""
        self.directory = Path(directory)
        self.params = params
        self.manifest = manifest
        self.expected = {**(expected or {}), manifest.height: manifest.block_hash}
        self.chain = Chain.open(self.directory, params)
        if self.chain.snapshot_base:
            self.chain.close()
            raise HistoryRefused(f"scratch database {self.directory} was itself loaded from a snapshot")
        if self.chain.height > manifest.height:
            self.chain.close()
            raise HistoryRefused(f"scratch database {self.directory} is above the snapshot's height")

    @property
    def next_height(self) -> int:
        return self.chain.height + 1

    @property
    def done(self) -> bool:
        return self.chain.height >= self.manifest.height

    def add(self, blocks: Sequence[Block], now_ms: int) -> int:
        """Validate and store the next blocks (those above H are left); how many were added.
        BlockRejected for an invalid one, HistoryRefused for one that is not the next."""
        added = 0
        for block in blocks:
            if block.height > self.manifest.height:
                break
            if block.height != self.next_height:
                raise HistoryRefused(f"block at height {block.height} where {self.next_height} was next")
            want = self.expected.get(block.height)
            if want is not None and block.hash != want:
                raise HistoryOtherChain(f"block at height {block.height} is not the snapshot's chain "
                                        f"({block.hash.hex()[:16]}, the snapshot has {want.hex()[:16]})")
            result = self.chain.add_block(block, now_ms)
            if result.status == KNOWN:
                continue
            if result.status != ADDED_TIP or self.chain.tip.hash != block.hash:
                raise HistoryRefused(f"block at height {block.height} does not extend the history validated so far")
            added += 1
        return added

    def finish(self) -> bytes:
        """The state hash at H of the history validated; HistoryMismatch if it is not the
        snapshot's."""
        m = self.manifest
        assert self.done
        got = state_hash_at_tip(self.chain.storage, self.params)
        if got != m.state_hash:
            tip = self.chain.tip
            raise HistoryMismatch(
                f"history does not reproduce the snapshot: validated to height {m.height} (block "
                f"{tip.hash.hex()[:16]}) its state hash is {got.hex()}, the snapshot's is {m.state_hash.hex()}")
        return got

    def history_rows(self, start: int, count: int) -> tuple[list[tuple], list[Block]]:
        """The validated main-chain blocks at heights start..start+count-1, as stored rows
        for the node's database (Storage.put_history) and decoded (for its transfer
        indexes, Storage.index_blocks)."""
        rows = self.chain.storage.main_block_rows(start, count)
        return rows, [decode_stored(bytes(row[0]), row[-1]) for row in rows]  # (hash first, bytes last)

    def close(self, remove: bool = False) -> None:
        self.chain.close()
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)
