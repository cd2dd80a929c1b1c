"""SimNetwork: TCP between simulated hosts, on one HeapClock, with Twisted transports.

Real protocols (PeerProtocol, LineReceiver) run over `SimTransport`s as they would over
TCP: connections are set up in a round trip, bytes of one connection arrive in order,
writes push back on a streaming producer, reading can be paused, and a close or an abort
reaches the other side one latency later. What the model charges for a write of n bytes
from host A to host B:

    uplink    A's one FIFO for all its connections: n * 8 / rate(A) seconds, from when it
              is free; what it takes is known at write time, as writes come in time order
    path      the pair's one-way latency, drawn once per unordered pair of addresses;
              with probability `loss` the write is lost and arrives one retransmission
              timeout, max(rto, 2 RTT), later, and the connection's later writes wait
              behind it (TCP's in-order delivery)
    downlink  B's one link for all its connections: n * 8 / rate(B) seconds from when it
              is free. Links serve writes in the order their last byte would arrive on an
              idle link (arrival + transfer time): a short message is not held behind a
              long one from another host that began arriving a moment before, roughly as
              packets interleave on a real link.
    reader    B's node reads at max(arrival, B.busy_until), and B.busy_until then moves
              on by B.receive_cost(n): a busy node reads late.

Each direction of a connection is one `_Pipe`: a queue of segments (a write, or writes
joined because they arrive at the same moment behind a lost one) with at most one clock
call pending, for its first segment. A segment costs one clock call when its downlink is
idle, two when it must wait for it, and nothing when it rides with the segment ahead
(everything through the downlink by the time the first is read is read with it, in one
dataReceived). Data on a path cut by a partition waits in its pipe, neither lost nor
delivered, and moves on after the cut heals, one latency later (as TCP retransmits).
Data to a node that paused reading waits the same way.

Flow control: a registered streaming producer is paused when more than
UPLINK_PAUSE_BYTES of its connection's writes have not left the uplink, or when the peer
is not reading and more than RECEIVE_WINDOW_BYTES wait for it (TCP's closed window); it
is resumed once both are below half.

Determinism: every time is computed from the clock and the network's random.Random
(drawn in call order: a pair's latency at its first connection attempt, then one draw per
write when loss > 0); queues are deques and insertion-ordered dicts, never sets; the
clock breaks ties by scheduling order. `trace` hashes every delivery and connection
event, so two runs can be compared by `digest()`.

Simplifications: connection set-up costs no bandwidth and its packets are never lost; a
connection attempt that meets a cut or a down host fails at its timeout even if the cut
heals first; retransmissions cost no bandwidth; a segment is checked against cuts when it
would leave the path, not while crossing it.
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import random
import struct
from typing import Callable, Iterable, Optional, cast

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IConsumer,
    IListeningPort,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from archivas.sim.clock import HeapClock, SimDelayedCall

log = Logger()

UPLINK_PAUSE_BYTES = 64 * 1024  # a connection's bytes waiting for the uplink before its producer is paused
UPLINK_RESUME_BYTES = UPLINK_PAUSE_BYTES // 2  # ... and resumed at or below this
RECEIVE_WINDOW_BYTES = 256 * 1024  # bytes waiting for a peer that is not reading before the sender is paused
EPHEMERAL_FIRST = 40000  # outbound connections' local ports, per host, counting up
EPHEMERAL_LAST = 65535
CONNECT_TIMEOUT = 10.0  # seconds, an endpoint's default (as manager.DIAL_TIMEOUT)
MICROSECONDS = 1_000_000  # trace times are whole microseconds

_DATA, _FIN, _RST = 0, 1, 2  # segment kinds: bytes, an orderly close, a reset
_RECORD = struct.Struct(">cqI")  # trace record: kind, time in microseconds, payload length


def _no_cost(nbytes: int) -> float:
    return 0.0


def _byte_time(mbit: float) -> float:
    if mbit <= 0:
        raise ValueError(f"bandwidth must be positive, not {mbit} Mbit/s")
    return 8.0 / (mbit * 1e6)


class _Segment:
    """Bytes (or a FIN or RST) in one direction of a connection. `arrive`: when the last
    byte reaches the receiver's downlink; `ready`: when the pipe next looks at it (first
    the end of its downlink transfer on an idle link); `crossed`: it has left the path
    and has its downlink time."""

    __slots__ = ("kind", "chunks", "nbytes", "arrive", "ready", "crossed")

    def __init__(self, kind: int, chunks: list[bytes], nbytes: int, arrive: float, ready: float) -> None:
        self.kind = kind
        self.chunks = chunks
        self.nbytes = nbytes
        self.arrive = arrive
        self.ready = ready
        self.crossed = False


class _Pipe:
    """One direction of a connection, `src` writing to `dst`: the in-order byte stream."""

    __slots__ = ("net", "src", "dst", "latency", "rto", "queue", "queued_bytes", "call", "pumping", "header")

    def __init__(self, net: "SimNetwork", src: "SimTransport", dst: "SimTransport", latency: float,
                 rto: float) -> None:
        self.net = net
        self.src = src
        self.dst = dst
        self.latency = latency
        self.rto = rto
        self.queue: collections.deque[_Segment] = collections.deque()
        self.queued_bytes = 0
        self.call: Optional[SimDelayedCall] = None  # the pending pump, for queue[0]
        self.pumping = False
        self.header = src.host.packed + src.local_port.to_bytes(2, "big") + dst.host.packed + \
            dst.local_port.to_bytes(2, "big")

    def push(self, data: bytes, nbytes: int, arrive: float) -> None:
        queue = self.queue
        self.queued_bytes += nbytes
        byte_time = self.dst.host.byte_time
        if queue:
            tail = queue[-1]
            if arrive <= tail.arrive and tail.kind == _DATA and not tail.crossed:
                # Behind a lost write: it arrives with it, as one segment.
                tail.chunks.append(data)
                tail.nbytes += nbytes
                tail.ready = tail.arrive + tail.nbytes * byte_time
                return
        queue.append(_Segment(_DATA, [data], nbytes, arrive, arrive + nbytes * byte_time))
        if len(queue) == 1 and self.call is None and not self.pumping:
            self.call = self.net.clock.call_at(queue[0].ready, self.pump)

    def push_control(self, kind: int, arrive: float) -> None:
        self.queue.append(_Segment(kind, [], 0, arrive, arrive))
        self.kick()

    def drop(self) -> None:
        """Discard everything queued (an abort, a reset)."""
        self.queue.clear()
        self.queued_bytes = 0
        if self.call is not None:
            self.call.cancel()  # it was for a segment that is gone
            self.call = None

    def kick(self) -> None:
        """Look at the queue again (after a heal, a resume, the receiver's accept)."""
        if self.call is None and not self.pumping and self.queue:
            self.call = self.net.clock.call_at(self.queue[0].ready, self.pump)

    def release(self, now: float) -> None:
        """The cut holding this pipe healed: what it held crosses one latency from now, the
        writes that would have arrived by then in one segment (as TCP retransmits them)."""
        queue = self.queue
        if queue and not queue[0].crossed:
            back = now + self.latency
            head = queue.popleft()
            if head.arrive < back:
                head.arrive = back
            while head.kind == _DATA and queue and queue[0].kind == _DATA and queue[0].arrive <= back:
                head.chunks.extend(queue[0].chunks)
                head.nbytes += queue.popleft().nbytes
            head.ready = head.arrive + head.nbytes * self.dst.host.byte_time
            queue.appendleft(head)
        self.kick()

    def _cross(self, seg: _Segment) -> bool:
        """Take `seg` off the path and onto the receiver's downlink (its `ready` becomes the
        end of that transfer): False if a cut holds it (the pipe waits for the heal)."""
        net = self.net
        if net._cuts and net.is_cut(self.src.host.address, self.dst.host.address):
            net._held[self] = None
            return False
        seg.crossed = True
        if seg.kind == _DATA:
            host = self.dst.host
            free = host.down_free
            done = (seg.arrive if seg.arrive > free else free) + seg.nbytes * host.byte_time
            host.down_free = done
            seg.ready = done
        return True

    def pump(self) -> None:
        """Move the first segment on (and what may go with it) as far as it can go now;
        schedule the next look, or wait for a kick (a cut, a paused or unaccepted reader)."""
        self.call = None
        self.pumping = True
        queue = self.queue
        clock = self.net.clock
        rx = self.dst
        try:
            while queue:
                now = clock._now
                seg = queue[0]
                if seg.ready > now:
                    self.call = clock.call_at(seg.ready, self.pump)
                    return
                if not seg.crossed:
                    if not self._cross(seg):
                        return
                    if seg.ready > now:
                        continue  # the downlink is busy: wait for it
                if seg.kind == _RST:
                    self.drop()
                    rx._reset_by_peer()
                    return
                if rx.disconnected:
                    self.drop()
                    return
                if rx.disconnecting:
                    queue.popleft()  # it stopped reading when it began to close
                    self.queued_bytes -= seg.nbytes
                    continue
                if rx.protocol is None or rx.reading_paused:
                    return  # its accept or resumeProducing kicks the pipe
                busy = rx.host.busy_until
                if busy > now:
                    seg.ready = busy
                    continue
                queue.popleft()
                if seg.kind == _FIN:
                    rx._closed_by_peer()
                    return
                chunks, nbytes = seg.chunks, seg.nbytes
                while queue:  # what is through the downlink by now is read with it
                    nxt = queue[0]
                    if nxt.kind != _DATA or nxt.ready > now:
                        break
                    if not nxt.crossed and (not self._cross(nxt) or nxt.ready > now):
                        break
                    queue.popleft()
                    chunks.extend(nxt.chunks)
                    nbytes += nxt.nbytes
                self.queued_bytes -= nbytes
                self._deliver(chunks[0] if len(chunks) == 1 else b"".join(chunks), nbytes, now)
        finally:
            self.pumping = False

    def _deliver(self, data: bytes, nbytes: int, now: float) -> None:
        net = self.net
        rx = self.dst
        host = rx.host
        host.busy_until = now + host.receive_cost(nbytes)
        host.bytes_received += nbytes
        net.deliveries += 1
        net.trace.update(_RECORD.pack(b"D", round(now * MICROSECONDS), nbytes) + self.header)
        net.trace.update(data)
        protocol = rx.protocol
        assert protocol is not None
        try:
            protocol.dataReceived(data)
        except Exception:
            failure = Failure()
            log.failure("dataReceived failed on {transport!r}; closing it", failure, transport=rx)
            rx._close_with(failure)
        src = self.src
        if src._producer_paused:
            src._check_producer()  # the peer read: the window may be open again


@implementer(ITransport, IConsumer, IPushProducer)
class SimTransport:
    """One end of a simulated TCP connection: what a protocol's `transport` is. Beyond
    ITransport: abortConnection, setTcpNoDelay/getTcpNoDelay, setTcpKeepAlive/
    getTcpKeepAlive (no-ops), and, as a producer, pausing and resuming its reading."""

    def __init__(self, net: "SimNetwork", host: "SimHost", local_port: int, remote: "SimHost",
                 remote_port: int) -> None:
        self.net = net
        self.host = host
        self.local_port = local_port
        self.remote = remote
        self.remote_port = remote_port
        self._address = IPv4Address("TCP", host.address, local_port)
        self._peer_address = IPv4Address("TCP", remote.address, remote_port)
        self.protocol: Optional[IProtocol] = None
        self.protocol_factory: Optional[IProtocolFactory] = None  # a client's: stopped when it closes
        self.outbound = False  # its local port is an ephemeral one of its host's
        self.out: _Pipe  # set by the network once both ends exist
        self.inbound: _Pipe
        self.connected = False  # True from its protocol's connectionMade to its close
        self.disconnecting = False  # loseConnection was called: closing once the writes are out
        self.disconnected = False
        self.reading_paused = False
        self.producer: Optional[IPushProducer] = None
        self._producer_paused = False
        self._unsent: collections.deque[tuple[float, int]] = collections.deque()  # (leaves uplink, bytes)
        self._unsent_bytes = 0
        self._sent_by = net.clock.seconds()  # when its last write leaves the uplink
        self._drain_call: Optional[SimDelayedCall] = None
        self._close_call: Optional[SimDelayedCall] = None
        self._aborting = False
        self._no_delay = False
        self._keep_alive = False

    def __repr__(self) -> str:
        return f"<SimTransport {self.host.address}:{self.local_port} -> {self.remote.address}:{self.remote_port}>"

    # ITransport

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        nbytes = len(data)
        if not self.connected or not nbytes:
            return
        host = self.host
        now = self.net.clock._now
        free = host.up_free
        leaves = (free if free > now else now) + nbytes * host.byte_time
        host.up_free = leaves
        host.bytes_sent += nbytes
        host.writes_sent += 1
        self._sent_by = leaves
        unsent = self._unsent
        while unsent and unsent[0][0] <= now:
            self._unsent_bytes -= unsent.popleft()[1]
        unsent.append((leaves, nbytes))
        self._unsent_bytes += nbytes
        pipe = self.out
        arrive = leaves + pipe.latency
        net = self.net
        if net.loss and net.rng.random() < net.loss:
            arrive += pipe.rto
            net.losses += 1
        pipe.push(data, nbytes, arrive)
        if self.producer is not None and not self._producer_paused and (
                self._unsent_bytes > UPLINK_PAUSE_BYTES or pipe.dst.reading_paused):
            self._check_producer()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close once every write has left the uplink: this side's connectionLost
        (ConnectionDone) then, the peer's when the FIN arrives, after the data."""
        if not self.connected or self.disconnecting:
            return
        self.disconnecting = True
        self._close_call = self.net.clock.call_at(self._sent_by, self._send_fin)

    def abortConnection(self) -> None:
        """Drop what is queued either way; this side's connectionLost (ConnectionAborted,
        a ConnectionLost) comes at once (in a call at the current time, as Twisted's), the
        peer's (ConnectionLost) one latency later."""
        if self.disconnected or self._aborting:
            return
        self._aborting = True
        self.connected = False
        self.out.drop()
        self.inbound.drop()
        self.out.push_control(_RST, self.net.clock._now + self.out.latency)
        self.net.clock.call_at(self.net.clock._now, self._finish, Failure(error.ConnectionAborted()))

    def getPeer(self) -> IPv4Address:
        return self._peer_address

    def getHost(self) -> IPv4Address:
        return self._address

    # TCP options (no-ops, for code that sets them)

    def setTcpNoDelay(self, enabled: bool) -> None:
        self._no_delay = bool(enabled)

    def getTcpNoDelay(self) -> bool:
        return self._no_delay

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self._keep_alive = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self._keep_alive

    # IConsumer: what we write, and the producer writing it

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(f"Cannot register producer {producer!r}, because producer {self.producer!r} "
                               "was never unregistered.")
        if not streaming:
            raise NotImplementedError("SimTransport takes streaming (push) producers only")
        if self.disconnected:
            producer.stopProducing()
            return
        self.producer = cast(IPushProducer, producer)
        self._producer_paused = False
        self._check_producer()

    def unregisterProducer(self) -> None:
        self.producer = None
        self._producer_paused = False
        if self._drain_call is not None:
            self._drain_call.cancel()
            self._drain_call = None

    # IPushProducer: our reading

    def pauseProducing(self) -> None:
        """Stop reading: what arrives waits here (and past the window, the peer is paused)."""
        if self.reading_paused:
            return
        self.reading_paused = True
        peer = self.inbound.src
        if peer.producer is not None and not peer._producer_paused:
            peer._check_producer()

    def resumeProducing(self) -> None:
        if not self.connected or self.disconnecting or not self.reading_paused:
            return
        self.reading_paused = False
        self.inbound.kick()
        peer = self.inbound.src
        if peer._producer_paused:
            peer._check_producer()

    def stopProducing(self) -> None:
        self.loseConnection()

    # flow control

    def _check_producer(self) -> None:
        """Pause or resume our producer: UPLINK_PAUSE_BYTES not yet out of the uplink, or a
        peer not reading with RECEIVE_WINDOW_BYTES waiting for it, pause it; below half of
        both, it resumes."""
        producer = self.producer
        if producer is None or self.disconnected:
            return
        now = self.net.clock._now
        unsent = self._unsent
        while unsent and unsent[0][0] <= now:
            self._unsent_bytes -= unsent.popleft()[1]
        waiting = self.out.queued_bytes if self.out.dst.reading_paused else 0
        if self._producer_paused:
            if self._unsent_bytes <= UPLINK_RESUME_BYTES and waiting <= RECEIVE_WINDOW_BYTES // 2:
                self._producer_paused = False
                producer.resumeProducing()
            elif self._unsent_bytes > UPLINK_RESUME_BYTES:
                self._watch_drain()
        elif self._unsent_bytes > UPLINK_PAUSE_BYTES or waiting > RECEIVE_WINDOW_BYTES:
            self._producer_paused = True
            producer.pauseProducing()
            if self._unsent_bytes > UPLINK_RESUME_BYTES:
                self._watch_drain()

    def _watch_drain(self) -> None:
        """A check at the time our unsent bytes fall to UPLINK_RESUME_BYTES (writes leave
        the uplink at known times)."""
        if self._drain_call is not None:
            return
        left = self._unsent_bytes
        when = self.net.clock._now
        for leaves, nbytes in self._unsent:
            left -= nbytes
            when = leaves
            if left <= UPLINK_RESUME_BYTES:
                break
        self._drain_call = self.net.clock.call_at(when, self._drained)

    def _drained(self) -> None:
        self._drain_call = None
        self._check_producer()

    # the connection's life

    def _made(self, protocol: IProtocol) -> bool:
        """Connect `protocol` to this end (connectionMade); False if it raised (the
        connection is then closed)."""
        self.protocol = protocol
        self.connected = True
        self.host.connections[self] = None
        self.net._note_connection(b"C", self)
        try:
            protocol.makeConnection(self)
        except Exception:
            failure = Failure()
            log.failure("connectionMade failed on {transport!r}; closing it", failure, transport=self)
            self._close_with(failure)
            return False
        self.inbound.kick()
        return True

    def _send_fin(self) -> None:
        self._close_call = None
        if self.disconnected:
            return
        if self._sent_by > self.net.clock._now:  # written to while closing: wait for that too
            self._close_call = self.net.clock.call_at(self._sent_by, self._send_fin)
            return
        self._close_with(Failure(error.ConnectionDone()))

    def _close_with(self, reason: Failure) -> None:
        """Close now: a FIN follows the writes already made; our connectionLost(reason)."""
        if self.disconnected:
            return
        self.connected = False
        self.out.push_control(_FIN, max(self.net.clock._now, self._sent_by) + self.out.latency)
        self._finish(reason)

    def _closed_by_peer(self) -> None:
        """The peer's FIN, after its data: our end closes (ConnectionDone)."""
        if self.disconnected:
            return
        self.connected = False
        self._finish(Failure(error.ConnectionDone()))

    def _reset_by_peer(self) -> None:
        """The peer's RST: what we had queued is dropped; ConnectionLost."""
        if self.disconnected:
            return
        self.connected = False
        self.out.drop()
        self._finish(Failure(error.ConnectionLost()))

    def _finish(self, reason: Failure) -> None:
        """The end of this side: as Twisted's, the producer is stopped, then the protocol's
        connectionLost(reason) runs."""
        if self.disconnected:
            return
        self.disconnected = True
        self.connected = False
        for call in (self._drain_call, self._close_call):
            if call is not None and call.active():
                call.cancel()
        self._drain_call = self._close_call = None
        self.inbound.drop()
        self.host.connections.pop(self, None)
        if self.outbound:
            self.host._release_port(self.local_port)
        self.net._note_connection(b"L", self, reason.type.__name__.encode())
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                log.failure("stopProducing failed on {transport!r}", transport=self)
        if self.protocol is not None:
            try:
                self.protocol.connectionLost(reason)
            except Exception:
                log.failure("connectionLost failed on {transport!r}", transport=self)
        if self.protocol_factory is not None:
            self.protocol_factory.doStop()


@implementer(IListeningPort)
class SimListeningPort:
    """A host's listening port (IListeningPort): its factory builds each inbound protocol."""

    def __init__(self, host: "SimHost", port: int, factory: IProtocolFactory) -> None:
        self.host = host
        self.port = port
        self.factory = factory
        self.listening = False

    def startListening(self) -> None:
        if self.listening:
            return
        if self.port in self.host.listeners:
            raise error.CannotListenError(self.host.address, self.port, "address already in use")
        self.host.listeners[self.port] = self
        self.listening = True
        self.factory.doStart()

    def stopListening(self) -> defer.Deferred[None]:
        """Refuse new connections (the open ones stay)."""
        if self.listening:
            self.listening = False
            del self.host.listeners[self.port]
            self.factory.doStop()
        return defer.succeed(None)

    loseConnection = stopListening

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", self.host.address, self.port)

    def logPrefix(self) -> str:
        return f"SimListeningPort {self.host.address}:{self.port}"


@implementer(IStreamClientEndpoint)
class SimClientEndpoint:
    """Dials `dest:port` from `host` (IStreamClientEndpoint): `connect(factory)` fires
    with the built protocol once the connection is up, one round trip later, or fails with
    ConnectionRefusedError (no listener, one round trip), TimeoutError (no such host, a
    host down, a cut path: after `timeout`) or ConnectingCancelledError (cancelled)."""

    def __init__(self, host: "SimHost", dest: str, port: int, timeout: float = CONNECT_TIMEOUT) -> None:
        self.host = host
        self.dest = dest
        self.port = port
        self.timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        return _Attempt(self.host.net, self.host, self.dest, self.port, protocolFactory, self.timeout).deferred


@implementer(IStreamServerEndpoint)
class SimServerEndpoint:
    """Listens on `host:port` (IStreamServerEndpoint)."""

    def __init__(self, host: "SimHost", port: int) -> None:
        self.host = host
        self.port = port

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        return defer.execute(self.host.listen, self.port, protocolFactory)


class _Attempt:
    """One connection attempt: SYN at once, SYN-ACK one latency later, connected (client
    side) after the round trip, accepted (server side) when the ACK lands half a round
    trip after that."""

    def __init__(self, net: "SimNetwork", src: "SimHost", dest: str, port: int, factory: IProtocolFactory,
                 timeout: float) -> None:
        self.net = net
        self.src = src
        self.dest = dest
        self.port = port
        self.factory = factory
        self.address = IPv4Address("TCP", dest, port)
        self.done = False
        self.deferred: defer.Deferred[IProtocol] = defer.Deferred(self._cancel)
        self.step: Optional[SimDelayedCall] = None
        self.latency = 0.0
        clock = net.clock
        now = clock.seconds()
        factory.doStart()
        self.timer: Optional[SimDelayedCall] = clock.call_at(now + timeout, self._timed_out)
        target = net.hosts.get(dest)
        if target is None or src.down or target.down or net.is_cut(src.address, dest):
            return  # the SYN goes nowhere: the attempt times out
        self.latency = net.latency(src.address, dest)
        self.step = clock.call_at(now + self.latency, self._syn_arrived, target)

    def _end(self) -> bool:
        """Mark the attempt over; False if it already was."""
        if self.done:
            return False
        self.done = True
        for call in (self.timer, self.step):
            if call is not None and call.active():
                call.cancel()
        self.timer = self.step = None
        return True

    def _fail(self, kind: bytes, reason: Exception) -> None:
        if self._end():
            self.net._note(kind, self.src.packed + self.address.host.encode() + b":%d" % self.port)
            self.factory.doStop()
            self.deferred.errback(Failure(reason))

    def _syn_arrived(self, target: "SimHost") -> None:
        self.step = None
        if target.down or self.net.is_cut(self.src.address, target.address):
            return  # lost: the attempt times out
        when = self.net.clock.seconds() + self.latency
        if self.port in target.listeners:
            self.step = self.net.clock.call_at(when, self._established, target)
        else:
            self.step = self.net.clock.call_at(when, self._refused)

    def _refused(self) -> None:
        self.step = None
        self._fail(b"R", error.ConnectionRefusedError(string=f"{self.dest}:{self.port} has no listener"))

    def _timed_out(self) -> None:
        self.timer = None
        self._fail(b"T", error.TimeoutError(string=f"connecting to {self.dest}:{self.port}"))

    def _cancel(self, deferred: defer.Deferred[IProtocol]) -> None:
        self._fail(b"X", error.ConnectingCancelledError(self.address))

    def _established(self, target: "SimHost") -> None:
        self.step = None
        if self.done or self.src.down or self.net.is_cut(self.src.address, target.address):
            return  # the SYN-ACK was lost: the attempt times out
        self._end()
        try:
            protocol = self.factory.buildProtocol(self.address)
            if protocol is None:
                raise error.NoProtocol()
        except Exception:
            self.factory.doStop()
            self.deferred.errback(Failure())
            return
        client, server = self.net._pair(self.src, target, self.port, self.latency)
        client.protocol_factory = self.factory
        client.outbound = True
        if client._made(protocol):
            self.deferred.callback(protocol)
        else:
            self.deferred.errback(Failure(error.ConnectionLost("connectionMade failed")))
        self.net.clock.call_at(self.net.clock.seconds() + self.latency, self.net._accept, server, target)


class SimHost:
    """A simulated machine with one IPv4 address: its listeners and connections, its
    links (`bandwidth_mbit`, None for the network's), its reader (`receive_cost`,
    `busy_until`, `charge`) and its traffic counters."""

    def __init__(self, net: "SimNetwork", address: str) -> None:
        self.net = net
        self.address = address
        self.packed = ipaddress.IPv4Address(address).packed
        self.listeners: dict[int, SimListeningPort] = {}
        self.connections: dict[SimTransport, None] = {}  # open ends here, in the order they opened
        self._bandwidth_mbit: Optional[float] = None
        self.byte_time = net.byte_time  # seconds a byte takes on either link
        self.up_free = self.down_free = self.busy_until = net.clock.seconds()
        self.receive_cost: Callable[[int], float] = _no_cost  # seconds to process n received bytes
        self.down = False
        self.bytes_sent = 0
        self.bytes_received = 0
        self.writes_sent = 0
        self._next_port = EPHEMERAL_FIRST
        self._ports: dict[int, None] = {}  # ephemeral ports in use

    def __repr__(self) -> str:
        return f"<SimHost {self.address}>"

    @property
    def bandwidth_mbit(self) -> Optional[float]:
        return self._bandwidth_mbit

    @bandwidth_mbit.setter
    def bandwidth_mbit(self, mbit: Optional[float]) -> None:
        self.byte_time = self.net.byte_time if mbit is None else _byte_time(mbit)
        self._bandwidth_mbit = mbit

    def listen(self, port: int, factory: IProtocolFactory) -> SimListeningPort:
        listening = SimListeningPort(self, port, factory)
        listening.startListening()
        return listening

    def endpoint(self, dest_host: str, dest_port: int, timeout: float = CONNECT_TIMEOUT) -> SimClientEndpoint:
        return SimClientEndpoint(self, dest_host, dest_port, timeout)

    def server_endpoint(self, port: int) -> SimServerEndpoint:
        return SimServerEndpoint(self, port)

    def charge(self, seconds: float) -> None:
        """Work of this host's reactor thread: it reads nothing more for `seconds`."""
        now = self.net.clock.seconds()
        self.busy_until = max(now, self.busy_until) + seconds

    def _ephemeral_port(self) -> int:
        span = EPHEMERAL_LAST - EPHEMERAL_FIRST + 1
        for _ in range(span):
            port = self._next_port
            self._next_port = port + 1 if port < EPHEMERAL_LAST else EPHEMERAL_FIRST
            if port not in self._ports and port not in self.listeners:
                self._ports[port] = None
                return port
        raise error.ConnectError(string=f"{self.address} has no free ephemeral port")

    def _release_port(self, port: int) -> None:
        self._ports.pop(port, None)


class SimNetwork:
    """The hosts, the paths between them and the partitions, on one clock and one random
    generator. `latency_ms`: the range one-way latencies are drawn from; `bandwidth_mbit`:
    each host's uplink and downlink unless it sets its own; `loss`: the chance a write is
    lost (and retransmitted); `rto_ms`: the least retransmission timeout."""

    def __init__(self, clock: HeapClock, rng: random.Random, latency_ms: tuple[float, float] = (50.0, 150.0),
                 bandwidth_mbit: float = 20.0, loss: float = 0.0, rto_ms: float = 200.0) -> None:
        low, high = latency_ms
        if not 0 <= low <= high:
            raise ValueError(f"latency_ms must be 0 <= low <= high, not {latency_ms}")
        if not 0 <= loss < 1:
            raise ValueError(f"loss must be in [0, 1), not {loss}")
        self.clock = clock
        self.rng = rng
        self.latency_ms = (float(low), float(high))
        self._bandwidth_mbit = float(bandwidth_mbit)
        self.byte_time = _byte_time(self._bandwidth_mbit)
        self.loss = float(loss)
        self.rto = rto_ms / 1000.0
        self.hosts: dict[str, SimHost] = {}
        self._latencies: dict[tuple[str, str], float] = {}
        self._cuts: list[frozenset[str]] = []
        self._held: dict[_Pipe, None] = {}  # pipes waiting for a heal, in the order they stopped
        self.deliveries = 0
        self.losses = 0
        self.trace = hashlib.sha256()

    @property
    def bandwidth_mbit(self) -> float:
        """Every host's default (fixed; a host may set its own `bandwidth_mbit`)."""
        return self._bandwidth_mbit

    # hosts and paths

    def add_host(self, address: str) -> SimHost:
        if address in self.hosts:
            raise ValueError(f"host {address} already exists")
        host = self.hosts[address] = SimHost(self, address)
        return host

    def latency(self, a: str, b: str) -> float:
        """The one-way latency between two addresses, in seconds (drawn at first use)."""
        key = (a, b) if a <= b else (b, a)
        latency = self._latencies.get(key)
        if latency is None:
            low, high = self.latency_ms
            latency = self._latencies[key] = self.rng.uniform(low, high) / 1000.0
        return latency

    def set_down(self, address: str, down: bool) -> None:
        """A host whose node is down: its connections are aborted (its own protocols lose
        them at once, the peers one latency later, with ConnectionLost) and connection
        attempts to or from it time out until it is up again."""
        host = self.hosts[address]
        host.down = down
        if down:
            for transport in list(host.connections):
                transport.abortConnection()

    # partitions

    def partition(self, hosts: Iterable[str]) -> frozenset[str]:
        """Cut every path between `hosts` and the rest (until `heal`). Returns the cut."""
        cut = frozenset(hosts)
        self._cuts.append(cut)
        self._note(b"P", b",".join(sorted(address.encode() for address in cut)))
        return cut

    def heal(self) -> None:
        """Remove every cut; data held on them moves on, one latency from now."""
        self._cuts.clear()
        self._note(b"H", b"")
        held, self._held = self._held, {}
        now = self.clock.seconds()
        for pipe in held:
            pipe.release(now)

    def is_cut(self, a: str, b: str) -> bool:
        for cut in self._cuts:
            if (a in cut) != (b in cut):
                return True
        return False

    # connections

    def _pair(self, client_host: SimHost, server_host: SimHost, server_port: int,
              latency: float) -> tuple[SimTransport, SimTransport]:
        """The two ends of a new connection, their pipes joined."""
        port = client_host._ephemeral_port()
        client = SimTransport(self, client_host, port, server_host, server_port)
        server = SimTransport(self, server_host, server_port, client_host, port)
        rto = max(self.rto, 4 * latency)  # max(rto, 2 RTT)
        client.out = server.inbound = _Pipe(self, client, server, latency, rto)
        server.out = client.inbound = _Pipe(self, server, client, latency, rto)
        server.host.connections[server] = None
        return client, server

    def _accept(self, server: SimTransport, host: SimHost) -> None:
        """The handshake's last ACK reaches the server: its listener builds the protocol."""
        if server.disconnected:
            return
        listening = host.listeners.get(server.local_port)
        protocol = None
        if listening is not None and not host.down:
            try:
                protocol = listening.factory.buildProtocol(server.getPeer())
            except Exception:
                log.failure("buildProtocol failed on {listening!r}", listening=listening.logPrefix())
        if protocol is None:
            server.abortConnection()  # nobody to take it: reset
            return
        server._made(protocol)

    # the trace

    def _note(self, kind: bytes, payload: bytes) -> None:
        self.trace.update(_RECORD.pack(kind, round(self.clock.seconds() * MICROSECONDS), len(payload)) + payload)

    def _note_connection(self, kind: bytes, transport: SimTransport, detail: bytes = b"") -> None:
        self._note(kind, transport.out.header + detail)

    def trace_note(self, data: bytes) -> None:
        """Add an event of the caller's to the trace (at the current time)."""
        self._note(b"N", data)

    def digest(self) -> str:
        """The trace's SHA-256 so far, in hex: equal for runs with the same events."""
        return self.trace.hexdigest()


__all__ = ["SimNetwork", "SimHost", "SimTransport", "SimListeningPort", "SimClientEndpoint", "SimServerEndpoint",
           "UPLINK_PAUSE_BYTES", "UPLINK_RESUME_BYTES", "RECEIVE_WINDOW_BYTES", "EPHEMERAL_FIRST", "EPHEMERAL_LAST",
           "CONNECT_TIMEOUT"]
