"""State snapshots, in the manner of Bitcoin Core's assumeutxo (docs/snapshots.md).

A snapshot is the ledger state (every account) at one main-chain height H, with the last
blocks up to H that a node needs to follow the chain from H at once. `export_snapshot`
writes one from a database (rolling the state back with the stored undo records, in a
temporary copy, when H is below the tip); `read_snapshot` checks a file whole (its
trailer's SHA-256, its blocks' links, its accounts against the state hash of its
manifest); `load_snapshot` makes a new database from a file whose state hash the operator
trusts (pinned in the network parameters, or given with --assume-snapshot).

The state hash (`StateHasher`) is SHA-256 over this text, UTF-8:

    archivas-state-v1\\n
    <network> <genesis hash> <height> <block hash> <cumulative weight>\\n
    <address> <balance> <nonce>\\n        one line per account, ascending by address

hashes in lowercase hex, integers in decimal without leading zeros. It commits to the
block the state belongs to as well as to the accounts, so pinning it pins the height,
block and weight too. A snapshot file's account lines are those account lines, verbatim.

The file, one item a line: the manifest (canonical JSON), the blocks at heights
H-n+1..H (n = min(H, context_depth), each its canonical JSON as stored), the accounts,
then the trailer `{"sha256": "<hex>"}`: the SHA-256 of every byte before it.

Pure and synchronous: no reactor here. Every failure is a SnapshotError with one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import sqlite3
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Optional

from archivas.chain import forkchoice
from archivas.chain.block import Block, genesis_block
from archivas.chain.consensus import BlockRejected, bind_body, check_header, context_depth
from archivas.chain.encoding import MAX_INT, DecodeError, canonical_json, strict_hex, strict_loads
from archivas.chain.params import NetworkParams
from archivas.chain.storage import DB_FILE, SCHEMA_VERSION, Storage, StorageError

FORMAT = "archivas-snapshot"
VERSION = 1
STATE_DOMAIN = b"archivas-state-v1\n"

# Limits read at load (docs/snapshots.md): a file or a count above them is refused before
# anything is built from it.
MAX_FILE_BYTES = 8 * 1024**3  # 8 GiB: about 90 million accounts
MAX_ACCOUNTS = 50_000_000
MAX_MANIFEST_BYTES = 4096
MAX_ACCOUNT_LINE = 256  # an account line is about 70 bytes
ACCOUNT_BATCH = 10_000  # accounts written at once while loading
_ACCOUNT = re.compile(rb"(arcv1[02-9ac-hj-np-z]{38}) (0|[1-9][0-9]{0,18}) (0|[1-9][0-9]{0,18})")

# Meta rows of a database made from a snapshot (docs/snapshots.md).
SNAPSHOT_META = "snapshot"  # the manifest, JSON
BASE_META = "snapshot_height"  # H: the main chain at and below it is fixed
HISTORY_META = "history_validated"  # set by verify-history: {height, stateHash, at}
HISTORY_FAILED_META = "history_failed"  # set by verify-history: the one-line error (the node will not start)


class SnapshotError(Exception):
    """A snapshot cannot be written or loaded. One line, for the operator."""


@dataclasses.dataclass(frozen=True)
class Manifest:
    network: str
    genesis: bytes
    height: int
    block_hash: bytes
    weight: int
    state_hash: bytes
    accounts: int
    blocks: int

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "network": self.network, "genesis": self.genesis.hex(),
                "height": self.height, "blockHash": self.block_hash.hex(), "weight": self.weight,
                "stateHash": self.state_hash.hex(), "accounts": self.accounts, "blocks": self.blocks}

    @classmethod
    def from_json(cls, doc: Any) -> "Manifest":
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise DecodeError("not an Archivas snapshot")
        if doc.get("version") != VERSION:
            raise DecodeError(f"snapshot format version {doc.get('version')!r}, this Archivas reads {VERSION}")

        def number(name: str) -> int:
            value = doc.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
                raise DecodeError(f"manifest field {name!r} must be a non-negative integer")
            return value

        def digest(name: str) -> bytes:
            value = doc.get(name)
            if not isinstance(value, str) or len(value) != 64:
                raise DecodeError(f"manifest field {name!r} must be 64 hex digits")
            return strict_hex(value, name)

        network = doc.get("network")
        if not isinstance(network, str) or not network:
            raise DecodeError("manifest field 'network' must be a name")
        return cls(network, digest("genesis"), number("height"), digest("blockHash"), number("weight"),
                   digest("stateHash"), number("accounts"), number("blocks"))


class StateHasher:
    """The state hash (module docstring), fed accounts in ascending address order."""

    def __init__(self, network: str, genesis: bytes, height: int, block_hash: bytes, weight: int) -> None:
        self._h = hashlib.sha256(STATE_DOMAIN)
        self._h.update(f"{network} {genesis.hex()} {height} {block_hash.hex()} {weight}\n".encode())
        self._last: Optional[str] = None
        self.count = 0

    def add(self, address: str, balance: int, nonce: int) -> None:
        if self._last is not None and address <= self._last:
            raise ValueError(f"account {address} is out of order (after {self._last})")
        self._last = address
        self.count += 1
        self._h.update(f"{address} {balance} {nonce}\n".encode())

    def digest(self) -> bytes:
        return self._h.digest()


def state_hash_at_tip(storage: Storage, params: NetworkParams) -> bytes:
    """The state hash of a database at its tip."""
    tip_hex = storage.get_meta("tip") or ""
    meta = storage.block_meta(bytes.fromhex(tip_hex))
    if meta is None:
        raise SnapshotError(f"database {storage.directory} has no tip")
    hasher = StateHasher(params.name, genesis_block(params).hash, meta.height, meta.hash, meta.weight)
    accounts = storage.all_accounts()
    for address in sorted(accounts):
        hasher.add(address, *accounts[address])
    return hasher.digest()


# export


@contextlib.contextmanager
def _copy_of(db_dir: Path, near: Path) -> Iterator[Path]:
    """A consistent copy of the database (SQLite's online backup: the live one may be in
    use by a running node, and is only read), in a temporary directory next to `near`."""
    source = db_dir / DB_FILE
    if not source.is_file():
        raise SnapshotError(f"no database at {db_dir} ({DB_FILE} is missing)")
    with tempfile.TemporaryDirectory(prefix=".snapshot-", dir=near) as tmp:
        try:
            live = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
            try:
                copy = sqlite3.connect(Path(tmp) / DB_FILE)
                try:
                    live.backup(copy)
                finally:
                    copy.close()
            finally:
                live.close()
        except sqlite3.DatabaseError as e:
            raise SnapshotError(f"cannot read database {source}: {e}") from None
        yield Path(tmp)


def export_snapshot(db_dir: str | os.PathLike[str], params: NetworkParams, height: int,
                    out: str | os.PathLike[str]) -> tuple[Manifest, bytes]:
    """Write the snapshot at main-chain `height` to `out` (atomically: a temporary file
    renamed); returns its manifest and the SHA-256 of its content (its trailer's)."""
    from archivas.chain.blockchain import Chain

    out_path = Path(out)
    parent = out_path.parent if str(out_path.parent) else Path(".")
    if not parent.is_dir():
        raise SnapshotError(f"cannot write {out_path}: {parent} is not a directory")
    with _copy_of(Path(db_dir), parent) as copy_dir:
        try:
            chain = Chain.open(copy_dir, params)
        except StorageError as e:
            raise SnapshotError(str(e).replace(str(copy_dir), str(db_dir))) from None
        try:
            manifest, blocks, accounts = _state_at(chain, height)
        finally:
            chain.close()
    tmp = out_path.with_name(out_path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            digest = _write(f, manifest, blocks, accounts)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise SnapshotError(f"cannot write {out_path}: {e.strerror}") from None
    return manifest, digest


def _state_at(chain: Any, height: int) -> tuple[Manifest, list[bytes], dict[str, tuple[int, int]]]:
    """In the (temporary) copy: roll the state back to `height` with the undo records."""
    s: Storage = chain.storage
    params: NetworkParams = chain.params
    tip = chain.tip
    base = int(s.get_meta(BASE_META) or 0)
    if height < 1:
        raise SnapshotError("a snapshot is of a height of at least 1 (genesis is every node's already)")
    if height > tip.height:
        raise SnapshotError(f"height {height} is above the tip ({tip.height})")
    if height < base:
        raise SnapshotError(f"height {height} is below the snapshot this database was loaded from ({base}): "
                            "its state there is not stored")
    with s.transaction():
        for h in range(tip.height, height, -1):
            block_hash = s.main_hash(h)
            assert block_hash is not None
            s.set_accounts(s.undo(block_hash))
            s.delete_main(h)
    block_hash = s.main_hash(height)
    meta = s.block_meta(block_hash) if block_hash is not None else None
    if meta is None:
        raise SnapshotError(f"the main-chain block at height {height} is missing")
    first = max(1, height - context_depth(params) + 1)
    blocks = []
    for h in range(first, height + 1):
        at = s.main_hash(h)
        raw = s.block_bytes(at) if at is not None else None
        if raw is None:
            raise SnapshotError(f"the main-chain block at height {h} is missing")
        blocks.append(raw)
    accounts = s.all_accounts()
    hasher = StateHasher(params.name, chain.genesis.hash, height, meta.hash, meta.weight)
    for address in sorted(accounts):
        hasher.add(address, *accounts[address])
    manifest = Manifest(params.name, chain.genesis.hash, height, meta.hash, meta.weight, hasher.digest(),
                        len(accounts), len(blocks))
    return manifest, blocks, accounts


def _write(f: IO[bytes], manifest: Manifest, blocks: list[bytes],
           accounts: dict[str, tuple[int, int]]) -> bytes:
    digest = hashlib.sha256()

    def line(data: bytes) -> None:
        digest.update(data + b"\n")
        f.write(data + b"\n")

    line(canonical_json(manifest.to_json()))
    for raw in blocks:
        line(raw)
    for address in sorted(accounts):
        balance, nonce = accounts[address]
        line(f"{address} {balance} {nonce}".encode())
    f.write(canonical_json({"sha256": digest.hexdigest()}) + b"\n")
    return digest.digest()


# reading and loading


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A file checked whole: its manifest, its blocks (ascending, the last is H), the
    SHA-256 of its content, and where its account lines start."""

    path: Path
    manifest: Manifest
    blocks: tuple[Block, ...]
    digest: bytes
    accounts_offset: int


class _Reader:
    """Lines of a snapshot file, each bounded, hashed as they are read."""

    def __init__(self, f: IO[bytes], name: str) -> None:
        self.f = f
        self.name = name
        self.digest = hashlib.sha256()
        self.offset = 0

    def line(self, limit: int, what: str) -> bytes:
        data = self.f.readline(limit + 1)
        if not data.endswith(b"\n"):
            if len(data) > limit:
                raise SnapshotError(f"snapshot {self.name}: {what} is longer than {limit} bytes")
            raise SnapshotError(f"snapshot {self.name} is truncated (in {what})")
        self.digest.update(data)
        self.offset += len(data)
        return data[:-1]


def _json(reader: _Reader, data: bytes, what: str) -> Any:
    try:
        return strict_loads(data)
    except (ValueError, RecursionError) as e:
        raise SnapshotError(f"snapshot {reader.name}: {what} is not valid JSON ({e})") from None


def _account(reader: _Reader, data: bytes, index: int) -> tuple[str, int, int]:
    """`<address> <balance> <nonce>`: the address's shape (a bech32 checksum would cost
    0.1 ms an account, hours for millions; the SHA-256s cover every byte), decimal
    integers without leading zeros, at most MAX_INT."""
    match = _ACCOUNT.fullmatch(data)
    if match is None or int(match[2]) > MAX_INT or int(match[3]) > MAX_INT:
        raise SnapshotError(f"snapshot {reader.name}: account line {index + 1} is not <address> <balance> <nonce>")
    return match[1].decode(), int(match[2]), int(match[3])


def read_snapshot(path: str | os.PathLike[str], params: NetworkParams) -> Snapshot:
    """Check a snapshot file whole (streaming: memory holds its blocks, not its accounts):
    size, manifest, network and genesis, blocks and their links to H, every account (the
    state hash of the manifest), the trailer's SHA-256 of the content."""
    p = Path(path)
    name = str(p)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise SnapshotError(f"cannot read snapshot {name}: {e.strerror}") from None
    if size > MAX_FILE_BYTES:
        raise SnapshotError(f"snapshot {name} has {size} bytes, more than the {MAX_FILE_BYTES} this node loads")
    try:
        with open(p, "rb") as f:
            return _read(f, p, params)
    except OSError as e:
        raise SnapshotError(f"cannot read snapshot {name}: {e.strerror}") from None


def _read(f: IO[bytes], p: Path, params: NetworkParams) -> Snapshot:
    reader = _Reader(f, str(p))
    name = reader.name
    try:
        first_line = reader.line(MAX_MANIFEST_BYTES, "the manifest")
        manifest = Manifest.from_json(_json(reader, first_line, "the manifest"))
    except DecodeError as e:
        raise SnapshotError(f"snapshot {name}: {e}") from None
    genesis = genesis_block(params).hash
    if manifest.network != params.name or manifest.genesis != genesis:
        raise SnapshotError(f"snapshot {name} is of network {manifest.network} (genesis "
                            f"{manifest.genesis.hex()[:16]}), not {params.name} (genesis {genesis.hex()[:16]})")
    if manifest.height < 1:
        raise SnapshotError(f"snapshot {name} is of height 0")
    want_blocks = min(manifest.height, context_depth(params))
    if manifest.blocks != want_blocks:
        raise SnapshotError(f"snapshot {name} carries {manifest.blocks} blocks, not the {want_blocks} "
                            f"a snapshot at height {manifest.height} carries")
    if manifest.accounts > MAX_ACCOUNTS:
        raise SnapshotError(f"snapshot {name} has {manifest.accounts} accounts, more than the {MAX_ACCOUNTS} "
                            "this node loads")
    blocks: list[Block] = []
    first = manifest.height - manifest.blocks + 1
    for i in range(manifest.blocks):
        height = first + i
        raw = reader.line(params.max_block_bytes, f"the block at height {height}")
        try:
            block = Block.from_json(_json(reader, raw, f"the block at height {height}"),
                                    params.max_block_transactions, params.max_vdf_segments, allow_allocation=False)
            bind_body(block, params)
        except (DecodeError, BlockRejected) as e:
            raise SnapshotError(f"snapshot {name}: the block at height {height} is malformed ({e})") from None
        if block.encode() != raw or block.height != height:
            raise SnapshotError(f"snapshot {name}: the block at height {height} is not in canonical form or order")
        parent = blocks[-1].hash if blocks else (genesis if height == 1 else None)
        if parent is not None and block.header.parent_hash != parent:
            raise SnapshotError(f"snapshot {name}: the block at height {height} does not follow the one before it")
        blocks.append(block)
    if blocks[-1].hash != manifest.block_hash:
        raise SnapshotError(f"snapshot {name}: its last block is {blocks[-1].hash.hex()}, "
                            f"its manifest names {manifest.block_hash.hex()}")
    accounts_offset = reader.offset
    hasher = StateHasher(params.name, genesis, manifest.height, manifest.block_hash, manifest.weight)
    for i in range(manifest.accounts):
        address, balance, nonce = _account(reader, reader.line(MAX_ACCOUNT_LINE, f"account line {i + 1}"), i)
        try:
            hasher.add(address, balance, nonce)
        except ValueError as e:
            raise SnapshotError(f"snapshot {name}: {e}") from None
    content = reader.digest.digest()
    trailer = f.readline(MAX_MANIFEST_BYTES + 1)
    try:
        stated = strict_hex(strict_loads(trailer)["sha256"])
    except (ValueError, KeyError, TypeError, RecursionError):
        raise SnapshotError(f"snapshot {name} is truncated or damaged: its last line is not its SHA-256 "
                            "trailer") from None
    if f.read(1):
        raise SnapshotError(f"snapshot {name} has more lines than its manifest counts")
    if stated != content:
        raise SnapshotError(f"snapshot {name} is damaged: its content hashes to {content.hex()}, "
                            f"its trailer says {stated.hex()}")
    if hasher.digest() != manifest.state_hash:
        raise SnapshotError(f"snapshot {name}: its accounts hash to {hasher.digest().hex()}, not the state hash "
                            f"{manifest.state_hash.hex()} of its manifest")
    return Snapshot(p, manifest, tuple(blocks), content, accounts_offset)


def check_trusted(snapshot: Snapshot, params: NetworkParams, assume: Optional[str]) -> None:
    """The snapshot's state hash must be the one the operator trusts: given with
    --assume-snapshot, else pinned in the network parameters (assumeSnapshot)."""
    m = snapshot.manifest
    name = str(snapshot.path)
    if assume is not None:
        try:
            wanted = strict_hex(assume.strip().lower())
        except DecodeError:
            wanted = b""
        if len(wanted) != 32:
            raise SnapshotError(f"--assume-snapshot {assume!r} is not a state hash (64 hex digits)")
        if m.state_hash != wanted:
            raise SnapshotError(f"snapshot {name} has state hash {m.state_hash.hex()}, not the {wanted.hex()} "
                                "given with --assume-snapshot: refused")
        return
    pinned = params.assume_snapshot
    if pinned is None:
        raise SnapshotError(f"no snapshot is pinned for network {params.name}: give --assume-snapshot HASH with "
                            "a state hash from a source you trust")
    if (m.height, m.state_hash) != pinned:
        raise SnapshotError(f"snapshot {name} (height {m.height}, state hash {m.state_hash.hex()}) is not the one "
                            f"pinned for network {params.name} (height {pinned[0]}, state hash {pinned[1].hex()}): "
                            "refused")


def _check_empty(db_dir: Path) -> None:
    path = db_dir / DB_FILE
    if not path.exists():
        return
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            height = db.execute("SELECT MAX(height) FROM main_chain").fetchone()[0] if "main_chain" in tables else None
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise SnapshotError(f"database {path} exists and is not empty ({e}): load a snapshot into a new "
                            "--db directory") from None
    if tables - {"peer_bans"}:
        raise SnapshotError(f"database {db_dir} is not empty (it holds a chain at height {height}): load a snapshot "
                            "into a new --db directory")


def load_snapshot(path: str | os.PathLike[str], db_dir: str | os.PathLike[str], params: NetworkParams,
                  assume: Optional[str] = None) -> Manifest:
    """Make a new database in `db_dir` holding the state at the snapshot's height. Every
    check is made before the database is created: a refused file leaves it untouched."""
    directory = Path(db_dir)
    snapshot = read_snapshot(path, params)
    check_trusted(snapshot, params, assume)
    _check_empty(directory)
    scores = _scores(snapshot, params)
    try:
        storage = Storage(directory)
    except StorageError as e:
        raise SnapshotError(str(e)) from None
    try:
        if not storage.fresh:
            raise SnapshotError(f"database {directory} is not empty: load a snapshot into a new --db directory")
        _store(storage, snapshot, params, scores)
    finally:
        storage.close()
    return snapshot.manifest


def _scores(snapshot: Snapshot, params: NetworkParams) -> list[int]:
    """Each block's proof-of-space score, its proofs checked on the way (those whose parent
    the file carries; the oldest of a snapshot above the context depth has its score left
    0: a score only breaks ties between tips, and no tip is ever at that height again)."""
    genesis = genesis_block(params)
    out = []
    for i, block in enumerate(snapshot.blocks):
        parent = snapshot.blocks[i - 1].header if i else (genesis.header if block.height == 1 else None)
        if parent is None:
            out.append(0)
            continue
        try:
            out.append(check_header(block.header, parent, params))
        except BlockRejected as e:
            raise SnapshotError(f"snapshot {snapshot.path}: the block at height {block.height} is invalid "
                                f"({e})") from None
    return out


def _accounts(f: IO[bytes], reader: _Reader, count: int) -> Iterable[list[tuple[str, int, int]]]:
    """The account lines again (checked by read_snapshot; the caller checks they are the
    same bytes), in batches."""
    batch: list[tuple[str, int, int]] = []
    for i in range(count):
        address, balance, nonce = reader.line(MAX_ACCOUNT_LINE, f"account line {i + 1}").split(b" ")
        batch.append((address.decode(), int(balance), int(nonce)))
        if len(batch) >= ACCOUNT_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _store(storage: Storage, snapshot: Snapshot, params: NetworkParams, scores: list[int]) -> None:
    m = snapshot.manifest
    genesis = genesis_block(params)
    weights = []
    weight = m.weight
    for block in reversed(snapshot.blocks):
        weights.append(weight)
        weight -= forkchoice.block_weight(block.header.difficulty, block.header.vdf_iterations)
    weights.reverse()
    genesis_weight = forkchoice.block_weight(genesis.header.difficulty, genesis.header.vdf_iterations)
    from_genesis = bool(snapshot.blocks) and snapshot.blocks[0].height == 1
    if weight < genesis_weight or (from_genesis and weight != genesis_weight):
        raise SnapshotError(f"snapshot {snapshot.path}: weight {m.weight} does not match its blocks' weights")
    with storage.transaction():
        storage.create_schema()
        storage.set_meta("schema", str(SCHEMA_VERSION))
        storage.set_meta("network", params.name)
        storage.set_meta("genesis", genesis.hash.hex())
        storage.put_block(genesis, genesis_weight, 0)
        storage.set_main(0, genesis.hash)
        for block, block_weight, score in zip(snapshot.blocks, weights, scores):
            storage.put_block(block, block_weight, score)
            storage.set_main(block.height, block.hash)
        # The accounts again, from the file: the bytes must be those checked (the whole
        # content hashes to the same SHA-256), else the transaction rolls back.
        with open(snapshot.path, "rb") as f:
            reader = _Reader(f, str(snapshot.path))
            reader.digest.update(_prefix(f, snapshot.accounts_offset))
            for batch in _accounts(f, reader, m.accounts):  # to the table at once, not held in memory
                storage.load_accounts(batch)
            if reader.digest.digest() != snapshot.digest:
                raise SnapshotError(f"snapshot {snapshot.path} changed while it was loaded")
        storage.set_meta("tip", m.block_hash.hex())
        storage.set_meta(SNAPSHOT_META, json.dumps(m.to_json(), sort_keys=True))
        storage.set_meta(BASE_META, str(m.height))


def _prefix(f: IO[bytes], length: int) -> bytes:
    data = f.read(length)
    if len(data) != length:
        raise SnapshotError("snapshot changed while it was loaded")
    return data


def stored_manifest(storage: Storage) -> Optional[Manifest]:
    """The manifest of the snapshot a database was loaded from (None: synced from genesis)."""
    text = storage.get_meta(SNAPSHOT_META)
    if text is None:
        return None
    try:
        return Manifest.from_json(json.loads(text))
    except (ValueError, DecodeError) as e:
        raise storage.error(f"its snapshot manifest does not decode: {e}") from None


def history_validated(storage: Storage) -> Optional[dict[str, Any]]:
    """What verify-history recorded ({height, stateHash, at}), or None."""
    text = storage.get_meta(HISTORY_META)
    return None if text is None else dict(json.loads(text))


def history_failed(storage: Storage) -> Optional[str]:
    """The one-line error verify-history recorded when the history did not reproduce the
    snapshot's state, or None: a database with it is not opened by a node."""
    return storage.get_meta(HISTORY_FAILED_META)
