"""Holes a fast hostile relayer could use: poisoned block ids, sibling grinding, orphans
without a source, and redialing a banned address."""

import dataclasses

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial import unittest

from archivas.chain.block import Block
from archivas.chain.params import COIN
from archivas.protocols import manager, wire
from tests.common import ALICE, CAROL, builder
from tests.test_protocol import Harness, feed, handshake, sent


def flip_hex(text: str) -> str:
    return ("1" if text[0] != "1" else "2") + text[1:]


def forged_farmer_signature(block: Block) -> Block:
    sig = bytes.fromhex(flip_hex(block.header.farmer_signature.hex()))
    return dataclasses.replace(block, header=dataclasses.replace(block.header, farmer_signature=sig))


def forged_transfer_signature(block: Block) -> Block:
    tx = block.transactions[0]
    forged = dataclasses.replace(tx, signature=bytes.fromhex(flip_hex(tx.signature.hex())))
    return dataclasses.replace(block, transactions=(forged,) + block.transactions[1:])


class PoisonedBlockTests(unittest.TestCase):
    """A copy of a fresh block with one signature changed has the honest block's id. It
    must cost its sender alone, and the honest copy must still become the tip."""

    def setUp(self):
        b = builder()
        self.base = b.extend(b.genesis, 2)
        pay = b.transfer(ALICE, CAROL.address, COIN, 0)
        self.real = b.make_block(self.base[-1], [pay])
        self.h = Harness(self, self.base)

    def peer(self, host, node_id):
        proto, transport = self.h.connect(host=host)
        handshake(proto, node_id=node_id, genesis=self.h.node.genesis_hash)
        sent(transport)
        return proto, transport

    def check(self, forge):
        forged = forge(self.real)
        self.assertEqual(forged.hash, self.real.hash)  # the id leaves the signatures out
        attacker, _ = self.peer("10.0.0.66", b"\x66" * 16)
        honest = [self.peer(f"10.0.0.{i}", bytes([i]) * 16)[0] for i in (1, 2)]
        feed(attacker, wire.PushBlock(forged))
        self.assertEqual(self.h.node.chain.tip.hash, self.base[-1].hash)
        self.assertGreater(attacker.info.misbehaviour, 0)
        for proto in honest:  # the honest peers announce and serve the real block
            feed(proto, wire.PushBlock(self.real))
        self.assertEqual(self.h.node.chain.tip.hash, self.real.hash)
        self.assertEqual([p.info.misbehaviour for p in honest], [0, 0])
        self.assertNotIn(self.real.hash, self.h.node._invalid_blocks)

    def test_flipped_farmer_signature(self):
        self.check(forged_farmer_signature)

    def test_flipped_transfer_signature(self):
        self.check(forged_transfer_signature)

    def test_a_forged_copy_under_check_does_not_shadow_the_real_one(self):
        """The forged copy arrives first and is still being verified when the real one
        comes: the real one is kept and checked next."""
        pending = []
        real_verify = self.h.node.verify

        def slow_verify(block, parent):
            d = defer.Deferred()
            pending.append((d, block, parent))
            return d

        self.h.node.verify = slow_verify
        attacker, _ = self.peer("10.0.0.66", b"\x66" * 16)
        honest, _ = self.peer("10.0.0.1", b"\x01" * 16)
        feed(attacker, wire.PushBlock(forged_farmer_signature(self.real)))
        feed(honest, wire.PushBlock(self.real))
        while pending:
            d, block, parent = pending.pop(0)
            real_verify(block, parent).chainDeferred(d)
        self.assertEqual(self.h.node.chain.tip.hash, self.real.hash)
        self.assertEqual(honest.info.misbehaviour, 0)
        self.assertGreater(attacker.info.misbehaviour, 0)

    def test_a_permanent_failure_is_remembered_and_not_verified_again(self):
        bad = builder().make_block(self.base[-1], tamper=lambda h: dataclasses.replace(h, reward=h.reward + 1))
        sender, _ = self.peer("10.0.0.5", b"\x05" * 16)
        feed(sender, wire.PushBlock(bad))
        self.assertIn(bad.hash, self.h.node._invalid_blocks)
        self.assertTrue(self.h.node._invalid_blocks[bad.hash].permanent)
        self.assertEqual(self.h.node.rejected_blocks, 1)


class ForgedCopyFlowTests(unittest.TestCase):
    """The announcer path end to end: forged copy under check, announcement, failure,
    GET_BLOCK to the announcer, real block."""

    def test_announcer_asked_after_forged_copy_fails(self):
        b = builder()
        base = b.extend(b.genesis, 2)
        real = b.make_block(base[-1])
        h = Harness(self, base)
        pending = []
        real_verify = h.node.verify

        def slow_verify(block, parent):
            d = defer.Deferred()
            pending.append((d, block, parent))
            return d

        h.node.verify = slow_verify
        attacker, _ = h.connect(host="10.0.0.66")
        handshake(attacker, node_id=b"\x66" * 16, genesis=h.node.genesis_hash)
        seed, seed_transport = h.connect(host="10.0.0.9")
        feed(seed, wire.Status(2, 1, base[-1].hash))
        sent(seed_transport)
        feed(attacker, wire.PushBlock(forged_farmer_signature(real)))
        feed(seed, wire.NewBlock(3, real.hash))
        self.assertEqual(sent(seed_transport), [])  # under check: not asked yet
        d, block, parent = pending.pop(0)
        real_verify(block, parent).chainDeferred(d)  # the forged copy fails
        self.assertEqual(sent(seed_transport), [wire.GetBlock(3)])
        h.node.verify = real_verify
        feed(seed, wire.BlockData(3, real))
        self.assertEqual(h.node.chain.tip.hash, real.hash)
        self.assertEqual(seed.info.misbehaviour, 0)


class GrindingTests(unittest.TestCase):
    def test_ten_versions_in_falling_hash_order(self):
        """A farmer who won once re-makes its block ten times and pushes the versions in
        falling hash order: no reorganisation after the first, and only the first is
        relayed."""
        b = builder()
        base = b.extend(b.genesis, 2)
        versions = [b.make_block(base[-1], timestamp=base[-1].header.timestamp + 300 + i) for i in range(10)]
        versions.sort(key=lambda blk: blk.hash, reverse=True)
        h = Harness(self, base)
        farmer, _ = h.connect(host="10.0.0.7")
        handshake(farmer, node_id=b"\x07" * 16, genesis=h.node.genesis_hash)
        watcher, watcher_transport = h.connect(host="10.0.0.8")
        handshake(watcher, node_id=b"\x08" * 16, genesis=h.node.genesis_hash)
        sent(watcher_transport)
        reorgs = []
        h.node.on_tip.append(reorgs.append)
        for version in versions:
            feed(farmer, wire.PushBlock(version))
        self.assertEqual(h.node.chain.tip.hash, versions[0].hash)
        self.assertEqual([blk.hash for blk in reorgs], [versions[0].hash])
        relayed = [m.hash if isinstance(m, wire.NewBlock) else m.header.hash if isinstance(m, wire.CmpctBlock)
                   else m.block.hash for m in sent(watcher_transport)
                   if isinstance(m, (wire.PushBlock, wire.NewBlock, wire.CmpctBlock))]
        self.assertEqual(relayed, [versions[0].hash])
        self.assertEqual(h.node.dropped_siblings, 9)
        self.assertEqual(farmer.info.misbehaviour, 0)

    def test_a_remade_sibling_is_taken_when_its_child_arrives(self):
        """The other half of a split network built on another version: its child makes
        the node fetch and take that version, and follow the heavier branch."""
        b = builder()
        base = b.extend(b.genesis, 2)
        first = b.make_block(base[-1], timestamp=base[-1].header.timestamp + 300)
        other = b.make_block(base[-1], timestamp=base[-1].header.timestamp + 301)
        child = b.make_block(other)
        h = Harness(self, base)
        peer, transport = h.connect(host="10.0.0.7")
        handshake(peer, node_id=b"\x07" * 16, genesis=h.node.genesis_hash)
        feed(peer, wire.PushBlock(first))
        feed(peer, wire.PushBlock(other))  # dropped: a re-made sibling
        self.assertFalse(h.node.chain.has_block(other.hash))
        sent(transport)
        feed(peer, wire.PushBlock(child))  # orphan: its parent is asked for
        self.assertEqual(sent(transport), [wire.GetBlocks(3, 1)])
        feed(peer, wire.Blocks(3, (other,)))
        self.assertEqual(h.node.chain.tip.hash, child.hash)


class OrphanSourceTests(unittest.TestCase):
    def test_a_bad_orphan_is_blamed_on_its_sender(self):
        b = builder()
        base = b.extend(b.genesis, 2)
        parent = b.make_block(base[-1])
        bad_child = b.make_block(parent, tamper=lambda hd: dataclasses.replace(hd, reward=hd.reward + 1))
        h = Harness(self, base)
        liar, _ = h.connect(host="10.0.0.66")
        handshake(liar, node_id=b"\x66" * 16, genesis=h.node.genesis_hash)
        honest, _ = h.connect(host="10.0.0.1")
        handshake(honest, node_id=b"\x01" * 16, genesis=h.node.genesis_hash)
        feed(liar, wire.PushBlock(bad_child))
        self.assertIn(bad_child.hash, h.node.orphans)
        feed(honest, wire.PushBlock(parent))
        self.assertEqual(h.node.chain.tip.hash, parent.hash)
        self.assertGreater(liar.info.misbehaviour, 0)
        self.assertEqual(honest.info.misbehaviour, 0)
        self.assertEqual(self.flushLoggedErrors(), [])  # nothing unhandled


class FakeEndpoint:
    """Records connection attempts; each succeeds onto a StringTransport from `host`."""

    def __init__(self, host):
        self.host = host
        self.attempts = []

    def connect(self, factory):
        proto = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", self.host, 9090))
        transport.protocol = proto  # loseConnection() reports connectionLost at once
        proto.makeConnection(transport)
        self.attempts.append(proto)
        return defer.succeed(proto)


class DialingTests(unittest.TestCase):
    timeout = 20

    def setUp(self):
        self.h = Harness(self)
        self.endpoint = FakeEndpoint("10.0.0.50")
        self.service = self.h.node.peers.client_service("10.0.0.50:9090", endpoint=self.endpoint)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def drop(self, proto):
        if proto.transport.connected:
            proto.transport.loseConnection()

    def test_a_banned_address_is_not_dialed_before_its_ban_ends(self):
        (proto,) = self.endpoint.attempts
        self.h.node.peers.bans.ban("10.0.0.50", 3600)  # the operator's ban
        self.drop(proto)
        self.h.clock.advance(3600 - 1)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.h.clock.advance(manager.DIAL_MAX_DELAY * 2)
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.assertFalse(self.endpoint.attempts[-1].transport.disconnecting)

    def test_a_discouraged_address_is_not_redialed_soon(self):
        (proto,) = self.endpoint.attempts
        proto.dataReceived(b"x" * (70 * 1024))  # over the handshake line cap: discouraged
        self.assertTrue(self.h.node.peers.is_discouraged("10.0.0.50"))
        self.drop(proto)
        self.h.clock.advance(manager.DISCOURAGED_REDIAL - 1)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.h.clock.advance(manager.DIAL_MAX_DELAY * 2)
        self.assertEqual(len(self.endpoint.attempts), 2)

    def test_a_dropped_connection_backs_off(self):
        delays = []
        for _ in range(6):
            proto = self.endpoint.attempts[-1]
            self.drop(proto)  # never became ready
            start = self.h.clock.seconds()
            while len(self.endpoint.attempts) == len(delays) + 1:
                self.h.clock.advance(0.05)
            delays.append(self.h.clock.seconds() - start)
        self.assertEqual(delays, sorted(delays))
        self.assertGreater(delays[-1], 4 * delays[0])

    def test_another_network_is_not_redialed_for_a_long_while(self):
        (proto,) = self.endpoint.attempts
        feed(proto, wire.Status(0, 1, b"\x00" * 32, network="devnet"))
        self.drop(proto)
        self.h.clock.advance(manager.WRONG_CHAIN_DELAY - 1)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.h.clock.advance(manager.DIAL_MAX_DELAY * 2)
        self.assertEqual(len(self.endpoint.attempts), 2)
