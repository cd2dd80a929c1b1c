"""Fork choice and reorganisations: the heaviest branch wins, ties broken as specified,
state rolled back and forward exactly."""

import dataclasses

from twisted.trial import unittest

from archivas.chain import forkchoice
from archivas.chain.blockchain import ADDED_SIDE, ADDED_TIP
from archivas.chain.consensus import BlockRejected
from archivas.chain.ledger import MemoryState, StateDelta, apply_block_body
from archivas.chain.params import COIN
from archivas.chain.storage import BlockMeta
from tests.common import ALICE, BOB, CAROL, PARAMS, builder, now_ms, open_chain


def replay(chain, params=PARAMS):
    """State from replaying the chain's main branch from genesis in memory."""
    state = MemoryState({a: (v, 0) for a, v in params.genesis_allocation})
    for height in range(1, chain.height + 1):
        block = chain.block_at(height)
        delta = StateDelta(state)
        apply_block_body(delta, block.transactions, block.header.reward_address, block.header.reward)
        state.commit(delta)
    return state.accounts


def meta(weight, segments, score, hash_byte):
    return BlockMeta(bytes([hash_byte]) * 32, 1, b"", 0, 1, weight, segments, score, False, 1)


class TieBreakTests(unittest.TestCase):
    def test_order(self):
        self.assertTrue(forkchoice.is_better(meta(5, 9, 9, 9), meta(4, 1, 1, 1)))
        self.assertTrue(forkchoice.is_better(meta(5, 1, 9, 9), meta(5, 2, 1, 1)))
        self.assertTrue(forkchoice.is_better(meta(5, 1, 1, 9), meta(5, 1, 2, 1)))
        # Equal weight, segments and score: the tip seen first stays, whatever the hashes.
        self.assertFalse(forkchoice.is_better(meta(5, 1, 1, 1), meta(5, 1, 1, 2)))
        self.assertFalse(forkchoice.is_better(meta(5, 1, 1, 2), meta(5, 1, 1, 1)))
        self.assertFalse(forkchoice.is_better(meta(5, 1, 1, 1), meta(5, 1, 1, 1)))


class ReorgTests(unittest.TestCase):
    def test_heavier_branch_takes_over_and_state_follows(self):
        b = builder()
        chain = open_chain(self)
        main = b.extend(b.genesis, 6)
        pay = b.transfer(ALICE, CAROL.address, 7 * COIN, 0)
        main.append(b.make_block(main[-1], [pay]))
        for block in main:
            chain.add_block(block, now_ms())
        self.assertEqual(chain.account(CAROL.address)[0], 7 * COIN)

        # A branch from height 3, one block longer, without Alice's payment (rewards to Bob:
        # its first block is not main's 4th even when farmer 1 made that one).
        branch = b.extend(main[2], 5, farmer=1, timestamp=None, reward_address=BOB.address)
        results = [chain.add_block(block, now_ms()) for block in branch]
        # Lighter while shorter; the 4th ties the tip's weight, so the tie-break decides.
        self.assertEqual([r.status for r in results[:3]], [ADDED_SIDE] * 3)
        self.assertEqual(results[4].status, ADDED_TIP)
        disconnected = [blk.hash for r in results for blk in r.disconnected]
        connected = [blk.hash for r in results for blk in r.connected]
        self.assertEqual(disconnected, [blk.hash for blk in reversed(main[3:])])
        self.assertEqual(connected, [blk.hash for blk in branch])
        self.assertEqual(chain.tip.hash, branch[-1].hash)
        self.assertEqual(chain.account(CAROL.address), (0, 0))
        self.assertEqual(chain.account(ALICE.address), (1000 * COIN, 0))
        self.assertEqual(chain.accounts(), replay(chain))

        # And back again: the old branch grows heavier.
        back = b.extend(main[-1], 2)
        for block in back:
            chain.add_block(block, now_ms())
        self.assertEqual(chain.tip.hash, back[-1].hash)
        self.assertEqual(chain.account(CAROL.address)[0], 7 * COIN)
        self.assertEqual(chain.accounts(), replay(chain))

    def test_reorg_to_genesis_depth(self):
        b = builder()
        chain = open_chain(self)
        for block in b.extend(b.genesis, 15):
            chain.add_block(block, now_ms())
        branch = b.extend(b.genesis, 16, farmer=1, timestamp=None)
        for block in branch:
            chain.add_block(block, now_ms())
        self.assertEqual(chain.tip.hash, branch[-1].hash)
        self.assertEqual(chain.accounts(), replay(chain))

    def test_equal_weight_goes_to_fewer_segments_then_lower_score(self):
        b = builder()
        parent = b.genesis
        siblings = [b.make_block(parent, farmer=f, timestamp=parent.header.timestamp + 500 + i)
                    for f in (0, 1) for i in range(3)]
        for order in (siblings, list(reversed(siblings))):
            # Among the best (segments, score), the one seen first: never the lower hash.
            expected = min(order, key=lambda blk: (blk.header.segments, self._score(blk)))
            chain = open_chain(self)
            for block in order:
                chain.add_block(block, now_ms())
            self.assertEqual(chain.tip.hash, expected.hash)

    def test_ground_versions_of_one_block_cause_no_reorg(self):
        """A farmer who won once re-makes its block (other timestamps) and releases the
        versions in falling hash order: the first stays the tip, nothing is reorganised."""
        b = builder()
        base = b.extend(b.genesis, 2)
        versions = [b.make_block(base[-1], timestamp=base[-1].header.timestamp + 300 + i) for i in range(10)]
        versions.sort(key=lambda blk: blk.hash, reverse=True)
        chain = open_chain(self)
        for block in base:
            chain.add_block(block, now_ms())
        results = [chain.add_block(block, now_ms()) for block in versions]
        self.assertEqual(results[0].status, ADDED_TIP)
        self.assertEqual([r.status for r in results[1:]], [ADDED_SIDE] * 9)
        self.assertFalse(any(r.reorganised for r in results))
        self.assertEqual(chain.tip.hash, versions[0].hash)

    def _score(self, block):
        return open_chain(self).check_standalone(block)

    def test_invalid_heavier_branch_is_refused_whole(self):
        b = builder()
        chain = open_chain(self)
        main = b.extend(b.genesis, 4)
        for block in main:
            chain.add_block(block, now_ms())
        before = (chain.tip, chain.accounts())
        overspend = b.transfer(BOB, CAROL.address, 10_000 * COIN, 0)
        bad = b.make_block(main[0], [overspend], farmer=1, timestamp=main[0].header.timestamp + 777)
        branch = [bad] + b.extend(bad, 4, farmer=1)
        for block in branch[:3]:
            self.assertEqual(chain.add_block(block, now_ms()).status, ADDED_SIDE)
        with self.assertRaises(BlockRejected) as cm:
            chain.add_block(branch[3], now_ms())
        self.assertEqual(cm.exception.reason, "bad_transaction")
        self.assertIn("ancestor", str(cm.exception))
        self.assertEqual((chain.tip, chain.accounts()), before)
        with self.assertRaises(BlockRejected) as cm:
            chain.add_block(branch[4], now_ms())
        self.assertEqual(cm.exception.reason, "invalid_ancestor")
        self.assertEqual((chain.tip, chain.accounts()), before)

    def test_reopen_keeps_tip_and_state(self):
        b = builder()
        directory = self.mktemp()
        chain = open_chain(self, directory)
        blocks = b.extend(b.genesis, 5)
        for block in blocks:
            chain.add_block(block, now_ms())
        accounts = chain.accounts()
        chain.close()
        again = open_chain(self, directory)
        self.assertEqual(again.tip.hash, blocks[-1].hash)
        self.assertEqual(again.accounts(), accounts)
        self.assertEqual(dataclasses.asdict(again.tip)["height"], 5)
