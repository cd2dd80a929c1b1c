"""The chain: validates blocks, stores every valid one, follows the heaviest tip.

`Chain.add_block` is the one entry point. A block whose parent is unknown is reported as
an orphan (the caller holds it and fetches ancestors); an invalid block raises
`BlockRejected` and changes nothing; a valid one is stored and, when fork choice prefers
it, becomes the tip, rolling the old branch back and the new one forward (any depth) in a
single storage transaction.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import sqlite3
from typing import Any, Optional

from twisted.logger import Logger

from archivas.chain import forkchoice
from archivas.chain.block import Block, Header, child_discriminant_seed, child_seed, genesis_block
from archivas.chain.consensus import (
    BlockRejected,
    check_context,
    check_standalone,
    context_depth,
    expected_difficulty,
    expected_iterations,
)
from archivas.chain.ledger import Account, StateDelta, apply_block_body
from archivas.chain.params import NetworkParams
from archivas.chain.storage import SCHEMA_VERSION, BlockMeta, Storage, StorageError
from archivas.chain.transactions import InvalidTransaction

log = Logger()

# Recent headers kept decoded: at most 4,096 and about 16 MiB (a header holds ~1 KB plus
# ~250 B a VDF segment in memory: thousands of fastnet headers, 64 of 1,024-segment ones).
HEADER_CACHE = 4096
HEADER_CACHE_BYTES = 16 * 1024 * 1024
ADDED_TIP = "tip"  # the block extended or replaced the main chain
ADDED_SIDE = "side"  # stored on a branch that is not (yet) the heaviest
KNOWN = "known"
ORPHAN = "orphan"  # parent unknown: nothing stored


@dataclasses.dataclass
class AddResult:
    status: str
    connected: list[Block] = dataclasses.field(default_factory=list)
    disconnected: list[Block] = dataclasses.field(default_factory=list)

    @property
    def reorganised(self) -> bool:
        return bool(self.disconnected)


class Chain:
    def __init__(self, storage: Storage, params: NetworkParams) -> None:
        self.storage = storage
        self.params = params
        self.genesis = genesis_block(params)
        self._headers: collections.OrderedDict[bytes, Header] = collections.OrderedDict()
        self._header_bytes = 0
        self._open()

    @classmethod
    def open(cls, directory: str | os.PathLike[str], params: NetworkParams, **storage_options: Any) -> "Chain":
        storage = Storage(directory, **storage_options)
        try:
            return cls(storage, params)
        except BaseException:
            storage.close()
            raise

    def close(self) -> None:
        self.storage.close()

    def _open(self) -> None:
        s = self.storage
        genesis_hash = self.genesis.hash.hex()
        if s.fresh:
            with s.transaction():
                s.create_schema()
                s.set_meta("schema", str(SCHEMA_VERSION))
                s.set_meta("network", self.params.name)
                s.set_meta("genesis", genesis_hash)
                genesis = self.genesis.header
                s.put_block(self.genesis, forkchoice.block_weight(genesis.difficulty, genesis.vdf_iterations), 0)
                s.set_main(0, self.genesis.hash)
                s.set_accounts({a: (v, 0) for a, v in self.genesis.allocation})
                s.set_meta("tip", genesis_hash)
            log.info("[storage] created database {dir} for {network}", dir=str(s.directory),
                     network=self.params.name)
            return
        try:
            self._check(genesis_hash)
        except sqlite3.DatabaseError as e:  # a page quick_check could not see is bad after all
            raise s.error(str(e)) from None

    def _check(self, genesis_hash: str) -> None:
        s = self.storage
        s.schema_version()
        network, stored_genesis = s.get_meta("network"), s.get_meta("genesis")
        if network != self.params.name or stored_genesis != genesis_hash:
            raise StorageError(
                f"database {s.directory} belongs to network {network} (genesis "
                f"{(stored_genesis or '?')[:16]}), not {self.params.name} (genesis {genesis_hash[:16]})"
            )
        tip = s.get_meta("tip")
        try:
            meta = s.block_meta(bytes.fromhex(tip)) if tip else None
        except ValueError:
            meta = None
        if meta is None or s.main_hash(meta.height) != meta.hash or s.main_height() != meta.height:
            raise StorageError(f"database {s.directory} is corrupt: its tip is not on its main chain")

    # reading

    @property
    def tip(self) -> BlockMeta:
        meta = self.storage.block_meta(bytes.fromhex(self.storage.get_meta("tip") or ""))
        assert meta is not None
        return meta

    @property
    def height(self) -> int:
        return self.tip.height

    def block_at(self, height: int) -> Optional[Block]:
        block_hash = self.storage.main_hash(height)
        return None if block_hash is None else self.storage.block(block_hash)

    def block(self, block_hash: bytes) -> Optional[Block]:
        return self.storage.block(block_hash)

    def block_bytes_at(self, height: int) -> Optional[bytes]:
        """The main-chain block at `height` as stored (canonical JSON), not decoded."""
        block_hash = self.storage.main_hash(height)
        return None if block_hash is None else self.storage.block_bytes(block_hash)

    def has_block(self, block_hash: bytes) -> bool:
        return self.storage.has_block(block_hash)

    def is_main(self, meta: BlockMeta) -> bool:
        return self.storage.main_hash(meta.height) == meta.hash

    def account(self, address: str) -> Account:
        return self.storage.get_account(address) or (0, 0)

    def accounts(self) -> dict[str, Account]:
        return self.storage.all_accounts()

    def header(self, block_hash: bytes) -> Optional[Header]:
        """A stored block's header (the recent ones from memory: a header is immutable, and
        every block checked asks for its parent's)."""
        header = self._headers.get(block_hash)
        if header is not None:
            self._headers.move_to_end(block_hash)
            return header
        header = self.storage.header(block_hash)
        if header is not None:
            self._remember_header(block_hash, header)
        return header

    def forget_cached(self) -> None:
        """Drop the headers kept in memory: a transaction that held some was rolled back."""
        self._headers.clear()
        self._header_bytes = 0

    def _remember_header(self, block_hash: bytes, header: Header) -> None:
        if block_hash in self._headers:
            return
        self._headers[block_hash] = header
        self._header_bytes += _header_bytes(header)
        while len(self._headers) > HEADER_CACHE or self._header_bytes > HEADER_CACHE_BYTES:
            _, old = self._headers.popitem(last=False)
            self._header_bytes -= _header_bytes(old)

    def ancestors(self, block_hash: bytes, count: int) -> list[BlockMeta]:
        """Up to `count` stored blocks ending at `block_hash`, oldest first (no decoding:
        what the timestamp and difficulty rules need)."""
        out: list[BlockMeta] = []
        meta = self.storage.block_meta(block_hash)
        while meta is not None and len(out) < count:
            out.append(meta)
            meta = self.storage.block_meta(meta.parent) if meta.height > 0 else None
        out.reverse()
        return out

    @functools.cached_property
    def snapshot_base(self) -> int:
        """The height of the snapshot this database was loaded from (0: synced from
        genesis). The main chain at and below it is fixed: its blocks below the last few
        are absent, and there are no undo records to roll back past it
        (docs/snapshots.md)."""
        stored = self.storage.get_meta("snapshot_height")
        return int(stored) if stored and stored.isdigit() else 0

    def _context_depth(self) -> int:
        return context_depth(self.params)

    def next_difficulty(self, parent_hash: bytes) -> int:
        return expected_difficulty(self.ancestors(parent_hash, self._context_depth()), self.params)

    def next_iterations(self, parent_hash: bytes) -> int:
        """VDF iterations per segment a child of `parent_hash` must use (for the timelord,
        block templates and timelord output checks)."""
        return expected_iterations(self.ancestors(parent_hash, self._context_depth()), self.params)

    def stored_header(self, block_hash: bytes) -> Header:
        """header(), for a block that must be stored: KeyError when it is not."""
        header = self.header(block_hash)
        if header is None:
            raise KeyError(block_hash.hex())
        return header

    def seed_for_child(self, parent_hash: bytes) -> bytes:
        return child_seed(self.stored_header(parent_hash), self.params)

    def discriminant_seed_for_child(self, parent_hash: bytes) -> bytes:
        return child_discriminant_seed(self.stored_header(parent_hash), self.params)

    # writing

    def begin_run(self) -> None:
        """Start importing a run of blocks in one transaction (Storage.begin_run): each
        add_block until end_run is exact on its own, and the run commits once."""
        self.storage.begin_run()

    def end_run(self) -> None:
        self.storage.end_run()

    def check_standalone(self, block: Block) -> int:
        """The thread-safe, costly part of validation (proofs and signatures): its score.

        The caller may run it in a thread and pass the score to add_block."""
        parent = self.header(block.header.parent_hash)
        if parent is None:
            raise BlockRejected("invalid_ancestor", "parent unknown")
        return check_standalone(block, parent, self.params)

    def add_block(self, block: Block, now_ms: int, score: Optional[int] = None,
                  index_later: bool = False) -> AddResult:
        """Validate and store `block`; `score` from an earlier check_standalone skips it.
        `index_later`: the transfer indexes are left behind (catch_up_index writes the
        blocks' rows, or an index read: Storage._current_index), so that a gossiped
        block is relayed sooner."""
        s = self.storage
        if s.has_block(block.hash):
            return AddResult(KNOWN)
        if block.height <= self.snapshot_base:  # not ours: at and below it the main chain is fixed
            raise BlockRejected("invalid_ancestor", f"height {block.height} is at or below the snapshot this "
                                f"node was loaded from ({self.snapshot_base})", permanent=False)
        parent = s.block_meta(block.header.parent_hash)
        if parent is None:
            return AddResult(ORPHAN)
        if parent.invalid:
            raise BlockRejected("invalid_ancestor", f"parent {parent.hash.hex()[:16]} is invalid")
        check_context(block.header, self.ancestors(parent.hash, self._context_depth()), self.params, now_ms)
        if score is None:
            parent_header = self.header(parent.hash)
            assert parent_header is not None
            score = check_standalone(block, parent_header, self.params)

        header = block.header
        weight = parent.weight + forkchoice.block_weight(header.difficulty, header.vdf_iterations)
        candidate = BlockMeta(block.hash, block.height, parent.hash, header.timestamp, header.difficulty, weight,
                              header.segments, score, False, header.vdf_iterations)
        tip = self.tip
        if not forkchoice.is_better(candidate, tip):
            with s.transaction():
                s.put_block(block, weight, score)
            self._remember_header(block.hash, header)
            return AddResult(ADDED_SIDE)
        try:
            with s.transaction():
                s.put_block(block, weight, score)
                result = self._switch_to(candidate, tip, block, index_later)
            # Its header is asked for next (the VDF on it, its child's check): from memory,
            # not a decode of the whole stored block.
            self._remember_header(block.hash, header)
            return result
        except _BranchInvalid as bad:
            with s.transaction():
                s.put_block(block, weight, score)
                for h in bad.branch:
                    s.mark_invalid(h)
            raise bad.rejection from None

    def _switch_to(self, new_tip: BlockMeta, old_tip: BlockMeta, new_block: Block,
                   index_later: bool = False) -> AddResult:
        """Roll back to the fork point and apply the new branch, inside the caller's
        transaction. Raises _BranchInvalid (the transaction then rolls back)."""
        s = self.storage
        branch: list[BlockMeta] = []
        meta: Optional[BlockMeta] = new_tip
        while meta is not None and not self.is_main(meta):
            branch.append(meta)
            meta = s.block_meta(meta.parent)
        assert meta is not None, "every stored block descends from genesis"
        fork = meta
        branch.reverse()

        result = AddResult(ADDED_TIP)
        for height in range(old_tip.height, fork.height, -1):
            block_hash = s.main_hash(height)
            assert block_hash is not None
            s.set_accounts(s.undo(block_hash))
            s.delete_main(height)
            block = s.block(block_hash)
            assert block is not None
            behind = s.index_behind()
            if behind is None or height <= behind:  # (above `behind` it was never indexed)
                s.unindex_block(block)
                if behind is not None:
                    s.set_index_behind(height - 1)
            result.disconnected.append(block)

        for i, meta in enumerate(branch):
            if meta.invalid:
                raise _BranchInvalid(
                    [m.hash for m in branch[i:]],
                    BlockRejected("invalid_ancestor", f"block {meta.hash.hex()[:16]} is invalid"),
                )
            block = new_block if meta.hash == new_block.hash else s.block(meta.hash)
            assert block is not None
            delta = StateDelta(s)
            try:
                apply_block_body(delta, block.transactions, block.header.reward_address, block.header.reward)
            except InvalidTransaction as e:
                where = "" if meta.hash == new_tip.hash else f" (in ancestor at height {meta.height})"
                raise _BranchInvalid(
                    [m.hash for m in branch[i:]],
                    BlockRejected("bad_transaction", f"{e}{where}"),
                ) from None
            s.set_accounts(dict(delta.changes))
            s.put_undo(meta.hash, delta.before)
            s.set_main(meta.height, meta.hash)
            self._index_connected(block, later=index_later)
            result.connected.append(block)
        if s.index_behind() == new_tip.height:
            s.set_index_behind(None)
        s.set_meta("tip", new_tip.hash.hex())
        if result.disconnected:
            log.info("[chain] reorganised: {n} blocks rolled back to height {fork}, {m} applied",
                     n=len(result.disconnected), fork=fork.height, m=len(result.connected))
        return result


    def _index_connected(self, block: Block, later: bool = False) -> None:
        """A block joins the main chain: its transfers are indexed now, unless a run is
        open (a sync: the indexes wait for catch_up_index), `later` asks it (a gossiped
        block: the node catches up a moment later), or they lag behind already."""
        s = self.storage
        behind = s.index_behind()
        now = not later and not s.in_run
        if behind is None and now:
            s.index_block(block)
        elif behind is None:
            s.set_index_behind(block.height - 1)
        elif behind == block.height - 1 and now:
            s.index_block(block)
            s.set_index_behind(block.height)

    def catch_up_index(self, limit: int) -> int:
        """Index up to `limit` main-chain blocks the transfer indexes lag behind, in one
        transaction (not inside a run); how many. 0 when they hold the whole main chain."""
        return self.storage.catch_up_index(limit, self.tip.height)


class _BranchInvalid(Exception):
    def __init__(self, branch: list[bytes], rejection: BlockRejected) -> None:
        super().__init__(str(rejection))
        self.branch = branch
        self.rejection = rejection


def _header_bytes(header: Header) -> int:
    return 1024 + 250 * len(header.vdf)
