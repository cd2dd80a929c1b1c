"""Following a chain that grows while the node syncs, on a simulated clock.

The source is a scripted peer holding the first 2,500 blocks of the shipped fixture chain;
it reveals one more block every 2 simulated seconds, pushing it to the node as a farming
node would. The node checks every proof for real, but each check is charged simulated time
(as if its two verify threads took HEADER_COST per header and BODY_COST per body), so the
sync takes minutes of simulated time and blocks keep arriving in the middle of it.
"""

from __future__ import annotations

import collections
import sys

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial import unittest

from archivas.protocols import wire
from tests.common import fixture_blocks
from tests.test_protocol import Harness, feed, sent
from tests.test_sync import ScriptedPeer

START = 2500  # blocks the source holds when the node connects
FOLLOW = 100  # blocks the node must then follow, within one of the source's tip
EVERY = 2.0  # simulated seconds between the source's blocks
STEP = 0.05  # simulated seconds the test advances at once
HEADER_COST = 0.080  # simulated seconds a header's proofs take on one verify thread
BODY_COST = 0.020  # and a block's body (or a whole block, outside sync)
THREADS = 2
MAX_ROUNDS = 12


class ChargedThreads:
    """Runs a node's checks at once but answers after the simulated time they are charged,
    on THREADS simulated threads (a check waits for the first thread that is free)."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.free_at = [0.0] * THREADS
        self.charged = collections.Counter()

    def __call__(self, f, *args, background=None, **kwargs):
        cost = HEADER_COST if f.__name__ in ("check_header", "check_standalone") else BODY_COST
        self.charged[f.__name__] += 1
        d: defer.Deferred = defer.Deferred()
        try:
            outcome = f(*args, **kwargs)
        except Exception:
            outcome = Failure()
        i = min(range(THREADS), key=lambda k: self.free_at[k])
        done = max(self.free_at[i], self.clock.seconds()) + cost
        self.free_at[i] = done
        fire = d.errback if isinstance(outcome, Failure) else d.callback
        self.clock.callLater(done - self.clock.seconds(), fire, outcome)
        return d


class GrowingSource(ScriptedPeer):
    def reveal(self, block) -> None:
        self.blocks = self.blocks + [block]
        feed(self.proto, wire.PushBlock(block))


class FollowTests(unittest.TestCase):
    timeout = 300

    def test_a_node_syncing_a_growing_chain_ends_at_its_tip_and_follows_it(self):
        chain = fixture_blocks()
        self.assertGreaterEqual(len(chain), START + 200)
        h = Harness(self)
        node = h.node
        threads = ChargedThreads(h.clock)
        node._in_thread = threads
        source = GrowingSource(h, "10.0.0.1", chain[:START], b"\x01" * 16, weight=10**9)
        next_block = START
        next_at = h.clock.seconds() + EVERY
        mid_import = 0
        started = h.clock.seconds()
        caught_up_at, caught_up_sim = None, 0.0
        lag_after = []
        while True:
            source.answer()
            h.clock.advance(STEP)
            if h.clock.seconds() >= next_at:
                if caught_up_at is not None:  # just before the next block: within one of the tip
                    lag_after.append(len(source.blocks) - node.chain.height)
                if next_block >= len(chain) or (caught_up_at is not None and next_block >= caught_up_at + FOLLOW):
                    break
                if node.sync.active:
                    mid_import += 1
                source.reveal(chain[next_block])
                next_block += 1
                next_at += EVERY
            if caught_up_at is None and node.chain.height == len(source.blocks):
                caught_up_at = next_block
                caught_up_sim = h.clock.seconds() - started
            self.assertLess(h.clock.seconds() - 1_800_000_000, 3600, "gave up after an hour simulated")
        self.assertIsNotNone(caught_up_at, "never reached the source's tip")
        self.assertEqual(node.chain.tip.hash, source.blocks[-1].hash)
        sys.stderr.write(f"FOLLOW synced {START} blocks in {caught_up_sim:.0f} s simulated, {mid_import} blocks "
                         f"arrived mid-sync, {node.sync.rounds} rounds, lag after {collections.Counter(lag_after)}\n")
        self.assertGreaterEqual(len(lag_after), FOLLOW)
        self.assertLessEqual(max(lag_after), 1, f"lag after catching up: {collections.Counter(lag_after)}")
        self.assertGreaterEqual(mid_import, 50, "blocks arrived while the sync was under way")
        self.assertLessEqual(node.sync.rounds, MAX_ROUNDS)
        # A header proved by the sync is not checked again when its body comes.
        self.assertLessEqual(threads.charged["check_header"] + threads.charged["check_standalone"],
                             len(source.blocks) + 5)
        sent(source.transport)
