"""PeerProtocol: newline-delimited JSON framing and one connection's lifecycle.

The protocol only frames: each line is read as a JSON envelope and handed to the peer
manager, which decides whether the message may be acted on, parses it and answers through
the narrow `send` / `disconnect` interface. Limits enforced here: line length (64 KiB
until the peer is READY, MAX_LENGTH after), message rate (a token bucket on the injected
reactor's clock). Framing costs time linear in the bytes received, however they are cut.
"""

from __future__ import annotations

import collections
import enum
from typing import TYPE_CHECKING, Optional

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from archivas.protocols import wire

if TYPE_CHECKING:
    from archivas.protocols.manager import PeerManager

log = Logger()

MAX_LINE_BYTES = 4 * 1024 * 1024  # a 1 MiB block in a BLOCKS batch of a few, as JSON
HANDSHAKE_LINE_BYTES = 64 * 1024  # until READY: STATUS and HELLO are a few hundred bytes
RATE_PER_SECOND = 200.0  # sustained messages a second from one peer
RATE_BURST = 1000.0  # messages a peer may send at once
KNOWN_CACHE = 4096  # block or transfer ids remembered per peer (to relay each only once)


class PeerState(enum.Enum):
    CONNECTED = "connected"  # transport up; GET_STATUS sent, nothing known yet
    READY = "ready"  # STATUS seen (a seed peer) or HELLO accepted (an Archivas peer)
    CLOSED = "closed"


class BoundedSet:
    """The most recent `size` items, for "peer already has this" checks."""

    def __init__(self, size: int = KNOWN_CACHE) -> None:
        self._items: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.size = size

    def add(self, item: bytes) -> None:
        self._items[item] = None
        self._items.move_to_end(item)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)


@attrs.define
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@attrs.define(eq=False)
class PeerInfo:
    """What the node knows of one connection."""

    host: str
    port: int
    direction: str  # "inbound" or "outbound"
    connected_at: float
    last_seen: float
    state: PeerState = PeerState.CONNECTED
    ready_at: Optional[float] = None
    height: int = 0
    weight: int = 0
    tip_hash: Optional[bytes] = None
    node_id: Optional[bytes] = None
    listen_port: int = 0
    capabilities: frozenset[str] = frozenset()
    hello_sent: bool = False
    announced_hello: bool = False  # its STATUS listed "hello": it may send HELLO
    hash_style: str = wire.HEX  # how to write hashes to a seed peer: as it last wrote them
    misbehaviour: int = 0
    known_blocks: BoundedSet = attrs.field(factory=BoundedSet)
    known_txs: BoundedSet = attrs.field(factory=BoundedSet)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def speaks_extensions(self) -> bool:
        """It completed the Archivas handshake (its HELLO was accepted)."""
        return self.node_id is not None and self.state is PeerState.READY

    @property
    def listen_address(self) -> Optional[str]:
        return f"{self.host}:{self.listen_port}" if self.listen_port else None

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


class PeerProtocol(LineReceiver):
    """A LineReceiver whose framing is linear in the bytes received: only the new chunk is
    searched for the delimiter (LineReceiver rescans its whole buffer for every chunk, so a
    long line trickled in small pieces cost quadratic time)."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_BYTES

    def __init__(self, manager: "PeerManager", reactor: IReactorTime, direction: str,
                 dial_address: Optional[str] = None) -> None:
        self.manager = manager
        self.reactor = reactor
        self.direction = direction
        self.dial_address = dial_address  # the --peers entry an outbound connection is for
        self.info: Optional[PeerInfo] = None
        self.lost: Deferred[None] = Deferred()  # fires when the connection is gone
        self.bucket = TokenBucket(RATE_PER_SECOND, RATE_BURST, RATE_BURST, reactor.seconds())
        self._partial = bytearray()

    @property
    def line_cap(self) -> int:
        ready = self.info is not None and self.info.state is PeerState.READY
        return self.MAX_LENGTH if ready else HANDSHAKE_LINE_BYTES

    def connectionMade(self) -> None:
        remote = self.transport.getPeer()  # type: ignore[attr-defined]
        now = self.reactor.seconds()
        self.info = PeerInfo(getattr(remote, "host", "?"), getattr(remote, "port", 0), self.direction, now, now)
        self.manager.peer_connected(self)

    def _open(self) -> bool:
        return self.info is not None and self.info.state is not PeerState.CLOSED

    def dataReceived(self, data: bytes) -> None:
        buffer = self._partial
        searched = len(buffer)  # the bytes held so far hold no delimiter
        buffer += data
        start = 0
        while self._open():
            end = buffer.find(b"\n", searched)
            if end < 0:
                break
            line = bytes(buffer[start:end])
            start = searched = end + 1
            if len(line) > self.line_cap:
                self.lineLengthExceeded(line)
                break
            self.lineReceived(line)
        if not self._open():
            buffer.clear()
            return
        del buffer[:start]
        if len(buffer) > self.line_cap:
            buffer.clear()
            self.lineLengthExceeded(b"")

    def lineReceived(self, line: bytes) -> None:
        if not self._open():
            return
        assert self.info is not None
        if not line.strip():
            return
        if not self.bucket.take(self.reactor.seconds()):
            self.manager.misbehaved(self, "rate_limit", f"more than {RATE_PER_SECOND:.0f} messages/s")
            return
        try:
            envelope = wire.decode_envelope(line)
        except wire.WireError as e:
            self.manager.misbehaved(self, e.reason, str(e))
            return
        self.info.last_seen = self.reactor.seconds()
        self.manager.envelope_received(self, envelope)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.manager.misbehaved(self, "line_too_long", f"a line over {self.line_cap} bytes")
        self.disconnect("line too long")

    def send(self, message: wire.Message) -> None:
        if self.transport is not None and self._open():
            assert self.info is not None
            style = wire.HEX if self.info.node_id is not None else self.info.hash_style
            self.transport.write(wire.encode(message, style) + b"\n")

    def disconnect(self, reason: str) -> None:
        if self.info is not None and self.info.state is not PeerState.CLOSED:
            log.info("[p2p] disconnecting {peer}: {reason}", peer=self.info.address, reason=reason)
            self.info.state = PeerState.CLOSED
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self.info is not None:
            self.info.state = PeerState.CLOSED
            self.manager.peer_disconnected(self)
        if not self.lost.called:
            self.lost.callback(None)
