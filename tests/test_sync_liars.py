"""Sync against liars: a node on a task.Clock, one honest scripted peer serving a
300-block chain, and one liar connected first (so it leads the first round):

1. a silent peer claiming more weight;
2. a peer that answers headers and never bodies: (a) the honest chain's headers, (b) a
   private valid chain's;
3. a peer whose headers are invalid from height 50 on: (a) a flipped byte in the proof of
   space (its signature no longer holds), (b) a wrong difficulty (refused for good);
4. a seed-style peer claiming height 10^9 (silent, or answering GET_BLOCK with garbage);
5. a peer serving a long valid fork below the network's minimum chain weight (with an
   honest peer, and alone).

In each case the node reaches the honest tip within 30 simulated seconds, the liar leads
no round and gets no sync request (headers or bodies) after its round failed, and nothing
of its chain is stored. LiarTests: every peer answers at once (polled until quiet at each
0.5 s step), so the time to the honest tip is what the liar costs. SlowHonestLiarTests:
the same with every peer answering once per 1 s step, so the honest round outlasts the
liar's first back-off (2 s) and shows whether the liar is taken back as a body source.
"""

import dataclasses

from twisted.internet import task
from twisted.trial import unittest

from archivas.chain.block import Block, genesis_block
from archivas.chain.blockchain import Chain
from archivas.node import Node
from archivas.protocols import wire
from archivas.protocols.peer import PeerProtocol, PeerState
from tests.common import CAROL, PARAMS, builder, fixture_blocks
from tests.common import weight_of as added_weight
from tests.test_protocol import Harness, feed, sent
from tests.test_sync import ScriptedPeer

START = 1_800_000_000  # where Harness sets its clock
HONEST_HEIGHT = 300
LIMIT = 30.0  # simulated seconds to the honest tip
SYNC_REQUESTS = (wire.GetHeaders, wire.GetBodies, wire.GetBlocks, wire.GetBlock, wire.GetHashes)
HUGE = 10**12

_private: list = []


def private_chain(count):
    """A valid chain from genesis that nobody else has (farmer 1 only, rewards to Carol:
    the fixture's first block may be farmer 1's), made once per run."""
    if len(_private) < count:
        b = builder()
        parent = _private[-1] if _private else b.genesis
        _private.extend(b.extend(parent, count - len(_private), farmer=1, reward_address=CAROL.address))
    return _private[:count]


GENESIS_WEIGHT = added_weight([genesis_block(PARAMS)])


def weight_of(blocks):
    return GENESIS_WEIGHT + added_weight(blocks)


def min_weight():
    """A minimum chain weight above the 60-block private chain's and below the honest one's."""
    return (weight_of(private_chain(60)) + weight_of(fixture_blocks(HONEST_HEIGHT))) // 2


class Actor(ScriptedPeer):
    """A scripted Archivas peer that answers only the sync requests in `serves`, from
    `blocks`, with the weight it claims. Unless `alive` is False it answers PING and
    GET_STATUS (with the claim it made on connecting), so it stays connected and keeps
    its claim. `answer()` returns how many messages it fed the node."""

    def __init__(self, harness, host, blocks, node_id, weight, serves=SYNC_REQUESTS, alive=True):
        self.serves = serves
        self.alive = alive
        super().__init__(harness, host, blocks, node_id, weight=weight)

    def status(self):
        tip = self.blocks[-1]
        return wire.Status(tip.height, tip.header.difficulty, tip.hash, weight=self.weight,
                           genesis_hash=self.genesis, network="fastnet", version=1,
                           capabilities=wire.CAPABILITIES)

    def answer(self):
        fed = 0
        for message in sent(self.transport):
            self.requests.append(message)
            if self.proto.info.state is PeerState.CLOSED:
                continue
            out = None
            if isinstance(message, wire.Ping):
                out = wire.Pong(message.timestamp) if self.alive else None
            elif isinstance(message, wire.GetStatus):
                out = self.status() if self.alive else None
            elif isinstance(message, self.serves):
                out = self.reply(message)
            if out is not None:
                feed(self.proto, out)
                fed += 1
        return fed


class SeedLiar:
    """A seed-style connection: one STATUS of the seed's three fields claiming height
    10^9, no HELLO; GET_BLOCK never answered, or answered with `garbage`."""

    def __init__(self, harness, host, garbage=None):
        self.proto, self.transport = harness.connect(host=host)
        self.garbage = garbage
        self.requests = []
        sent(self.transport)
        feed(self.proto, wire.Status(height=10**9, difficulty=1, tip_hash=b"\x5e" * 32))

    def answer(self):
        fed = 0
        for message in sent(self.transport):
            self.requests.append(message)
            if (self.garbage is not None and isinstance(message, wire.GetBlock)
                    and self.proto.info.state is not PeerState.CLOSED):
                feed(self.proto, wire.BlockData(message.height, self.garbage))
                fed += 1
        return fed


class Watch:
    """Everything the sync does, in order: rounds started (and their target), rounds
    failed (and whose), and every message written to a peer."""

    def __init__(self, case, h):
        self.h = h
        self.events = []  # (seconds since START, kind, proto, message)
        syncer = h.node.sync
        real_round, real_failed, real_send = syncer._round, syncer.round_failed, PeerProtocol.send

        async def round_(target):
            self._add("round", target)
            await real_round(target)

        def failed(proto):
            self._add("failed", proto, h.node.chain.storage.block_count())  # blocks stored by then
            real_failed(proto)

        def send(proto, message):
            self._add("sent", proto, message)
            real_send(proto, message)

        case.patch(syncer, "_round", round_)
        case.patch(syncer, "round_failed", failed)
        case.patch(PeerProtocol, "send", send)

    def _add(self, kind, proto, message=None):
        self.events.append((self.h.clock.seconds() - START, kind, proto, message))

    def targets(self):
        return [p for _, kind, p, _ in self.events if kind == "round"]

    def first_failure(self, proto):
        """The index and time of the first failed round `proto` led."""
        for i, (t, kind, p, _) in enumerate(self.events):
            if kind == "failed" and p is proto:
                return i, t
        raise AssertionError("the liar's round never failed")

    def stored_at_failure(self, proto):
        i, _ = self.first_failure(proto)
        return self.events[i][3]

    def after_failure(self, proto):
        i, _ = self.first_failure(proto)
        return self.events[i + 1:]

    def sync_requests(self, proto, events=None):
        """(time, name, hashes or heights asked) of the sync requests written to `proto`."""
        return [(t, m.NAME, len(getattr(m, "hashes", ())) or getattr(m, "count", 1))
                for t, kind, p, m in (self.events if events is None else events)
                if kind == "sent" and p is proto and isinstance(m, SYNC_REQUESTS)]


class ParamsHarness(Harness):
    """Harness on a chain opened with other network parameters (the same genesis)."""

    def __init__(self, case, params):
        self.clock = task.Clock()
        self.clock.advance(START)
        chain = Chain.open(case.mktemp(), params)
        case.addCleanup(chain.close)
        self.node = Node(chain, self.clock, threaded=False)
        self.node.start()
        case.addCleanup(lambda: self.node.stop() and None)


def drive(h, peers, goal=None, seconds=60.0, step=0.5, quiet=True, each_step=None):
    """Advance the clock in steps up to `seconds` after START; at each step every peer
    answers what it was sent (`quiet`: again and again until none has anything left).
    Returns the simulated seconds at which the tip first was `goal` (None if never)."""
    reached = None
    while True:
        for _ in range(10_000 if quiet else 1):
            fed = sum(p.answer() for p in peers)
            h.clock.advance(0)  # rounds start with callLater(0)
            if not fed and not any(p.transport.value() for p in peers):
                break
        if goal is not None and reached is None and h.node.chain.tip.hash == goal:
            reached = h.clock.seconds() - START
        if each_step is not None:
            each_step()
        if h.clock.seconds() - START >= seconds:
            return reached
        h.clock.advance(step)


class LiarTests(unittest.TestCase):
    QUIET, STEP = True, 0.5  # how the peers answer: see drive()

    def drive(self, h, peers, goal=None, **options):
        return drive(h, peers, goal, step=self.STEP, quiet=self.QUIET, **options)

    def setUp(self):
        self.honest_blocks = fixture_blocks(HONEST_HEIGHT)
        self.honest_weight = weight_of(self.honest_blocks)

    def harness(self, params=None):
        h = Harness(self) if params is None else ParamsHarness(self, params)
        self.assertEqual(h.node.chain.tip.weight, GENESIS_WEIGHT)
        self.watch = Watch(self, h)
        return h

    def honest(self, h):
        return Actor(h, "10.0.0.1", self.honest_blocks, b"\x01" * 16, weight=self.honest_weight)

    def liar(self, h, blocks, **options):
        return Actor(h, "10.0.0.66", blocks, b"\x66" * 16, **{"weight": HUGE, **options})

    def assert_honest_tip_despite(self, h, liar, reached, liar_blocks=()):
        """The honest tip within LIMIT, the liar led the first round and, once that
        failed, no other and got no sync request; nothing but the honest chain stored."""
        self.assertIsNotNone(reached, "the node never reached the honest tip")
        self.assertLessEqual(reached, LIMIT)
        self.assertEqual(h.node.chain.tip.hash, self.honest_blocks[-1].hash)
        self.assertEqual(h.node.chain.tip.weight, self.honest_weight)
        w = self.watch
        self.assertIs(w.targets()[0], liar.proto, "the liar led the first round")
        later = w.after_failure(liar.proto)
        self.assertNotIn(liar.proto, [p for _, kind, p, _ in later if kind == "round"],
                         "the liar led a round again after its round failed")
        self.assertEqual(w.sync_requests(liar.proto, later), [],
                         "the liar was asked for headers or bodies after its round failed")
        stored = h.node.chain.storage
        self.assertEqual([b.height for b in liar_blocks if stored.has_block(b.hash)], [])
        self.assertEqual(stored.block_count(), 1 + HONEST_HEIGHT)  # genesis and the honest chain only

    # 1

    def test_silent_peer_claiming_more_weight(self):
        h = self.harness()
        liar = self.liar(h, self.honest_blocks, serves=(), alive=False)
        honest = self.honest(h)
        reached = self.drive(h, [liar, honest], self.honest_blocks[-1].hash)
        self.assertEqual(liar.proto.info.misbehaviour, 0)  # slowness costs no score
        self.assertGreater(liar.proto.sync_agent.timeouts, 0)
        self.assert_honest_tip_despite(h, liar, reached)

    # 2

    def test_headers_but_never_bodies_of_the_honest_chain(self):
        """Its headers are the honest chain's: they prove the weight, so the bodies are
        fetched from every peer showing it, and the honest peer serves them all."""
        h = self.harness()
        liar = self.liar(h, self.honest_blocks, serves=(wire.GetHeaders,))
        honest = self.honest(h)
        reached = self.drive(h, [liar, honest], self.honest_blocks[-1].hash)
        self.assertEqual(self.watch.sync_requests(liar.proto)[0][1], wire.GetHeaders.NAME)
        self.assertTrue([m for m in honest.requests if isinstance(m, wire.GetBodies)])
        self.assert_honest_tip_despite(h, liar, reached)

    def test_headers_but_never_bodies_of_a_private_chain(self):
        """Valid headers of 40 blocks nobody else has: proven, but no body ever comes."""
        private = private_chain(40)
        self.assertFalse({b.hash for b in private} & {b.hash for b in self.honest_blocks})
        h = self.harness()
        liar = self.liar(h, private, serves=(wire.GetHeaders,))
        honest = self.honest(h)
        reached = self.drive(h, [liar, honest], self.honest_blocks[-1].hash)
        self.assertEqual(self.watch.stored_at_failure(liar.proto), 1)  # its round stored nothing
        self.assert_honest_tip_despite(h, liar, reached, private)

    # 3

    def _invalid_from_50(self, change):
        out = list(self.honest_blocks[:49])
        for block in self.honest_blocks[49:]:
            header = change(dataclasses.replace(block.header, parent_hash=out[-1].hash))
            out.append(Block(header, block.transactions))
        return out

    def _invalid_headers(self, change):
        lies = self._invalid_from_50(change)
        self.assertEqual(lies[48].hash, self.honest_blocks[48].hash)
        h = self.harness()
        liar = self.liar(h, lies)
        honest = self.honest(h)
        reached = self.drive(h, [liar, honest], self.honest_blocks[-1].hash)
        self.assertGreater(liar.proto.info.misbehaviour, 0, "the invalid header was counted against it")
        self.assertEqual(self.watch.stored_at_failure(liar.proto), 1)  # its round stored nothing
        self.assert_honest_tip_despite(h, liar, reached, lies[49:])

    def test_headers_invalid_from_height_50_by_their_proof_of_space(self):
        def flip(header):
            pos = header.proof_of_space
            proof = bytes([pos.proof[0] ^ 1]) + pos.proof[1:]
            return dataclasses.replace(header, proof_of_space=dataclasses.replace(pos, proof=proof))

        self._invalid_headers(flip)

    def test_headers_invalid_from_height_50_by_their_difficulty(self):
        self._invalid_headers(lambda header: dataclasses.replace(header, difficulty=header.difficulty + 1))

    # 4

    def _seed(self, garbage):
        h = self.harness()
        liar = SeedLiar(h, "10.0.0.66", garbage)
        self.assertIs(liar.proto.info.state, PeerState.READY)
        honest = self.honest(h)
        reached = self.drive(h, [liar, honest], self.honest_blocks[-1].hash)
        self.assertIsNone(liar.proto.info.node_id)  # it never completed a HELLO
        self.assertTrue([m for m in liar.requests if isinstance(m, wire.GetBlock)])
        self.assert_honest_tip_despite(h, liar, reached)

    def test_seed_style_peer_claiming_height_10_9_never_answering(self):
        self._seed(None)

    def test_seed_style_peer_claiming_height_10_9_answering_garbage(self):
        block = self.honest_blocks[-1]
        self._seed(dataclasses.replace(block, header=dataclasses.replace(block.header, parent_hash=b"\x5e" * 32)))

    # 5

    def test_long_valid_fork_below_the_minimum_weight(self):
        fork = private_chain(60)
        params = dataclasses.replace(PARAMS, min_chain_weight=min_weight())
        self.assertLess(weight_of(fork), params.min_chain_weight)
        self.assertLess(params.min_chain_weight, self.honest_weight)
        h = self.harness(params)
        self.assertEqual(h.node.genesis_hash, builder().genesis.hash)
        liar = self.liar(h, fork)
        honest = self.honest(h)
        reached = self.drive(h, [liar, honest], self.honest_blocks[-1].hash)
        self.assertEqual(self.watch.stored_at_failure(liar.proto), 1)  # its round stored nothing
        self.assert_honest_tip_despite(h, liar, reached, fork)

    def test_long_valid_fork_below_the_minimum_weight_alone(self):
        """Only the liar: nothing stored at all, and its headers are not downloaded again
        and again (the stale-tip check asks its status every 30 s; it repeats its claim)."""
        fork = private_chain(60)
        h = self.harness(dataclasses.replace(PARAMS, min_chain_weight=min_weight()))
        liar = self.liar(h, fork)
        counts = []
        self.drive(h, [liar], seconds=60.0, each_step=lambda: counts.append(h.node.chain.storage.block_count()))
        self.assertEqual(set(counts), {1})
        self.assertEqual(h.node.chain.height, 0)
        self.assertEqual([b.height for b in fork if h.node.chain.storage.has_block(b.hash)], [])
        self.assertTrue([m for m in liar.requests if isinstance(m, wire.GetStatus)], "it was asked again")
        asked = [r for r in self.watch.sync_requests(liar.proto) if r[1] == wire.GetHeaders.NAME]
        self.assertLessEqual(len(asked), 2)
        self.assertEqual(self.watch.targets(), [liar.proto])
        self.assertIs(liar.proto.info.state, PeerState.READY)  # still connected: it was the claim that failed


class SlowHonestLiarTests(LiarTests):
    """Every peer answers once per 1 s step: the honest round takes a few seconds, longer
    than the liar's first back-off, and the liar must still not be asked for anything."""

    QUIET, STEP = False, 1.0
