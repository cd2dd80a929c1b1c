"""The peer protocol without sockets: each message and lifecycle step with StringTransport
and task.Clock, and protocol pairs over iosim."""

import json

from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from twisted.trial import unittest

from archivas.chain.encoding import sha256
from archivas.node import Node
from archivas.protocols import manager, wire
from archivas.protocols.peer import MAX_LINE_BYTES, PeerState
from tests.common import builder, now_ms, open_chain

OTHER_GENESIS = b"\x07" * 32


class Harness:
    """A node on a task.Clock and one inbound connection on a StringTransport."""

    def __init__(self, case, blocks=(), **options):
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)  # wall-clock-like seconds, so block times are in the past
        chain = open_chain(case)
        for block in blocks:
            chain.add_block(block, now_ms())
        self.node = Node(chain, self.clock, threaded=False, **options)
        self.node.start()
        # StringTransport never reports connectionLost: stop without waiting for it.
        case.addCleanup(lambda: self.node.stop() and None)

    def connect(self, direction="inbound", host="10.0.0.1"):
        factory = self.node.peers.inbound_factory if direction == "inbound" else self.node.peers.outbound_factory
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=_addr(host))
        proto.makeConnection(transport)
        return proto, transport


def _addr(host):
    from twisted.internet.address import IPv4Address

    return IPv4Address("TCP", host, 40000)


def sent(transport):
    """Messages written so far (and clear the transport)."""
    lines = transport.value().split(b"\n")
    transport.clear()
    return [wire.decode(line) for line in lines if line]


def feed(proto, message):
    proto.dataReceived(wire.encode(message) + b"\n")


_IDENTITIES = {}


def peer_identity(seed=b"\x01" * 16):
    """A test peer's node key (the same for the same seed)."""
    from archivas.chain.keys import PrivateKey
    from archivas.protocols.identity import NodeIdentity

    if seed not in _IDENTITIES:
        _IDENTITIES[seed] = NodeIdentity(PrivateKey.from_secret(b"peer" + seed))
    return _IDENTITIES[seed]


def hello(node_id=b"\x01" * 16, genesis=None, network="fastnet", capabilities=wire.CAPABILITIES, identity=None):
    ident = identity or peer_identity(node_id)
    nonce = sha256(b"nonce", ident.public_key)
    return wire.Hello(network, genesis, wire.PROTOCOL_VERSION, ident.public_key, nonce, 9999, capabilities)


def handshake(proto, status=True, identity=None, **hello_options):
    """What an Archivas peer sends: a STATUS announcing "hello", its HELLO, and the
    HELLO_ACK proving its key over the nonce of the node's HELLO."""
    if status:
        feed(proto, wire.Status(0, 1, b"\x00" * 32, capabilities=("hello",)))
    ident = identity or peer_identity(hello_options.get("node_id", b"\x01" * 16))
    message = hello(identity=ident, **hello_options)
    feed(proto, message)
    if proto.info.hello_nonce is not None and proto.info.state is not PeerState.CLOSED:
        genesis = hello_options.get("genesis") or b"\x00" * 32
        feed(proto, wire.HelloAck(ident.prove(genesis, proto.info.hello_nonce, message.nonce)))


class WireTests(unittest.TestCase):
    def test_every_message_round_trips(self):
        from archivas.chain.vdf import Segment

        b = builder()
        block = b.make_block(b.genesis)
        tx = b.transfer(b.farmers[0][0], b.farmers[1][0].address, 5, 0)
        messages = [
            wire.Ping(1), wire.Pong(2.5), wire.NewBlock(1, block.hash), wire.GetBlock(1),
            wire.BlockData(1, block), wire.GetStatus(), wire.Status(1, 1, block.hash),
            wire.Status(1, 1, block.hash, 5, block.hash, "fastnet", 1, ("hello",)),
            hello(genesis=block.hash), wire.GetBlocks(1, 2), wire.Blocks(1, (block,)),
            wire.NewTransaction(tx), wire.VdfOutput(block.hash, 1, Segment(b"\x01" * 100, b"\x02" * 100)),
            wire.GetPeers(), wire.Peers(("127.0.0.1:9090",)), wire.GetHashes(0, 3),
            wire.Hashes(0, (block.hash,)), wire.PushBlock(block), wire.HelloAck(b"\x09" * 64),
            wire.GetHeaders((block.hash, b.genesis.hash), 100), wire.Headers((block.header,), 1, 7),
            wire.GetBodies((block.hash,)), wire.Bodies(((block.hash, (tx,)),)),
            wire.Inv((tx.hash[:16], block.hash[:16])), wire.Req((tx.hash[:16],)), wire.Res((tx,)), wire.SendCmpct(True),
            wire.CmpctBlock(block.header, 2**48 - 1, (b"\x01" * 6, b"\x02" * 6), ((1, tx),)),
            wire.GetBlockTxn(block.hash, (0, 2)), wire.BlockTxn(block.hash, (tx,)), wire.GetCmpct(block.hash),
        ]
        self.assertEqual({type(m) for m in messages}, set(wire.MESSAGES.values()))
        for message in messages:
            line = wire.encode(message)
            self.assertTrue(line.startswith(b'{"type":%d,' % message.TYPE))
            self.assertEqual(wire.decode(line), message)

    def test_status_readers_ignore_unknown_fields(self):
        line = json.dumps({"type": 7, "payload": {"height": 1, "difficulty": 2, "tipHash": "ab" * 32,
                                                  "somethingNew": [1, 2]}}).encode()
        self.assertEqual(wire.decode(line), wire.Status(1, 2, bytes.fromhex("ab" * 32)))

    def test_bad_lines(self):
        cases = {
            b"nope": "bad_json", b"[]": "bad_shape", b'{"type": true}': "bad_shape",
            b'{"type": 1, "payload": []}': "bad_shape", b'{"type": 77}': "unknown_type",
            b'{"type": 1, "payload": {"timestamp": -1}}': "bad_payload",
            b'{"type": 13, "payload": {"fromHeight": 0, "maxBlocks": 1000}}': "bad_payload",
            b'{"type": 5, "payload": {"height": 2, "blockData": {}}}': "bad_payload",
            b"[" * 100000: "bad_json",
        }
        for line, reason in cases.items():
            with self.assertRaises(wire.WireError) as cm:
                wire.decode(line)
            self.assertEqual(cm.exception.reason, reason, line[:40])


class LifecycleTests(unittest.TestCase):
    def setUp(self):
        b = builder()
        self.blocks = b.extend(b.genesis, 2)
        self.h = Harness(self, self.blocks)

    def test_connect_sends_get_status_and_answers_ping_and_status(self):
        proto, transport = self.h.connect()
        self.assertEqual(sent(transport), [wire.GetStatus()])
        feed(proto, wire.Ping(42))
        feed(proto, wire.GetStatus())
        pong, status = sent(transport)
        self.assertEqual(pong, wire.Pong(42))
        self.assertEqual((status.height, status.tip_hash), (2, self.blocks[-1].hash))
        self.assertEqual(status.genesis_hash, self.h.node.genesis_hash)
        self.assertIn("hello", status.capabilities)

    def test_seed_peer_is_ready_after_its_status(self):
        proto, transport = self.h.connect()
        feed(proto, wire.Status(1, 1, self.blocks[0].hash))
        self.assertIs(proto.info.state, PeerState.READY)
        self.assertEqual(proto.info.capabilities, frozenset())
        self.assertNotIn(wire.Hello, [type(m) for m in sent(transport)])  # no extension to a seed peer

    def test_handshake(self):
        proto, transport = self.h.connect()
        sent(transport)
        feed(proto, wire.Status(2, 1, self.blocks[-1].hash, 3, self.h.node.genesis_hash, "fastnet", 1,
                                wire.CAPABILITIES))
        (ours,) = sent(transport)
        self.assertEqual((ours.node_id, ours.genesis_hash), (self.h.node.node_id, self.h.node.genesis_hash))
        self.assertIs(proto.info.state, PeerState.CONNECTED)
        theirs = hello(genesis=self.h.node.genesis_hash)
        feed(proto, theirs)
        self.assertIs(proto.info.state, PeerState.CONNECTED)  # until its key is proved
        (ack,) = sent(transport)  # and the node proves its own over our nonce
        from archivas.protocols import identity

        self.assertTrue(identity.check_proof(ours.node_key, self.h.node.genesis_hash, theirs.nonce, ours.nonce,
                                             ack.signature))
        feed(proto, wire.HelloAck(peer_identity().prove(self.h.node.genesis_hash, ours.nonce, theirs.nonce)))
        self.assertIs(proto.info.state, PeerState.READY)
        self.assertEqual(proto.info.node_id, peer_identity().node_id)
        self.assertEqual(proto.info.listen_address, "10.0.0.1:9999")

    def test_other_genesis_or_network_refused(self):
        from twisted.logger import formatEvent, globalLogPublisher

        lines = []
        observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        for message in (wire.Status(1, 1, b"\x00" * 32, genesis_hash=OTHER_GENESIS),
                        wire.Status(1, 1, b"\x00" * 32, network="devnet"),
                        hello(genesis=OTHER_GENESIS), hello(genesis=b"\x00" * 32, network="devnet")):
            proto, transport = self.h.connect()
            with self.subTest(message=type(message).__name__):
                if isinstance(message, wire.Hello):
                    feed(proto, wire.Status(0, 1, b"\x00" * 32, capabilities=("hello",)))
                feed(proto, message)
                self.assertTrue(transport.disconnecting)
                self.assertIs(proto.info.state, PeerState.CLOSED)
        refusals = [line for line in lines if line.startswith("[p2p] refusing peer 10.0.0.1:40000")]
        self.assertEqual(len(refusals), 4)
        self.assertTrue(any("genesis 0707070707070707 is not ours" in line for line in refusals))
        self.assertTrue(any("on network devnet, we are on fastnet" in line for line in refusals))

    def test_self_connection_dropped(self):
        proto, transport = self.h.connect()
        handshake(proto, identity=self.h.node.identity, genesis=self.h.node.genesis_hash)
        self.assertTrue(transport.disconnecting)

    def test_duplicate_connection_dropped(self):
        first, t1 = self.h.connect()
        handshake(first, genesis=self.h.node.genesis_hash)
        second, t2 = self.h.connect(host="10.0.0.2")
        handshake(second, genesis=self.h.node.genesis_hash)
        self.assertFalse(t1.disconnecting)
        self.assertTrue(t2.disconnecting)

    def test_heartbeat_pings_then_drops_a_silent_peer(self):
        proto, transport = self.h.connect()
        feed(proto, wire.Status(1, 1, self.blocks[0].hash))  # a ready seed peer
        sent(transport)
        self.h.clock.advance(manager.PING_INTERVAL)
        self.assertEqual([type(m) for m in sent(transport)], [wire.Ping])
        feed(proto, wire.Pong(0))  # alive
        self.h.clock.advance(manager.PING_INTERVAL * 2)
        self.assertFalse(transport.disconnecting)
        self.h.clock.advance(manager.PEER_TIMEOUT)
        self.assertTrue(transport.disconnecting)

    def test_line_too_long_discourages(self):
        proto, transport = self.h.connect()
        proto.dataReceived(b"x" * (MAX_LINE_BYTES + 1))
        self.assertTrue(transport.disconnecting)
        self.assertTrue(self.h.node.peers.is_discouraged("10.0.0.1"))
        self.assertFalse(self.h.node.peers.is_banned("10.0.0.1"))  # bans are the operator's
        self.h.clock.advance(manager.BAN_SECONDS + 1)
        self.assertFalse(self.h.node.peers.is_discouraged("10.0.0.1"))

    def test_a_local_peer_is_dropped_but_not_discouraged(self):
        proto, transport = self.h.connect(host="127.0.0.1")
        proto.dataReceived(b"x" * (MAX_LINE_BYTES + 1))
        self.assertTrue(transport.disconnecting)
        self.assertFalse(self.h.node.peers.is_discouraged("127.0.0.1"))

    def test_a_connection_that_never_handshakes_is_closed(self):
        proto, transport = self.h.connect()
        feed(proto, wire.Ping(1))  # answers and pings, never a STATUS
        self.h.clock.advance(manager.READY_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.h.clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_rate_limit_refills_with_time(self):
        proto, transport = self.h.connect()
        for _ in range(999):
            feed(proto, wire.Ping(1))
        self.assertFalse(transport.disconnecting)
        self.h.clock.advance(1)
        for _ in range(100):
            feed(proto, wire.Ping(1))
        self.assertFalse(transport.disconnecting)
        for _ in range(1000):
            feed(proto, wire.Ping(1))
        self.assertTrue(transport.disconnecting)

    def test_banned_host_refused_at_connect(self):
        self.h.node.peers.bans.ban("10.0.0.9", 60)
        proto, transport = self.h.connect(host="10.0.0.9")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.h.node.peers.peers, [])

    def test_outbound_limit(self):
        h = Harness(self, max_outbound=1)
        _, t1 = h.connect("outbound")
        _, t2 = h.connect("outbound", host="10.0.0.2")
        self.assertFalse(t1.disconnecting)
        self.assertTrue(t2.disconnecting)

    def test_inbound_limit(self):
        h = Harness(self, max_inbound=1)
        _, t1 = h.connect()
        _, t2 = h.connect(host="10.0.0.2")
        self.assertFalse(t1.disconnecting)
        self.assertTrue(t2.disconnecting)

    def test_get_block_blocks_and_hashes(self):
        proto, transport = self.h.connect()
        handshake(proto, genesis=self.h.node.genesis_hash)
        sent(transport)
        feed(proto, wire.GetBlock(2))
        feed(proto, wire.GetBlock(7))  # above the tip: no answer, no disconnect
        feed(proto, wire.GetBlocks(1, 64))
        feed(proto, wire.GetHashes(0, 10))
        data, blocks, hashes = sent(transport)
        self.assertEqual(data, wire.BlockData(2, self.blocks[1]))
        self.assertEqual(blocks.blocks, tuple(self.blocks))
        self.assertEqual(hashes.hashes, (self.h.node.genesis_hash,) + tuple(b.hash for b in self.blocks))
        self.assertFalse(transport.disconnecting)

    def test_new_block_above_tip_is_fetched_from_a_seed_peer(self):
        proto, transport = self.h.connect()
        feed(proto, wire.Status(2, 1, self.blocks[-1].hash))
        sent(transport)
        new = builder().make_block(self.blocks[-1])
        feed(proto, wire.NewBlock(3, new.hash))
        self.assertEqual(sent(transport), [wire.GetBlock(3)])
        feed(proto, wire.BlockData(3, new))
        self.assertEqual(self.h.node.chain.tip.hash, new.hash)

    def test_peer_exchange(self):
        first, _ = self.h.connect()
        handshake(first, genesis=self.h.node.genesis_hash)
        second, t2 = self.h.connect(host="10.0.0.2")
        handshake(second, node_id=b"\x02" * 16, genesis=self.h.node.genesis_hash)
        sent(t2)
        feed(second, wire.GetPeers())
        (reply,) = sent(t2)
        self.assertEqual((reply.addresses, reply.net_id), (("10.0.0.1:9999",), "fastnet"))


class PairTests(unittest.TestCase):
    """Two nodes joined by iosim: handshake, gossip and sync with no sockets or threads."""

    def pair(self, a_blocks=(), b_blocks=()):
        a, b = Harness(self, a_blocks), Harness(self, b_blocks)
        server = a.node.peers.inbound_factory.buildProtocol(None)
        client = b.node.peers.outbound_factory.buildProtocol(None)
        c, s, pump = iosim.connectedServerAndClient(lambda: server, lambda: client)
        pump.flush()
        return a, b, pump

    def test_handshake_and_gossip(self):
        a, b, pump = self.pair()
        self.assertEqual([p.info.state for p in a.node.peers.peers + b.node.peers.peers], [PeerState.READY] * 2)
        blocks = builder().extend(builder().genesis, 3)
        for block in blocks:
            a.node.receive_block(block)
            pump.flush()
        self.assertEqual(b.node.chain.tip.hash, blocks[-1].hash)

    def test_sync_on_connect(self):
        blocks = builder().extend(builder().genesis, 40)
        a, b, pump = self.pair(a_blocks=blocks)
        for _ in range(50):
            pump.flush()
            b.clock.advance(0)  # (the import yields to the reactor between blocks)
            if b.node.chain.height == 40:
                break
        self.assertEqual(b.node.chain.tip.hash, blocks[-1].hash)


class LimitTests(unittest.TestCase):
    def test_known_cache_is_bounded(self):
        from archivas.protocols.peer import BoundedSet

        known = BoundedSet(3)
        for i in range(5):
            known.add(bytes([i]))
        self.assertEqual(len(known), 3)
        self.assertNotIn(b"\x00", known)
        self.assertIn(b"\x04", known)
        known.add(b"\x02")  # refreshed: now the newest
        known.add(b"\x05")
        self.assertIn(b"\x02", known)
        self.assertNotIn(b"\x03", known)

    def test_peers_list_is_bounded(self):
        too_many = json.dumps({"type": 8, "payload": {"addrs": [f"10.0.0.1:{i}" for i in range(1, 66)]}})
        with self.assertRaises(wire.WireError):
            wire.decode(too_many.encode())
        self.assertEqual(len(wire.decode(too_many.replace(', "10.0.0.1:65"', "").encode()).addresses), 64)

    def test_blocks_reply_is_capped_in_bytes(self):
        from archivas import node as node_module

        b = builder()
        blocks = b.extend(b.genesis, 5)
        h = Harness(self, blocks)
        self.patch(node_module, "MAX_BLOCKS_REPLY_BYTES", len(blocks[0].encode()) * 2 + 10)
        proto, transport = h.connect()
        handshake(proto, genesis=h.node.genesis_hash)
        sent(transport)
        feed(proto, wire.GetBlocks(1, 5))
        (reply,) = sent(transport)
        self.assertEqual([blk.height for blk in reply.blocks], [1, 2])  # the rest is asked for again


class TransactionGossipTests(unittest.TestCase):
    def test_a_transfer_refused_for_a_gap_is_taken_when_resent(self):
        from archivas.chain.params import COIN
        from tests.common import ALICE, CAROL

        h = Harness(self)
        proto, transport = h.connect()
        handshake(proto, genesis=h.node.genesis_hash)
        b = builder()
        first, second = (b.transfer(ALICE, CAROL.address, COIN, n) for n in (0, 1))
        feed(proto, wire.NewTransaction(second))  # before its predecessor: a nonce gap
        self.assertNotIn(second.hash, h.node.mempool)
        feed(proto, wire.NewTransaction(first))
        feed(proto, wire.NewTransaction(second))  # resent (by another peer, or this one)
        self.assertIn(second.hash, h.node.mempool)
        self.assertEqual(proto.info.misbehaviour, 0)


class VdfOriginRaceTests(unittest.TestCase):
    def test_a_segment_for_a_tip_that_moved_while_its_origin_was_drawn_costs_its_sender_nothing(self):
        """Segment 1 is checked from the block's origin, drawn in the verify pool. If the tip
        moves meanwhile to a block whose child has other iterations, the segment is stale,
        not invalid: refused, and the honest peer that relayed it keeps its score."""
        from twisted.internet import defer

        from archivas.chain.block import child_origin, genesis_block
        from tests.common import PARAMS, fixture_blocks

        blocks = fixture_blocks(16)
        i = next(i for i in range(1, len(blocks) - 1)
                 if blocks[i].header.vdf_iterations != blocks[i + 1].header.vdf_iterations)
        tip, child = blocks[i - 1], blocks[i]
        h = Harness(self, blocks[:i])
        node = h.node
        self.assertEqual(node.vdf_parent, tip.hash)
        proto, _ = h.connect()
        handshake(proto, genesis=genesis_block(PARAMS).hash)
        held = []

        def checker(n, f, args, kwargs):  # the verify pool, with the origin held back
            if f is child_origin:
                d = defer.Deferred()
                held.append((d, f, args))
                return d
            return defer.maybeDeferred(f, *args, **kwargs)

        node.checker = checker
        before = proto.info.misbehaviour
        result = node.add_vdf_output(tip.hash, 1, child.header.vdf[0], source=proto)
        self.assertEqual(len(held), 1)
        self.successResultOf(node.receive_block(child))  # the tip moves on
        self.assertEqual(node.vdf_parent, child.hash)
        d, f, args = held.pop()
        d.callback(f(*args))
        self.assertFalse(self.successResultOf(result))
        self.assertEqual(proto.info.misbehaviour, before)
        self.assertEqual(node.vdf_segments, [])
