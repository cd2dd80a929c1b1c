"""PeerProtocol: newline-delimited JSON framing and one connection's lifecycle.

The protocol only parses: each line becomes a typed message handed to the peer manager,
which answers through the narrow `send` / `disconnect` interface. Limits enforced here:
line length (MAX_LENGTH), message rate (a token bucket on the injected reactor's clock).
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
    height: int = 0
    weight: int = 0
    tip_hash: Optional[bytes] = None
    node_id: Optional[bytes] = None
    listen_port: int = 0
    capabilities: frozenset[str] = frozenset()
    hello_sent: bool = False
    misbehaviour: int = 0
    known_blocks: BoundedSet = attrs.field(factory=BoundedSet)
    known_txs: BoundedSet = attrs.field(factory=BoundedSet)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def listen_address(self) -> Optional[str]:
        return f"{self.host}:{self.listen_port}" if self.listen_port else None

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


class PeerProtocol(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_BYTES

    def __init__(self, manager: "PeerManager", reactor: IReactorTime, direction: str) -> None:
        self.manager = manager
        self.reactor = reactor
        self.direction = direction
        self.info: Optional[PeerInfo] = None
        self.lost: Deferred[None] = Deferred()  # fires when the connection is gone
        self.bucket = TokenBucket(RATE_PER_SECOND, RATE_BURST, RATE_BURST, reactor.seconds())

    def connectionMade(self) -> None:
        remote = self.transport.getPeer()  # type: ignore[attr-defined]
        now = self.reactor.seconds()
        self.info = PeerInfo(getattr(remote, "host", "?"), getattr(remote, "port", 0), self.direction, now, now)
        self.manager.peer_connected(self)

    def lineReceived(self, line: bytes) -> None:
        if self.info is None or self.info.state is PeerState.CLOSED:
            return
        if not line.strip():
            return
        if not self.bucket.take(self.reactor.seconds()):
            self.manager.misbehaved(self, "rate_limit", f"more than {RATE_PER_SECOND:.0f} messages/s")
            return
        try:
            message = wire.decode(line)
        except wire.WireError as e:
            self.manager.misbehaved(self, e.reason, str(e))
            return
        self.info.last_seen = self.reactor.seconds()
        self.manager.message_received(self, message)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.manager.misbehaved(self, "line_too_long", f"a line over {self.MAX_LENGTH} bytes")
        self.disconnect("line too long")

    def send(self, message: wire.Message) -> None:
        if self.transport is not None and self.info is not None and self.info.state is not PeerState.CLOSED:
            self.transport.write(wire.encode(message) + b"\n")

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
