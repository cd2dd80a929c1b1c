"""SQLite storage under the `--db` directory: blocks, the main chain, accounts, undo data.

WAL mode with synchronous=FULL, and every block commit (with its state changes, undo
record and the new tip) inside one SQLite transaction: a process killed at any instant
reopens at the last committed tip, and a commit that returned is on disk. One process at a
time: a lock file refuses a second opener.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import sqlite3
from pathlib import Path
from typing import Callable, Iterator, Optional

from archivas.chain.block import Block
from archivas.chain.encoding import DecodeError
from archivas.chain.ledger import Account

SCHEMA_VERSION = 1
DB_FILE = "chain.sqlite3"
LOCK_FILE = "LOCK"

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
    data BLOB NOT NULL
);
CREATE INDEX blocks_parent ON blocks(parent);
CREATE TABLE main_chain (height INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE accounts (address TEXT PRIMARY KEY, balance INTEGER NOT NULL, nonce INTEGER NOT NULL);
CREATE TABLE undo (hash BLOB PRIMARY KEY, data TEXT NOT NULL);
"""


class StorageError(Exception):
    """The database cannot be used: locked, corrupt, or of another network. One line."""


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


_META_COLUMNS = "hash, height, parent, timestamp, difficulty, weight, segments, score, invalid"


def _meta(row: tuple) -> BlockMeta:
    h, height, parent, ts, diff, weight, segs, score, invalid = row
    return BlockMeta(bytes(h), height, bytes(parent), ts, diff, int(weight), segs, int(score, 16), bool(invalid))


class Storage:
    """`connect` opens the SQLite connection (tests inject a tracing one)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        connect: Callable[..., sqlite3.Connection] = sqlite3.connect,
    ) -> None:
        self.directory = Path(directory)
        self._lock: Optional[int] = None
        self.db: sqlite3.Connection = None  # type: ignore[assignment]
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create database directory {self.directory}: {e.strerror}") from None
        self._lock = self._take_lock()
        path = self.directory / DB_FILE
        try:
            self.db = connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=OFF")
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:
            self.close()
            raise StorageError(f"database {path} is corrupt or not an Archivas database ({e})") from None
        # A new database gets its tables in the same transaction as its genesis block
        # (create_schema), so a process killed while creating it leaves no tables.
        self.fresh = not (tables - {"peer_bans"})  # peer_bans is made below, outside genesis
        if not self.fresh and not {"meta", "blocks", "main_chain", "accounts", "undo"} <= tables:
            self.close()
            raise StorageError(f"database {path} is not an Archivas database (tables missing)")
        self._depth = 0
        try:  # the operator's peer bans (banlist.py): not chain data, made on demand
            self.db.execute("CREATE TABLE IF NOT EXISTS peer_bans "
                            "(subnet TEXT PRIMARY KEY, until REAL NOT NULL, reason TEXT NOT NULL)")
        except sqlite3.DatabaseError as e:
            self.close()
            raise StorageError(f"database {path} is corrupt or read-only ({e})") from None

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

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None  # type: ignore[assignment]
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None  # type: ignore[assignment]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit; nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")
        finally:
            self._depth = 0

    def create_schema(self) -> None:
        """The tables, inside the caller's transaction (no executescript: it commits)."""
        for statement in SCHEMA.split(";"):
            if statement.strip():
                self.db.execute(statement)

    # meta

    def get_meta(self, key: str) -> Optional[str]:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # blocks

    def put_block(self, block: Block, weight: int, score: int) -> None:
        h = block.header
        self.db.execute(
            f"INSERT INTO blocks({_META_COLUMNS}, data) VALUES (?,?,?,?,?,?,?,?,0,?)",
            (h.hash, h.height, h.parent_hash, h.timestamp, h.difficulty, str(weight),
             h.segments, format(score, "x"), block.encode()),
        )

    def has_block(self, block_hash: bytes) -> bool:
        return self.db.execute("SELECT 1 FROM blocks WHERE hash=?", (block_hash,)).fetchone() is not None

    def block_meta(self, block_hash: bytes) -> Optional[BlockMeta]:
        row = self.db.execute(f"SELECT {_META_COLUMNS} FROM blocks WHERE hash=?", (block_hash,)).fetchone()
        return _meta(row) if row else None

    def block(self, block_hash: bytes) -> Optional[Block]:
        row = self.db.execute("SELECT data FROM blocks WHERE hash=?", (block_hash,)).fetchone()
        if row is None:
            return None
        try:
            return Block.from_json(json.loads(row[0]))
        except (ValueError, DecodeError) as e:
            raise StorageError(f"stored block {block_hash.hex()} is corrupt: {e}") from None

    def mark_invalid(self, block_hash: bytes) -> None:
        self.db.execute("UPDATE blocks SET invalid=1 WHERE hash=?", (block_hash,))

    def block_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]

    # main chain

    def main_hash(self, height: int) -> Optional[bytes]:
        row = self.db.execute("SELECT hash FROM main_chain WHERE height=?", (height,)).fetchone()
        return bytes(row[0]) if row else None

    def set_main(self, height: int, block_hash: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO main_chain(height, hash) VALUES (?, ?)", (height, block_hash))

    def delete_main(self, height: int) -> None:
        self.db.execute("DELETE FROM main_chain WHERE height=?", (height,))

    def main_height(self) -> int:
        row = self.db.execute("SELECT MAX(height) FROM main_chain").fetchone()
        return -1 if row[0] is None else row[0]

    # accounts and undo records

    def get_account(self, address: str) -> Optional[Account]:
        row = self.db.execute("SELECT balance, nonce FROM accounts WHERE address=?", (address,)).fetchone()
        return (row[0], row[1]) if row else None

    def set_accounts(self, accounts: dict[str, Optional[Account]]) -> None:
        """Write each account; None deletes it (an address a rolled-back block created)."""
        for address, account in accounts.items():
            if account is None:
                self.db.execute("DELETE FROM accounts WHERE address=?", (address,))
            else:
                self.db.execute(
                    "INSERT OR REPLACE INTO accounts(address, balance, nonce) VALUES (?,?,?)",
                    (address, account[0], account[1]),
                )

    def all_accounts(self) -> dict[str, Account]:
        return {a: (b, n) for a, b, n in self.db.execute("SELECT address, balance, nonce FROM accounts")}

    def put_undo(self, block_hash: bytes, before: dict[str, Optional[Account]]) -> None:
        doc = {a: (list(v) if v is not None else None) for a, v in before.items()}
        self.db.execute("INSERT OR REPLACE INTO undo(hash, data) VALUES (?, ?)", (block_hash, json.dumps(doc)))

    def undo(self, block_hash: bytes) -> dict[str, Optional[Account]]:
        row = self.db.execute("SELECT data FROM undo WHERE hash=?", (block_hash,)).fetchone()
        if row is None:
            raise StorageError(f"undo record of main-chain block {block_hash.hex()} is missing")
        return {a: (tuple(v) if v is not None else None) for a, v in json.loads(row[0]).items()}  # type: ignore[misc]
