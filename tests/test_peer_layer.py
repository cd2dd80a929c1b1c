"""The peer layer without sockets: the (state x message type) table, identity, eviction
under a flood, and the address book feeding outbound slots."""

import random

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial import unittest

from archivas.chain.params import COIN
from archivas.chain.vdf import Segment
from archivas.protocols import addrman, compact, identity, states, wire
from archivas.protocols.peer import PeerState
from tests.common import ALICE, CAROL, builder
from tests.test_protocol import Harness, feed, handshake, hello, peer_identity, sent

ALL = sorted(wire.MESSAGES.values(), key=lambda cls: cls.TYPE)
SEED = {wire.Ping, wire.Pong, wire.NewBlock, wire.GetBlock, wire.BlockData, wire.GetStatus, wire.Status}

COMPACT = {wire.SendCmpct, wire.CmpctBlock, wire.GetBlockTxn, wire.BlockTxn, wire.GetCmpct}

# The table, written out: for each state, the message types it acts on. Everything else
# is dropped unparsed (and changes nothing).
TABLE = {
    "handshaking (before STATUS)": SEED,
    "handshaking (STATUS announced hello)": SEED | {wire.Hello},
    "handshaking (HELLO received)": SEED | {wire.HelloAck},
    "seed": SEED,
    "ready": SEED | {wire.Peers, wire.NewTransaction, wire.GetBlocks, wire.Blocks, wire.VdfOutput, wire.GetPeers,
                     wire.GetHashes, wire.Hashes, wire.PushBlock, wire.GetHeaders, wire.Headers, wire.GetBodies,
                     wire.Bodies, wire.Inv, wire.Req, wire.Res} | COMPACT,
    "ready, block-relay-only": SEED | {wire.GetBlocks, wire.Blocks, wire.VdfOutput, wire.GetHashes, wire.Hashes,
                                       wire.PushBlock, wire.GetHeaders, wire.Headers, wire.GetBodies,
                                       wire.Bodies} | COMPACT,
    "ready, no capabilities": SEED,
    "closed": set(),
}


class StateTableTests(unittest.TestCase):
    """Every (state, message type) pair either has its documented effect or changes
    nothing; the table above is the documentation, checked against states.accepted and
    against what the node does."""

    def setUp(self):
        b = builder()
        self.blocks = b.extend(b.genesis, 3)
        self.h = Harness(self, self.blocks[:2])
        tx = b.transfer(ALICE, CAROL.address, COIN, 0)
        genesis = self.h.node.genesis_hash
        self.samples = {
            wire.Ping: wire.Ping(5), wire.Pong: wire.Pong(5), wire.NewBlock: wire.NewBlock(3, self.blocks[2].hash),
            wire.GetBlock: wire.GetBlock(1), wire.BlockData: wire.BlockData(3, self.blocks[2]),
            wire.GetStatus: wire.GetStatus(), wire.Status: wire.Status(2, 1, self.blocks[1].hash),
            wire.Peers: wire.Peers(("10.5.5.5:9090",)), wire.NewTransaction: wire.NewTransaction(tx),
            wire.GetBlocks: wire.GetBlocks(1, 2), wire.Blocks: wire.Blocks(3, (self.blocks[2],)),
            wire.Hello: hello(node_id=b"\x44" * 16, genesis=genesis),
            wire.HelloAck: wire.HelloAck(b"\x00" * 64),
            wire.VdfOutput: wire.VdfOutput(self.blocks[1].hash, 1, Segment(b"\x08" + b"\x00" * 99, b"\x00" * 100)),
            wire.GetPeers: wire.GetPeers(), wire.GetHashes: wire.GetHashes(0, 2),
            wire.Hashes: wire.Hashes(0, (genesis,)), wire.PushBlock: wire.PushBlock(self.blocks[2]),
            wire.GetHeaders: wire.GetHeaders((genesis,), 5), wire.Headers: wire.Headers((self.blocks[2].header,)),
            wire.GetBodies: wire.GetBodies((self.blocks[0].hash,)), wire.Bodies: wire.Bodies(((genesis, ()),)),
            wire.Inv: wire.Inv((tx.hash[:16],)), wire.Req: wire.Req((tx.hash[:16],)), wire.Res: wire.Res((tx,)),
            wire.SendCmpct: wire.SendCmpct(True), wire.CmpctBlock: compact.make_compact(self.blocks[2], 1),
            wire.GetBlockTxn: wire.GetBlockTxn(self.blocks[1].hash, (0,)),
            wire.BlockTxn: wire.BlockTxn(self.blocks[2].hash, ()), wire.GetCmpct: wire.GetCmpct(self.blocks[1].hash),
        }
        self.assertEqual(set(self.samples), set(ALL))

    def connection(self, state):
        self.count = getattr(self, "count", 0) + 1
        proto, transport = self.h.connect(host=f"10.{self.count % 250}.{self.count // 250}.1")
        genesis = self.h.node.genesis_hash
        unique = self.count.to_bytes(16, "big")
        if state == "handshaking (STATUS announced hello)":
            feed(proto, wire.Status(0, 1, b"\x00" * 32, capabilities=("hello",)))
        elif state == "handshaking (HELLO received)":
            feed(proto, wire.Status(0, 1, b"\x00" * 32, capabilities=("hello",)))
            feed(proto, hello(node_id=unique, genesis=genesis))
        elif state == "seed":
            feed(proto, wire.Status(0, 1, b"\x00" * 32))
        elif state == "ready":
            handshake(proto, node_id=unique, genesis=genesis)
        elif state == "ready, block-relay-only":
            handshake(proto, node_id=unique, genesis=genesis)
            proto.info.block_relay_only = True
        elif state == "ready, no capabilities":
            handshake(proto, node_id=unique, genesis=genesis, capabilities=())
        elif state == "closed":
            handshake(proto, node_id=unique, genesis=genesis)
            proto.disconnect("test")
        sent(transport)
        return proto, transport

    def test_the_table_is_what_states_accept(self):
        for state, expected in TABLE.items():
            proto, _ = self.connection(state)
            with self.subTest(state=state):
                self.assertEqual(set(states.accepted(proto.info)), expected)

    def test_refused_pairs_change_nothing(self):
        node = self.h.node
        for state, expected in TABLE.items():
            for cls in ALL:
                if cls in expected:
                    continue
                proto, transport = self.connection(state)
                before = (node.chain.tip.hash, len(node.mempool), len(node.peers.book), proto.info.state,
                          proto.info.misbehaviour, dict(node.peers._dialing))
                dropped = sum(node.peers.dropped_counts.values())
                with self.subTest(state=state, message=cls.NAME):
                    self.assertEqual(proto.info.state is PeerState.CLOSED, state == "closed")
                    feed(proto, self.samples[cls])
                    self.assertEqual(transport.value(), b"")
                    self.assertEqual((node.chain.tip.hash, len(node.mempool), len(node.peers.book), proto.info.state,
                                      proto.info.misbehaviour, dict(node.peers._dialing)), before)
                    if state != "closed":
                        self.assertEqual(sum(node.peers.dropped_counts.values()), dropped + 1,
                                         f"{state}: {cls.NAME} not counted as dropped")

    def test_accepted_pairs_have_their_effect(self):
        """A few of the accepted pairs' documented effects, one per kind of handler."""
        node = self.h.node
        proto, transport = self.connection("seed")
        feed(proto, wire.Ping(9))
        self.assertEqual(sent(transport), [wire.Pong(9)])
        feed(proto, wire.GetBlock(1))
        self.assertEqual(sent(transport), [wire.BlockData(1, self.blocks[0])])
        ready, rt = self.connection("ready")
        feed(ready, wire.GetHashes(0, 2))
        self.assertEqual(sent(rt), [wire.Hashes(0, (node.genesis_hash, self.blocks[0].hash))])
        feed(ready, wire.Peers(("10.77.0.1:9090",)))
        self.assertIn("10.77.0.1:9090", node.peers.book)
        self.assertEqual(node.peers._dialing, {})  # stored, never dialed on arrival
        feed(ready, wire.GetHeaders((node.genesis_hash,), 5))
        self.assertEqual(sent(rt), [wire.Headers((self.blocks[0].header, self.blocks[1].header), 2,
                                                 node.chain.tip.weight)])
        feed(ready, wire.GetBodies((self.blocks[1].hash, self.blocks[0].hash)))
        self.assertEqual(sent(rt), [wire.Bodies(((self.blocks[1].hash, ()), (self.blocks[0].hash, ())))])
        feed(ready, wire.PushBlock(self.blocks[2]))
        self.assertEqual(node.chain.tip.hash, self.blocks[2].hash)


class IdentityTests(unittest.TestCase):
    def test_a_replayed_hello_is_refused(self):
        """An attacker replays a real node's HELLO (and even its HELLO_ACK from another
        connection) without its key: never READY, never that node's id."""
        h = Harness(self)
        genesis = h.node.genesis_hash
        victim_id = peer_identity(b"\x61" * 16)
        # The real node's handshake on its own connection: its HELLO and the ACK it sent.
        real, real_t = h.connect(host="10.0.0.61")
        handshake(real, node_id=b"\x61" * 16, genesis=genesis)
        self.assertEqual(real.info.node_id, victim_id.node_id)
        real.disconnect("gone")
        stolen_hello = hello(node_id=b"\x61" * 16, genesis=genesis)
        stolen_ack = wire.HelloAck(victim_id.prove(genesis, real.info.hello_nonce, stolen_hello.nonce))
        attacker, at = h.connect(host="10.0.0.66")
        feed(attacker, wire.Status(0, 1, b"\x00" * 32, capabilities=("hello",)))
        feed(attacker, stolen_hello)
        self.assertIs(attacker.info.state, PeerState.CONNECTED)
        feed(attacker, stolen_ack)  # signed over another connection's nonce
        self.assertTrue(at.disconnecting)
        self.assertIsNone(attacker.info.node_id)
        self.assertNotEqual(attacker.info.state, PeerState.READY)

    def test_a_silent_replayer_times_out(self):
        h = Harness(self)
        attacker, at = h.connect(host="10.0.0.67")
        feed(attacker, wire.Status(0, 1, b"\x00" * 32, capabilities=("hello",)))
        feed(attacker, hello(node_id=b"\x62" * 16, genesis=h.node.genesis_hash))
        h.clock.advance(h.node.peers.ready_timeout + 1)
        self.assertTrue(at.disconnecting)

    def test_the_node_key_persists(self):
        import os

        directory = self.mktemp()
        os.makedirs(directory)
        a = identity.NodeIdentity.load_or_create(directory)
        b = identity.NodeIdentity.load_or_create(directory)
        self.assertEqual(a.node_id, b.node_id)
        self.assertEqual(oct(os.stat(os.path.join(directory, identity.KEY_FILE)).st_mode & 0o777), "0o600")


def _inbound(h, host, port=40000):
    proto = h.node.peers.inbound_factory.buildProtocol(None)
    transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", host, port))
    transport.protocol = proto
    proto.makeConnection(transport)
    return proto, transport


class EvictionTests(unittest.TestCase):
    def test_a_flood_from_one_group_evicts_only_its_own(self):
        """Inbound nearly full of honest peers (some relayed blocks, some have the lowest
        pings), then 500 connections from one address group: the honest ones are all still
        connected and every evicted connection was the flood's."""
        h = Harness(self, max_inbound=30)
        honest = []
        for i in range(20):
            proto, _ = _inbound(h, f"10.{i + 1}.0.1")
            feed(proto, wire.Status(0, 1, b"\x00" * 32))
            if i < 8:
                proto.info.last_block_at = h.clock.seconds() - i  # relayed novel blocks
            elif i < 14:
                proto.info.min_ping = 0.001 * i  # the lowest pings
            honest.append(proto)
            h.clock.advance(1)
        flood = []
        for i in range(500):
            proto, transport = _inbound(h, f"10.200.{i // 250}.{i % 250 + 1}")
            flood.append((proto, transport))
            h.clock.advance(0.01)
        connected = set(map(id, h.node.peers.peers))
        self.assertTrue(all(id(p) in connected for p in honest))
        self.assertEqual(h.node.peers.count("inbound"), 30)
        self.assertEqual(h.node.peers.evicted, 490)
        gone = [p for p, t in flood if not t.connected]
        self.assertEqual(len(gone), 490)


class AddressBookTests(unittest.TestCase):
    def test_the_book_survives_a_restart(self):
        path = self.mktemp()
        h = Harness(self, book_path=path)
        h.node.peers.book.add(["10.1.2.3:9090", "10.4.5.6:9090"], "10.9.9.9")
        h.node.peers.book.good("10.1.2.3:9090")
        h.node.peers.save_book()
        again = Harness(self, book_path=path)
        again.node.peers._load_book()
        self.assertEqual(again.node.peers.book.counts(), (1, 1))
        self.assertIn("10.4.5.6:9090", again.node.peers.book)

    def test_an_address_flood_leaves_outbound_slots_for_honest_peers(self):
        """An attacker announces 10,000 addresses from one source group: they take at most
        its buckets, and the outbound filler still picks honest addresses."""
        h = Harness(self)
        book = h.node.peers.book
        rng = random.Random(7)
        attacker = [f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.1:9090" for _ in range(10_000)]
        book.add(attacker, "6.6.6.6")
        honest = [f"{20 + i}.1.1.1:9090" for i in range(40)]
        for i, address in enumerate(honest):
            book.add([address], f"{100 + i}.2.2.2")
        buckets = {book.position(a)[1] for a in attacker if book.position(a) is not None}
        self.assertLessEqual(len(buckets), addrman.NEW_BUCKETS_PER_SOURCE_GROUP)
        picks = []
        h.node.peers.connect_once = lambda address, slot, endpoint=None: picks.append(address)
        for _ in range(400):
            h.node.peers.fill_outbound()
        self.assertGreater(sum(1 for a in picks if a in honest), 40)

    def test_fill_outbound_dials_from_the_book_one_at_a_time(self):
        h = Harness(self)
        h.node.peers.book.add([f"10.{i}.0.1:9090" for i in range(1, 30)], "10.99.0.1")
        attempts = []

        def fake_connect(address, slot, endpoint=None):
            attempts.append((address, slot))
            h.node.peers._dialing[address] = slot
            return defer.Deferred()

        h.node.peers.connect_once = fake_connect
        for _ in range(20):
            h.clock.advance(5)
        slots = [slot for _, slot in attempts]
        self.assertEqual(slots.count("outbound"), h.node.peers.max_outbound)
        self.assertEqual(slots.count("block-relay"), h.node.peers.max_block_relay)
        self.assertEqual(len(set(a for a, _ in attempts)), len(attempts))  # never the same twice at once


class SendBudgetTests(unittest.TestCase):
    def test_a_peer_that_asks_too_much_is_read_more_slowly(self):
        """Small requests for large replies: past its send budget a peer's further requests
        wait (unread) until the budget refills; nothing is lost or refused."""
        from archivas.protocols import peer as peer_module

        b = builder()
        blocks = b.extend(b.genesis, 3)
        h = Harness(self, blocks)
        size = len(wire.encode(wire.BlockData(1, blocks[0]))) + 1
        self.patch(peer_module, "SEND_BURST_BYTES", size * 5)
        self.patch(peer_module, "SEND_BYTES_PER_SECOND", size)  # one block a second
        proto, transport = h.connect()
        feed(proto, wire.Status(3, 1, blocks[-1].hash))
        sent(transport)
        proto._send_budget = size * 5
        proto.dataReceived(b"".join(wire.encode(wire.GetBlock(1 + i % 3)) + b"\n" for i in range(20)))
        def replies():
            return [m for m in sent(transport) if isinstance(m, wire.BlockData)]

        first = replies()
        self.assertEqual(len(first), 6)  # the burst (and the reply that overdrew it)
        for _ in range(3):
            h.clock.advance(1.0)
        soon = replies()
        self.assertLessEqual(len(soon), 4)  # about one a second
        for _ in range(20):
            h.clock.advance(1.0)
        self.assertEqual(len(first) + len(soon) + len(replies()), 20)  # all answered in the end
        self.assertFalse(transport.disconnecting)


class BackpressureTests(unittest.TestCase):
    def test_unserved_input_stays_bounded_across_pause_cycles(self):
        """A peer that reads just enough to resume us each time and always has 64 KiB more
        of requests waiting: what we hold of its input stays under a bound, and we stop
        reading its socket while we cannot serve it."""
        from archivas.protocols import peer as peer_module

        h = Harness(self)
        proto, transport = h.connect()
        feed(proto, wire.Status(0, 1, b"\x00" * 32))
        line = wire.encode(wire.GetBlock(0)) + b"\n"
        chunk = line * (65536 // len(line))
        served = []
        original = proto.manager.envelope_received

        def serve(p, envelope):
            served.append(envelope.type)
            original(p, envelope)
            if len(served) % 40 == 0:
                p.pauseProducing()  # as the transport does when its write buffer is full

        self.patch(proto.manager, "envelope_received", serve)
        largest = 0
        for _ in range(300):
            if transport.producerState == "producing":
                proto.dataReceived(chunk)
            largest = max(largest, len(proto._partial))
            proto.resumeProducing()
        self.assertLess(largest, peer_module.PAUSED_INPUT_BYTES + 2 * len(chunk))
        self.assertGreater(len(served), 300 * 30)


class PingTests(unittest.TestCase):
    def test_only_an_echo_of_our_ping_proves_a_round_trip(self):
        from archivas.protocols import manager

        h = Harness(self)
        proto, transport = h.connect()
        handshake(proto, genesis=h.node.genesis_hash)
        sent(transport)
        h.clock.advance(manager.PING_INTERVAL)
        (ping,) = [m for m in sent(transport) if isinstance(m, wire.Ping)]
        feed(proto, wire.Pong(int(h.clock.seconds())))  # a guess, streamed ahead
        self.assertEqual(proto.info.min_ping, float("inf"))
        h.clock.advance(0.05)
        feed(proto, wire.Pong(ping.timestamp))  # the echo
        self.assertAlmostEqual(proto.info.min_ping, 0.05)
        feed(proto, wire.Pong(ping.timestamp))  # answers no PING now
        self.assertAlmostEqual(proto.info.last_ping, 0.05)


class BootstrapTests(unittest.TestCase):
    def test_bootstrap_names_are_dialed_only_while_the_book_is_small(self):
        from archivas.protocols import manager

        h = Harness(self)
        peers = h.node.peers
        peers.bootstrap = ["seed.archivas.example:9090"]
        dialed = []
        peers.connect_once = lambda address, slot, endpoint=None: dialed.append(address)
        peers.fill_outbound()
        self.assertIn("seed.archivas.example:9090", dialed)
        peers.book.add([f"{20 + i}.1.0.1:9090" for i in range(manager.BOOTSTRAP_BELOW + 10)], "9.9.9.9")
        dialed.clear()
        peers.fill_outbound()
        self.assertNotIn("seed.archivas.example:9090", dialed)


class FullInboundEvictionTests(unittest.TestCase):
    def test_inbound_full_of_honest_peers_then_a_flood(self):
        """Every inbound slot held by honest peers (some relayed blocks, some have the
        lowest pings), then 500 connections from one group: those honest peers stay; the
        flood loses every eviction once it holds a slot or two."""
        h = Harness(self, max_inbound=30)
        protected = []
        for i in range(30):
            proto, _ = _inbound(h, f"10.{i + 1}.0.1")
            feed(proto, wire.Status(0, 1, b"\x00" * 32))
            if i < 4:
                proto.info.last_block_at = h.clock.seconds()  # the most recent novel blocks
                protected.append(proto)
            elif i < 12:
                proto.info.min_ping = 0.001 * i  # the lowest pings
                protected.append(proto)
            h.clock.advance(1)
        flood = [_inbound(h, f"10.200.{i // 250}.{i % 250 + 1}") for i in range(500)]
        connected = set(map(id, h.node.peers.peers))
        self.assertTrue(all(id(p) in connected for p in protected))
        honest_left = sum(1 for p in h.node.peers.peers if not p.info.host.startswith("10.200."))
        flood_evicted = sum(1 for _, t in flood if not t.connected)
        self.assertGreaterEqual(honest_left, 28)  # at most the first newcomer or two cost an honest slot
        self.assertGreaterEqual(flood_evicted, 497)


class TcpTransport(StringTransportWithDisconnection):
    """A StringTransport with ITCPTransport's TCP_NODELAY switch (off, as a socket starts)."""

    def __init__(self, *args, fails=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.nodelay = False
        self.fails = fails

    def setTcpNoDelay(self, enabled):
        if self.fails:
            raise OSError(95, "Operation not supported")  # a UNIX socket under tcp.Server's methods
        self.nodelay = enabled

    def getTcpNoDelay(self):
        return self.nodelay


class NoDelayTests(unittest.TestCase):
    """Every peer connection, inbound and outbound, turns Nagle off as it is made; a
    transport without the switch (or whose socket refuses it) connects just the same."""

    def connect(self, h, factory, transport):
        proto = factory.buildProtocol(None)
        transport.protocol = proto
        proto.makeConnection(transport)
        return proto

    def test_inbound_and_outbound_set_tcp_nodelay(self):
        h = Harness(self)
        for factory in (h.node.peers.inbound_factory, h.node.peers.outbound_factory):
            transport = TcpTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 40000))
            self.connect(h, factory, transport)
            self.assertTrue(transport.nodelay, factory.direction)

    def test_a_transport_without_it_or_refusing_it_still_connects(self):
        h = Harness(self)
        plain = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", "10.1.2.4", 40000))
        refusing = TcpTransport(peerAddress=IPv4Address("TCP", "10.1.2.5", 40000), fails=True)
        for transport in (plain, refusing):
            proto = self.connect(h, h.node.peers.inbound_factory, transport)
            self.assertIn(proto, h.node.peers.peers)
            self.assertFalse(transport.disconnecting)
