"""The mempool: bounded, fee-ordered, nonce-aware, and updated by blocks."""

from twisted.trial import unittest

from archivas.chain.ledger import MemoryState, StateDelta
from archivas.chain.mempool import Mempool
from archivas.chain.params import COIN
from archivas.chain.transactions import InvalidTransaction, sign_transfer
from tests.common import ALICE, BOB, CAROL, PARAMS


class Block:
    def __init__(self, *transactions):
        self.transactions = transactions


class MempoolTests(unittest.TestCase):
    def setUp(self):
        self.state = MemoryState({ALICE.address: (100 * COIN, 0), BOB.address: (100 * COIN, 0)})
        self.pool = Mempool(PARAMS, max_transactions=6, max_per_sender=4)

    def lookup(self, address):
        return self.state.get_account(address) or (0, 0)

    def tx(self, key=ALICE, nonce=0, fee=None, amount=COIN, to=CAROL):
        return sign_transfer(key, PARAMS, to.address, amount, fee or PARAMS.min_fee, nonce)

    def add(self, tx):
        self.pool.add(tx, self.lookup)

    def assertRefused(self, tx, reason):
        before = self.pool.transactions()
        with self.assertRaises(InvalidTransaction) as cm:
            self.add(tx)
        self.assertEqual(cm.exception.reason, reason)
        self.assertEqual(self.pool.transactions(), before)

    def test_admits_a_run_of_nonces(self):
        for n in range(3):
            self.add(self.tx(nonce=n))
        self.assertEqual(len(self.pool), 3)

    def test_refusals(self):
        self.add(self.tx(nonce=0))
        self.assertRefused(self.tx(nonce=0), "duplicate")
        self.assertRefused(self.tx(nonce=2), "nonce_gap")
        self.assertRefused(self.tx(nonce=1, amount=99 * COIN), "insufficient_balance")
        self.assertRefused(self.tx(nonce=1, fee=PARAMS.min_fee - 1), "fee_too_low")
        self.state.accounts[ALICE.address] = (100 * COIN, 5)
        self.assertRefused(self.tx(nonce=4), "bad_nonce")

    def test_replacement_needs_a_higher_fee_and_drops_what_it_unfunds(self):
        self.add(self.tx(nonce=0))
        self.add(self.tx(nonce=1, amount=50 * COIN))
        same_fee = sign_transfer(ALICE, PARAMS, BOB.address, COIN, PARAMS.min_fee, 0)
        self.assertRefused(same_fee, "replacement_fee_too_low")
        # A richer replacement of nonce 0 leaves nonce 1 unaffordable: it goes.
        richer = self.tx(nonce=0, amount=60 * COIN, fee=2 * PARAMS.min_fee)
        self.add(richer)
        self.assertEqual(self.pool.transactions(), [richer])

    def test_sender_limit(self):
        for n in range(4):
            self.add(self.tx(nonce=n))
        self.assertRefused(self.tx(nonce=4), "sender_limit")

    def test_full_pool_evicts_lowest_fee_with_its_successors(self):
        for n in range(3):
            self.add(self.tx(key=ALICE, nonce=n, fee=PARAMS.min_fee * (10 - n)))
        for n in range(3):
            self.add(self.tx(key=BOB, nonce=n, fee=PARAMS.min_fee * 5))
        carol_state = (100 * COIN, 0)
        self.state.accounts[CAROL.address] = carol_state
        self.assertRefused(self.tx(key=CAROL, fee=PARAMS.min_fee * 5, to=ALICE), "mempool_full")
        better = self.tx(key=CAROL, fee=PARAMS.min_fee * 6, to=ALICE)
        self.add(better)
        # Bob's nonce 2 (fee 5, highest nonce among the cheapest) went; nothing left a gap.
        self.assertIn(better.hash, self.pool)
        self.assertEqual(len(self.pool), 6)
        bob_nonces = sorted(t.nonce for t in self.pool.transactions() if t.sender == BOB.address)
        self.assertEqual(bob_nonces, [0, 1])

    def test_select_orders_by_fee_within_nonce_order(self):
        a0 = self.tx(key=ALICE, nonce=0, fee=PARAMS.min_fee)
        a1 = self.tx(key=ALICE, nonce=1, fee=PARAMS.min_fee * 9)
        b0 = self.tx(key=BOB, nonce=0, fee=PARAMS.min_fee * 5)
        for tx in (a0, a1, b0):
            self.add(tx)
        self.assertEqual(self.pool.select(10), [b0, a0, a1])
        self.assertEqual(self.pool.select(1), [b0])
        # The selection applies in order.
        delta = StateDelta(self.state)
        for tx in self.pool.select(10):
            delta.apply_transaction(tx)

    def test_block_removes_included_and_invalidated(self):
        a0, a1 = self.tx(nonce=0), self.tx(nonce=1)
        b0 = self.tx(key=BOB, nonce=0)
        for tx in (a0, a1, b0):
            self.add(tx)
        # A block includes a0, and a conflicting transfer of Bob's spends his nonce 0.
        conflicting = self.tx(key=BOB, nonce=0, amount=2 * COIN)
        delta = StateDelta(self.state)
        delta.apply_transaction(a0)
        delta.apply_transaction(conflicting)
        self.state.commit(delta)
        self.pool.update_for_blocks([Block(a0, conflicting)], [], self.lookup)
        self.assertEqual(self.pool.transactions(), [a1])

    def test_reorg_returns_transfers(self):
        a0 = self.tx(nonce=0)
        delta = StateDelta(self.state)
        delta.apply_transaction(a0)
        self.state.commit(delta)
        # The block with a0 is rolled back: state is as before, a0 comes back.
        self.state.accounts[ALICE.address] = (100 * COIN, 0)
        self.pool.update_for_blocks([], [Block(a0)], self.lookup)
        self.assertEqual(self.pool.transactions(), [a0])
