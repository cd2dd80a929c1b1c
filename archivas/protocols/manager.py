"""The peer manager: connections, handshake, limits, bans, heartbeat, dialing, peer exchange.

It receives every parsed message from the PeerProtocols. Lifecycle messages (PING, PONG,
GET_STATUS, STATUS, HELLO, GET_PEERS, PEERS) are handled here; chain messages go to the
node. Numbers are in docs/protocol.md; every time comes from the injected reactor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from twisted.application.internet import ClientService, backoffPolicy
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

LIFECYCLE = (wire.Ping, wire.Pong, wire.GetStatus, wire.Status, wire.Hello, wire.GetPeers, wire.Peers)


class PeerFactory(Factory):
    """Builds PeerProtocols for one direction; the manager holds everything else."""

    noisy = False

    def __init__(self, manager: "PeerManager", direction: str) -> None:
        self.manager = manager
        self.direction = direction

    def buildProtocol(self, addr: object) -> PeerProtocol:
        return PeerProtocol(self.manager, self.manager.reactor, self.direction)


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
        self.misbehaviour_counts: dict[str, int] = {}
        self.inbound_factory = PeerFactory(self, "inbound")
        self.outbound_factory = PeerFactory(self, "outbound")
        self._heartbeat: Optional[LoopingCall] = None
        self.on_ready: list[Callable[[PeerProtocol], None]] = []

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

    def client_service(self, address: str) -> ClientService:
        """A (not yet started) service keeping an outbound connection to `host:port`,
        reconnecting with backoff; the node's service tree starts and stops it."""
        if address in self.dialers:
            return self.dialers[address]
        host, _, port = address.rpartition(":")
        endpoint = endpoints.HostnameEndpoint(self.reactor, host.strip("[]"), int(port))  # type: ignore[arg-type]
        service = ClientService(endpoint, self.outbound_factory,
                                retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=30.0),
                                clock=self.reactor)
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
        service = self.dialers.pop(address, None)
        if service is not None and service.running:
            service.stopService()

    # views

    def ready_peers(self) -> list[PeerProtocol]:
        return [p for p in self.peers if p.info is not None and p.info.state is PeerState.READY]

    def count(self, direction: str) -> int:
        return sum(1 for p in self.peers if p.info is not None and p.info.direction == direction)

    def is_banned(self, host: str) -> bool:
        until = self.bans.get(host)
        if until is None:
            return False
        if until <= self.reactor.seconds():
            del self.bans[host]
            return False
        return True

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
        log.info("[p2p] connected to peer {peer} ({direction})", peer=info.address, direction=info.direction)
        proto.send(wire.GetStatus())

    def peer_disconnected(self, proto: PeerProtocol) -> None:
        if proto in self.peers:
            self.peers.remove(proto)
            assert proto.info is not None
            log.info("[p2p] peer {peer} disconnected", peer=proto.info.address)
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

    def message_received(self, proto: PeerProtocol, message: wire.Message) -> None:
        if isinstance(message, LIFECYCLE):
            handler = getattr(self, f"_on_{type(message).__name__}")
            handler(proto, message)
        else:
            self.node.message_received(proto, message)

    # lifecycle messages

    def _on_Ping(self, proto: PeerProtocol, message: wire.Ping) -> None:
        proto.send(wire.Pong(message.timestamp))

    def _on_Pong(self, proto: PeerProtocol, message: wire.Pong) -> None:
        pass  # last_seen was updated by the protocol

    def _on_GetStatus(self, proto: PeerProtocol, message: wire.GetStatus) -> None:
        proto.send(self.node.status())

    def _on_Status(self, proto: PeerProtocol, message: wire.Status) -> None:
        info = proto.info
        assert info is not None
        if not self._same_chain(proto, message.network, message.genesis_hash):
            return
        info.height, info.tip_hash = message.height, message.tip_hash
        if message.weight is not None:
            info.weight = message.weight
        if "hello" in message.capabilities:
            if not info.hello_sent:
                info.hello_sent = True
                proto.send(self._hello())
        elif info.state is PeerState.CONNECTED:
            self._ready(proto)  # a seed peer: its STATUS is all the handshake it has
        self.node.peer_updated(proto)

    def _hello(self) -> wire.Hello:
        return wire.Hello(self.node.params.name, self.node.genesis_hash, wire.PROTOCOL_VERSION,
                          self.node_id, self.listen_port, wire.CAPABILITIES)

    def _on_Hello(self, proto: PeerProtocol, message: wire.Hello) -> None:
        info = proto.info
        assert info is not None
        if not self._same_chain(proto, message.network, message.genesis_hash):
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
        proto.disconnect("another network or genesis")
        return False

    def _ready(self, proto: PeerProtocol) -> None:
        assert proto.info is not None
        proto.info.state = PeerState.READY
        for callback in self.on_ready:
            callback(proto)

    def _on_GetPeers(self, proto: PeerProtocol, message: wire.GetPeers) -> None:
        addresses = [p.info.listen_address for p in self.ready_peers()
                     if p is not proto and p.info is not None and p.info.listen_address]
        proto.send(wire.Peers(tuple(a for a in addresses if a)[: wire.MAX_PEERS_LISTED]))

    def _on_Peers(self, proto: PeerProtocol, message: wire.Peers) -> None:
        known = {p.info.listen_address for p in self.peers if p.info} | set(self.dialers)
        for address in message.addresses:
            if self.count("outbound") + len(self.dialers) >= self.max_outbound * 2:
                break
            host, _, port = address.rpartition(":")
            if address in known or not host or not port.isdigit() or not 0 < int(port) < 65536:
                continue
            if self.is_banned(host):
                continue
            log.info("[p2p] learned peer {address} from {peer}", address=address,
                     peer=proto.info.address if proto.info else "?")
            self._connect_once(host, int(port))

    def _connect_once(self, host: str, port: int) -> None:
        endpoint = endpoints.HostnameEndpoint(self.reactor, host, port)  # type: ignore[arg-type]
        d = endpoint.connect(self.outbound_factory)
        d.addErrback(lambda f: log.debug("[p2p] could not reach {host}:{port}: {e}", host=host, port=port,
                                         e=f.getErrorMessage()))

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
