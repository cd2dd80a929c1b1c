"""Holes found in review, each shown closed: an empty reply in the fork walk, a walk of
unlinked blocks, a forged transfer copy, an echoed HELLO, a long line judged before it is
parsed, gossip naming internal addresses, IPv4 peers on a dual-stack listener, a
non-ASCII admin token, a batch longer than asked, a forged orphan, IPv6 listen addresses."""

import dataclasses
import time

from twisted.trial import unittest

from archivas import admin
from archivas.chain.params import COIN
from archivas.protocols import manager, wire
from archivas.protocols.banlist import BanList
from tests.common import ALICE, CAROL, builder
from tests.test_protocol import Harness, feed, handshake, hello, sent
from tests.test_sync import LEGACY, ScriptedPeer


class SyncHoles(unittest.TestCase):
    def test_an_empty_reply_in_the_fork_walk_fails_the_round_and_rotates(self):
        blocks = builder().extend(builder().genesis, 5)
        h = Harness(self, blocks[:2])
        proto, transport = h.connect(host="10.0.0.66")
        feed(proto, wire.Status(2, 1, blocks[1].hash, weight=2**62, capabilities=("hello",)))
        handshake(proto, status=False, node_id=b"\x66" * 16, genesis=h.node.genesis_hash,
                  capabilities=("hello", "blocks"))
        for _ in range(3):
            requests = [m for m in sent(transport) if isinstance(m, wire.GetBlocks)]
            for request in requests:
                feed(proto, wire.Blocks(request.start, ()))
            h.clock.advance(5)
        self.assertGreater(proto.sync_agent.failed_rounds, 0)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_fork_walk_of_unlinked_blocks_is_refused(self):
        b = builder()
        ours = b.extend(b.genesis, 6)
        h = Harness(self, ours)
        proto, transport = h.connect(host="10.0.0.67")
        feed(proto, wire.Status(7, 1, b"\x07" * 32))  # a seed peer, one above us
        other = b.extend(b.genesis, 6, farmer=1, timestamp=None)
        for _ in range(10):
            for request in [m for m in sent(transport) if isinstance(m, wire.GetBlock)]:
                bogus = other[request.height - 1]
                if request.height % 2:  # every other one from an unrelated branch: no linkage
                    header = dataclasses.replace(bogus.header, parent_hash=b"\x01" * 32)
                    bogus = dataclasses.replace(bogus, header=header)
                feed(proto, wire.BlockData(request.height, bogus))
        self.assertEqual(h.node.chain.tip.hash, ours[-1].hash)
        self.assertGreater(proto.sync_agent.failed_rounds, 0)

    def test_a_batch_longer_than_asked_is_cut_to_what_was_asked(self):
        blocks = builder().extend(builder().genesis, 40)
        h = Harness(self)
        peer = ScriptedPeer(h, "10.0.0.1", blocks, b"\x01" * 16, capabilities=LEGACY)
        for _ in range(30):
            for message in sent(peer.transport):
                if isinstance(message, wire.GetBlocks):
                    start = message.start
                    feed(peer.proto, wire.Blocks(start, tuple(blocks[start - 1:start - 1 + 64])))
                elif isinstance(message, wire.GetHashes):
                    hashes = (h.node.genesis_hash,) + tuple(b.hash for b in blocks)
                    feed(peer.proto, wire.Hashes(message.start, hashes[message.start:message.start + message.count]))
            if h.node.chain.height == 40:
                break
            h.clock.advance(1)
        self.assertEqual(h.node.chain.tip.hash, blocks[-1].hash)


class RelayHoles(unittest.TestCase):
    def test_a_forged_transfer_copy_does_not_censor_the_real_one(self):
        tx = builder().transfer(ALICE, CAROL.address, COIN, 0)
        forged = dataclasses.replace(tx, signature=b"\x00" * 64)
        h = Harness(self)
        attacker, _ = h.connect(host="10.0.0.66")
        handshake(attacker, node_id=b"\x66" * 16, genesis=h.node.genesis_hash)
        honest, _ = h.connect(host="10.0.0.1")
        handshake(honest, node_id=b"\x01" * 16, genesis=h.node.genesis_hash)
        feed(attacker, wire.NewTransaction(forged))
        feed(honest, wire.NewTransaction(tx))
        self.assertIn(tx.hash, h.node.mempool)
        self.assertEqual(honest.info.misbehaviour, 0)

    def test_a_forged_orphan_does_not_shadow_the_real_child(self):
        b = builder()
        base = b.extend(b.genesis, 1)
        parent = b.make_block(base[-1])
        child = b.make_block(parent)
        forged = dataclasses.replace(child, header=dataclasses.replace(child.header, farmer_signature=b"\x00" * 64))
        h = Harness(self, base)
        attacker, _ = h.connect(host="10.0.0.66")
        handshake(attacker, node_id=b"\x66" * 16, genesis=h.node.genesis_hash)
        honest, honest_t = h.connect(host="10.0.0.1")
        handshake(honest, node_id=b"\x01" * 16, genesis=h.node.genesis_hash)
        feed(attacker, wire.PushBlock(forged))  # held as an orphan first
        feed(honest, wire.PushBlock(child))  # the same id: not held again
        sent(honest_t)
        feed(honest, wire.PushBlock(parent))
        asked = [m for m in sent(honest_t) if isinstance(m, wire.GetBlocks)]
        self.assertEqual(asked, [wire.GetBlocks(child.height, 1)])  # the peer that sent it is asked
        feed(honest, wire.Blocks(child.height, (child,)))
        self.assertEqual(h.node.chain.tip.hash, child.hash)


class HandshakeHoles(unittest.TestCase):
    def test_an_echoed_hello_does_not_make_the_node_forget_a_peers_entry(self):
        from tests.test_relay_safety import FakeEndpoint

        h = Harness(self)
        endpoint = FakeEndpoint("10.0.0.50")
        service = h.node.peers.client_service("10.0.0.50:9090", endpoint=endpoint)
        service.startService()
        self.addCleanup(service.stopService)
        (proto,) = endpoint.attempts
        feed(proto, wire.Status(0, 1, b"\x00" * 32, capabilities=("hello",)))
        (ours,) = [m for m in sent(proto.transport) if isinstance(m, wire.Hello)]
        feed(proto, ours)  # our own HELLO reflected back
        self.assertIn("10.0.0.50:9090", h.node.peers.dialers)
        self.assertTrue(proto.transport.disconnecting or not proto.transport.connected)

    def test_a_hello_naming_our_key_is_not_believed_without_the_proof(self):
        h = Harness(self)
        proto, transport = h.connect()
        feed(proto, wire.Status(0, 1, b"\x00" * 32, capabilities=("hello",)))
        feed(proto, hello(identity=h.node.identity, genesis=h.node.genesis_hash))
        self.assertFalse(transport.disconnecting)  # not "ourselves" on its word
        feed(proto, wire.HelloAck(b"\x00" * 64))
        self.assertTrue(transport.disconnecting)  # and the proof fails


class LongLineHoles(unittest.TestCase):
    def test_a_long_line_of_a_small_type_is_refused_unparsed(self):
        h = Harness(self)
        proto, transport = h.connect()
        feed(proto, wire.Status(0, 1, b"\x00" * 32))  # ready: the 4 MiB cap
        line = b'{"type":1,"payload":{"x":[' + b"{}," * 1_300_000 + b'{}]}}\n'
        started = time.process_time()
        proto.dataReceived(line)
        self.assertLess(time.process_time() - started, 0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.node.peers.misbehaviour_counts["rate_limit"], 1)

    def test_a_long_line_must_begin_with_its_type(self):
        h = Harness(self)
        proto, transport = h.connect()
        feed(proto, wire.Status(0, 1, b"\x00" * 32))
        proto.dataReceived(b'{"payload":{"x":"' + b"y" * 70_000 + b'"},"type":1}\n')
        self.assertEqual(h.node.peers.misbehaviour_counts["bad_shape"], 1)


class AddressHoles(unittest.TestCase):
    def test_gossip_naming_internal_addresses_is_not_stored(self):
        self.assertFalse(manager.gossip_acceptable("127.0.0.1:22", "93.184.216.34"))
        self.assertFalse(manager.gossip_acceptable("10.0.0.1:5432", "93.184.216.34"))
        self.assertFalse(manager.gossip_acceptable("169.254.169.254:80", "10.0.0.2"))
        self.assertFalse(manager.gossip_acceptable("db.internal.corp:6379", "10.0.0.2"))
        self.assertTrue(manager.gossip_acceptable("1.1.1.1:9090", "93.184.216.34"))
        self.assertTrue(manager.gossip_acceptable("127.0.0.1:9091", "127.0.0.1"))  # a one-host network
        self.assertTrue(manager.gossip_acceptable("[2001:4860::8888]:9090", "93.184.216.34"))

    def test_dual_stack_peers_are_judged_by_their_ipv4_address(self):
        bans = BanList(lambda: 0.0)
        bans.ban("10.0.0.0/8", 60)
        self.assertTrue(bans.is_banned("::ffff:10.0.0.5"))
        self.assertTrue(manager.is_local("::ffff:127.0.0.1"))
        h = Harness(self, whitelist=["192.0.2.0/24"])
        self.assertTrue(h.node.peers.is_whitelisted("::ffff:192.0.2.9"))
        h.node.peers.discourage("::ffff:198.51.100.1")
        self.assertTrue(h.node.peers.is_discouraged("198.51.100.1"))

    def test_ipv6_listen_addresses_are_bracketed(self):
        from archivas.protocols.peer import PeerInfo

        info = PeerInfo("2001:db8::1", 40000, "inbound", 0.0, 0.0, listen_port=9090)
        self.assertEqual(info.listen_address, "[2001:db8::1]:9090")


class AdminHoles(unittest.TestCase):
    def test_a_non_ascii_token_is_refused_not_an_error(self):
        self.assertFalse(admin.authorised(b"Bearer \xff\xfe", "f" * 64))
        self.assertTrue(admin.authorised(b"Bearer " + b"f" * 64, "f" * 64))


class VerifyQueueHoles(unittest.TestCase):
    def test_a_burst_of_forged_work_cannot_fill_the_verify_threads(self):
        import os

        from twisted.internet import defer

        from archivas.chain.vdf import Segment
        from archivas.node import MAX_PENDING_PER_PEER

        b = builder()
        h = Harness(self)
        queued = []

        def held(what):
            d = defer.Deferred()  # a check that is still running (the thread pool holds it)
            queued.append((what, d))
            return d

        h.node._in_thread = lambda f, *args, **kwargs: held(f)
        h.node.verify = lambda block, parent: held(block)
        proto, _ = h.connect(host="10.0.0.66")
        handshake(proto, node_id=b"\x66" * 16, genesis=h.node.genesis_hash)
        for _ in range(300):
            feed(proto, wire.VdfOutput(h.node.vdf_parent, 1, Segment(os.urandom(100), os.urandom(100))))
        import gc

        gc.collect()  # (the checks are alive: held as the thread pool would)
        self.assertEqual(len(queued), 1)  # one check per segment slot
        children = [dataclasses.replace(blk, header=dataclasses.replace(blk.header, timestamp=blk.header.timestamp + i))
                    for i, blk in enumerate([b.make_block(b.genesis)] * 50)]
        for child in children:
            feed(proto, wire.PushBlock(child))
            gc.collect()
        self.assertLessEqual(len(queued), 1 + MAX_PENDING_PER_PEER)
