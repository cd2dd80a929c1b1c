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


# --- Eviction by heap against the scan it replaced -------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from archivas.chain import mempool as mempool_module  # noqa: E402
from archivas.chain.keys import PrivateKey  # noqa: E402

SENDERS = [PrivateKey.from_secret(b"heap-%d" % i) for i in range(5)]


class ScanMempool(Mempool):
    """The pool as it was: making room scans every entry with min() (dict order breaks
    ties). Everything else is shared, so any difference is the victim choice."""

    def _make_room(self, incoming):
        others = [t for t in self._by_hash.values() if t.sender != incoming.sender]
        victim = min(others, key=lambda t: (t.fee, -t.nonce), default=None)
        if victim is None or victim.fee >= incoming.fee:
            raise InvalidTransaction("mempool_full", f"full, and every pending fee is >= {incoming.fee}")
        self._drop_from(victim.sender, victim.nonce)


# One step: a kind (0-74 a transfer, then a block of the pool's best, a block with a
# transfer never pooled, the last block rolled back, the last block replaced by another)
# and its numbers: sender, how far back from the sender's next free nonce (-1 a gap, 0 the
# next, 1 and 2 replacements), fee level (few, so ties happen), amount, recipient.
op = st.tuples(st.integers(0, 99), st.integers(0, 4), st.integers(-1, 2), st.integers(1, 6),
               st.integers(1, 12), st.integers(0, 4))
KINDS = [(75, "add"), (85, "block"), (90, "conflict"), (95, "undo"), (100, "reorg")]


class HeapEvictionProperties(unittest.TestCase):
    @settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(op, min_size=10, max_size=60))
    def test_heap_and_scan_choose_the_same_victims(self, ops):
        self.state = MemoryState({k.address: (40 * COIN, 0) for k in SENDERS})
        old = ScanMempool(PARAMS, max_transactions=6, max_per_sender=3)
        new = Mempool(PARAMS, max_transactions=6, max_per_sender=3)
        blocks: list = []  # (block, undo record) of what is connected, oldest first

        def lookup(address):
            return self.state.get_account(address) or (0, 0)

        def connect(txs):
            delta = StateDelta(self.state)
            for tx in txs:
                delta.apply_transaction(tx)
            self.state.commit(delta)
            block = Block(*txs)
            blocks.append((block, delta.before))
            return block

        def disconnect():
            block, before = blocks.pop()
            for address, account in before.items():
                if account is None:
                    self.state.accounts.pop(address, None)
                else:
                    self.state.accounts[address] = account
            return block

        for step in ops:
            kind = next(name for limit, name in KINDS if step[0] < limit)
            _, s, back, fee, amount, to = step
            if kind == "add":
                key = SENDERS[s]
                nonce = lookup(key.address)[1] + max(0, new.pending_count(key.address) - back)
                tx = sign_transfer(key, PARAMS, SENDERS[to].address, amount * COIN,
                                   fee * PARAMS.min_fee, nonce)
                outcomes = []
                for pool in (old, new):
                    try:
                        pool.add(tx, lookup)
                        outcomes.append(None)
                    except InvalidTransaction as e:
                        outcomes.append(e.reason)
                self.assertEqual(outcomes[0], outcomes[1])
            elif kind == "block":
                txs = old.select(amount % 5)
                self.assertEqual(txs, new.select(amount % 5))
                block = connect(txs)
                for pool in (old, new):
                    pool.update_for_blocks([block], [], lookup)
            elif kind == "conflict":
                key = SENDERS[s]
                tx = sign_transfer(key, PARAMS, SENDERS[to].address, amount * COIN,
                                   PARAMS.min_fee, lookup(key.address)[1])
                try:
                    block = connect([tx])
                except InvalidTransaction:
                    continue
                for pool in (old, new):
                    pool.update_for_blocks([block], [], lookup)
            elif blocks:
                gone = disconnect()
                came = []
                if kind == "reorg":
                    txs = [t for t in old.select(amount % 5) if t not in gone.transactions]
                    try:
                        came = [connect(txs)]
                    except InvalidTransaction:
                        came = []  # the pool's pick no longer applies to the rolled-back state
                for pool in (old, new):
                    pool.update_for_blocks(came, [gone], lookup)
            # Same contents, in the same order.
            self.assertEqual(old.transactions(), new.transactions())
            self.assertEqual(new._by_sender.keys(), old._by_sender.keys())
            live = len(new)
            self.assertLessEqual(new.heap_size(), 3 * live + mempool_module.COMPACT_SLACK + 1)
            self.assertEqual(set(new._seq), {t.hash for t in new.transactions()})


class HeapBoundTests(unittest.TestCase):
    def test_stale_entries_stay_bounded(self):
        """Replacements, evictions and blocks leave stale heap entries: however many, the
        heap stays within three times the pool plus the slack."""
        keys = [PrivateKey.from_secret(b"bound-%d" % i) for i in range(40)]
        state = MemoryState({k.address: (10_000 * COIN, 0) for k in keys})
        pool = Mempool(PARAMS, max_transactions=50, max_per_sender=4)
        lookup = lambda a: state.get_account(a) or (0, 0)  # noqa: E731
        bound = 3 * 50 + mempool_module.COMPACT_SLACK
        largest = 0
        fee = PARAMS.min_fee
        for round_ in range(30):
            for k in keys:
                fee += 1  # every transfer beats the last: a full pool evicts on each
                nonce = state.accounts[k.address][1] + round_ % 2
                try:
                    pool.add(sign_transfer(k, PARAMS, keys[0].address, COIN, fee, nonce), lookup)
                except InvalidTransaction:
                    pass
                largest = max(largest, pool.heap_size())
            # A block takes half the pool.
            txs = pool.select(25)
            delta = StateDelta(state)
            for tx in txs:
                delta.apply_transaction(tx)
            state.commit(delta)
            pool.update_for_blocks([Block(*txs)], [], lookup)
            largest = max(largest, pool.heap_size())
        self.assertGreater(fee - PARAMS.min_fee, 1000)  # many more pushes than the bound
        self.assertLessEqual(largest, bound + 1)
        self.assertLessEqual(pool.heap_size(), 3 * len(pool) + mempool_module.COMPACT_SLACK)
