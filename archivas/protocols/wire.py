"""The wire format: one JSON object a line, `{"type": N, "payload": {...}}`.

Decoding has two steps, so that a message is parsed only once it may be acted on:
`decode_envelope` reads the JSON (strictly: no NaN, no duplicate keys) and the type;
`parse` turns the payload into a typed, validated value. A bad line raises `WireError`
with a short, stable reason. Types 1-7 are the seed protocol (SPEC §2); the original Go
project's later numbers (0, 8-14) keep their meaning; Archivas-only extensions are 100 and
up (docs/protocol.md has the whole table).

Hash fields of the seed messages are read as 64 lowercase hex characters or, as the Go
implementation writes a `[32]byte`, as an array of 32 integers 0-255; `encode` writes them
in the style asked for (hex unless the peer is a seed peer that uses arrays).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Any, ClassVar, Optional

from archivas.chain.block import Block, Header
from archivas.chain.encoding import (
    MAX_INT,
    DecodeError,
    canonical_json,
    field,
    hex_field,
    sha256,
    str_field,
    strict_hex,
    strict_loads,
)
from archivas.chain.params import NetworkParams
from archivas.chain.transactions import InvalidTransaction, Transaction
from archivas.chain.vdf import FORM_SIZE, Segment

# 2: the extensions moved to the original project's numbers and to 100+ (1 used 8-17);
# HELLO carries a node key and nonce, proved by HELLO_ACK.
PROTOCOL_VERSION = 2
MAX_BATCH = 64  # blocks in one BLOCKS_BATCH reply (and at most node.MAX_BLOCKS_REPLY_BYTES)
MAX_HASHES = 512
MAX_PEERS_LISTED = 64
MAX_LOCATOR = 64  # hashes in a GET_HEADERS locator
MAX_HEADERS = 2000  # headers in one HEADERS reply (and at most node.MAX_HEADERS_REPLY_BYTES)
MAX_BODIES = 64  # bodies asked for in one GET_BODIES (and at most node.MAX_BLOCKS_REPLY_BYTES)
MAX_INV = 1000  # transfer ids in one INV or REQ (Bitcoin's is 50,000; ours come in 2 s batches)
MAX_RES = 1000  # transfers in one RES (and at most node.MAX_RES_BYTES)
SHORT_ID_BYTES = 6  # a compact block's transfer ids, as BIP152's
# INV and REQ name a transfer by the first 16 bytes of its id: 22 base64 characters where
# the whole id takes 43 (inventory is most of a node's traffic). Making a transfer that
# shares another's 16 bytes is a second preimage on 128 bits, out of reach; two made to
# collide with each other (2^64 work) only slow the maker's own transfers.
INV_ID_BYTES = 16

HEX = "hex"
ARRAY = "array"  # a [32]byte as Go's encoding/json writes it

# The original project's numbers for messages we do not have: read, never acted on, never
# penalised (SPEC §2). 0 HANDSHAKE. (9 INV, 10 REQ and 11 RES are ours now, for transfer
# inventory, under capability "inv": a peer that did not announce it is not read for them.)
RESERVED_TYPES = frozenset({0})
SEED_TYPES = frozenset(range(1, 8))


class WireError(ValueError):
    """A line that is not a valid message; `reason` is short and stable for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Limits:
    """List lengths a peer may send, from the consensus limits of the node's network."""

    max_block_transactions: int = 2000
    max_vdf_segments: int = 1024

    @classmethod
    def from_params(cls, params: NetworkParams) -> "Limits":
        return cls(params.max_block_transactions, params.max_vdf_segments)


DEFAULT_LIMITS = Limits()


def _timestamp(obj: dict[str, Any], name: str) -> int | float:
    """Unix seconds: a non-negative integer (as Go writes it) or a finite number."""
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_INT:
        raise DecodeError(f"field {name!r} must be a non-negative number")
    return value


def read_hash(obj: dict[str, Any], name: str) -> tuple[bytes, str]:
    """A 32-byte hash in either encoding, and which one it was."""
    if name not in obj:
        raise DecodeError(f"missing field {name!r}")
    value = obj[name]
    if isinstance(value, str):
        if len(value) != 64:
            raise DecodeError(f"field {name!r} must be 32 bytes of hex")
        return strict_hex(value, name), HEX
    if (isinstance(value, list) and len(value) == 32
            and all(type(v) is int and 0 <= v <= 255 for v in value)):
        return bytes(value), ARRAY
    raise DecodeError(f"field {name!r} must be 64 hex characters or 32 integers 0-255")


def write_hash(value: bytes, style: str) -> Any:
    return list(value) if style == ARRAY else value.hex()


def _optional(obj: dict[str, Any], name: str, kind: type) -> Any:
    return field(obj, name, kind) if name in obj else None


@dataclasses.dataclass(frozen=True)
class Message:
    TYPE: ClassVar[int] = -1
    NAME: ClassVar[str] = ""
    CAPABILITY: ClassVar[Optional[str]] = None  # None: a seed message, for anyone

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {}

    def payload_json(self, style: str = HEX) -> bytes:
        """The payload's canonical JSON (what encode writes)."""
        return canonical_json(self.payload(style))

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "Message":
        return cls()


@dataclasses.dataclass(frozen=True)
class _Timestamped(Message):
    timestamp: int | float

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"timestamp": self.timestamp}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "_Timestamped":
        return cls(_timestamp(payload, "timestamp"))


@dataclasses.dataclass(frozen=True)
class Ping(_Timestamped):
    TYPE: ClassVar[int] = 1
    NAME: ClassVar[str] = "PING"


@dataclasses.dataclass(frozen=True)
class Pong(_Timestamped):
    TYPE: ClassVar[int] = 2
    NAME: ClassVar[str] = "PONG"


@dataclasses.dataclass(frozen=True)
class NewBlock(Message):
    TYPE: ClassVar[int] = 3
    NAME: ClassVar[str] = "NEW_BLOCK"
    height: int
    hash: bytes
    hash_style: str = dataclasses.field(default=HEX, compare=False)  # as the sender wrote it

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"height": self.height, "hash": write_hash(self.hash, style)}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "NewBlock":
        block_hash, style = read_hash(payload, "hash")
        return cls(field(payload, "height", int), block_hash, style)


@dataclasses.dataclass(frozen=True)
class GetBlock(Message):
    TYPE: ClassVar[int] = 4
    NAME: ClassVar[str] = "GET_BLOCK"
    height: int

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"height": self.height}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "GetBlock":
        return cls(field(payload, "height", int))


def _block(obj: Any, limits: Limits) -> Block:
    try:
        return Block.from_json(obj, max_transactions=limits.max_block_transactions,
                               max_segments=limits.max_vdf_segments, allow_allocation=False)
    except DecodeError as e:
        raise DecodeError(f"block: {e}") from None


@dataclasses.dataclass(frozen=True)
class BlockData(Message):
    TYPE: ClassVar[int] = 5
    NAME: ClassVar[str] = "BLOCK_DATA"
    height: int
    block: Block

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"height": self.height, "blockData": self.block.to_json()}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "BlockData":
        height = field(payload, "height", int)
        block = _block(field(payload, "blockData", dict), limits)
        if block.height != height:
            raise DecodeError(f"blockData is at height {block.height}, not {height}")
        return cls(height, block)


@dataclasses.dataclass(frozen=True)
class GetStatus(Message):
    TYPE: ClassVar[int] = 6
    NAME: ClassVar[str] = "GET_STATUS"


@dataclasses.dataclass(frozen=True)
class Status(Message):
    """The seed's three fields, plus what an Archivas node adds (readers ignore extras)."""

    TYPE: ClassVar[int] = 7
    NAME: ClassVar[str] = "STATUS"
    height: int
    difficulty: int
    tip_hash: bytes
    weight: Optional[int] = None
    genesis_hash: Optional[bytes] = None
    network: Optional[str] = None
    version: Optional[int] = None
    capabilities: tuple[str, ...] = ()
    hash_style: str = dataclasses.field(default=HEX, compare=False)

    def payload(self, style: str = HEX) -> dict[str, Any]:
        doc: dict[str, Any] = {"height": self.height, "difficulty": self.difficulty,
                               "tipHash": write_hash(self.tip_hash, style)}
        if self.weight is not None:
            doc["weight"] = self.weight
        if self.genesis_hash is not None:
            doc["genesisHash"] = write_hash(self.genesis_hash, style)
        if self.network is not None:
            doc["network"] = self.network
        if self.version is not None:
            doc["version"] = self.version
        if self.capabilities:
            doc["capabilities"] = list(self.capabilities)
        return doc

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "Status":
        tip_hash, style = read_hash(payload, "tipHash")
        return cls(
            height=field(payload, "height", int),
            difficulty=field(payload, "difficulty", int),
            tip_hash=tip_hash,
            weight=_optional(payload, "weight", int),
            genesis_hash=read_hash(payload, "genesisHash")[0] if "genesisHash" in payload else None,
            network=str_field(payload, "network", 32) if "network" in payload else None,
            version=_optional(payload, "version", int),
            capabilities=_capabilities(payload) if "capabilities" in payload else (),
            hash_style=style,
        )


def _capabilities(payload: dict[str, Any]) -> tuple[str, ...]:
    caps = field(payload, "capabilities", list)
    if len(caps) > 32 or not all(isinstance(c, str) and len(c) <= 32 for c in caps):
        raise DecodeError("capabilities must be a short list of short strings")
    return tuple(caps)


# Extensions on the original project's numbers (SPEC §2), with its field names.


@dataclasses.dataclass(frozen=True)
class Peers(Message):
    """GOSSIP_PEERS: listening addresses of peers (the original's `addrs`, `seenAt`,
    `netId`; ours are `host:port`)."""

    TYPE: ClassVar[int] = 8
    NAME: ClassVar[str] = "GOSSIP_PEERS"
    CAPABILITY: ClassVar[Optional[str]] = "peers"
    addresses: tuple[str, ...]
    seen_at: int = 0
    net_id: str = ""

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"addrs": list(self.addresses), "seenAt": self.seen_at, "netId": self.net_id}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "Peers":
        raw = field(payload, "addrs", list)
        if len(raw) > MAX_PEERS_LISTED or not all(isinstance(a, str) and len(a) <= 270 for a in raw):
            raise DecodeError(f"addrs must be at most {MAX_PEERS_LISTED} host:port strings")
        return cls(tuple(raw), _optional(payload, "seenAt", int) or 0,
                   str_field(payload, "netId", 64) if "netId" in payload else "")


@dataclasses.dataclass(frozen=True)
class NewTransaction(Message):
    """TX_BROADCAST: a transfer (`txData`) and its id (`txHash`), which must match."""

    TYPE: ClassVar[int] = 12
    NAME: ClassVar[str] = "TX_BROADCAST"
    CAPABILITY: ClassVar[Optional[str]] = "tx"
    tx: Transaction

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"txHash": self.tx.hash.hex(), "txData": self.tx.to_json()}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "NewTransaction":
        claimed = hex_field(payload, "txHash", 32)
        try:
            tx = Transaction.from_json(field(payload, "txData", dict))
        except InvalidTransaction as e:
            raise DecodeError(f"txData: {e}") from None
        if tx.hash != claimed:
            raise DecodeError("txHash is not the id of txData")
        return cls(tx)


@dataclasses.dataclass(frozen=True)
class GetBlocks(Message):
    """REQUEST_BLOCKS: main-chain blocks from `fromHeight`, at most `maxBlocks` (1..64)."""

    TYPE: ClassVar[int] = 13
    NAME: ClassVar[str] = "REQUEST_BLOCKS"
    CAPABILITY: ClassVar[Optional[str]] = "blocks"
    start: int
    count: int

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"fromHeight": self.start, "maxBlocks": self.count}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "GetBlocks":
        count = field(payload, "maxBlocks", int)
        if not 1 <= count <= MAX_BATCH:
            raise DecodeError(f"maxBlocks must be 1..{MAX_BATCH}")
        return cls(field(payload, "fromHeight", int), count)


@dataclasses.dataclass(frozen=True)
class Blocks(Message):
    """BLOCKS_BATCH: consecutive main-chain blocks from `fromHeight` (may be fewer than
    asked, empty above the tip); `tipHeight` is the sender's height, `eof` true when the
    batch ends at its tip."""

    TYPE: ClassVar[int] = 14
    NAME: ClassVar[str] = "BLOCKS_BATCH"
    CAPABILITY: ClassVar[Optional[str]] = "blocks"
    start: int
    blocks: tuple[Block, ...]
    tip_height: int = 0
    eof: bool = False

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"fromHeight": self.start, "count": len(self.blocks),
                "blocks": [b.to_json() for b in self.blocks], "tipHeight": self.tip_height,
                "eof": self.eof}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "Blocks":
        start = field(payload, "fromHeight", int)
        raw = field(payload, "blocks", list)
        if len(raw) > MAX_BATCH:
            raise DecodeError(f"more than {MAX_BATCH} blocks")
        if "count" in payload and field(payload, "count", int) != len(raw):
            raise DecodeError("count is not the number of blocks")
        eof = payload.get("eof", False)
        if not isinstance(eof, bool):
            raise DecodeError("field 'eof' must be a boolean")
        blocks = tuple(_block(b, limits) for b in raw)
        for i, block in enumerate(blocks):
            if block.height != start + i:
                raise DecodeError(f"block {i} is at height {block.height}, not {start + i}")
        return cls(start, blocks, _optional(payload, "tipHeight", int) or 0, eof)


# Archivas-only extensions: 100 and up.


@dataclasses.dataclass(frozen=True)
class Hello(Message):
    """The handshake, sent once a peer's STATUS showed it speaks the extensions: the
    node's public key (its id is sha256 of it), a fresh nonce for this connection, and
    what it offers. The other side proves its key with HELLO_ACK."""

    TYPE: ClassVar[int] = 100
    NAME: ClassVar[str] = "HELLO"
    CAPABILITY: ClassVar[Optional[str]] = "hello"
    network: str
    genesis_hash: bytes
    protocol_version: int
    node_key: bytes
    nonce: bytes
    listen_port: int  # 0: not listening
    capabilities: tuple[str, ...]
    block_relay_only: bool = False  # this connection carries blocks only (no transfers or addresses)
    tls_fingerprint: Optional[bytes] = None  # sha256 of the TLS certificate it presents (TLS only)

    @property
    def node_id(self) -> bytes:
        return sha256(self.node_key)

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {
            "network": self.network,
            "genesisHash": self.genesis_hash.hex(),
            "protocolVersion": self.protocol_version,
            "nodeKey": self.node_key.hex(),
            "nodeId": self.node_id.hex(),
            "nonce": self.nonce.hex(),
            "listenPort": self.listen_port,
            "capabilities": list(self.capabilities),
            "blockRelayOnly": self.block_relay_only,
            **({"tlsCert": self.tls_fingerprint.hex()} if self.tls_fingerprint is not None else {}),
        }

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "Hello":
        port = field(payload, "listenPort", int)
        if port > 65535:
            raise DecodeError("listenPort above 65535")
        relay_only = payload.get("blockRelayOnly", False)
        if not isinstance(relay_only, bool):
            raise DecodeError("field 'blockRelayOnly' must be a boolean")
        hello = cls(
            network=str_field(payload, "network", 32),
            genesis_hash=hex_field(payload, "genesisHash", 32),
            protocol_version=field(payload, "protocolVersion", int),
            node_key=hex_field(payload, "nodeKey", 32),
            nonce=hex_field(payload, "nonce", 32),
            listen_port=port,
            capabilities=_capabilities(payload),
            block_relay_only=relay_only,
            tls_fingerprint=hex_field(payload, "tlsCert", 32) if "tlsCert" in payload else None,
        )
        if "nodeId" in payload and hex_field(payload, "nodeId", 32) != hello.node_id:
            raise DecodeError("nodeId is not sha256(nodeKey)")
        return hello


@dataclasses.dataclass(frozen=True)
class HelloAck(Message):
    """The proof of a HELLO's key: a signature over the other side's nonce (see
    archivas/protocols/identity.py)."""

    TYPE: ClassVar[int] = 106
    NAME: ClassVar[str] = "HELLO_ACK"
    CAPABILITY: ClassVar[Optional[str]] = "hello"
    signature: bytes

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"signature": self.signature.hex()}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "HelloAck":
        return cls(hex_field(payload, "signature", 64))


@dataclasses.dataclass(frozen=True)
class VdfOutput(Message):
    """Timelord output: segment `index` (1-based) of the VDF on `parent_hash`."""

    TYPE: ClassVar[int] = 101
    NAME: ClassVar[str] = "VDF_OUTPUT"
    CAPABILITY: ClassVar[Optional[str]] = "vdf"
    parent_hash: bytes
    index: int
    segment: Segment

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {
            "parentHash": self.parent_hash.hex(),
            "index": self.index,
            "output": self.segment.output.hex(),
            "proof": self.segment.proof.hex(),
        }

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "VdfOutput":
        index = field(payload, "index", int)
        if not 1 <= index <= limits.max_vdf_segments:
            raise DecodeError(f"index must be 1..{limits.max_vdf_segments}")
        return cls(
            hex_field(payload, "parentHash", 32),
            index,
            Segment(hex_field(payload, "output", FORM_SIZE), hex_field(payload, "proof", FORM_SIZE)),
        )


@dataclasses.dataclass(frozen=True)
class GetPeers(Message):
    TYPE: ClassVar[int] = 102
    NAME: ClassVar[str] = "GET_PEERS"
    CAPABILITY: ClassVar[Optional[str]] = "peers"


@dataclasses.dataclass(frozen=True)
class GetHashes(Message):
    """Main-chain block hashes `start` .. `start + count - 1` (finding a fork point)."""

    TYPE: ClassVar[int] = 103
    NAME: ClassVar[str] = "GET_HASHES"
    CAPABILITY: ClassVar[Optional[str]] = "hashes"
    start: int
    count: int

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"start": self.start, "count": self.count}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "GetHashes":
        count = field(payload, "count", int)
        if not 1 <= count <= MAX_HASHES:
            raise DecodeError(f"count must be 1..{MAX_HASHES}")
        return cls(field(payload, "start", int), count)


@dataclasses.dataclass(frozen=True)
class Hashes(Message):
    TYPE: ClassVar[int] = 104
    NAME: ClassVar[str] = "HASHES"
    CAPABILITY: ClassVar[Optional[str]] = "hashes"
    start: int
    hashes: tuple[bytes, ...]

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"start": self.start, "hashes": [h.hex() for h in self.hashes]}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "Hashes":
        raw = field(payload, "hashes", list)
        if len(raw) > MAX_HASHES:
            raise DecodeError(f"more than {MAX_HASHES} hashes")
        return cls(field(payload, "start", int), tuple(hex_field({"h": h}, "h", 32) for h in raw))


@dataclasses.dataclass(frozen=True)
class PushBlock(Message):
    """A new block in full, to peers that announced "push" (saves them a round trip)."""

    TYPE: ClassVar[int] = 105
    NAME: ClassVar[str] = "PUSH_BLOCK"
    CAPABILITY: ClassVar[Optional[str]] = "push"
    block: Block

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"blockData": self.block.to_json()}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "PushBlock":
        return cls(_block(field(payload, "blockData", dict), limits))


def _hashes(payload: dict[str, Any], name: str, most: int) -> tuple[bytes, ...]:
    raw = field(payload, name, list)
    if len(raw) > most:
        raise DecodeError(f"more than {most} hashes in {name!r}")
    return tuple(hex_field({"h": h}, "h", 32) for h in raw)


@dataclasses.dataclass(frozen=True)
class GetHeaders(Message):
    """Main-chain headers after the first `locator` hash the receiver has on its main chain
    (newest first, as Bitcoin's block locator; genesis last), at most `maxHeaders`."""

    TYPE: ClassVar[int] = 107
    NAME: ClassVar[str] = "GET_HEADERS"
    CAPABILITY: ClassVar[Optional[str]] = "headers"
    locator: tuple[bytes, ...]
    count: int

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"locator": [h.hex() for h in self.locator], "maxHeaders": self.count}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "GetHeaders":
        count = field(payload, "maxHeaders", int)
        if not 1 <= count <= MAX_HEADERS:
            raise DecodeError(f"maxHeaders must be 1..{MAX_HEADERS}")
        locator = _hashes(payload, "locator", MAX_LOCATOR)
        if not locator:
            raise DecodeError("an empty locator")
        return cls(locator, count)


@dataclasses.dataclass(frozen=True)
class Headers(Message):
    """Consecutive main-chain headers (each the parent of the next), sized in bytes by the
    sender; empty when it has nothing after the locator. `tipHeight` and `tipWeight` are
    the sender's (a claim: believed only as far as headers prove it)."""

    TYPE: ClassVar[int] = 108
    NAME: ClassVar[str] = "HEADERS"
    CAPABILITY: ClassVar[Optional[str]] = "headers"
    headers: tuple[Header, ...]
    tip_height: int = 0
    tip_weight: int = 0

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"headers": [h.to_json() for h in self.headers], "tipHeight": self.tip_height,
                "tipWeight": self.tip_weight}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "Headers":
        raw = field(payload, "headers", list)
        if len(raw) > MAX_HEADERS:
            raise DecodeError(f"more than {MAX_HEADERS} headers")
        try:
            headers = tuple(Header.from_json(h, limits.max_vdf_segments) for h in raw)
        except DecodeError as e:
            raise DecodeError(f"header: {e}") from None
        for parent, child in zip(headers, headers[1:]):
            if child.parent_hash != parent.hash or child.height != parent.height + 1:
                raise DecodeError(f"header at height {child.height} does not follow the one before it")
        return cls(headers, _optional(payload, "tipHeight", int) or 0, _optional(payload, "tipWeight", int) or 0)


@dataclasses.dataclass(frozen=True)
class GetBodies(Message):
    """The transfers of blocks by hash (headers-first sync has their headers already)."""

    TYPE: ClassVar[int] = 109
    NAME: ClassVar[str] = "GET_BODIES"
    CAPABILITY: ClassVar[Optional[str]] = "headers"
    hashes: tuple[bytes, ...]

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"hashes": [h.hex() for h in self.hashes]}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "GetBodies":
        hashes = _hashes(payload, "hashes", MAX_BODIES)
        if not hashes:
            raise DecodeError("no hashes")
        return cls(hashes)


@dataclasses.dataclass(frozen=True)
class Bodies(Message):
    """Bodies for a GET_BODIES, in its order: each the block hash and its transfers. It
    stops at the first block the sender lacks or at its byte budget (so it may be short)."""

    TYPE: ClassVar[int] = 110
    NAME: ClassVar[str] = "BODIES"
    CAPABILITY: ClassVar[Optional[str]] = "headers"
    bodies: tuple[tuple[bytes, tuple[Transaction, ...]], ...]

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"bodies": [{"hash": h.hex(), "transactions": [tx.to_json() for tx in txs]}
                           for h, txs in self.bodies]}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "Bodies":
        raw = field(payload, "bodies", list)
        if len(raw) > MAX_BODIES:
            raise DecodeError(f"more than {MAX_BODIES} bodies")
        bodies = []
        for body in raw:
            txs_json = field(body, "transactions", list)
            if len(txs_json) > limits.max_block_transactions:
                raise DecodeError(f"{len(txs_json)} transactions, at most {limits.max_block_transactions}")
            try:
                txs = tuple(Transaction.from_json(t) for t in txs_json)
            except InvalidTransaction as e:
                raise DecodeError(f"transaction: {e}") from None
            bodies.append((hex_field(body, "hash", 32), txs))
        return cls(tuple(bodies))


def _packed(payload: dict[str, Any], name: str, width: int, most: int) -> tuple[bytes, ...]:
    """Ids packed end to end in one base64 string (a 32-byte id is 43 characters, not the
    67 of a quoted hex string in a list: inventory is most of a node's traffic)."""
    raw = field(payload, name, str)
    if len(raw) > 4 * (width * most + 2) // 3 + 4:
        raise DecodeError(f"more than {most} ids in {name!r}")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(f"field {name!r} must be base64") from None
    if len(data) % width:
        raise DecodeError(f"field {name!r} is not a whole number of {width}-byte ids")
    if len(data) // width > most:
        raise DecodeError(f"more than {most} ids in {name!r}")
    return tuple(data[i:i + width] for i in range(0, len(data), width))


def inv_id(tx_hash: bytes) -> bytes:
    """How INV and REQ name a transfer (see INV_ID_BYTES)."""
    return tx_hash[:INV_ID_BYTES]


def _pack(ids: tuple[bytes, ...]) -> str:
    return base64.b64encode(b"".join(ids)).decode()


def _transfers(payload: dict[str, Any], name: str, most: int) -> tuple[Transaction, ...]:
    raw = field(payload, name, list)
    if len(raw) > most:
        raise DecodeError(f"more than {most} transfers in {name!r}")
    try:
        return tuple(Transaction.from_json(t) for t in raw)
    except InvalidTransaction as e:
        raise DecodeError(f"transaction: {e}") from None


# Transfer inventory on the original project's INV, REQ, RES numbers (capability "inv"):
# a node announces the ids of transfers it admitted, in batches; a peer fetches only those
# it lacks (Bitcoin's INV/GETDATA/TX), instead of every transfer pushed to every peer.


@dataclasses.dataclass(frozen=True)
class _InvIds(Message):
    """INV and REQ: 1..MAX_INV inv ids (inv_id: 16 bytes each), packed in one base64 string."""

    CAPABILITY: ClassVar[Optional[str]] = "inv"
    ids: tuple[bytes, ...]

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"txs": _pack(self.ids)}

    def payload_json(self, style: str = HEX) -> bytes:
        # canonical_json of the payload, written directly (one key; base64 needs no
        # escaping): INV and REQ are most of what a node sends.
        return b'{"txs":"%s"}' % base64.b64encode(b"".join(self.ids))

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "_InvIds":
        ids = _packed(payload, "txs", INV_ID_BYTES, MAX_INV)
        if not ids:
            raise DecodeError("no ids")
        return cls(ids)


@dataclasses.dataclass(frozen=True)
class Inv(_InvIds):
    """Transfers the sender has in its mempool."""

    TYPE: ClassVar[int] = 9
    NAME: ClassVar[str] = "INV"


@dataclasses.dataclass(frozen=True)
class Req(_InvIds):
    """The transfers with these ids, which the receiver announced."""

    TYPE: ClassVar[int] = 10
    NAME: ClassVar[str] = "REQ"


@dataclasses.dataclass(frozen=True)
class Res(Message):
    """Answer to a REQ: the asked transfers the sender still has (the others left out)."""

    TYPE: ClassVar[int] = 11
    NAME: ClassVar[str] = "RES"
    CAPABILITY: ClassVar[Optional[str]] = "inv"
    txs: tuple[Transaction, ...]

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"txs": [tx.to_json() for tx in self.txs]}

    def payload_json(self, style: str = HEX) -> bytes:
        # canonical_json of the payload from each transfer's own canonical JSON (made once
        # per Transaction: a node serves one transfer to many peers), joined as the
        # compact encoder joins a list.
        return b'{"txs":[%s]}' % b",".join([tx.encode() for tx in self.txs])

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "Res":
        return cls(_transfers(payload, "txs", MAX_RES))


# Compact block relay in the manner of BIP152 (capability "cmpct"): a new block goes out as
# its header and 6-byte short ids of its transfers; the receiver rebuilds it from its
# mempool and asks only for what it lacks.


@dataclasses.dataclass(frozen=True)
class SendCmpct(Message):
    """`highBandwidth` true: send me new blocks as CMPCT_BLOCK at once, unannounced (a
    node asks this of the 3 peers that last gave it new blocks first); false: announce
    them (NEW_BLOCK) and I ask with GET_CMPCT."""

    TYPE: ClassVar[int] = 111
    NAME: ClassVar[str] = "SEND_CMPCT"
    CAPABILITY: ClassVar[Optional[str]] = "cmpct"
    high_bandwidth: bool

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"highBandwidth": self.high_bandwidth}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "SendCmpct":
        value = payload.get("highBandwidth")
        if not isinstance(value, bool):
            raise DecodeError("field 'highBandwidth' must be a boolean")
        return cls(value)


@dataclasses.dataclass(frozen=True)
class CmpctBlock(Message):
    """A block as its header, a 48-bit nonce, the short ids of its transfers in order (packed
    base64) and some transfers in full (`prefilled`: [index, txData] pairs, indexes into
    the whole list, ascending)."""

    TYPE: ClassVar[int] = 112
    NAME: ClassVar[str] = "CMPCT_BLOCK"
    CAPABILITY: ClassVar[Optional[str]] = "cmpct"
    header: Header
    nonce: int
    short_ids: tuple[bytes, ...]
    prefilled: tuple[tuple[int, Transaction], ...] = ()

    @property
    def count(self) -> int:
        return len(self.short_ids) + len(self.prefilled)

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"header": self.header.to_json(), "nonce": self.nonce, "shortIds": _pack(self.short_ids),
                "prefilled": [[i, tx.to_json()] for i, tx in self.prefilled]}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "CmpctBlock":
        most = limits.max_block_transactions
        nonce = field(payload, "nonce", int)
        if not 0 <= nonce < 2**48:
            raise DecodeError("nonce must be an integer 0..2^48-1 (exact in any JSON reader)")
        try:
            header = Header.from_json(field(payload, "header", dict), limits.max_vdf_segments)
        except DecodeError as e:
            raise DecodeError(f"header: {e}") from None
        short_ids = _packed(payload, "shortIds", SHORT_ID_BYTES, most)
        raw = field(payload, "prefilled", list)
        if len(raw) + len(short_ids) > most:
            raise DecodeError(f"more than {most} transfers")
        prefilled: list[tuple[int, Transaction]] = []
        for item in raw:
            if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int):
                raise DecodeError("prefilled entries are [index, txData]")
            if not 0 <= item[0] < len(raw) + len(short_ids) or (prefilled and item[0] <= prefilled[-1][0]):
                raise DecodeError("prefilled indexes must ascend within the block")
            try:
                prefilled.append((item[0], Transaction.from_json(item[1])))
            except InvalidTransaction as e:
                raise DecodeError(f"prefilled transaction: {e}") from None
        return cls(header, nonce, short_ids, tuple(prefilled))


@dataclasses.dataclass(frozen=True)
class GetBlockTxn(Message):
    """The transfers at these indexes of a block the sender sent us as CMPCT_BLOCK."""

    TYPE: ClassVar[int] = 113
    NAME: ClassVar[str] = "GET_BLOCK_TXN"
    CAPABILITY: ClassVar[Optional[str]] = "cmpct"
    hash: bytes
    indexes: tuple[int, ...]

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"hash": self.hash.hex(), "indexes": list(self.indexes)}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "GetBlockTxn":
        raw = field(payload, "indexes", list)
        if not raw or len(raw) > limits.max_block_transactions:
            raise DecodeError(f"1..{limits.max_block_transactions} indexes")
        if not all(type(i) is int for i in raw) or any(b <= a for a, b in zip(raw, raw[1:])) or raw[0] < 0:
            raise DecodeError("indexes must be ascending non-negative integers")
        return cls(hex_field(payload, "hash", 32), tuple(raw))


@dataclasses.dataclass(frozen=True)
class BlockTxn(Message):
    """The answer to GET_BLOCK_TXN: those transfers, in its order."""

    TYPE: ClassVar[int] = 114
    NAME: ClassVar[str] = "BLOCK_TXN"
    CAPABILITY: ClassVar[Optional[str]] = "cmpct"
    hash: bytes
    txs: tuple[Transaction, ...]

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"hash": self.hash.hex(), "txs": [tx.to_json() for tx in self.txs]}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "BlockTxn":
        return cls(hex_field(payload, "hash", 32), _transfers(payload, "txs", limits.max_block_transactions))


@dataclasses.dataclass(frozen=True)
class GetCmpct(Message):
    """A block by hash as CMPCT_BLOCK (after its NEW_BLOCK, from a low-bandwidth peer)."""

    TYPE: ClassVar[int] = 115
    NAME: ClassVar[str] = "GET_CMPCT"
    CAPABILITY: ClassVar[Optional[str]] = "cmpct"
    hash: bytes

    def payload(self, style: str = HEX) -> dict[str, Any]:
        return {"hash": self.hash.hex()}

    @classmethod
    def parse(cls, payload: dict[str, Any], limits: Limits) -> "GetCmpct":
        return cls(hex_field(payload, "hash", 32))


MESSAGES: dict[int, type[Message]] = {
    m.TYPE: m
    for m in (Ping, Pong, NewBlock, GetBlock, BlockData, GetStatus, Status, Peers, NewTransaction,
              GetBlocks, Blocks, Hello, VdfOutput, GetPeers, GetHashes, Hashes, PushBlock, HelloAck,
              GetHeaders, Headers, GetBodies, Bodies, Inv, Req, Res, SendCmpct, CmpctBlock, GetBlockTxn,
              BlockTxn, GetCmpct)
}

# Capabilities a peer announces in STATUS ("capabilities") and HELLO: every extension's.
CAPABILITIES = ("hello", "blocks", "hashes", "push", "tx", "vdf", "peers", "headers", "inv", "cmpct")
assert {m.CAPABILITY for m in MESSAGES.values()} - {None} == set(CAPABILITIES)
assert not (set(MESSAGES) & RESERVED_TYPES)


def type_name(kind: int) -> str:
    cls = MESSAGES.get(kind)
    if cls is not None:
        return cls.NAME
    return {0: "HANDSHAKE"}.get(kind, f"type {kind}")


def encode(message: Message, style: str = HEX) -> bytes:
    """One line, without the delimiter: `{"type":N,"payload":{...}}` (always valid JSON:
    every value a node writes is an integer, a string, a list or an object). A message
    is encoded once (in hex style) however many peers it goes to: messages are immutable."""
    if style == HEX:
        cached = message.__dict__.get("_line")
        if cached is not None:
            return cached
    line = b'{"type":%d,"payload":%s}' % (message.TYPE, message.payload_json(style))
    if style == HEX:
        object.__setattr__(message, "_line", line)
    return line


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A line made without building its message: blocks served from the bytes they are
    stored as (canonical JSON, which is what encode would write), never decoded and
    encoded again. `NAME` is the message's, for accounting."""

    NAME: str
    line: bytes


def block_data_line(height: int, raw_block: bytes) -> Encoded:
    """BLOCK_DATA for a block stored as `raw_block` (its canonical JSON)."""
    return Encoded(BlockData.NAME, b'{"type":%d,"payload":{"blockData":%s,"height":%d}}'
                   % (BlockData.TYPE, raw_block, height))


def blocks_line(start: int, raw_blocks: list[bytes], tip_height: int, eof: bool) -> Encoded:
    """BLOCKS_BATCH for blocks stored as `raw_blocks`, keys in canonical order."""
    return Encoded(Blocks.NAME, b'{"type":%d,"payload":{"blocks":[%s],"count":%d,"eof":%s,"fromHeight":%d,'
                   b'"tipHeight":%d}}' % (Blocks.TYPE, b",".join(raw_blocks), len(raw_blocks),
                                          b"true" if eof else b"false", start, tip_height))


_HEADER_KEY = b'{"header":'
_TXS_KEY = b',"transactions":'


def split_stored_block(raw_block: bytes) -> tuple[bytes, bytes]:
    """A stored block's canonical JSON (`{"header":{..},"transactions":[..]}`, keys sorted;
    genesis, with its allocation first, is never served) cut into its header's JSON and its
    transfers' JSON list. The key is found from the end: transfers come last, and no
    transfer holds the key."""
    if not raw_block.startswith(_HEADER_KEY) or not raw_block.endswith(b"]}"):
        raise ValueError("not a stored block's canonical JSON")
    cut = raw_block.rindex(_TXS_KEY)
    return raw_block[len(_HEADER_KEY):cut], raw_block[cut + len(_TXS_KEY):-1]


def stored_header(prefix: bytes) -> Optional[bytes]:
    """The header's JSON from the first bytes of a stored block (split_stored_block's
    header), or None when `prefix` ends before the header does. The first `,"transactions":`
    is the block's own key: a header holds no such key, and its strings (hex, addresses)
    no quote."""
    if not prefix.startswith(_HEADER_KEY):
        raise ValueError("not a stored block's canonical JSON")
    cut = prefix.find(_TXS_KEY)
    return None if cut < 0 else prefix[len(_HEADER_KEY):cut]


def headers_line(raw_headers: list[bytes], tip_height: int, tip_weight: int) -> Encoded:
    """HEADERS from headers cut out of stored blocks (split_stored_block)."""
    return Encoded(Headers.NAME, b'{"type":%d,"payload":{"headers":[%s],"tipHeight":%d,"tipWeight":%d}}'
                   % (Headers.TYPE, b",".join(raw_headers), tip_height, tip_weight))


def bodies_line(bodies: list[tuple[bytes, bytes]]) -> Encoded:
    """BODIES from (block hash, transfers' JSON cut out of the stored block) pairs."""
    return Encoded(Bodies.NAME, b'{"type":%d,"payload":{"bodies":[%s]}}' % (Bodies.TYPE, b",".join(
        b'{"hash":"%s","transactions":%s}' % (h.hex().encode(), txs) for h, txs in bodies)))


def push_block_line(raw_block: bytes) -> Encoded:
    return Encoded(PushBlock.NAME, b'{"type":%d,"payload":{"blockData":%s}}' % (PushBlock.TYPE, raw_block))


@dataclasses.dataclass(frozen=True)
class Envelope:
    """A line read as JSON, its payload not yet parsed."""

    type: int
    payload: dict[str, Any]


def decode_envelope(line: bytes) -> Envelope:
    try:
        doc = strict_loads(line)
    except (ValueError, RecursionError):  # DecodeError is a ValueError
        raise WireError("bad_json") from None
    if not isinstance(doc, dict):
        raise WireError("bad_shape", "a message is an object")
    kind = doc.get("type")
    if isinstance(kind, bool) or not isinstance(kind, int) or not 0 <= kind < 2**16:
        raise WireError("bad_shape", "type must be an integer 0..65535")
    payload = doc.get("payload", {})
    if not isinstance(payload, dict):
        raise WireError("bad_shape", "payload must be an object")
    return Envelope(kind, payload)


def parse(envelope: Envelope, limits: Limits = DEFAULT_LIMITS) -> Message:
    cls = MESSAGES.get(envelope.type)
    if cls is None:
        raise WireError("unknown_type", type_name(envelope.type))
    try:
        return cls.parse(envelope.payload, limits)
    except DecodeError as e:
        raise WireError("bad_payload", f"{cls.NAME}: {e}") from None


def decode(line: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """A whole line to a typed message (both steps); WireError says why not."""
    return parse(decode_envelope(line), limits)
