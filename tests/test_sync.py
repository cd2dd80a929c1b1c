"""Sync and orphans with scripted peers on a task.Clock: batches spread over several
peers, a silent peer's requests retried elsewhere, orphans resolved through their parent."""

from twisted.trial import unittest

from archivas.protocols import sync, wire
from tests.common import builder
from tests.test_protocol import Harness, feed, handshake, sent

LEGACY = tuple(c for c in wire.CAPABILITIES if c != "headers")  # an Archivas peer of before headers-first


class ScriptedPeer:
    """An Archivas peer on a StringTransport that answers from a list of blocks (headers
    and bodies too, unless its capabilities leave "headers" out)."""

    def __init__(self, harness, host, blocks, node_id, weight=10**6, capabilities=wire.CAPABILITIES):
        self.blocks = blocks  # index = height - 1
        self.proto, self.transport = harness.connect(host=host)
        self.clock = harness.clock
        self.genesis = harness.node.genesis_hash
        self.weight = weight
        self.requests = []
        tip = blocks[-1]
        sent(self.transport)
        feed(self.proto, wire.Status(tip.height, tip.header.difficulty, tip.hash, weight=weight,
                                     genesis_hash=self.genesis, network="fastnet", version=1,
                                     capabilities=capabilities))
        handshake(self.proto, status=False, node_id=node_id, genesis=self.genesis, capabilities=capabilities)

    def headers_after(self, locator, count):
        hashes = [self.genesis] + [b.hash for b in self.blocks]
        for h in locator:
            if h in hashes:
                start = hashes.index(h)
                return tuple(b.header for b in self.blocks[start:start + count])
        return ()

    def reply(self, message):
        """The answer to a sync request from our blocks (None for anything else)."""
        if isinstance(message, wire.GetHashes):
            hashes = [self.genesis] + [b.hash for b in self.blocks]
            return wire.Hashes(message.start, tuple(hashes[message.start:message.start + message.count]))
        if isinstance(message, wire.GetBlocks):
            return wire.Blocks(message.start, tuple(self.blocks[message.start - 1:message.start - 1 + message.count]))
        if isinstance(message, wire.GetHeaders):
            return wire.Headers(self.headers_after(message.locator, message.count), self.blocks[-1].height,
                                self.weight)
        if isinstance(message, wire.GetBodies):
            by_hash = {b.hash: b for b in self.blocks}
            bodies = []
            for h in message.hashes:
                if h not in by_hash:
                    break
                bodies.append((h, by_hash[h].transactions))
            return wire.Bodies(tuple(bodies))
        return None

    def answer(self):
        """Answer every request written since the last call; returns how many. (First
        the imports waiting on the reactor run: an import yields between blocks.)"""
        self.clock.advance(0)
        count = 0
        for message in sent(self.transport):
            self.requests.append(message)
            out = self.reply(message)
            if out is not None:
                feed(self.proto, out)
                count += 1
        return count


class SyncTests(unittest.TestCase):
    def setUp(self):
        b = builder()
        self.blocks = b.extend(b.genesis, 150)

    def test_batches_from_several_peers_and_a_silent_one_is_retried_elsewhere(self):
        h = Harness(self)
        first = ScriptedPeer(h, "10.0.0.1", self.blocks, b"\x01" * 16)
        silent = ScriptedPeer(h, "10.0.0.2", self.blocks, b"\x02" * 16)
        third = ScriptedPeer(h, "10.0.0.3", self.blocks, b"\x03" * 16)
        self.assertTrue(h.node.sync.active)
        for _ in range(30):
            first.answer()
            third.answer()
            sent(silent.transport)  # swallowed: never answered
            if h.node.chain.height == 150 and not h.node.sync.active:
                break  # (each claims more weight than the chain has: rounds go on until refuted)
            h.clock.advance(sync.REQUEST_TIMEOUT)
        self.assertEqual(h.node.chain.tip.hash, self.blocks[-1].hash)
        served = {p: [m for m in p.requests if isinstance(m, wire.GetBodies)] for p in (first, third)}
        self.assertTrue(served[first] and served[third], "batches went to both answering peers")
        self.assertFalse(h.node.sync.active)
        h.clock.advance(0)  # the round's end let the transfer indexes the runs left behind catch up
        self.assertIsNone(h.node.chain.storage.index_behind())
        # Slowness costs no score; its timeouts were counted and back its requests off.
        self.assertEqual(silent.proto.info.misbehaviour, 0)
        self.assertGreater(silent.proto.sync_agent.timeouts, 0)

    def test_a_peer_ready_mid_round_joins_the_fetching(self):
        h = Harness(self)
        first = ScriptedPeer(h, "10.0.0.1", self.blocks, b"\x01" * 16)
        first.answer()  # the fork point; now batch requests are out to the first peer only
        late = ScriptedPeer(h, "10.0.0.2", self.blocks, b"\x02" * 16)
        self.assertTrue(h.node.sync.active)
        for _ in range(30):
            first.answer()
            late.answer()
            if h.node.chain.height == 150:
                break
        self.assertEqual(h.node.chain.tip.hash, self.blocks[-1].hash)
        self.assertTrue([m for m in late.requests if isinstance(m, wire.GetBodies)], "the late peer was asked")

    def test_each_body_is_fetched_once_while_runs_import(self):
        # The import yields between blocks: heights handed to it are neither received nor
        # stored meanwhile, and must not look missing to the fetching.
        h = Harness(self)
        peer = ScriptedPeer(h, "10.0.0.1", self.blocks, b"\x01" * 16)
        for _ in range(40):
            peer.answer()
            if h.node.chain.height == 150 and not h.node.sync.active:
                break
        self.assertEqual(h.node.chain.height, 150)
        asked = [x for m in peer.requests if isinstance(m, wire.GetBodies) for x in m.hashes]
        self.assertEqual(len(asked), len(set(asked)), f"{len(asked) - len(set(asked))} bodies fetched twice")

    def test_fork_point_found_by_hash_windows(self):
        b = builder()
        ours = self.blocks[:100]
        h = Harness(self, ours)
        theirs = self.blocks[:90] + forked(b, self.blocks[89], 70)
        peer = ScriptedPeer(h, "10.0.0.1", theirs, b"\x01" * 16)
        for _ in range(20):
            if not peer.answer():
                break
        self.assertEqual(h.node.chain.tip.hash, theirs[-1].hash)
        first_fetch = next(m for m in peer.requests if isinstance(m, wire.GetBodies))
        self.assertEqual(first_fetch.hashes[0], theirs[90].hash)  # only what differs is fetched

    def test_fork_point_found_by_hash_windows_with_a_peer_that_serves_no_headers(self):
        b = builder()
        ours = self.blocks[:100]
        h = Harness(self, ours)
        theirs = self.blocks[:90] + forked(b, self.blocks[89], 70)
        peer = ScriptedPeer(h, "10.0.0.1", theirs, b"\x01" * 16, capabilities=LEGACY)
        for _ in range(20):
            if not peer.answer():
                break
        self.assertEqual(h.node.chain.tip.hash, theirs[-1].hash)
        first_fetch = next(m for m in peer.requests if isinstance(m, wire.GetBlocks))
        self.assertEqual(first_fetch.start, 91)


def forked(b, parent, count):
    """`count` blocks on `parent` that differ from any other child of it from the first
    (its timestamp is one no other block of the builder's uses)."""
    first = b.make_block(parent, farmer=1, timestamp=parent.header.timestamp + 777)
    return [first] + b.extend(first, count - 1, farmer=1)


class OrphanTests(unittest.TestCase):
    def test_orphan_waits_for_its_parent(self):
        b = builder()
        blocks = b.extend(b.genesis, 4)
        h = Harness(self, blocks[:2])
        level = h.node.chain.tip.weight
        peer = ScriptedPeer(h, "10.0.0.1", blocks[:2], b"\x01" * 16, weight=level)  # no sync
        self.assertFalse(h.node.sync.active)
        sent(peer.transport)
        feed(peer.proto, wire.PushBlock(blocks[3]))  # height 4; 3 is missing
        self.assertIn(blocks[3].hash, h.node.orphans)
        self.assertEqual(sent(peer.transport), [wire.GetBlocks(3, 1)])
        feed(peer.proto, wire.Blocks(3, (blocks[2],)))
        self.assertEqual(h.node.chain.tip.hash, blocks[3].hash)
        self.assertEqual(len(h.node.orphans), 0)

    def test_pool_is_bounded(self):
        from archivas.protocols.orphans import OrphanPool

        b = builder()
        blocks = b.extend(b.genesis, 6)
        pool = OrphanPool(size=3)
        for block in blocks[1:]:
            pool.add(block)
        self.assertEqual(len(pool), 3)
        self.assertEqual([blk.hash for blk, _ in pool.take_children(blocks[3].hash)], [blocks[4].hash])


class RotationTests(unittest.TestCase):
    def test_a_silent_peer_claiming_more_is_not_picked_forever(self):
        """A liar claims far more weight and answers nothing; an honest peer is 40 blocks
        ahead: rounds rotate off the liar, and the node reaches the honest tip."""
        blocks = builder().extend(builder().genesis, 40)
        h = Harness(self)
        liar = ScriptedPeer(h, "10.0.0.66", blocks, b"\x66" * 16, weight=10**12)
        honest = ScriptedPeer(h, "10.0.0.1", blocks, b"\x01" * 16)
        for _ in range(200):
            sent(liar.transport)  # never answered
            honest.answer()
            if h.node.chain.height == 40:
                break
            h.clock.advance(1)
        self.assertEqual(h.node.chain.tip.hash, blocks[-1].hash)
        self.assertLess(h.clock.seconds() - 1_800_000_000, 30)  # within 30 simulated seconds
        self.assertGreater(liar.proto.sync_agent.failed_rounds, 0)


class OrphanBoundTests(unittest.TestCase):
    def garbage(self, count):
        import dataclasses
        import os

        block = builder().make_block(builder().genesis)
        return [dataclasses.replace(block, header=dataclasses.replace(block.header, parent_hash=os.urandom(32),
                                                                       height=2 + i % 20))
                for i in range(count)]

    def test_no_orphans_from_a_connection_before_its_handshake(self):
        h = Harness(self)
        proto, transport = h.connect()
        for block in self.garbage(50):
            feed(proto, wire.BlockData(block.height, block))
        self.assertEqual(len(h.node.orphans), 0)

    def test_orphans_from_a_ready_peer_stay_within_the_bounds(self):
        from archivas.protocols import orphans

        h = Harness(self)
        proto, transport = h.connect()
        handshake(proto, genesis=h.node.genesis_hash)
        for block in self.garbage(300):
            feed(proto, wire.PushBlock(block))
        self.assertLessEqual(len(h.node.orphans), orphans.MAX_ORPHANS)
        self.assertLessEqual(h.node.orphans.bytes, orphans.MAX_ORPHAN_BYTES)
        pool = orphans.OrphanPool(max_bytes=len(self.garbage(1)[0].encode()) * 3 + 10)
        for block in self.garbage(10):
            pool.add(block)
        self.assertEqual(len(pool), 3)  # the byte bound, oldest out first

    def test_far_above_the_tip_starts_a_sync_instead(self):
        h = Harness(self)
        proto, transport = h.connect()
        handshake(proto, genesis=h.node.genesis_hash)
        far = self.garbage(1)[0]
        import dataclasses

        far = dataclasses.replace(far, header=dataclasses.replace(far.header, height=500))
        feed(proto, wire.PushBlock(far))
        self.assertEqual(len(h.node.orphans), 0)


class EarlyBlockTests(unittest.TestCase):
    def test_a_block_only_early_is_taken_once_due(self):
        b = builder()
        h = Harness(self)
        proto, transport = h.connect()
        handshake(proto, genesis=h.node.genesis_hash)
        now_ms = int(h.clock.seconds() * 1000)
        early = b.make_block(b.genesis, timestamp=now_ms + 40_000)  # 10 s past the 30 s allowed
        feed(proto, wire.PushBlock(early))
        self.assertEqual(h.node.chain.height, 0)
        self.assertEqual(proto.info.misbehaviour, 0)
        for _ in range(12):
            h.clock.advance(1)
        self.assertEqual(h.node.chain.tip.hash, early.hash)

    def test_retries_stop_after_three(self):
        b = builder()
        h = Harness(self)
        proto, transport = h.connect()
        handshake(proto, genesis=h.node.genesis_hash)
        now_ms = int(h.clock.seconds() * 1000)
        early = b.make_block(b.genesis, timestamp=now_ms + 40_000)
        checks = []
        real = h.node.verify
        h.node.verify = lambda block, parent: checks.append(block.hash) or real(block, parent)
        self.patch(h.node, "now_ms", lambda: now_ms)  # its clock stands still: never due
        feed(proto, wire.PushBlock(early))
        for _ in range(60):
            h.clock.advance(1)
        self.assertEqual(len(checks), 1 + 3)
        self.assertEqual(h.node.chain.height, 0)


class StaleTipTests(unittest.TestCase):
    def test_peers_are_asked_again_when_the_tip_goes_stale(self):
        from archivas import node as node_module

        blocks = builder().extend(builder().genesis, 5)
        h = Harness(self)
        quiet = ScriptedPeer(h, "10.0.0.9", blocks, b"\x09" * 16)  # shows more, answers nothing
        sent(quiet.transport)
        h.clock.advance(node_module.STALE_CHECK_SECONDS - 1)
        self.assertNotIn(wire.GetStatus(), sent(quiet.transport))
        h.clock.advance(2)
        self.assertIn(wire.GetStatus(), sent(quiet.transport))


class BodyBatchTests(unittest.TestCase):
    """A GET_BODIES asks for about BODY_BATCH_BYTES of bodies (docs/protocol.md)."""

    def test_big_bodies_are_asked_for_fewer_at_a_time_with_more_requests_out(self):
        from types import SimpleNamespace

        from archivas.protocols import headersfirst as hf

        def per_request(body_bytes):
            return hf.HeadersFirstRound.bodies_per_request(SimpleNamespace(body_bytes=body_bytes))

        self.assertEqual(per_request(300), hf.BODIES_PER_REQUEST)  # empty blocks: 32
        twenty = 256 + 512 * 20  # a body of 20 transfers, as estimated
        self.assertEqual(per_request(twenty), hf.BODY_BATCH_BYTES // twenty)
        self.assertLessEqual(per_request(twenty) * twenty, hf.BODY_BATCH_BYTES)
        self.assertEqual(per_request(10**7), hf.MIN_BODIES_PER_REQUEST)
        in_flight = hf.HeadersFirstRound.bodies_in_flight
        self.assertEqual(in_flight(None, 32), hf.BODIES_IN_FLIGHT)
        self.assertEqual(in_flight(None, 16), 3 * 32 // 16)
        self.assertEqual(in_flight(None, 4), hf.MAX_BODIES_IN_FLIGHT)

    def test_an_import_run_holds_at_most_its_bytes_of_bodies(self):
        from archivas.protocols import headersfirst as hf

        self.patch(hf, "IMPORT_RUN_BYTES", 1000)  # four empty bodies (256 bytes each, as estimated)
        blocks = builder().extend(builder().genesis, 40)
        h = Harness(self)
        runs = []
        import_batch = h.node.import_batch

        def recorded(run, *args):
            runs.append(len(run))
            return import_batch(run, *args)

        h.node.import_batch = recorded
        peer = ScriptedPeer(h, "10.0.0.1", blocks, b"\x01" * 16)
        for _ in range(60):
            peer.answer()
            if h.node.chain.height == 40 and not h.node.sync.active:
                break
        self.assertEqual(h.node.chain.height, 40)
        self.assertEqual(sum(runs), 40)
        self.assertLessEqual(max(runs), 4, runs)
