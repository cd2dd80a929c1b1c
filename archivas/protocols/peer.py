"""PeerProtocol: newline-delimited JSON framing and one connection's lifecycle.

The protocol only frames: each line is read as a JSON envelope and handed to the peer
manager, which decides whether the message may be acted on, parses it and answers through
the narrow `send` / `disconnect` interface. Limits enforced here: line length (64 KiB
until the peer is READY, MAX_LENGTH after), messages and bytes per type and in total
(ratelimit.LIMITS, on the injected reactor's clock). Framing costs time linear in the
bytes received, however they are cut.
"""

from __future__ import annotations

import collections
import enum
import re
from typing import TYPE_CHECKING, Any, Optional

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from archivas.protocols import ratelimit, wire
from archivas.protocols.addrman import format_address
from archivas.protocols.knownset import RollingKnownSet

if TYPE_CHECKING:
    from archivas.protocols.manager import PeerManager

log = Logger()

MAX_LINE_BYTES = 4 * 1024 * 1024  # a 1 MiB block in a BLOCKS batch of a few, as JSON
HANDSHAKE_LINE_BYTES = 64 * 1024  # until READY: STATUS and HELLO are a few hundred bytes
CLOSE_GRACE = 5.0  # seconds a closing connection may take before it is aborted
PREPARSE_BYTES = 64 * 1024  # a longer line is checked against its type's limits before it is parsed
_TYPE_PREFIX = re.compile(rb'\s*\{\s*"type"\s*:\s*(\d{1,5})\s*[,}]')
PAUSED_INPUT_BYTES = 64 * 1024  # unserved input held from a paused peer before we stop reading it
# What we write to one peer: 4 MiB/s sustained, 64 MiB at once (about 2,000 fastnet or 140
# devnet blocks a second). A peer that asks for more stops being read until the budget
# refills, so no single peer can turn small requests into unbounded work and bandwidth.
SEND_BYTES_PER_SECOND = 4 * 1024 * 1024
SEND_BURST_BYTES = 64 * 1024 * 1024
KNOWN_CACHE = 4096  # block or transfer ids remembered per peer (to relay each only once)
_MESSAGES = wire.MESSAGES


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
    slot: str = ""  # inbound, manual (--peers), outbound, block-relay, feeler
    block_relay_only: bool = False
    hello: Optional[wire.Hello] = None  # its HELLO, trusted once HELLO_ACK proved the key
    hello_nonce: Optional[bytes] = None  # the nonce of our HELLO on this connection
    hello_sent: bool = False
    announced_hello: bool = False  # its STATUS listed "hello": it may send HELLO
    hash_style: str = wire.HEX  # how to write hashes to a seed peer: as it last wrote them
    misbehaviour: int = 0
    answered_get_peers: bool = False
    ping_sent_at: Optional[float] = None
    ping_token: Optional[float] = None  # the timestamp of our outstanding PING to an Archivas peer
    last_ping: Optional[float] = None  # seconds, the last PING's round trip
    min_ping: float = float("inf")
    last_block_at: float = 0.0  # when it last sent a block that became ours (eviction)
    last_tx_at: float = 0.0  # when it last sent a transfer we admitted (eviction)
    cmpct_high_bandwidth: bool = False  # it asked for new blocks as CMPCT_BLOCK, unannounced
    messages_in: collections.Counter[str] = attrs.field(factory=collections.Counter)
    bytes_in: collections.Counter[str] = attrs.field(factory=collections.Counter)
    messages_out: collections.Counter[str] = attrs.field(factory=collections.Counter)
    bytes_out: collections.Counter[str] = attrs.field(factory=collections.Counter)
    # What it has (sent, announced, or got from us): relayed to it once. Rolling Bloom
    # filters, about 24 KB each (knownset.py), where an ordered dict of 4,096 ids was 600 KB.
    known_blocks: RollingKnownSet = attrs.field(factory=RollingKnownSet)
    known_txs: RollingKnownSet = attrs.field(factory=RollingKnownSet)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def speaks_extensions(self) -> bool:
        """It completed the Archivas handshake (its HELLO was accepted)."""
        return self.node_id is not None and self.state is PeerState.READY

    @property
    def listen_address(self) -> Optional[str]:
        return format_address(self.host, self.listen_port) if self.listen_port else None

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


def set_no_delay(transport: object) -> None:
    """TCP_NODELAY: a small message (PING, NEW_BLOCK) leaves at once, not after Nagle's wait."""
    set_nodelay = getattr(transport, "setTcpNoDelay", None)
    if set_nodelay is not None:
        try:
            set_nodelay(True)
        except OSError:
            pass


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
        self.limiter = ratelimit.RateLimiter(reactor.seconds)  # per message type (ratelimit.LIMITS)
        self._partial = bytearray()
        self._reading_paused = False
        self._abort_call: Optional[IDelayedCall] = None
        self._send_budget = float(SEND_BURST_BYTES)
        self._send_stamp = reactor.seconds()
        self._budget_call: Optional[IDelayedCall] = None
        self.slot = "inbound" if direction == "inbound" else "manual"
        self.ready_timer: Optional[IDelayedCall] = None
        self.writes_paused = False  # the peer is not reading what we write
        self.sync_agent: Optional[Any] = None  # sync.SyncAgent: this peer's requests in flight

    @property
    def line_cap(self) -> int:
        ready = self.info is not None and self.info.state is PeerState.READY
        return self.MAX_LENGTH if ready else HANDSHAKE_LINE_BYTES

    def connectionMade(self) -> None:
        assert self.transport is not None
        remote = self.transport.getPeer()
        now = self.reactor.seconds()
        self.info = PeerInfo(getattr(remote, "host", "?"), getattr(remote, "port", 0), self.direction, now, now)
        set_no_delay(self.transport)
        # Backpressure: the transport pauses us when what we wrote is not being read;
        # then we read (and so serve) nothing more from this peer until it drains.
        register = getattr(self.transport, "registerProducer", None)
        if register is not None:
            try:
                register(self, True)
            except RuntimeError:
                pass  # a producer is already registered (a wrapping transport)
        self.manager.peer_connected(self)

    def pauseProducing(self) -> None:
        """What we wrote is not being read (or TLS is still buffering its handshake): stop
        serving this peer's lines; past one line's worth of unread input, stop reading."""
        self.writes_paused = True
        self.paused = True

    def resumeProducing(self) -> None:
        self.writes_paused = False
        if self._budget_call is not None:
            return  # still over its send budget: _budget_back resumes
        self.paused = False
        self.dataReceived(b"")  # what waits in the buffer first (it may pause us again)
        if self._reading_paused and not self.paused and self._open():
            self._reading_paused = False
            producer: Any = self.transport  # a TCP or TLS transport is also its reading's producer
            producer.resumeProducing()

    def _open(self) -> bool:
        return self.info is not None and self.info.state is not PeerState.CLOSED

    def dataReceived(self, data: bytes) -> None:
        buffer = self._partial
        if not buffer and not self.paused and type(data) is bytes:
            # Nothing waiting (the common case): lines are cut from `data` itself, one copy
            # each, and only an unfinished last line goes to the buffer.
            start = 0
            while self._open() and not self.paused:
                end = data.find(b"\n", start)
                if end < 0:
                    break
                line = data[start:end]
                start = end + 1
                if len(line) > self.line_cap:
                    self.lineLengthExceeded(line)
                    break
                self.lineReceived(line)
            if not self._open():
                return
            if start < len(data):
                buffer += data[start:]
            if self.paused:
                self._hold_input()
                return
            if len(buffer) > self.line_cap:
                buffer.clear()
                self.lineLengthExceeded(b"")
            return
        searched = 0 if not data else len(buffer)  # (after a pause, lines may wait in the buffer)
        buffer += data
        if self.paused:
            self._hold_input()
            return
        start = 0
        while self._open() and not self.paused:
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
        if self.paused:  # paused by a line we just served: the rest waits for resumeProducing
            self._hold_input()
            return
        if len(buffer) > self.line_cap:
            buffer.clear()
            self.lineLengthExceeded(b"")

    def _hold_input(self) -> None:
        """While paused, stop reading the socket once PAUSED_INPUT_BYTES wait unserved:
        TCP then pushes back on the peer, and what it sent costs us no more than that."""
        if len(self._partial) > PAUSED_INPUT_BYTES and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            producer: Any = self.transport
            producer.pauseProducing()

    def lineReceived(self, line: bytes) -> None:
        info = self.info
        if info is None or info.state is PeerState.CLOSED:
            return
        if line[:1] != b"{" and not line.strip():  # blank lines carry nothing, but are not free to send
            refused = self.limiter.check(ratelimit.OTHER, len(line) + 1)
            if refused is not None:
                self.manager.misbehaved(self, "rate_limit", refused)
            return
        hinted: Optional[int] = None
        if len(line) > PREPARSE_BYTES:
            # A long line is judged by its type before it is parsed: too big for that type,
            # over its rate, or not accepted in this state, and it is never parsed at all.
            prefix = _TYPE_PREFIX.match(line)
            if prefix is None:
                self.manager.misbehaved(self, "bad_shape", f"a line over {PREPARSE_BYTES} bytes must begin "
                                                           '{"type":N,')
                return
            hinted = int(prefix.group(1))
            refused = self.limiter.check(wire.type_name(hinted), len(line))
            if refused is not None:
                self.manager.misbehaved(self, "rate_limit", refused)
                return
            if not self.manager.may_receive(self, hinted):
                self.manager.dropped_counts[wire.type_name(hinted)] += 1
                return
        try:
            envelope = self.manager.decode_envelope(line)
        except wire.WireError as e:
            refused = None if hinted is not None else self.limiter.check(ratelimit.OTHER, len(line))
            self.manager.misbehaved(self, "rate_limit" if refused else e.reason, refused or str(e))
            return
        cls = _MESSAGES.get(envelope.type)
        kind = cls.NAME if cls is not None else wire.type_name(envelope.type)
        if hinted is None:
            refused = self.limiter.check(kind, len(line))
            if refused is not None:
                self.manager.misbehaved(self, "rate_limit", refused)
                return
        info.last_seen = self.reactor.seconds()
        info.messages_in[kind] += 1
        info.bytes_in[kind] += len(line) + 1
        self.manager.envelope_received(self, envelope)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.manager.misbehaved(self, "line_too_long", f"a line over {self.line_cap} bytes")
        self.disconnect("line too long")

    def send(self, message: wire.Message | wire.Encoded) -> None:
        if self.transport is not None and self._open():
            assert self.info is not None
            if isinstance(message, wire.Encoded):
                line = message.line + b"\n"
            else:
                style = wire.HEX if self.info.node_id is not None else self.info.hash_style
                line = wire.encode(message, style) + b"\n"
            self.info.messages_out[message.NAME] += 1
            self.info.bytes_out[message.NAME] += len(line)
            self.transport.write(line)
            self._spend(len(line))

    def _spend(self, nbytes: int) -> None:
        now = self.reactor.seconds()
        self._send_budget = min(SEND_BURST_BYTES, self._send_budget + (now - self._send_stamp) * SEND_BYTES_PER_SECOND)
        self._send_stamp = now
        self._send_budget -= nbytes
        if self._send_budget < 0 and self._budget_call is None:
            self.paused = True  # read (and serve) nothing more until the budget is back
            wait = -self._send_budget / SEND_BYTES_PER_SECOND
            self._budget_call = self.reactor.callLater(wait, self._budget_back)

    def _budget_back(self) -> None:
        self._budget_call = None
        if not self.writes_paused and self._open():
            self.resumeProducing()

    def disconnect(self, reason: str) -> None:
        if self.info is not None and self.info.state is not PeerState.CLOSED:
            log.info("[p2p] disconnecting {peer}: {reason}", peer=self.info.address, reason=reason)
            self.info.state = PeerState.CLOSED
        if self.transport is not None:
            self.transport.loseConnection()
            # A peer that never lets a close finish (a TLS shutdown it does not answer, a
            # socket it does not drain) holds no slot past the grace period.
            if self._abort_call is None:
                self._abort_call = self.reactor.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        if not self.lost.called and self.transport is not None:
            abort = getattr(self.transport, "abortConnection", None)
            if abort is not None:
                abort()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        for call in (self._abort_call, self._budget_call):
            if call is not None and call.active():
                call.cancel()
        self._abort_call = self._budget_call = None
        # A closed connection may still be referenced (an orphan's source, a ban record):
        # it must not keep its unfinished line (up to 4 MiB) alive with it.
        self._partial = bytearray()
        if self.info is not None:
            self.info.state = PeerState.CLOSED
            self.manager.peer_disconnected(self)
        if not self.lost.called:
            self.lost.callback(None)
