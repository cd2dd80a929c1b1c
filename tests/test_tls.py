"""Optional TLS between peers: a certificate per node, bound to its node key in the
handshake, so a relay that terminates TLS in the middle is refused."""

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from archivas.protocols import tls
from tests.netutil import NodeHandle, connected, start_node, wait_until


def start_tls_node(case) -> NodeHandle:
    """A node whose p2p listener speaks TLS with its own certificate."""
    handle = start_node(case)
    certificate = tls.load_or_create_certificate()
    handle.node.peers.tls_certificate = certificate
    d = tls.server_endpoint(reactor, 0, "127.0.0.1", certificate).listen(handle.node.peers.inbound_factory)
    port = []
    d.addCallback(port.append)
    case.addCleanup(lambda: port[0].stopListening())
    handle.tls_port = port  # type: ignore[attr-defined]
    return handle


class Pipe(protocol.Protocol):
    """Passes every byte to its peer, unchanged."""

    def __init__(self):
        self.peer = None
        self.pending = []

    def dataReceived(self, data):
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def connectionLost(self, reason=None):
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class Relay(Pipe):
    """A relay that terminates TLS with its own certificate and re-encrypts to the real
    node: it passes every byte unchanged."""

    def __init__(self, target_port, certificate):
        super().__init__()
        self.target_port = target_port
        self.certificate = certificate

    def connectionMade(self):
        endpoint = tls.client_endpoint(reactor, "127.0.0.1", self.target_port, self.certificate)
        other = Pipe()
        other.peer = self
        d = endpoint.connect(protocol.Factory.forProtocol(lambda: other))
        d.addCallback(self._linked)
        d.addErrback(lambda f: self.transport.loseConnection())

    def _linked(self, other):
        self.peer = other
        for data in self.pending:
            other.transport.write(data)
        self.pending = []


class TLSTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_two_nodes_over_tls(self):
        a = start_tls_node(self)
        b = start_node(self)
        yield defer.ensureDeferred(wait_until(lambda: bool(a.tls_port), "the TLS listener"))
        b.node.peers.dial(f"tls:127.0.0.1:{a.tls_port[0].getHost().port}")
        yield defer.ensureDeferred(wait_until(lambda: connected(b, a) and connected(a, b), "a TLS handshake"))
        (proto,) = b.node.peers.ready_peers()
        self.assertTrue(tls.is_tls(proto.transport))
        self.assertIsNotNone(proto.info.hello.tls_fingerprint)
        self.assertEqual(proto.info.hello.tls_fingerprint, tls.peer_fingerprint(proto.transport))
        # Under TLS too, both ends: the TLS wrapper passes the switch to its TCP socket.
        (inbound,) = a.node.peers.ready_peers()
        for p in (proto, inbound):
            self.assertTrue(tls.is_tls(p.transport))
            self.assertTrue(p.transport.getHandle() is not None and p.transport.getTcpNoDelay())

    @defer.inlineCallbacks
    def test_a_relay_terminating_tls_is_refused(self):
        a = start_tls_node(self)
        b = start_node(self)
        yield defer.ensureDeferred(wait_until(lambda: bool(a.tls_port), "the TLS listener"))
        relay_cert = tls.load_or_create_certificate()
        factory = protocol.Factory.forProtocol(lambda: Relay(a.tls_port[0].getHost().port, relay_cert))
        relay_port = yield tls.server_endpoint(reactor, 0, "127.0.0.1", relay_cert).listen(factory)
        self.addCleanup(relay_port.stopListening)
        b.node.peers.dial(f"tls:127.0.0.1:{relay_port.getHost().port}")
        yield defer.ensureDeferred(wait_until(
            lambda: b.node.peers.dial_policies[f"tls:127.0.0.1:{relay_port.getHost().port}"].early_drops >= 1,
            "the relayed connection refused and closed"))
        self.assertFalse(connected(b, a))
        self.assertFalse(connected(a, b))
