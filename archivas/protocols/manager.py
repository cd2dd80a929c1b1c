"""The peer manager: connections, handshake, limits, bans, heartbeat, dialing, peer exchange.

It receives every framed line (an envelope) from the PeerProtocols and is the one place
that decides whether a message may be acted on: seed messages (1-7) from anyone; an
extension only from a peer that completed the handshake and announced its capability
(HELLO itself only before); the original project's numbers we do not act on are dropped
without penalty. Dropped messages are counted in `dropped_counts`. Lifecycle messages
(PING, PONG, GET_STATUS, STATUS, HELLO, GET_PEERS, GOSSIP_PEERS) are handled here; chain
messages go to the node. Numbers are in docs/protocol.md; every time comes from the
injected reactor.
"""

from __future__ import annotations

import collections
import random
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.application.internet import ClientService
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IReactorCore, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from archivas.protocols import wire
from archivas.protocols.peer import PeerProtocol, PeerState

if TYPE_CHECKING:
    from archivas.node import Node

log = Logger()

PING_INTERVAL = 10.0  # seconds between PINGs to each peer
PEER_TIMEOUT = 30.0  # a peer silent this long is disconnected
MAX_INBOUND = 32
MAX_OUTBOUND = 8
BAN_SCORE = 100  # misbehaviour points that end the connection and ban the host
BAN_SECONDS = 600.0

# Points per kind of misbehaviour (a ban at BAN_SCORE).
PENALTIES = {
    "bad_json": 10,
    "bad_shape": 10,
    "bad_payload": 10,
    "unknown_type": 5,
    "invalid_block": 50,
    "invalid_transaction": 5,
    "unrequested": 2,
    "timeout": 10,
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
        return delay


class PeerFactory(Factory):
    """Builds PeerProtocols for one direction (and, outbound, one dialed address); the
    manager holds everything else."""

    noisy = False

    def __init__(self, manager: "PeerManager", direction: str, dial_address: Optional[str] = None) -> None:
        self.manager = manager
        self.direction = direction
        self.dial_address = dial_address

    def buildProtocol(self, addr: object) -> PeerProtocol:
        return PeerProtocol(self.manager, self.manager.reactor, self.direction, self.dial_address)


class PeerManager:
    def __init__(
        self,
        node: "Node",
        reactor: IReactorTime,
        node_id: bytes,
        listen_port: int = 0,
        max_inbound: int = MAX_INBOUND,
        max_outbound: int = MAX_OUTBOUND,
        ping_interval: float = PING_INTERVAL,
        peer_timeout: float = PEER_TIMEOUT,
        ban_seconds: float = BAN_SECONDS,
    ) -> None:
        self.node = node
        self.reactor = reactor
        self.node_id = node_id
        self.listen_port = listen_port
        self.max_inbound = max_inbound
        self.max_outbound = max_outbound
        self.ping_interval = ping_interval
        self.peer_timeout = peer_timeout
        self.ban_seconds = ban_seconds
        self.peers: list[PeerProtocol] = []
        self.bans: dict[str, float] = {}
        self.dialers: dict[str, ClientService] = {}
        self.dial_policies: dict[str, DialPolicy] = {}
        self.misbehaviour_counts: dict[str, int] = {}
        self.dropped_counts: collections.Counter[str] = collections.Counter()
        self.inbound_factory = PeerFactory(self, "inbound")
        self.outbound_factory = PeerFactory(self, "outbound")
        self.limits = wire.Limits.from_params(node.params)
        self._heartbeat: Optional[LoopingCall] = None
        self.on_ready: list[Callable[[PeerProtocol], None]] = []
        self._rng = random.Random()
        self._learning: set[str] = set()  # learned addresses being dialed
        self._lifecycle: dict[type[wire.Message], Callable[[PeerProtocol, Any], None]] = {
            wire.Ping: self._on_ping,
            wire.Pong: self._on_pong,
            wire.GetStatus: self._on_get_status,
            wire.Status: self._on_status,
            wire.Hello: self._on_hello,
            wire.GetPeers: self._on_get_peers,
            wire.Peers: self._on_peers,
        }

    # life of the manager

    def start(self) -> None:
        self._heartbeat = LoopingCall(self.heartbeat)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(self.ping_interval, now=False)

    def stop(self) -> defer.Deferred:
        """Stop dialing and close every connection; fires when all are gone."""
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        waits = [service.stopService() for service in self.dialers.values() if service.running]
        self.dialers.clear()
        for proto in list(self.peers):
            proto.disconnect("node stopping")
            waits.append(proto.lost)
        return defer.DeferredList(waits, consumeErrors=True)

    def client_service(self, address: str, endpoint: Optional[Any] = None) -> ClientService:
        """A (not yet started) service keeping an outbound connection to `host:port`,
        reconnecting with backoff (DialPolicy); the node's service tree starts and stops
        it. `endpoint` replaces the TCP one (tests)."""
        if address in self.dialers:
            return self.dialers[address]
        host, _, port = address.rpartition(":")
        if endpoint is None:
            endpoint = endpoints.HostnameEndpoint(self.reactor, host.strip("[]"), int(port))  # type: ignore[arg-type]
        policy = self.dial_policies[address] = DialPolicy(self, address, self._rng)
        service = ClientService(endpoint, PeerFactory(self, "outbound", address),
                                retryPolicy=policy, clock=self.reactor)
        service.setName(f"peer {address}")
        self.dialers[address] = service
        return service

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

    # views

    def ready_peers(self) -> list[PeerProtocol]:
        return [p for p in self.peers if p.info is not None and p.info.state is PeerState.READY]

    def count(self, direction: str) -> int:
        return sum(1 for p in self.peers if p.info is not None and p.info.direction == direction)

    def is_banned(self, host: str) -> bool:
        return self.ban_remaining(host) > 0

    def ban_remaining(self, host: str) -> float:
        until = self.bans.get(host)
        if until is None:
            return 0.0
        left = until - self.reactor.seconds()
        if left <= 0:
            del self.bans[host]
            return 0.0
        return left

    # events from PeerProtocol

    def peer_connected(self, proto: PeerProtocol) -> None:
        info = proto.info
        assert info is not None
        if self.is_banned(info.host):
            proto.disconnect("banned")
            return
        limit = self.max_inbound if info.direction == "inbound" else self.max_outbound
        if self.count(info.direction) >= limit:
            proto.disconnect(f"{info.direction} limit of {limit} reached")
            return
        self.peers.append(proto)
        policy = self.dial_policies.get(proto.dial_address or "")
        if policy is not None:
            policy.last_host = info.host
        log.info("[p2p] connected to peer {peer} ({direction})", peer=info.address, direction=info.direction)
        proto.send(wire.GetStatus())

    def peer_disconnected(self, proto: PeerProtocol) -> None:
        info = proto.info
        assert info is not None
        policy = self.dial_policies.get(proto.dial_address or "")
        if policy is not None:
            lasted = self.reactor.seconds() - info.connected_at
            if info.ready_at is None or lasted < STABLE_SECONDS:
                policy.early_drops += 1  # backs off the redial (see DialPolicy)
            else:
                policy.early_drops = 0
        if proto in self.peers:
            self.peers.remove(proto)
            log.info("[p2p] peer {peer} disconnected", peer=info.address)
            self.node.peer_lost(proto)

    def misbehaved(self, proto: PeerProtocol, reason: str, detail: str) -> None:
        info = proto.info
        assert info is not None
        self.misbehaviour_counts[reason] = self.misbehaviour_counts.get(reason, 0) + 1
        info.misbehaviour += PENALTIES.get(reason, 10)
        log.warn("[p2p] peer {peer} misbehaved ({reason}): {detail} [score {score}]",
                 peer=info.address, reason=reason, detail=detail[:200], score=info.misbehaviour)
        if info.misbehaviour >= BAN_SCORE:
            self.bans[info.host] = self.reactor.seconds() + self.ban_seconds
            proto.disconnect(f"banned for {self.ban_seconds:.0f} s after {reason}")

    def may_act_on(self, proto: PeerProtocol, kind: int) -> bool:
        """The gate: seed messages from anyone; HELLO until the handshake is done; any
        other extension only from a peer that completed it and announced the capability."""
        if kind in wire.SEED_TYPES:
            return True
        cls = wire.MESSAGES.get(kind)
        info = proto.info
        if cls is None or info is None:
            return False
        if cls is wire.Hello:  # after a STATUS that announced it (an Archivas peer sends one first)
            return info.node_id is None and info.announced_hello
        return info.speaks_extensions and cls.CAPABILITY is not None and info.can(cls.CAPABILITY)

    def envelope_received(self, proto: PeerProtocol, envelope: wire.Envelope) -> None:
        """A framed line: gated, then parsed, then handled (or counted against the peer)."""
        kind = envelope.type
        if kind not in wire.MESSAGES and kind not in wire.RESERVED_TYPES:
            self.misbehaved(proto, "unknown_type", wire.type_name(kind))
            return
        if not self.may_act_on(proto, kind):
            self.dropped_counts[wire.type_name(kind)] += 1
            log.debug("[p2p] ignored {kind} from {peer}: not handshaked or not announced",
                      kind=wire.type_name(kind), peer=proto.info.address if proto.info else "?")
            return
        try:
            message = wire.parse(envelope, self.limits)
        except wire.WireError as e:
            self.misbehaved(proto, e.reason, str(e))
            return
        self.message_received(proto, message)

    def message_received(self, proto: PeerProtocol, message: wire.Message) -> None:
        info = proto.info
        assert info is not None
        if info.node_id is None and isinstance(message, (wire.NewBlock, wire.Status)):
            info.hash_style = message.hash_style  # answer a seed peer the way it writes
        handler = self._lifecycle.get(type(message))
        if handler is not None:
            handler(proto, message)
        else:
            self.node.message_received(proto, message)

    # lifecycle messages

    def _on_ping(self, proto: PeerProtocol, message: wire.Ping) -> None:
        proto.send(wire.Pong(message.timestamp))

    def _on_pong(self, proto: PeerProtocol, message: wire.Pong) -> None:
        pass  # last_seen was updated by the protocol

    def _on_get_status(self, proto: PeerProtocol, message: wire.GetStatus) -> None:
        proto.send(self.node.status())

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
                info.hello_sent = True
                proto.send(self._hello())
        elif info.state is PeerState.CONNECTED:
            self._ready(proto)  # a seed peer: its STATUS is all the handshake it has
        self.node.peer_updated(proto)

    def _hello(self) -> wire.Hello:
        return wire.Hello(self.node.params.name, self.node.genesis_hash, wire.PROTOCOL_VERSION,
                          self.node_id, self.listen_port, wire.CAPABILITIES)

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
        if message.node_id == self.node_id:
            log.info("[p2p] {peer} is this node itself: dropping it", peer=info.address)
            if info.direction == "outbound":
                for address in list(self.dialers):
                    if address.endswith(f":{info.port}"):
                        self.forget(address)
            proto.disconnect("connection to ourselves")
            return
        twin = next((p for p in self.ready_peers() if p.info and p.info.node_id == message.node_id), None)
        if twin is not None:
            where = twin.info.address if twin.info else "?"
            proto.disconnect(f"already connected to node {message.node_id.hex()[:12]} as {where}")
            return
        info.node_id = message.node_id
        info.listen_port = message.listen_port
        info.capabilities = frozenset(message.capabilities)
        if not info.hello_sent:
            info.hello_sent = True
            proto.send(self._hello())
        if info.state is PeerState.CONNECTED:
            self._ready(proto)
        if info.can("peers") and self.count("outbound") < self.max_outbound:
            proto.send(wire.GetPeers())
        self.node.peer_updated(proto)

    def _same_chain(self, proto: PeerProtocol, network: Optional[str], genesis: Optional[bytes]) -> bool:
        info = proto.info
        assert info is not None
        ours = self.node.params.name
        if network is not None and network != ours:
            log.warn("[p2p] refusing peer {peer}: it is on network {theirs}, we are on {ours}",
                     peer=info.address, theirs=network, ours=ours)
        elif genesis is not None and genesis != self.node.genesis_hash:
            log.warn("[p2p] refusing peer {peer}: its genesis {theirs} is not ours ({ours})",
                     peer=info.address, theirs=genesis.hex()[:16], ours=self.node.genesis_hash.hex()[:16])
        else:
            return True
        policy = self.dial_policies.get(proto.dial_address or "")
        if policy is not None:
            policy.wrong_chain += 1  # not redialed for a long, growing while
        proto.disconnect("another network or genesis")
        return False

    def _ready(self, proto: PeerProtocol) -> None:
        assert proto.info is not None
        proto.info.state = PeerState.READY
        proto.info.ready_at = self.reactor.seconds()
        for callback in self.on_ready:
            callback(proto)

    def _on_get_peers(self, proto: PeerProtocol, message: wire.GetPeers) -> None:
        addresses = [p.info.listen_address for p in self.ready_peers()
                     if p is not proto and p.info is not None and p.info.listen_address]
        proto.send(wire.Peers(tuple(a for a in addresses if a)[: wire.MAX_PEERS_LISTED],
                              int(self.reactor.seconds()), self.node.params.name))

    def _on_peers(self, proto: PeerProtocol, message: wire.Peers) -> None:
        if message.net_id and message.net_id != self.node.params.name:
            self.dropped_counts[message.NAME] += 1
            return
        known = {p.info.listen_address for p in self.peers if p.info} | set(self.dialers) | self._learning
        for address in message.addresses:
            # Dial only into free outbound slots, counting attempts still in flight (one
            # message must not make the node dial many addresses at once).
            if self.count("outbound") + len(self._learning) >= self.max_outbound:
                break
            host, _, port = address.rpartition(":")
            if address in known or not host or not port.isdigit() or not 0 < int(port) < 65536:
                continue
            if self.is_banned(host):
                continue
            log.info("[p2p] learned peer {address} from {peer}", address=address,
                     peer=proto.info.address if proto.info else "?")
            self._connect_once(address, host, int(port))

    def _connect_once(self, address: str, host: str, port: int) -> None:
        endpoint = endpoints.HostnameEndpoint(self.reactor, host, port)  # type: ignore[arg-type]
        self._learning.add(address)
        d = endpoint.connect(self.outbound_factory)
        d.addErrback(lambda f: log.debug("[p2p] could not reach {host}:{port}: {e}", host=host, port=port,
                                         e=f.getErrorMessage()))
        d.addBoth(lambda _: self._learning.discard(address))

    # heartbeat

    def heartbeat(self) -> None:
        now = self.reactor.seconds()
        for proto in list(self.peers):
            info = proto.info
            if info is None:
                continue
            if now - info.last_seen > self.peer_timeout:
                proto.disconnect(f"silent for {now - info.last_seen:.0f} s")
            else:
                proto.send(wire.Ping(int(now)))


def listen_endpoint(reactor: IReactorCore | IReactorTCP, description: str) -> endpoints.TCP4ServerEndpoint:
    """A server endpoint from `:9090`, `9090`, `127.0.0.1:9090` or an endpoint string."""
    return endpoints.serverFromString(reactor, endpoint_description(description))


def endpoint_description(description: str) -> str:
    text = description.strip()
    if text.isdigit():
        return f"tcp:{text}"
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and ":" not in host and not host.startswith(("tcp", "unix", "ssl")):
        return f"tcp:{port}:interface={host}" if host else f"tcp:{port}"
    return text
