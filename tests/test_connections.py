"""Connection management over real sockets: host names and IPv6 literals in --peers,
a hundred seed-only peers at once, hundreds of idle sockets from one address, and one
misbehaving local connection on a one-host network."""

import json
import selectors
import socket
import time

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from tests.common import builder
from tests.netutil import connected, start_node, wait_until
from tests.test_seed_peer import PlainPeer, in_thread

OWN_GROUPS = {"group": lambda host: host.encode()}  # every loopback address its own group


def many_seed_peers(port: int, count: int, deadline: float = 20.0) -> dict[str, int]:
    """Open `count` raw sockets that each send GET_STATUS, STATUS and PING, and wait
    until every one has its STATUS and PONG back (blocking: run in a thread)."""
    selector = selectors.DefaultSelector()
    pending: dict[socket.socket, dict] = {}
    for i in range(count):
        source = (f"127.0.{1 + i // 200}.{10 + i % 200}", 0)
        sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=source)
        sock.sendall(b'{"type":6,"payload":{}}\n'
                     b'{"type":7,"payload":{"height":0,"difficulty":1,"tipHash":"' + b"00" * 32 + b'"}}\n'
                     b'{"type":1,"payload":{"timestamp":%d}}\n' % i)
        sock.setblocking(False)
        pending[sock] = {"buffer": b"", "status": False, "pong": False}
        selector.register(sock, selectors.EVENT_READ)
    done = {"status": 0, "pong": 0}
    end = time.monotonic() + deadline
    try:
        while pending and time.monotonic() < end:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                state = pending.get(sock)
                if state is None:
                    continue
                chunk = sock.recv(65536)
                if not chunk:
                    raise AssertionError("the node closed a seed peer's connection")
                state["buffer"] += chunk
                while b"\n" in state["buffer"]:
                    line, state["buffer"] = state["buffer"].split(b"\n", 1)
                    kind = json.loads(line)["type"]
                    state["status"] |= kind == 7
                    state["pong"] |= kind == 2
                if state["status"] and state["pong"]:
                    done["status"] += 1
                    done["pong"] += 1
                    del pending[sock]
                    selector.unregister(sock)
                    sock.close()
    finally:
        for sock in pending:
            sock.close()
        selector.close()
    return done


def hold_idle_sockets(port: int, count: int, source: str) -> list[socket.socket]:
    out = []
    for _ in range(count):
        try:
            out.append(socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)))
        except OSError:
            break
    return out


def ping_time(port: int, source: str) -> float:
    peer = PlainPeer(port, source)
    try:
        start = time.monotonic()
        peer.send(1, {"timestamp": 1})
        peer.receive(2)
        return time.monotonic() - start
    finally:
        peer.close()


class ConnectionTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_peers_by_host_name_and_ipv6_literal(self):
        a = start_node(self)
        a6 = start_node(self, interface="::1")
        b = start_node(self)
        b.node.peers.dial(f"localhost:{a.port.getHost().port}")
        b.node.peers.dial(f"[::1]:{a6.port.getHost().port}")
        yield defer.ensureDeferred(wait_until(lambda: connected(b, a) and connected(b, a6), "both dialed peers ready"))
        hosts = {p.info.host for p in b.node.peers.ready_peers()}
        self.assertEqual(hosts, {"127.0.0.1", "::1"})
        # Real sockets, IPv4 and IPv6, both ends: Nagle is off (docs/protocol.md).
        for proto in b.node.peers.ready_peers() + a.node.peers.ready_peers() + a6.node.peers.ready_peers():
            self.assertTrue(proto.transport.getTcpNoDelay(), proto.info.host)

    @defer.inlineCallbacks
    def test_a_hundred_seed_only_peers_at_once(self):
        node = start_node(self, blocks=builder().extend(builder().genesis, 1), **OWN_GROUPS)
        done = yield threads.deferToThread(many_seed_peers, node.port.getHost().port, 100)
        self.assertEqual(done, {"status": 100, "pong": 100})

    @defer.inlineCallbacks
    def test_six_hundred_idle_sockets_do_not_lock_out_a_newcomer(self):
        node = start_node(self, **OWN_GROUPS)
        port = node.port.getHost().port
        held = yield threads.deferToThread(hold_idle_sockets, port, 600, "127.0.0.77")
        self.addCleanup(lambda: [s.close() for s in held])
        self.assertGreater(len(held), 500)
        yield defer.ensureDeferred(wait_until(lambda: node.node.peers.count("inbound") >= node.node.peers.max_inbound,
                                              "inbound slots full of idle sockets"))
        seconds = yield threads.deferToThread(ping_time, port, "127.0.0.2")
        self.assertLess(seconds, 2.0)
        self.assertGreater(node.node.peers.evicted, 0)

    @defer.inlineCallbacks
    def test_one_misbehaving_local_connection_leaves_the_others_connected(self):
        a, b, c = (start_node(self) for _ in range(3))
        b.node.peers.dial(a.address)
        c.node.peers.dial(a.address)
        c.node.peers.dial(b.address)
        yield defer.ensureDeferred(wait_until(lambda: connected(a, b) and connected(a, c) and connected(b, c),
                                              "a triangle"))
        bad = yield in_thread(PlainPeer, a.port.getHost().port)
        self.addCleanup(bad.close)
        yield in_thread(bad.send_raw, b"x" * (70 * 1024))  # over the handshake line cap
        self.assertTrue((yield in_thread(bad.closed)))
        yield defer.ensureDeferred(wait_until(lambda: a.node.peers.misbehaviour_counts["line_too_long"] == 1,
                                              "the bad line seen"))
        yield task_sleepless_settle()
        self.assertTrue(connected(a, b) and connected(a, c) and connected(b, c))
        self.assertFalse(a.node.peers.is_discouraged("127.0.0.1"))
        # and a new local node can still join
        d = start_node(self)
        d.node.peers.dial(a.address)
        yield defer.ensureDeferred(wait_until(lambda: connected(d, a), "a newcomer on the same host"))


def task_sleepless_settle():
    """One reactor turn, so a disconnect the node decided has happened."""
    d = defer.Deferred()
    reactor.callLater(0, d.callback, None)
    return d





class DiscoveryTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_an_address_learned_by_exchange_fills_an_outbound_slot(self):
        """A dials only B; B knows C. A hears of C through peer exchange, stores it, and
        its outbound filler (not the message's arrival) connects to C."""
        c = start_node(self)
        b = start_node(self)
        b.node.peers.dial(c.address)
        yield defer.ensureDeferred(wait_until(lambda: connected(b, c), "B to C"))
        a = start_node(self, discover=True)
        a.node.peers.dial(b.address)
        yield defer.ensureDeferred(wait_until(lambda: c.address in a.node.peers.book, "C in A's address book"))
        self.assertFalse(connected(a, c))  # stored, not dialed on arrival
        yield defer.ensureDeferred(wait_until(lambda: connected(a, c), "A's filler reaching C", deadline=30))
        (proto,) = [p for p in a.node.peers.ready_peers() if p.info.node_id == c.node.node_id]
        self.assertIn(proto.slot, ("outbound", "block-relay"))
