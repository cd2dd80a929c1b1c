"""The wire format: one JSON object a line, `{"type": N, "payload": {...}}`.

Every message is parsed into a typed, validated value before anything acts on it; a bad
line raises `WireError` with a short reason. Types 1-7 are the seed protocol (SPEC §2);
8 and up are Archivas extensions, sent only to peers that announced them (docs/protocol.md).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Optional

from archivas.chain.block import Block
from archivas.chain.encoding import DecodeError, canonical_json, field, hex_field, str_field
from archivas.chain.transactions import InvalidTransaction, Transaction
from archivas.chain.vdf import FORM_SIZE, Segment

PROTOCOL_VERSION = 1
MAX_BATCH = 64  # blocks in one BLOCKS reply or hashes in HASHES: 64 * 1 MiB blocks at most
MAX_HASHES = 512
MAX_PEERS_LISTED = 64

# Capabilities a peer announces in STATUS ("capabilities") and HELLO.
CAPABILITIES = ("hello", "blocks", "hashes", "push", "tx", "vdf", "peers")


class WireError(ValueError):
    """A line that is not a valid message; `reason` is short and stable for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _number(obj: Any, name: str) -> float:
    value = obj.get(name) if isinstance(obj, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise DecodeError(f"field {name!r} must be a non-negative number")
    return value


@dataclasses.dataclass(frozen=True)
class Message:
    TYPE: ClassVar[int] = 0

    def payload(self) -> dict[str, Any]:
        return {}

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "Message":
        return cls()


@dataclasses.dataclass(frozen=True)
class _Timestamped(Message):
    timestamp: float

    def payload(self) -> dict[str, Any]:
        return {"timestamp": self.timestamp}

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "_Timestamped":
        return cls(_number(payload, "timestamp"))


@dataclasses.dataclass(frozen=True)
class Ping(_Timestamped):
    TYPE: ClassVar[int] = 1


@dataclasses.dataclass(frozen=True)
class Pong(_Timestamped):
    TYPE: ClassVar[int] = 2


@dataclasses.dataclass(frozen=True)
class NewBlock(Message):
    TYPE: ClassVar[int] = 3
    height: int
    hash: bytes

    def payload(self) -> dict[str, Any]:
        return {"height": self.height, "hash": self.hash.hex()}

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "NewBlock":
        return cls(field(payload, "height", int), hex_field(payload, "hash", 32))


@dataclasses.dataclass(frozen=True)
class GetBlock(Message):
    TYPE: ClassVar[int] = 4
    height: int

    def payload(self) -> dict[str, Any]:
        return {"height": self.height}

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "GetBlock":
        return cls(field(payload, "height", int))


def _block(obj: Any) -> Block:
    try:
        return Block.from_json(obj)
    except DecodeError as e:
        raise DecodeError(f"block: {e}") from None


@dataclasses.dataclass(frozen=True)
class BlockData(Message):
    TYPE: ClassVar[int] = 5
    height: int
    block: Block

    def payload(self) -> dict[str, Any]:
        return {"height": self.height, "blockData": self.block.to_json()}

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "BlockData":
        height = field(payload, "height", int)
        block = _block(field(payload, "blockData", dict))
        if block.height != height:
            raise DecodeError(f"blockData is at height {block.height}, not {height}")
        return cls(height, block)


@dataclasses.dataclass(frozen=True)
class GetStatus(Message):
    TYPE: ClassVar[int] = 6


@dataclasses.dataclass(frozen=True)
class Status(Message):
    """The seed's three fields, plus what an Archivas node adds (readers ignore extras)."""

    TYPE: ClassVar[int] = 7
    height: int
    difficulty: int
    tip_hash: bytes
    weight: Optional[int] = None
    genesis_hash: Optional[bytes] = None
    network: Optional[str] = None
    version: Optional[int] = None
    capabilities: tuple[str, ...] = ()

    def payload(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"height": self.height, "difficulty": self.difficulty, "tipHash": self.tip_hash.hex()}
        if self.weight is not None:
            doc["weight"] = self.weight
        if self.genesis_hash is not None:
            doc["genesisHash"] = self.genesis_hash.hex()
        if self.network is not None:
            doc["network"] = self.network
        if self.version is not None:
            doc["version"] = self.version
        if self.capabilities:
            doc["capabilities"] = list(self.capabilities)
        return doc

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "Status":
        return cls(
            height=field(payload, "height", int),
            difficulty=field(payload, "difficulty", int),
            tip_hash=hex_field(payload, "tipHash", 32),
            weight=field(payload, "weight", int) if "weight" in payload else None,
            genesis_hash=hex_field(payload, "genesisHash", 32) if "genesisHash" in payload else None,
            network=str_field(payload, "network", 32) if "network" in payload else None,
            version=field(payload, "version", int) if "version" in payload else None,
            capabilities=_capabilities(payload) if "capabilities" in payload else (),
        )


def _capabilities(payload: dict[str, Any]) -> tuple[str, ...]:
    caps = field(payload, "capabilities", list)
    if len(caps) > 32 or not all(isinstance(c, str) and len(c) <= 32 for c in caps):
        raise DecodeError("capabilities must be a short list of short strings")
    return tuple(caps)


@dataclasses.dataclass(frozen=True)
class Hello(Message):
    """The handshake, sent once a peer's STATUS showed it speaks the extensions."""

    TYPE: ClassVar[int] = 8
    network: str
    genesis_hash: bytes
    protocol_version: int
    node_id: bytes
    listen_port: int  # 0: not listening
    capabilities: tuple[str, ...]

    def payload(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "genesisHash": self.genesis_hash.hex(),
            "protocolVersion": self.protocol_version,
            "nodeId": self.node_id.hex(),
            "listenPort": self.listen_port,
            "capabilities": list(self.capabilities),
        }

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "Hello":
        port = field(payload, "listenPort", int)
        if port > 65535:
            raise DecodeError("listenPort above 65535")
        return cls(
            network=str_field(payload, "network", 32),
            genesis_hash=hex_field(payload, "genesisHash", 32),
            protocol_version=field(payload, "protocolVersion", int),
            node_id=hex_field(payload, "nodeId", 16),
            listen_port=port,
            capabilities=_capabilities(payload),
        )


@dataclasses.dataclass(frozen=True)
class GetBlocks(Message):
    """Main-chain blocks `start` .. `start + count - 1` (count <= MAX_BATCH)."""

    TYPE: ClassVar[int] = 9
    start: int
    count: int

    def payload(self) -> dict[str, Any]:
        return {"start": self.start, "count": self.count}

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "GetBlocks":
        count = field(payload, "count", int)
        if not 1 <= count <= MAX_BATCH:
            raise DecodeError(f"count must be 1..{MAX_BATCH}")
        return cls(field(payload, "start", int), count)


@dataclasses.dataclass(frozen=True)
class Blocks(Message):
    """The answer to GET_BLOCKS: consecutive main-chain blocks from `start` (may be fewer
    than asked, empty above the tip)."""

    TYPE: ClassVar[int] = 10
    start: int
    blocks: tuple[Block, ...]

    def payload(self) -> dict[str, Any]:
        return {"start": self.start, "blocks": [b.to_json() for b in self.blocks]}

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "Blocks":
        start = field(payload, "start", int)
        raw = field(payload, "blocks", list)
        if len(raw) > MAX_BATCH:
            raise DecodeError(f"more than {MAX_BATCH} blocks")
        blocks = tuple(_block(b) for b in raw)
        for i, block in enumerate(blocks):
            if block.height != start + i:
                raise DecodeError(f"block {i} is at height {block.height}, not {start + i}")
        return cls(start, blocks)


@dataclasses.dataclass(frozen=True)
class NewTransaction(Message):
    TYPE: ClassVar[int] = 11
    tx: Transaction

    def payload(self) -> dict[str, Any]:
        return {"tx": self.tx.to_json()}

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "NewTransaction":
        try:
            return cls(Transaction.from_json(field(payload, "tx", dict)))
        except InvalidTransaction as e:
            raise DecodeError(f"tx: {e}") from None


@dataclasses.dataclass(frozen=True)
class VdfOutput(Message):
    """Timelord output: segment `index` (1-based) of the VDF on `parent_hash`."""

    TYPE: ClassVar[int] = 12
    parent_hash: bytes
    index: int
    segment: Segment

    def payload(self) -> dict[str, Any]:
        return {
            "parentHash": self.parent_hash.hex(),
            "index": self.index,
            "output": self.segment.output.hex(),
            "proof": self.segment.proof.hex(),
        }

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "VdfOutput":
        index = field(payload, "index", int)
        if index < 1:
            raise DecodeError("index starts at 1")
        return cls(
            hex_field(payload, "parentHash", 32),
            index,
            Segment(hex_field(payload, "output", FORM_SIZE), hex_field(payload, "proof", FORM_SIZE)),
        )


@dataclasses.dataclass(frozen=True)
class GetPeers(Message):
    TYPE: ClassVar[int] = 13


@dataclasses.dataclass(frozen=True)
class Peers(Message):
    TYPE: ClassVar[int] = 14
    addresses: tuple[str, ...]

    def payload(self) -> dict[str, Any]:
        return {"peers": list(self.addresses)}

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "Peers":
        raw = field(payload, "peers", list)
        if len(raw) > MAX_PEERS_LISTED or not all(isinstance(a, str) and len(a) <= 270 for a in raw):
            raise DecodeError(f"peers must be at most {MAX_PEERS_LISTED} host:port strings")
        return cls(tuple(raw))


@dataclasses.dataclass(frozen=True)
class GetHashes(Message):
    """Main-chain block hashes `start` .. `start + count - 1` (finding a fork point)."""

    TYPE: ClassVar[int] = 15
    start: int
    count: int

    def payload(self) -> dict[str, Any]:
        return {"start": self.start, "count": self.count}

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "GetHashes":
        count = field(payload, "count", int)
        if not 1 <= count <= MAX_HASHES:
            raise DecodeError(f"count must be 1..{MAX_HASHES}")
        return cls(field(payload, "start", int), count)


@dataclasses.dataclass(frozen=True)
class Hashes(Message):
    TYPE: ClassVar[int] = 16
    start: int
    hashes: tuple[bytes, ...]

    def payload(self) -> dict[str, Any]:
        return {"start": self.start, "hashes": [h.hex() for h in self.hashes]}

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "Hashes":
        raw = field(payload, "hashes", list)
        if len(raw) > MAX_HASHES:
            raise DecodeError(f"more than {MAX_HASHES} hashes")
        return cls(field(payload, "start", int), tuple(hex_field({"h": h}, "h", 32) for h in raw))


@dataclasses.dataclass(frozen=True)
class PushBlock(Message):
    """A new block in full, to peers that announced "push" (saves them a round trip)."""

    TYPE: ClassVar[int] = 17
    block: Block

    def payload(self) -> dict[str, Any]:
        return {"blockData": self.block.to_json()}

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> "PushBlock":
        return cls(_block(field(payload, "blockData", dict)))


MESSAGES: dict[int, type[Message]] = {
    m.TYPE: m
    for m in (Ping, Pong, NewBlock, GetBlock, BlockData, GetStatus, Status, Hello, GetBlocks, Blocks,
              NewTransaction, VdfOutput, GetPeers, Peers, GetHashes, Hashes, PushBlock)
}


def encode(message: Message) -> bytes:
    """One line, without the delimiter: `{"type":N,"payload":{...}}`."""
    return b'{"type":%d,"payload":%s}' % (message.TYPE, canonical_json(message.payload()))


def decode(line: bytes) -> Message:
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):
        raise WireError("bad_json") from None
    if not isinstance(doc, dict):
        raise WireError("bad_shape", "a message is an object")
    kind = doc.get("type")
    if isinstance(kind, bool) or not isinstance(kind, int):
        raise WireError("bad_shape", "type must be an integer")
    cls = MESSAGES.get(kind)
    if cls is None:
        raise WireError("unknown_type", str(kind)[:20])
    payload = doc.get("payload", {})
    if not isinstance(payload, dict):
        raise WireError("bad_shape", "payload must be an object")
    try:
        return cls.parse(payload)
    except DecodeError as e:
        raise WireError("bad_payload", f"{cls.__name__}: {e}") from None
