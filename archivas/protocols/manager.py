"""The peer manager: connections and their slots, the handshake, the gate, misbehaviour,
bans, the heartbeat, dialing, the address book and peer exchange.

It receives every framed line (an envelope) from the PeerProtocols and is the one place
that decides whether a message may be acted on: the connection's state holds the table
of message types it accepts (`states.accepted`). Anything else is dropped unparsed and
counted in `dropped_counts`; the original project's numbers we do not act on cost
nothing. Every handler runs under one error boundary (`_dispatch`). Lifecycle messages
are handled here; chain messages go to the node through `PeerEvents`. Numbers are in
docs/protocol.md; every time comes from the injected reactor.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import json
import os
import random
from typing import Any, Callable, Iterable, Optional

from twisted.application.internet import ClientService
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IReactorCore, IReactorTCP
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from archivas.protocols import addrman, entropy, eviction, identity, states, tls, wire
from archivas.protocols.addrman import canonical_ip
from archivas.protocols.banlist import BanList
from archivas.protocols.interfaces import ChainView, PeerEvents
from archivas.protocols.peer import PeerProtocol, PeerState

log = Logger()

PING_INTERVAL = 10.0  # seconds between PINGs to each peer
PEER_TIMEOUT = 30.0  # a peer silent this long is disconnected
READY_TIMEOUT = 30.0  # a connection not READY by then is closed (idle sockets hold no slot)
STATUS_EVERY = 3  # heartbeats between GET_STATUS refreshes of a ready peer's tip (30 s)

# Connections, as Bitcoin Core's: 125 in all, 8 full-relay and 2 block-relay-only
# outbound, 1 feeler at a time; the rest inbound.
MAX_CONNECTIONS = 125
MAX_OUTBOUND = 8
MAX_BLOCK_RELAY = 2
MAX_FEELERS = 1
MAX_INBOUND = MAX_CONNECTIONS - MAX_OUTBOUND - MAX_BLOCK_RELAY - MAX_FEELERS  # 114

BAN_SCORE = 100  # misbehaviour points that end the connection and discourage the address
BAN_SECONDS = 24 * 3600.0  # default length of an operator's ban (and of a discouragement)
MAX_DISCOURAGED = 50_000  # addresses remembered as discouraged (oldest forgotten first)

FILL_INTERVAL = 5.0  # seconds between attempts to fill free outbound slots from the book
FEELER_INTERVAL = 120.0  # seconds between feeler connections to untried addresses
BOOK_SAVE_INTERVAL = 900.0  # seconds between saves of the address book
BOOTSTRAP_BELOW = 32  # the network's bootstrap host names are dialed while the book is this small
DIAL_TIMEOUT = 10.0  # seconds for one attempt from the book

# Points per kind of misbehaviour (the connection ends at BAN_SCORE).
PENALTIES = {
    "bad_json": 10,
    "bad_shape": 10,
    "bad_payload": 10,
    "unknown_type": 5,
    "invalid_block": 50,
    "invalid_header": 50,
    "invalid_transaction": 5,
    "bad_handshake": BAN_SCORE,
    "rate_limit": BAN_SCORE,
    "line_too_long": BAN_SCORE,
}

# Dialing: a --peers entry is redialed with backoff; a connection that ends before it
# became READY, or within STABLE_SECONDS, counts as a failed attempt (so a peer that
# accepts and hangs up is not redialed at the shortest delay), and a banned address or one
# refused for another network waits longer.
DIAL_INITIAL_DELAY = 0.5
DIAL_FACTOR = 1.5
DIAL_MAX_DELAY = 60.0
STABLE_SECONDS = 60.0
WRONG_CHAIN_DELAY = 600.0  # first wait after "another network or genesis", doubling
WRONG_CHAIN_MAX_DELAY = 4 * 3600.0
DISCOURAGED_REDIAL = 600.0  # a --peers entry that misbehaved is tried again after this at the soonest


class DialPolicy:
    """The retry policy of one outbound address (ClientService's `retryPolicy`): the delay
    before the next attempt, from the attempts that failed, the connections that ended
    early, a ban on the address's host and a refusal for another chain."""

    def __init__(self, manager: "PeerManager", address: str, rng: random.Random) -> None:
        self.manager = manager
        self.address = address
        self.rng = rng
        self.early_drops = 0
        self.wrong_chain = 0
        self.last_host: Optional[str] = None

    def __call__(self, failed_attempts: int) -> float:
        attempts = min(failed_attempts + self.early_drops, 64)
        delay = min(DIAL_INITIAL_DELAY * DIAL_FACTOR ** attempts, DIAL_MAX_DELAY)
        delay *= 1.0 + self.rng.random() * 0.1
        if self.wrong_chain:
            delay = max(delay, min(WRONG_CHAIN_DELAY * 2.0 ** (self.wrong_chain - 1), WRONG_CHAIN_MAX_DELAY))
        if self.last_host is not None:
            delay = max(delay, self.manager.ban_remaining(self.last_host))
            if self.manager.is_discouraged(self.last_host):
                delay = max(delay, DISCOURAGED_REDIAL)
        return delay


class PeerFactory(Factory):
    """Builds PeerProtocols for one direction and slot (and, outbound, one dialed
    address); the manager holds everything else."""

    noisy = False

    def __init__(self, manager: "PeerManager", direction: str, dial_address: Optional[str] = None,
                 slot: str = "") -> None:
        self.manager = manager
        self.direction = direction
        self.dial_address = dial_address
        self.slot = slot or ("inbound" if direction == "inbound" else "manual")

    def buildProtocol(self, addr: object) -> PeerProtocol:
        proto = PeerProtocol(self.manager, self.manager.reactor, self.direction, self.dial_address)
        proto.slot = self.slot
        return proto


def is_local(host: str) -> bool:
    ip = canonical_ip(host)
    return ip.is_loopback if ip is not None else host == "localhost"


def normal_host(host: str) -> str:
    ip = canonical_ip(host)
    return str(ip) if ip is not None else host


@functools.lru_cache(maxsize=16384)  # pure; asked for every address of every GOSSIP_PEERS
def gossip_acceptable(address: str, source_host: str) -> bool:
    """Whether an address heard in peer exchange may enter the book (as Bitcoin Core's
    IsRoutable): an IP literal, never a name (names come from configuration only), never
    link-local, multicast, reserved or unspecified; a private or loopback address only
    from a peer that is itself private or loopback (a LAN or one-host network)."""
    try:
        host, _ = split_address(address)
    except ValueError:
        return False
    ip = canonical_ip(host)
    if ip is None or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    if ip.is_global:
        return True
    source = canonical_ip(source_host)
    return source is not None and not source.is_global


def split_address(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port`: (host, port); ValueError for anything else."""
    host, port = addrman.parse_address(address)
    return host, port


class PeerManager:
    def __init__(
        self,
        view: ChainView,
        events: PeerEvents,
        reactor: Any,
        node_identity: Optional[identity.NodeIdentity] = None,
        listen_port: int = 0,
        max_inbound: int = MAX_INBOUND,
        max_outbound: int = MAX_OUTBOUND,
        max_block_relay: int = MAX_BLOCK_RELAY,
        ping_interval: float = PING_INTERVAL,
        peer_timeout: float = PEER_TIMEOUT,
        ready_timeout: float = READY_TIMEOUT,
        ban_seconds: float = BAN_SECONDS,
        whitelist: Iterable[str] = (),
        bans: Optional[BanList] = None,
        book: Optional[addrman.AddressBook] = None,
        book_path: Optional[str] = None,
        group: Callable[[str], bytes] = eviction.address_group,
        discover: bool = True,
        tls_certificate: Optional[Any] = None,
        endpoint_factory: Optional[Callable[[str, int, float], Any]] = None,
        codec: Optional[Any] = None,
    ) -> None:
        self.view = view
        self.events = events
        self.reactor = reactor
        self.identity = node_identity or identity.NodeIdentity.ephemeral()
        self.node_id = self.identity.node_id
        self.listen_port = listen_port
        self.max_inbound = max_inbound
        self.max_outbound = max_outbound
        self.max_block_relay = max_block_relay
        self.ping_interval = ping_interval
        self.peer_timeout = peer_timeout
        self.ready_timeout = ready_timeout
        self.ban_seconds = ban_seconds
        self.whitelist = [ipaddress.ip_network(net, strict=False) for net in whitelist]
        self.bans = bans if bans is not None else BanList(reactor.seconds)
        self.group = group
        self.discover = discover  # fill outbound slots from the address book
        self.tls_certificate = tls_certificate  # for tls:host:port peers (tls.py); made on first need
        # (host, port, timeout) -> a client endpoint, instead of TCP (the simulator's links)
        self.endpoint_factory = endpoint_factory
        # A line's two decoding steps (wire.decode_envelope, wire.parse), or a `codec`'s with
        # the same two methods and results: the simulator's decodes a line that many of its
        # nodes receive once for all of them (sim/codec.py).
        self.decode_envelope: Callable[[bytes], wire.Envelope] = (
            wire.decode_envelope if codec is None else codec.decode_envelope)
        self.parse: Callable[[wire.Envelope, wire.Limits], wire.Message] = (
            wire.parse if codec is None else codec.parse)
        self._rng = entropy.new_rng()
        self.book = book if book is not None else addrman.AddressBook(reactor.seconds, self._rng, group=group)
        self.book_path = book_path
        self.addr_limiter = addrman.AddrRateLimiter(reactor.seconds)
        self.peers: list[PeerProtocol] = []
        self.discouraged: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.dialers: dict[str, ClientService] = {}
        self.dial_policies: dict[str, DialPolicy] = {}
        self.misbehaviour_counts: collections.Counter[str] = collections.Counter()
        self.dropped_counts: collections.Counter[str] = collections.Counter()
        self.evicted = 0
        self.inbound_factory = PeerFactory(self, "inbound")
        self.outbound_factory = PeerFactory(self, "outbound", slot="outbound")
        self.limits = wire.Limits.from_params(view.params)
        self._loops: list[LoopingCall] = []
        self._beats = 0
        self.on_ready: list[Callable[[PeerProtocol], None]] = []
        self._dialing: dict[str, str] = {}  # address -> slot, attempts from the book in flight
        self._own_nonces: set[bytes] = set()  # HELLO nonces of our open connections
        self.bootstrap: list[str] = []  # host names dialed while the book is small
        self._lifecycle: dict[type[wire.Message], Callable[[PeerProtocol, Any], None]] = {
            wire.Ping: self._on_ping,
            wire.Pong: self._on_pong,
            wire.GetStatus: self._on_get_status,
            wire.Status: self._on_status,
            wire.Hello: self._on_hello,
            wire.HelloAck: self._on_hello_ack,
            wire.GetPeers: self._on_get_peers,
            wire.Peers: self._on_peers,
        }

    # life of the manager

    def _every(self, seconds: float, f: Callable[[], None]) -> None:
        loop = LoopingCall(f)
        loop.clock = self.reactor
        loop.start(seconds, now=False).addErrback(lambda failure: log.failure("[p2p] periodic task failed",
                                                                              failure))
        self._loops.append(loop)

    def start(self) -> None:
        self._load_book()
        self._every(self.ping_interval, self.heartbeat)
        if self.discover:
            self._every(FILL_INTERVAL, self.fill_outbound)
            self._every(FEELER_INTERVAL, self.feeler)
        if self.book_path is not None:
            self._every(BOOK_SAVE_INTERVAL, self.save_book)

    def stop(self) -> defer.Deferred:
        """Stop dialing and close every connection; fires when all are gone."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        self.save_book()
        waits = [service.stopService() for service in self.dialers.values() if service.running]
        self.dialers.clear()
        for proto in list(self.peers):
            proto.disconnect("node stopping")
            waits.append(proto.lost)
        return defer.DeferredList(waits, consumeErrors=True)

    def _load_book(self) -> None:
        if self.book_path is None or not os.path.exists(self.book_path):
            return
        try:
            with open(self.book_path) as f:
                self.book = addrman.AddressBook.from_json(json.load(f), self.reactor.seconds, self._rng,
                                                          group=self.group)
        except (OSError, ValueError) as e:
            log.warn("[p2p] address book {path} unreadable, starting afresh: {e}", path=self.book_path, e=str(e))
            return
        new, tried = self.book.counts()
        log.info("[p2p] address book: {new} new, {tried} tried addresses", new=new, tried=tried)

    def save_book(self) -> None:
        if self.book_path is None:
            return
        tmp = f"{self.book_path}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(self.book.to_json(), f)
            os.replace(tmp, self.book_path)
        except OSError as e:
            log.warn("[p2p] could not save the address book: {e}", e=str(e))

    # dialing

    def client_service(self, address: str, endpoint: Optional[Any] = None) -> ClientService:
        """A (not yet started) service keeping an outbound connection to `host:port`
        (a host name, resolved again at every attempt, or `[v6]:port`), reconnecting with
        backoff (DialPolicy); the node's service tree starts and stops it. `endpoint`
        replaces the TCP one (tests)."""
        if address in self.dialers:
            return self.dialers[address]
        use_tls = address.startswith(tls.TLS_PREFIX)
        host, port = split_address(address[len(tls.TLS_PREFIX):] if use_tls else address)
        if endpoint is None and use_tls:
            if self.tls_certificate is None:
                self.tls_certificate = tls.load_or_create_certificate()
            endpoint = tls.client_endpoint(self.reactor, host, port, self.tls_certificate)
        elif endpoint is None:
            endpoint = self._endpoint(host, port, None)
        policy = self.dial_policies[address] = DialPolicy(self, address, self._rng)
        service = ClientService(endpoint, PeerFactory(self, "outbound", address, "manual"),
                                retryPolicy=policy, clock=self.reactor)
        service.setName(f"peer {address}")
        self.dialers[address] = service
        return service

    def _endpoint(self, host: str, port: int, timeout: Optional[float]) -> Any:
        if self.endpoint_factory is not None:
            return self.endpoint_factory(host, port, timeout or DIAL_TIMEOUT)
        if timeout is None:
            return endpoints.HostnameEndpoint(self.reactor, host, port)
        return endpoints.HostnameEndpoint(self.reactor, host, port, timeout=timeout)

    def dial(self, address: str) -> ClientService:
        """Start keeping an outbound connection to `host:port` now."""
        service = self.client_service(address)
        if not service.running:
            service.startService()
        return service

    def forget(self, address: str) -> None:
        self.dial_policies.pop(address, None)
        service = self.dialers.pop(address, None)
        if service is not None and service.running:
            service.stopService()

    def connect_once(self, address: str, slot: str, endpoint: Optional[Any] = None) -> Optional[defer.Deferred]:
        """One attempt at `address` for an outbound slot (from the book, a feeler, a
        bootstrap name); the book hears how it went."""
        if address in self._dialing:
            return None
        try:
            host, port = split_address(address)
        except ValueError:
            self.book.remove(address)
            return None
        if endpoint is None:
            endpoint = self._endpoint(host, port, DIAL_TIMEOUT)
        self._dialing[address] = slot
        self.book.attempt(address)
        d = endpoint.connect(PeerFactory(self, "outbound", address, slot))

        def failed(failure: Any) -> None:
            self.book.failed(address)
            log.debug("[p2p] could not reach {address}: {e}", address=address, e=failure.getErrorMessage())

        d.addErrback(failed)
        d.addBoth(lambda _: self._dialing.pop(address, None))
        return d

    def _dial_candidates(self) -> set[str]:
        busy = set(self._dialing) | set(self.dialers)
        for proto in self.peers:
            if proto.info is not None:
                busy.add(proto.dial_address or "")
                if proto.info.listen_address:
                    busy.add(proto.info.listen_address)
        return busy

    def _pick(self, new_only: bool = False) -> Optional[str]:
        exclude = self._dial_candidates()
        for _ in range(8):
            address = self.book.select(new_only=new_only, exclude=exclude)
            if address is None:
                return None
            host = split_address(address)[0]
            if not (self.is_banned(host) or self.is_discouraged(host)):
                return address
            exclude.add(address)
        return None

    def fill_outbound(self) -> None:
        """Keep the outbound slots full: full-relay first, then block-relay-only."""
        if len(self.book) < BOOTSTRAP_BELOW:
            for name in self.bootstrap:
                if name not in self._dial_candidates():
                    self.connect_once(name, "outbound")
        for slot, limit in (("outbound", self.max_outbound), ("block-relay", self.max_block_relay)):
            have = self.count_slot(slot) + sum(1 for s in self._dialing.values() if s == slot)
            if slot == "outbound":
                have += self.count_slot("manual")
            if have < limit:
                address = self._pick()
                if address is not None:
                    self.connect_once(address, slot)
                return  # one new attempt per round

    def feeler(self) -> None:
        """Test one address the book has never connected to (closed once READY)."""
        if self.count_slot("feeler") + sum(1 for s in self._dialing.values() if s == "feeler") >= MAX_FEELERS:
            return
        address = self._pick(new_only=True)
        if address is not None:
            self.connect_once(address, "feeler")

    # views

    def ready_peers(self) -> list[PeerProtocol]:
        ready = PeerState.READY
        return [p for p in self.peers if p.info is not None and p.info.state is ready]

    def count(self, direction: str) -> int:
        return sum(1 for p in self.peers if p.info is not None and p.info.direction == direction)

    def count_slot(self, slot: str) -> int:
        return sum(1 for p in self.peers if p.slot == slot)

    def is_banned(self, host: str) -> bool:
        return self.bans.is_banned(host)

    def ban_remaining(self, host: str) -> float:
        return self.bans.remaining(host)

    def is_whitelisted(self, host: str) -> bool:
        address = canonical_ip(host)
        return address is not None and any(address in net for net in self.whitelist)

    def is_discouraged(self, host: str) -> bool:
        host = normal_host(host)
        until = self.discouraged.get(host)
        if until is None:
            return False
        if until <= self.reactor.seconds():
            del self.discouraged[host]
            return False
        return True

    def discourage(self, host: str) -> None:
        host = normal_host(host)
        self.discouraged[host] = self.reactor.seconds() + self.ban_seconds
        self.discouraged.move_to_end(host)
        while len(self.discouraged) > MAX_DISCOURAGED:
            self.discouraged.popitem(last=False)

    # events from PeerProtocol

    def peer_connected(self, proto: PeerProtocol) -> None:
        info = proto.info
        assert info is not None
        info.slot = proto.slot
        if self.is_banned(info.host):
            proto.disconnect("banned")
            return
        if info.direction == "inbound" and self.count("inbound") >= self.max_inbound:
            if self.is_discouraged(info.host) or not self._evict_for(proto):
                proto.disconnect(f"inbound limit of {self.max_inbound} reached")
                return
        elif info.direction == "outbound" and proto.slot == "outbound" and proto.dial_address is None:
            if self.count_slot("outbound") >= self.max_outbound:
                proto.disconnect(f"outbound limit of {self.max_outbound} reached")
                return
        self.peers.append(proto)
        policy = self.dial_policies.get(proto.dial_address or "")
        if policy is not None:
            policy.last_host = info.host
        proto.ready_timer = self.reactor.callLater(self.ready_timeout, self._not_ready, proto)
        log.info("[p2p] connected to peer {peer} ({direction})", peer=info.address, direction=info.direction)
        proto.send(wire.GetStatus())

    def _not_ready(self, proto: PeerProtocol) -> None:
        if proto.info is not None and proto.info.state is PeerState.CONNECTED:
            proto.disconnect(f"no handshake within {self.ready_timeout:.0f} s")

    def _evict_for(self, newcomer: PeerProtocol) -> bool:
        """Inbound slots are full: evict one inbound peer as Bitcoin Core does, or refuse."""
        candidates = []
        by_id = {}
        for proto in self.peers:
            info = proto.info
            if info is None or info.direction != "inbound":
                continue
            by_id[id(proto)] = proto
            candidates.append(eviction.Candidate(
                id=id(proto), group=self.group(info.host), connected_at=info.connected_at,
                min_ping=info.min_ping, last_block_time=info.last_block_at, last_tx_time=info.last_tx_at,
                prefer_evict=self.is_discouraged(info.host), no_ban=self.is_whitelisted(info.host),
                is_local=is_local(info.host), block_relay_only=info.block_relay_only))
        chosen = eviction.select_to_evict(candidates)
        if chosen is None:
            return False
        victim = by_id[chosen]
        self.evicted += 1
        victim.disconnect("evicted for a newcomer (inbound slots full)")
        self._remove(victim)
        return True

    def _remove(self, proto: PeerProtocol) -> None:
        if proto in self.peers:
            self.peers.remove(proto)
            assert proto.info is not None
            if proto.info.hello_nonce is not None:
                self._own_nonces.discard(proto.info.hello_nonce)
            self.addr_limiter.forget(id(proto))
            log.info("[p2p] peer {peer} disconnected", peer=proto.info.address)
            self.events.peer_lost(proto)

    def peer_disconnected(self, proto: PeerProtocol) -> None:
        info = proto.info
        assert info is not None
        timer = proto.ready_timer
        if timer is not None and timer.active():
            timer.cancel()
        policy = self.dial_policies.get(proto.dial_address or "")
        if policy is not None:
            lasted = self.reactor.seconds() - info.connected_at
            if info.ready_at is None or lasted < STABLE_SECONDS:
                policy.early_drops += 1  # backs off the redial (see DialPolicy)
            else:
                policy.early_drops = 0
        self._remove(proto)

    def misbehaved(self, proto: PeerProtocol, reason: str, detail: str) -> None:
        info = proto.info
        assert info is not None
        self.misbehaviour_counts[reason] += 1
        info.misbehaviour += PENALTIES.get(reason, 10)
        log.warn("[p2p] peer {peer} misbehaved ({reason}): {detail} [score {score}]",
                 peer=info.address, reason=reason, detail=detail[:200], score=info.misbehaviour)
        if info.misbehaviour >= BAN_SCORE and info.state is not PeerState.CLOSED:
            # As Bitcoin Core: drop it and discourage its address (evicted first, not dialed);
            # a local or whitelisted peer is dropped but never discouraged.
            if is_local(info.host) or self.is_whitelisted(info.host):
                proto.disconnect(f"misbehaved ({reason}); local or whitelisted, not discouraged")
            else:
                self.discourage(info.host)
                proto.disconnect(f"misbehaved ({reason}); address discouraged")

    def may_receive(self, proto: PeerProtocol, kind: int) -> bool:
        """Whether the connection's state accepts this message type (the gate, asked early
        for a long line before it is parsed)."""
        cls = wire.MESSAGES.get(kind)
        return proto.info is not None and cls is not None and cls in states.accepted(proto.info)

    def envelope_received(self, proto: PeerProtocol, envelope: wire.Envelope) -> None:
        """A framed line: gated by the connection's state, then parsed, then handled (or
        counted against the peer)."""
        kind = envelope.type
        info = proto.info
        assert info is not None
        cls = wire.MESSAGES.get(kind)
        if cls is None and kind not in wire.RESERVED_TYPES:
            self.misbehaved(proto, "unknown_type", wire.type_name(kind))
            return
        if cls is None or cls not in states.accepted(info):
            self.dropped_counts[wire.type_name(kind)] += 1
            log.debug("[p2p] ignored {kind} from {peer} in state {state}", kind=wire.type_name(kind),
                      peer=info.address, state=states.name(info))
            return
        try:
            message = self.parse(envelope, self.limits)
        except wire.WireError as e:
            self.misbehaved(proto, e.reason, str(e))
            return
        self._dispatch(proto, message)

    def _dispatch(self, proto: PeerProtocol, message: wire.Message) -> None:
        """The error boundary: a handler's unexpected failure is logged with the peer and
        the message type, and the connection is closed (without penalty: it is our bug)."""
        try:
            self.message_received(proto, message)
        except Exception:
            log.failure("[p2p] handling {kind} from {peer} failed", kind=message.NAME,
                        peer=proto.info.address if proto.info else "?")
            proto.disconnect(f"internal error handling {message.NAME}")

    def message_received(self, proto: PeerProtocol, message: wire.Message) -> None:
        info = proto.info
        assert info is not None
        if info.node_id is None and isinstance(message, (wire.NewBlock, wire.Status)):
            info.hash_style = message.hash_style  # answer a seed peer the way it writes
        handler = self._lifecycle.get(type(message))
        if handler is not None:
            handler(proto, message)
        else:
            self.events.message_received(proto, message)

    # lifecycle messages

    def _on_ping(self, proto: PeerProtocol, message: wire.Ping) -> None:
        proto.send(wire.Pong(message.timestamp))

    def _on_pong(self, proto: PeerProtocol, message: wire.Pong) -> None:
        info = proto.info
        assert info is not None
        if info.ping_sent_at is None:
            return  # answers no PING of ours: nothing to measure
        rtt = self.reactor.seconds() - info.ping_sent_at
        if info.ping_token is not None:
            if message.timestamp != info.ping_token:
                return  # not the echo of our PING (a peer streaming PONGs cannot fake a low ping)
        info.ping_sent_at = None
        info.last_ping = rtt
        if info.ping_token is not None:
            info.min_ping = min(info.min_ping, rtt)  # only proven round trips protect from eviction

    def _on_get_status(self, proto: PeerProtocol, message: wire.GetStatus) -> None:
        proto.send(self.view.status())

    def _on_status(self, proto: PeerProtocol, message: wire.Status) -> None:
        info = proto.info
        assert info is not None
        if not self._same_chain(proto, message.network, message.genesis_hash):
            return
        info.height, info.tip_hash = message.height, message.tip_hash
        if message.weight is not None:
            info.weight = message.weight
        if "hello" in message.capabilities:
            info.announced_hello = True
            if not info.hello_sent:
                self._send_hello(proto)
        elif info.state is PeerState.CONNECTED:
            self._ready(proto)  # a seed peer: its STATUS is all the handshake it has
        self.events.peer_updated(proto)

    def _send_hello(self, proto: PeerProtocol) -> None:
        info = proto.info
        assert info is not None
        info.hello_sent = True
        info.hello_nonce = identity.fresh_nonce()
        self._own_nonces.add(info.hello_nonce)
        proto.send(wire.Hello(self.view.params.name, self.view.genesis_hash, wire.PROTOCOL_VERSION,
                              self.identity.public_key, info.hello_nonce, self.listen_port, wire.CAPABILITIES,
                              block_relay_only=proto.slot == "block-relay",
                              tls_fingerprint=tls.local_fingerprint(proto.transport)))

    def _on_hello(self, proto: PeerProtocol, message: wire.Hello) -> None:
        info = proto.info
        assert info is not None
        if not self._same_chain(proto, message.network, message.genesis_hash):
            return
        if message.protocol_version < wire.PROTOCOL_VERSION:
            log.warn("[p2p] refusing peer {peer}: protocol version {theirs}, we need {ours}",
                     peer=info.address, theirs=message.protocol_version, ours=wire.PROTOCOL_VERSION)
            proto.disconnect("protocol version too old")
            return
        if message.nonce == info.hello_nonce:
            # Our own nonce echoed on this connection: a reflection, never an honest peer.
            self.misbehaved(proto, "bad_handshake", "HELLO echoes our own nonce")
            proto.disconnect("HELLO echoes our nonce")
            return
        if message.nonce in self._own_nonces:
            # The nonce of another of our connections: this is our own node at the far end
            # (a peer cannot know it unless it is us). A HELLO merely naming our key is not
            # believed: its HELLO_ACK will not verify.
            log.info("[p2p] {peer} is this node itself: dropping it", peer=info.address)
            if proto.dial_address is not None:
                self.forget(proto.dial_address)
                self.book.remove(proto.dial_address)
            proto.disconnect("connection to ourselves")
            return
        info.hello = message  # not trusted until its HELLO_ACK proves the key
        if not info.hello_sent:
            self._send_hello(proto)
        assert info.hello_nonce is not None
        proto.send(wire.HelloAck(self.identity.prove(self.view.genesis_hash, message.nonce, info.hello_nonce,
                                                     tls.local_fingerprint(proto.transport))))

    def _on_hello_ack(self, proto: PeerProtocol, message: wire.HelloAck) -> None:
        info = proto.info
        assert info is not None
        hello = info.hello
        assert hello is not None and info.hello_nonce is not None  # states.accepted saw to it
        if not identity.check_proof(hello.node_key, self.view.genesis_hash, info.hello_nonce, hello.nonce,
                                    message.signature, hello.tls_fingerprint):
            self.misbehaved(proto, "bad_handshake", "HELLO_ACK does not prove the HELLO's node key")
            proto.disconnect("handshake proof refused")
            return
        if tls.is_tls(proto.transport):
            presented = tls.peer_fingerprint(proto.transport)
            if presented is not None and presented != hello.tls_fingerprint:
                log.warn("[p2p] refusing peer {peer}: its TLS certificate is not the one its node key signed",
                         peer=info.address)
                proto.disconnect("TLS certificate not bound to the node key")
                return
        if hello.node_key == self.identity.public_key:  # proved: our own key at the far end
            log.info("[p2p] {peer} is this node itself: dropping it", peer=info.address)
            if proto.dial_address is not None:
                self.forget(proto.dial_address)
            proto.disconnect("connection to ourselves")
            return
        twin = next((p for p in self.ready_peers() if p.info and p.info.node_id == hello.node_id), None)
        if twin is not None:
            where = twin.info.address if twin.info else "?"
            proto.disconnect(f"already connected to node {hello.node_id.hex()[:12]} as {where}")
            return
        info.node_id = hello.node_id
        info.listen_port = hello.listen_port
        info.capabilities = frozenset(hello.capabilities)
        info.block_relay_only = hello.block_relay_only or proto.slot == "block-relay"
        if info.state is PeerState.CONNECTED:
            self._ready(proto)
        if info.can("peers") and not info.block_relay_only:
            proto.send(wire.GetPeers())
        self.events.peer_updated(proto)

    def _same_chain(self, proto: PeerProtocol, network: Optional[str], genesis: Optional[bytes]) -> bool:
        info = proto.info
        assert info is not None
        ours = self.view.params.name
        if network is not None and network != ours:
            log.warn("[p2p] refusing peer {peer}: it is on network {theirs}, we are on {ours}",
                     peer=info.address, theirs=network, ours=ours)
        elif genesis is not None and genesis != self.view.genesis_hash:
            log.warn("[p2p] refusing peer {peer}: its genesis {theirs} is not ours ({ours})",
                     peer=info.address, theirs=genesis.hex()[:16], ours=self.view.genesis_hash.hex()[:16])
        else:
            return True
        policy = self.dial_policies.get(proto.dial_address or "")
        if policy is not None:
            policy.wrong_chain += 1  # not redialed for a long, growing while
        if proto.dial_address is not None:
            self.book.remove(proto.dial_address)
        proto.disconnect("another network or genesis")
        return False

    def _ready(self, proto: PeerProtocol) -> None:
        info = proto.info
        assert info is not None
        info.state = PeerState.READY
        info.ready_at = self.reactor.seconds()
        timer = proto.ready_timer
        if timer is not None and timer.active():
            timer.cancel()
        if proto.dial_address is not None and info.direction == "outbound":
            address = proto.dial_address
            if not address.startswith(tls.TLS_PREFIX):
                if address not in self.book:
                    try:
                        self.book.add([address], split_address(address)[0])
                    except ValueError:
                        pass
                self.book.good(address)
        if proto.slot == "feeler":
            proto.disconnect("feeler: address works")
            return
        for callback in self.on_ready:
            callback(proto)

    def _on_get_peers(self, proto: PeerProtocol, message: wire.GetPeers) -> None:
        info = proto.info
        assert info is not None
        if info.answered_get_peers:
            return  # once per connection, as Bitcoin Core answers getaddr
        info.answered_get_peers = True
        addresses = [p.info.listen_address for p in self.ready_peers()
                     if p is not proto and p.info is not None and p.info.listen_address]
        for address in self.book.addresses_for_exchange(wire.MAX_PEERS_LISTED):
            if address not in addresses:
                addresses.append(address)
        proto.send(wire.Peers(tuple(a for a in addresses if a)[: wire.MAX_PEERS_LISTED],
                              int(self.reactor.seconds()), self.view.params.name))

    def _on_peers(self, proto: PeerProtocol, message: wire.Peers) -> None:
        """Addresses are rate-limited per connection and only stored: never dialed on
        arrival (the outbound filler picks from the book, one at a time)."""
        info = proto.info
        assert info is not None
        if message.net_id and message.net_id != self.view.params.name:
            self.dropped_counts[message.NAME] += 1
            return
        routable = [a for a in message.addresses if gossip_acceptable(a, info.host)]
        self.dropped_counts["address not routable"] += len(message.addresses) - len(routable)
        allowed = self.addr_limiter.filter(id(proto), routable)
        self.dropped_counts["address over rate"] += len(routable) - len(allowed)
        if allowed:
            self.book.add(allowed, info.host)

    # heartbeat

    def heartbeat(self) -> None:
        now = self.reactor.seconds()
        self._beats += 1
        for proto in list(self.peers):
            info = proto.info
            if info is None:
                continue
            if now - info.last_seen > self.peer_timeout:
                proto.disconnect(f"silent for {now - info.last_seen:.0f} s")
                continue
            if info.ping_sent_at is None:
                info.ping_sent_at = now
                # An Archivas peer echoes the timestamp: an unguessable one proves the round
                # trip. A seed peer gets whole seconds, as the original sends (and answers
                # with its own clock, so its round trip is shown but protects nothing).
                info.ping_token = round(now + self._rng.random(), 6) if info.node_id is not None else None
            proto.send(wire.Ping(info.ping_token if info.ping_token is not None else int(now)))
            if info.state is PeerState.READY and self._beats % STATUS_EVERY == 0:
                proto.send(wire.GetStatus())  # keeps its live tip and weight current


def listen_endpoint(reactor: IReactorCore | IReactorTCP, description: str) -> Any:
    """A server endpoint from `:9090`, `9090`, `127.0.0.1:9090`, `[::1]:9090` or an
    endpoint string."""
    return endpoints.serverFromString(reactor, endpoint_description(description))


def endpoint_description(description: str) -> str:
    text = description.strip()
    if text.isdigit():
        return f"tcp:{text}"
    if text.startswith("[") and "]:" in text:
        host, _, port = text[1:].partition("]:")
        if port.isdigit():
            return f"tcp6:{port}:interface={host.replace(':', chr(92) + ':')}"
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and ":" not in host and not host.startswith(("tcp", "unix", "ssl")):
        return f"tcp:{port}:interface={host}" if host else f"tcp:{port}"
    return text


def whitelist_networks(entries: Iterable[str]) -> list[str]:
    """Validate `--whitelist` entries (an address or a CIDR); ValueError naming a bad one."""
    out = []
    for entry in entries:
        try:
            out.append(str(ipaddress.ip_network(entry, strict=False)))
        except ValueError:
            raise ValueError(f"--whitelist {entry!r} is not an address or CIDR network") from None
    return out


__all__ = ["PeerManager", "PeerFactory", "DialPolicy", "listen_endpoint", "endpoint_description",
           "whitelist_networks"]
