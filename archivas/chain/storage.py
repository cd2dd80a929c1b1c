"""SQLite storage under the `--db` directory: blocks, the main chain, accounts, undo data,
and the indexes of main-chain transfers (by hash and by address).

WAL mode, and every block commit (with its state changes, undo record, index rows and the
new tip) inside one SQLite transaction: a process killed at any instant reopens at the
last committed tip. With synchronous=NORMAL (the default, `sync="normal"`) a commit is in
the WAL file, not fsynced: a power loss or OS crash may lose the last commits, never
corrupt the database (a node fetches the lost blocks from its peers again); `sync="full"`
fsyncs every commit (docs/storage.md has the trade). Sync imports a run of blocks in one
transaction (`begin_run`/`end_run`): one commit a run, and a crash reopens at a run
boundary. A transaction opened inside another is a SAVEPOINT, so a
block refused inside a run leaves nothing of itself and keeps the run's earlier blocks.

Accounts, block metadata and meta values are cached in memory. Account writes are kept
there and written back at the commit (a run writes each account it touched once); every
cache change made inside a savepoint is journaled and undone if the savepoint rolls back,
and a rolled-back transaction empties the caches. One process at a time: a lock file
refuses a second opener. A database that SQLite cannot read whole (a zeroed page, a
truncated file, a missing table) is refused at open with one line.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from archivas.chain.block import Block, Header
from archivas.chain.encoding import DecodeError
from archivas.chain.ledger import Account
from archivas.chain.transactions import Transaction

SCHEMA_VERSION = 3  # 1: no transfer indexes; 2: tx_index and address_index; 3: blocks.vdf_iterations
# Schemas 1 and 2 hold version-1 blocks (another genesis): refused at open, not migrated.
FIRST_SCHEMA_READ = 3
DB_FILE = "chain.sqlite3"
LOCK_FILE = "LOCK"
CHAIN_TABLES = frozenset({"meta", "blocks", "main_chain", "accounts", "undo"})
INDEX_TABLES = frozenset({"tx_index", "address_index"})
INDEX_BEHIND_META = "index_behind"  # while the transfer indexes lag the main chain: the last height they hold
READ_CATCH_UP_BLOCKS = 32  # a lag an index read catches up first (_current_index)
RECENT_BLOCKS = 16  # the last blocks put kept as objects, for their index rows (catch_up_index)
# Memory the caches may hold between commits: accounts (about 200 B each) beyond this are
# dropped at a commit (a run can exceed it by the accounts it touches: 64 blocks of at
# most 2,000 transfers, 256,000 accounts); block metas (about 300 B) are dropped oldest first.
ACCOUNT_CACHE = 200_000
META_CACHE = 16_384
# With checkpoints in the background (checkpoint_in_background), the WAL size at which a
# commit checkpoints anyway, as SQLite's rule does at 1,000 pages: 8,192 pages of 4 KiB,
# 32 MiB. A node's background checkpoints keep the WAL far below it (a sync writes about
# 4 MiB a second); only a writer they cannot keep up with reaches it.
CHECKPOINT_VALVE_PAGES = 8192
# SQLite's synchronous setting under WAL (`--db-sync`): "normal" writes each commit to the
# WAL without an fsync (SQLite fsyncs at checkpoints); "full" fsyncs the WAL at every commit.
SYNC_MODES = ("normal", "full")
DEFAULT_SYNC = "normal"
_MISSING: Any = object()
WHAT_TO_DO = "restore it from a backup, or move it away and let the node sync again into an empty --db directory"

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE blocks (
    hash BLOB PRIMARY KEY,
    height INTEGER NOT NULL,
    parent BLOB NOT NULL,
    timestamp INTEGER NOT NULL,
    difficulty INTEGER NOT NULL,
    weight TEXT NOT NULL,
    segments INTEGER NOT NULL,
    score TEXT NOT NULL,
    invalid INTEGER NOT NULL DEFAULT 0,
    vdf_iterations INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX blocks_parent ON blocks(parent);
CREATE TABLE main_chain (height INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE accounts (address TEXT PRIMARY KEY, balance INTEGER NOT NULL, nonce INTEGER NOT NULL);
CREATE TABLE undo (hash BLOB PRIMARY KEY, data TEXT NOT NULL);
"""

# Main-chain transfers only: a block's rows are written when it is connected and deleted
# when it is disconnected, in the same transaction. `position` is the transfer's index in
# its block; an address has one row per transfer it sent or received (one for a transfer
# to itself).
INDEX_SCHEMA = """
CREATE TABLE tx_index (
    hash BLOB PRIMARY KEY,
    block BLOB NOT NULL,
    height INTEGER NOT NULL,
    position INTEGER NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    amount INTEGER NOT NULL,
    fee INTEGER NOT NULL,
    nonce INTEGER NOT NULL
);
CREATE TABLE address_index (
    address TEXT NOT NULL,
    height INTEGER NOT NULL,
    position INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (address, height, position)
) WITHOUT ROWID;
"""


class StorageError(Exception):
    """The database cannot be used: locked, corrupt, or of another network. One line."""


@dataclasses.dataclass(frozen=True)
class IndexedTransfer:
    """A main-chain transfer as the indexes hold it (`timestamp`: its block's, Unix ms)."""

    hash: bytes
    block_hash: bytes
    height: int
    position: int
    sender: str
    recipient: str
    amount: int
    fee: int
    nonce: int
    timestamp: int


_TRANSFER_COLUMNS = ("t.hash, t.block, t.height, t.position, t.sender, t.recipient, t.amount, t.fee, t.nonce, "
                     "b.timestamp")


def _transfer(row: tuple) -> IndexedTransfer:
    h, block, height, position, sender, recipient, amount, fee, nonce, ts = row
    return IndexedTransfer(bytes(h), bytes(block), height, position, sender, recipient, amount, fee, nonce, ts)


def _statements(script: str) -> list[str]:
    return [statement for statement in script.split(";") if statement.strip()]


@dataclasses.dataclass(frozen=True)
class BlockMeta:
    """What fork choice and context checks need of a stored block, without decoding it."""

    hash: bytes
    height: int
    parent: bytes
    timestamp: int
    difficulty: int
    weight: int
    segments: int
    score: int
    invalid: bool
    vdf_iterations: int


_META_COLUMNS = "hash, height, parent, timestamp, difficulty, weight, segments, score, invalid, vdf_iterations"


def _meta(row: tuple) -> BlockMeta:
    h, height, parent, ts, diff, weight, segs, score, invalid, iterations = row
    return BlockMeta(bytes(h), height, bytes(parent), ts, diff, int(weight), segs, int(score, 16), bool(invalid),
                     iterations)


class Storage:
    """`connect` opens the SQLite connection (tests inject a tracing one)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        connect: Callable[..., sqlite3.Connection] = sqlite3.connect,
        sync: str = DEFAULT_SYNC,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        self.directory = Path(directory)
        self.sync = sync
        self._lock: Optional[int] = None
        self.db: sqlite3.Connection = None  # type: ignore[assignment]
        self._depth = 0  # 0: no transaction; 1: in one; n > 1: in n - 1 savepoints
        self._runs = 0  # begin_run calls not yet ended (they share one transaction)
        # One list a level (the transaction, then each savepoint): how to undo the cache
        # changes made at that level. The transaction's own level needs none (a rollback
        # there empties the caches).
        self._undo_log: list[list[Callable[[], None]]] = []
        self._accounts: dict[str, Optional[Account]] = {}  # None: no such account
        self._dirty: dict[str, Optional[Account]] = {}  # written since the commit; None deletes
        self._metas: dict[bytes, BlockMeta] = {}
        self._kv: dict[str, Optional[str]] = {}
        # The last blocks put, as given (what their rows decode to): a gossiped block's
        # index rows are written a moment after it is stored (catch_up_index), from this
        # object rather than from its row decoded again. Never consulted for anything else.
        self._recent: collections.OrderedDict[bytes, Block] = collections.OrderedDict()
        self._connect = connect
        # checkpoint_in_background's own connection, used only under its lock (another thread's)
        self._checkpointer: Optional[sqlite3.Connection] = None
        self._checkpoint_lock = threading.Lock()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create database directory {self.directory}: {e.strerror}") from None
        self._lock = self._take_lock()
        path = self.directory / DB_FILE
        self.path = path
        try:
            self.db = connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={sync.upper()}")
            self.db.execute("PRAGMA foreign_keys=OFF")
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            # A new database gets its tables in the same transaction as its genesis block
            # (create_schema), so a process killed while creating it leaves no tables.
            self.fresh = not (tables - {"peer_bans"})  # peer_bans is made below, outside genesis
            problem = None if self.fresh else self._quick_check()
        except sqlite3.DatabaseError as e:
            self.close()
            raise StorageError(f"database {path} is corrupt or not an Archivas database ({e}): {WHAT_TO_DO}") from None
        if problem is not None:
            self.close()
            raise StorageError(f"database {path} is corrupt ({problem}): {WHAT_TO_DO}")
        if not self.fresh and not CHAIN_TABLES <= tables:
            self.close()
            raise StorageError(f"database {path} is not an Archivas database (tables missing: "
                               f"{', '.join(sorted(CHAIN_TABLES - tables))})")
        self.tables = tables
        try:  # the operator's peer bans (banlist.py): not chain data, made on demand
            self.db.execute("CREATE TABLE IF NOT EXISTS peer_bans "
                            "(subnet TEXT PRIMARY KEY, until REAL NOT NULL, reason TEXT NOT NULL)")
        except sqlite3.DatabaseError as e:
            self.close()
            raise StorageError(f"database {path} is corrupt or read-only ({e})") from None

    def _quick_check(self) -> Optional[str]:
        """SQLite's `PRAGMA quick_check` over every page (b-tree structure, record formats,
        page counts; not index contents): its first complaint, or None. Costs one read of
        the file (docs/storage.md has the measured time)."""
        rows = self.db.execute("PRAGMA quick_check(1)").fetchall()
        first = rows[0][0] if rows else "no answer"
        return None if first == "ok" else str(first).splitlines()[0][:200]

    def error(self, what: str) -> StorageError:
        """The one-line StorageError for a database found corrupt after opening."""
        return StorageError(f"database {self.path} is corrupt ({what}): {WHAT_TO_DO}")

    # the operator's peer bans (a BanStore for archivas.protocols.banlist)

    def load_bans(self) -> list[tuple[str, float, str]]:
        return [(s, float(u), r) for s, u, r in self.db.execute("SELECT subnet, until, reason FROM peer_bans")]

    def save_ban(self, subnet: str, until: float, reason: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO peer_bans VALUES (?, ?, ?)", (subnet, until, reason))

    def delete_ban(self, subnet: str) -> None:
        self.db.execute("DELETE FROM peer_bans WHERE subnet = ?", (subnet,))

    def _take_lock(self) -> int:
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StorageError(f"database {self.directory} is in use by pid {holder}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return fd

    def checkpoint_in_background(self) -> None:
        """Stop SQLite from checkpointing the WAL inside commits: the commit that takes the
        WAL past 1,000 pages copies them into the database file there and then (13-26 ms of
        the committing call in a sync, every few runs, on the reactor). From here on the
        owner calls checkpoint() from another thread instead (Node does, every second).
        Commits still checkpoint past CHECKPOINT_VALVE_PAGES: a writer faster than the
        background checkpoints (they never catch up, so SQLite never restarts the WAL) would
        otherwise grow the WAL without bound."""
        with self._checkpoint_lock:
            if self._checkpointer is None:
                try:
                    self._checkpointer = self._connect(self.path, isolation_level=None, check_same_thread=False)
                    self._checkpointer.execute(f"PRAGMA synchronous={self.sync.upper()}")
                except sqlite3.DatabaseError as e:
                    raise self.error(f"cannot open a checkpoint connection: {e}") from None
        self.db.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_VALVE_PAGES}")

    def checkpoint(self) -> Optional[tuple[int, int]]:
        """A passive checkpoint on checkpoint_in_background's connection: the committed WAL
        pages copied into the database file, never waiting for the writer or holding it up.
        Safe from any thread. (pages in the WAL, pages checkpointed), or None when closed or
        not in background mode."""
        with self._checkpoint_lock:
            if self._checkpointer is None:
                return None
            _, pages, done = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return pages, done

    def close(self) -> None:
        with self._checkpoint_lock:  # (waits for a checkpoint in flight in another thread)
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
        try:
            if self.db is not None and self._runs:  # a run still open at shutdown: its blocks are all valid
                self._runs = 0
                self._commit()
        finally:
            if self.db is not None:
                self.db.close()
                self.db = None  # type: ignore[assignment]
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None  # type: ignore[assignment]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit. Inside another it is a savepoint: rolled back alone (with its
        cache changes) if it raises, part of the outer transaction otherwise."""
        if self._depth:
            name = f"sp{self._depth}"
            self.db.execute(f"SAVEPOINT {name}")
            self._depth += 1
            self._undo_log.append([])
            try:
                yield
            except BaseException:
                self._undo_savepoint(name)
                raise
            self.db.execute(f"RELEASE {name}")
            done = self._undo_log.pop()
            if len(self._undo_log) > 1:
                self._undo_log[-1].extend(done)
            self._depth -= 1
            return
        self._begin()
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        else:
            self._commit()

    def _undo_savepoint(self, name: str) -> None:
        """Roll a savepoint back with its cache changes. If SQLite rolled the whole
        transaction back itself (disk full, an I/O error: then there is no savepoint left),
        all of it is gone: so are the caches, the open runs, and nothing is written later
        outside a transaction."""
        if self.db.in_transaction:
            try:
                self.db.execute(f"ROLLBACK TO {name}")
                self.db.execute(f"RELEASE {name}")
            except sqlite3.Error:
                self._rollback()
                return
            for undo in reversed(self._undo_log.pop()):
                undo()
            self._depth -= 1
        else:
            self._rollback()

    def begin_run(self) -> None:
        """Open (or join) the transaction of a run of imported blocks: every add_block
        until end_run is a savepoint in it, and the reactor may run in between (whatever
        writes meanwhile joins the run). Runs nest by count; the last end_run commits."""
        if not self._runs:
            if self._depth:
                raise RuntimeError("a run cannot start inside a transaction")
            self._begin()
        self._runs += 1

    def end_run(self) -> None:
        """End a begin_run; the last one commits what the runs added (one commit)."""
        if self._runs == 0 or self.db is None:  # (closed meanwhile: close committed it)
            return
        self._runs -= 1
        if not self._runs:
            self._commit()

    @property
    def in_run(self) -> bool:
        return self._runs > 0

    def _begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        self._undo_log = [[]]

    def _commit(self) -> None:
        if not self.db.in_transaction:  # SQLite rolled it back itself: write nothing outside it
            self._rollback()
            raise StorageError(f"database {self.path}: the transaction was lost (disk full or an I/O error?)")
        try:
            self._write_back()
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._depth = 0
        self._undo_log = []
        if len(self._accounts) > ACCOUNT_CACHE:
            self._accounts.clear()

    def _rollback(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.OperationalError:  # SQLite already rolled it back (disk full, I/O error)
            pass
        finally:
            self._depth = 0
            self._runs = 0
            self._undo_log = []
            self._accounts.clear()
            self._dirty.clear()
            self._metas.clear()
            self._kv.clear()
            self._recent.clear()

    def _journal(self, undo: Callable[[], None]) -> None:
        """Remember how to undo a cache change if the savepoint it was made in rolls back."""
        if len(self._undo_log) > 1:
            self._undo_log[-1].append(undo)

    def create_schema(self) -> None:
        """The tables, inside the caller's transaction (no executescript: it commits)."""
        for statement in _statements(SCHEMA + INDEX_SCHEMA):
            self.db.execute(statement)
        self.tables = self.tables | CHAIN_TABLES | INDEX_TABLES

    def schema_version(self) -> int:
        """The stored schema, checked: an older one (its blocks are of version 1, its genesis
        another), a newer one (a newer Archivas wrote it) or a missing one is refused."""
        stored = self.get_meta("schema")
        if stored is None or not stored.isdigit():
            raise self.error(f"its schema version is {stored!r}")
        version = int(stored)
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"database {self.path} has schema {version}, written by a newer Archivas (this one reads "
                f"schema {SCHEMA_VERSION} and older): run that newer archivas-node, or give this one another --db")
        if version < 1:
            raise self.error(f"its schema version is {version}")
        if version < FIRST_SCHEMA_READ:
            raise StorageError(
                f"database {self.path} has schema {version}, from before block version 2 (its genesis is not this "
                f"network's any more): move it away and let the node sync again into an empty --db directory")
        if version == SCHEMA_VERSION and not INDEX_TABLES <= self.tables:
            raise self.error(f"tables missing: {', '.join(sorted(INDEX_TABLES - self.tables))}")
        return version

    # meta

    def get_meta(self, key: str) -> Optional[str]:
        value = self._kv.get(key, _MISSING)
        if value is _MISSING:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            value = row[0] if row else None
            self._cache(self._kv, key, value)
        return value

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
        self._cache(self._kv, key, value)

    def delete_meta(self, key: str) -> None:
        self.db.execute("DELETE FROM meta WHERE key=?", (key,))
        self._cache(self._kv, key, None)

    def index_behind(self) -> Optional[int]:
        """The last main-chain height the transfer indexes hold while they lag the main
        chain (a sync's runs leave them behind: Chain.catch_up_index), None when they
        hold the whole main chain."""
        value = self.get_meta(INDEX_BEHIND_META)
        return None if value is None else int(value)

    def set_index_behind(self, height: Optional[int]) -> None:
        if height is None:
            if self.get_meta(INDEX_BEHIND_META) is not None:
                self.delete_meta(INDEX_BEHIND_META)
        else:
            self.set_meta(INDEX_BEHIND_META, str(height))

    def _cache(self, cache: dict, key: Any, value: Any) -> None:
        """cache[key] = value, journaled (a savepoint that rolls back restores it)."""
        old = cache.get(key, _MISSING)
        cache[key] = value
        self._journal(functools.partial(_restore, cache, key, old))

    # blocks

    def put_block(self, block: Block, weight: int, score: int) -> None:
        h = block.header
        self.db.execute(
            f"INSERT INTO blocks({_META_COLUMNS}, data) VALUES (?,?,?,?,?,?,?,?,0,?,?)",
            (h.hash, h.height, h.parent_hash, h.timestamp, h.difficulty, str(weight),
             h.segments, format(score, "x"), h.vdf_iterations, block.encode()),
        )
        self._recent[h.hash] = block
        if len(self._recent) > RECENT_BLOCKS:
            self._recent.popitem(last=False)

    def has_block(self, block_hash: bytes) -> bool:
        if block_hash in self._metas:
            return True
        return self.db.execute("SELECT 1 FROM blocks WHERE hash=?", (block_hash,)).fetchone() is not None

    def block_meta(self, block_hash: bytes) -> Optional[BlockMeta]:
        meta = self._metas.get(block_hash)
        if meta is not None:
            return meta
        row = self.db.execute(f"SELECT {_META_COLUMNS} FROM blocks WHERE hash=?", (block_hash,)).fetchone()
        if row is None:
            return None
        meta = _meta(row)
        if len(self._metas) >= META_CACHE:
            del self._metas[next(iter(self._metas))]
        self._cache(self._metas, block_hash, meta)
        return meta

    def block_bytes(self, block_hash: bytes) -> Optional[bytes]:
        """A block as stored: its canonical JSON (Block.encode), to serve without decoding."""
        row = self.db.execute("SELECT data FROM blocks WHERE hash=?", (block_hash,)).fetchone()
        return None if row is None else bytes(row[0])

    def header(self, block_hash: bytes) -> Optional[Header]:
        """A stored block's header alone: its transfers are not built (for a 50-transfer
        block that is 0.06 ms where decoding the block is 0.8 ms)."""
        row = self.db.execute("SELECT data FROM blocks WHERE hash=?", (block_hash,)).fetchone()
        if row is None:
            return None
        try:
            return Header.from_json(json.loads(row[0])["header"])
        except (ValueError, KeyError, TypeError, DecodeError) as e:
            raise StorageError(f"stored block {block_hash.hex()} is corrupt: {e}") from None

    def block(self, block_hash: bytes) -> Optional[Block]:
        row = self.db.execute("SELECT data FROM blocks WHERE hash=?", (block_hash,)).fetchone()
        return None if row is None else decode_stored(block_hash, row[0])

    def mark_invalid(self, block_hash: bytes) -> None:
        self.db.execute("UPDATE blocks SET invalid=1 WHERE hash=?", (block_hash,))
        meta = self._metas.get(block_hash)
        if meta is not None:
            self._cache(self._metas, block_hash, dataclasses.replace(meta, invalid=True))

    def block_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]

    # main chain

    def main_hash(self, height: int) -> Optional[bytes]:
        row = self.db.execute("SELECT hash FROM main_chain WHERE height=?", (height,)).fetchone()
        return bytes(row[0]) if row else None

    def main_block_prefixes(self, start: int, count: int, prefix: int) -> Iterator[tuple[int, bytes, bytes]]:
        """(height, hash, the stored block's first `prefix` bytes) of the main-chain blocks
        at heights start..start+count-1 that are stored, in height order: one query, stepped
        only as far as the caller reads (use it before the next write), and only the prefix
        of each block copied out (serving 512 headers of 50-transfer blocks: 5.5 ms, against
        16 ms copying the blocks whole, two statements each)."""
        cursor = self._main_blocks("m.height, m.hash, substr(b.data, 1, ?)", start, count, prefix)
        return ((height, bytes(h), bytes(data)) for height, h, data in cursor)

    def main_block_rows(self, start: int, count: int) -> list[tuple]:
        """The stored rows (every column, the block's bytes last) of the main-chain blocks at
        heights start..start+count-1, in height order: what put_history writes into another
        database."""
        columns = ", ".join("b." + c.strip() for c in _META_COLUMNS.split(","))
        return self._main_blocks(f"{columns}, b.data", start, count).fetchall()

    def _main_blocks(self, columns: str, start: int, count: int, *parameters: Any) -> sqlite3.Cursor:
        """`columns` (of main_chain m joined to blocks b, with `parameters` for any `?` in
        them) at main-chain heights start..start+count-1 that are stored, in height order."""
        return self.db.execute(
            f"SELECT {columns} FROM main_chain m JOIN blocks b ON b.hash = m.hash "
            "WHERE m.height >= ? AND m.height < ? ORDER BY m.height", (*parameters, start, start + count))

    def put_history(self, rows: Sequence[tuple]) -> None:
        """Main-chain blocks (main_block_rows of a database that validated them) below those
        this one holds, and their main-chain rows, inside the caller's transaction: a snapshot
        database's history once verify-history has validated it (docs/snapshots.md). A block
        or height already here is left as it is. No undo records: nothing reorganises below a
        snapshot."""
        self.db.executemany(f"INSERT OR IGNORE INTO blocks({_META_COLUMNS}, data) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                            rows)
        self.db.executemany("INSERT OR IGNORE INTO main_chain(height, hash) VALUES (?, ?)",
                            [(row[1], row[0]) for row in rows])

    def set_main(self, height: int, block_hash: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO main_chain(height, hash) VALUES (?, ?)", (height, block_hash))

    def delete_main(self, height: int) -> None:
        self.db.execute("DELETE FROM main_chain WHERE height=?", (height,))

    def main_height(self) -> int:
        row = self.db.execute("SELECT MAX(height) FROM main_chain").fetchone()
        return -1 if row[0] is None else row[0]

    # accounts and undo records

    def get_account(self, address: str) -> Optional[Account]:
        account = self._accounts.get(address, _MISSING)
        if account is _MISSING:
            # (The table changes only at a commit, so what it says holds in any savepoint.)
            row = self.db.execute("SELECT balance, nonce FROM accounts WHERE address=?", (address,)).fetchone()
            account = (row[0], row[1]) if row else None
            if len(self._accounts) >= ACCOUNT_CACHE:  # the clean ones go (the written wait for the commit)
                self._accounts = {a: v for a, v in self._accounts.items() if a in self._dirty}
            self._accounts[address] = account
        return account

    def set_accounts(self, accounts: dict[str, Optional[Account]]) -> None:
        """Write each account; None deletes it (an address a rolled-back block created).
        Inside a transaction they are written back at its commit."""
        if not self._depth:
            self._accounts.update(accounts)
            self._dirty.update(accounts)
            self._write_back()
            return
        if len(self._undo_log) > 1:  # in a savepoint: how to put these back if it rolls back
            self._journal(functools.partial(self._restore_accounts, [
                (a, self._accounts.get(a, _MISSING), self._dirty.get(a, _MISSING)) for a in accounts]))
        self._accounts.update(accounts)
        self._dirty.update(accounts)

    def load_accounts(self, accounts: Iterable[tuple[str, int, int]]) -> None:
        """Bulk-load (address, balance, nonce) rows into an empty accounts table, inside
        the caller's transaction, past the caches (a snapshot's millions of accounts)."""
        assert self._depth, "load_accounts runs inside a transaction"
        self.db.executemany("INSERT INTO accounts(address, balance, nonce) VALUES (?,?,?)", accounts)

    def _restore_accounts(self, old: list[tuple[str, Any, Any]]) -> None:
        for address, cached, dirty in old:
            _restore(self._accounts, address, cached)
            _restore(self._dirty, address, dirty)

    def _write_back(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        self.db.executemany("INSERT OR REPLACE INTO accounts(address, balance, nonce) VALUES (?,?,?)",
                            [(a, v[0], v[1]) for a, v in dirty.items() if v is not None])
        self.db.executemany("DELETE FROM accounts WHERE address=?", [(a,) for a, v in dirty.items() if v is None])

    def all_accounts(self) -> dict[str, Account]:
        out = {a: (b, n) for a, b, n in self.db.execute("SELECT address, balance, nonce FROM accounts")}
        for address, account in self._dirty.items():
            if account is None:
                out.pop(address, None)
            else:
                out[address] = account
        return out

    def put_undo(self, block_hash: bytes, before: dict[str, Optional[Account]]) -> None:
        doc = {a: (list(v) if v is not None else None) for a, v in before.items()}
        self.db.execute("INSERT OR REPLACE INTO undo(hash, data) VALUES (?, ?)", (block_hash, json.dumps(doc)))

    # the transfer indexes (main chain only)

    def index_block(self, block: Block) -> None:
        """Index a block's transfers as it joins the main chain (outside a run: a run's
        blocks leave the indexes behind, Chain._index_connected)."""
        self.index_blocks((block,))

    def catch_up_index(self, limit: int, top: int) -> int:
        """Index up to `limit` main-chain blocks the transfer indexes lag behind (up to
        height `top`, the tip's), in one transaction and one sorted write (not inside a
        run); how many. 0 when they hold the whole main chain."""
        behind = self.index_behind()
        if behind is None or self._runs:
            return 0
        end = min(top, behind + limit)
        with self.transaction():
            blocks = []
            for height in range(behind + 1, end + 1):
                block_hash = self.main_hash(height)
                block = None if block_hash is None else self._recent.get(block_hash) or self.block(block_hash)
                if block is None:
                    raise self.error(f"main-chain block at height {height} is missing")
                blocks.append(block)
            self.index_blocks(blocks)
            self.set_index_behind(None if end >= top else end)
        return end - behind

    def _current_index(self) -> None:
        """Before an index read: a lag of a few blocks (gossiped blocks whose rows wait, as
        Node.receive_block stores them) is written first, so reads do not miss them; a
        longer one (a sync's), or any while a sync's run is open, is left to the node's
        catch-up (GET /status: indexHeight)."""
        behind = self.index_behind()
        if behind is None or self._runs:
            return
        top = self.main_height()
        if top - behind <= READ_CATCH_UP_BLOCKS:
            self.catch_up_index(READ_CATCH_UP_BLOCKS, top)

    def index_blocks(self, blocks: Iterable[Block]) -> None:
        """Index main-chain blocks the indexes lag behind (catching up), in one sorted write."""
        rows: list[tuple] = []
        addresses: list[tuple] = []
        for block in blocks:
            _index_rows(block.hash, block.height, block.transactions, rows, addresses)
        self._write_index(rows, addresses)

    @staticmethod
    def _tx_key(row: tuple) -> bytes:
        return row[0]

    @staticmethod
    def _address_key(row: tuple) -> tuple:
        return row[:3]

    def _write_index(self, rows: list[tuple], addresses: list[tuple]) -> None:
        # A transfer appears once on a chain (its nonce is used up): REPLACE only keeps a
        # damaged index from stopping the chain. (Sorted stably by key: the last of two
        # rows with one key still wins.)
        by_hash: list[tuple] = sorted(rows, key=self._tx_key)
        by_address: list[tuple] = sorted(addresses, key=self._address_key)
        self.db.executemany("INSERT OR REPLACE INTO tx_index VALUES (?,?,?,?,?,?,?,?,?)", by_hash)
        self.db.executemany("INSERT OR REPLACE INTO address_index VALUES (?,?,?,?)", by_address)

    def unindex_block(self, block: Block) -> None:
        """Drop a block's transfers as it leaves the main chain."""
        height = block.height
        rows: list[tuple] = []
        addresses: list[tuple] = []
        for position, tx in enumerate(block.transactions):
            rows.append((tx.hash, block.hash))
            addresses.extend((a, height, position) for a in dict.fromkeys((tx.sender, tx.recipient)))
        self.db.executemany("DELETE FROM tx_index WHERE hash=? AND block=?", rows)
        self.db.executemany("DELETE FROM address_index WHERE address=? AND height=? AND position=?", addresses)

    def transfer(self, tx_hash: bytes) -> Optional[IndexedTransfer]:
        self._current_index()
        row = self.db.execute(f"SELECT {_TRANSFER_COLUMNS} FROM tx_index t JOIN blocks b ON b.hash = t.block "
                              "WHERE t.hash=?", (tx_hash,)).fetchone()
        return _transfer(row) if row else None

    def address_transfers(self, address: str, limit: int,
                          before: Optional[int] = None) -> tuple[list[IndexedTransfer], bool]:
        """The address's transfers, sent and received, newest first, from blocks below
        height `before` (all when None): `limit` of them, then the rest of the last one's
        block (a page never splits a block), and whether older ones remain."""
        self._current_index()
        below = 2**62 if before is None else before
        query = (f"SELECT {_TRANSFER_COLUMNS} FROM address_index a JOIN tx_index t ON t.hash = a.hash "
                 "JOIN blocks b ON b.hash = t.block WHERE a.address = ? AND ")
        page = [_transfer(row) for row in self.db.execute(
            query + "a.height < ? ORDER BY a.height DESC, a.position DESC LIMIT ?", (address, below, limit))]
        if len(page) < limit:
            return page, False
        last = page[-1]
        page.extend(_transfer(row) for row in self.db.execute(
            query + "a.height = ? AND a.position < ? ORDER BY a.position DESC", (address, last.height, last.position)))
        more = self.db.execute("SELECT 1 FROM address_index WHERE address = ? AND height < ? LIMIT 1",
                               (address, last.height)).fetchone() is not None
        return page, more

    def transfer_count(self) -> int:
        self._current_index()
        return self.db.execute("SELECT COUNT(*) FROM tx_index").fetchone()[0]

    def undo(self, block_hash: bytes) -> dict[str, Optional[Account]]:
        row = self.db.execute("SELECT data FROM undo WHERE hash=?", (block_hash,)).fetchone()
        if row is None:
            raise StorageError(f"undo record of main-chain block {block_hash.hex()} is missing")
        return {a: (tuple(v) if v is not None else None) for a, v in json.loads(row[0]).items()}  # type: ignore[misc]


def decode_stored(block_hash: bytes, data: bytes) -> Block:
    """A block from its stored bytes (`blocks.data`); StorageError if they do not decode."""
    try:
        return Block.from_json(json.loads(data))
    except (ValueError, DecodeError) as e:
        raise StorageError(f"stored block {block_hash.hex()} is corrupt: {e}") from None


def _index_rows(block_hash: bytes, height: int, txs: Iterable[Transaction], rows: list[tuple],
                addresses: list[tuple]) -> None:
    for position, tx in enumerate(txs):
        tx_hash = tx.hash
        rows.append((tx_hash, block_hash, height, position, tx.sender, tx.recipient, tx.amount, tx.fee, tx.nonce))
        addresses.extend((a, height, position, tx_hash) for a in dict.fromkeys((tx.sender, tx.recipient)))


def _restore(cache: dict, key: Any, old: Any) -> None:
    """Put back what cache[key] was (_MISSING: absent)."""
    if old is _MISSING:
        cache.pop(key, None)
    else:
        cache[key] = old
