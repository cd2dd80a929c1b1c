"""Transfers: canonical encoding, and a test per way a transfer can be wrong.

Each rejection is checked twice: by the rule itself, and as part of a block offered to a
chain, which must refuse the block and keep its state, tip and stored blocks as they were.
"""

import dataclasses

from twisted.trial import unittest

from archivas.chain.consensus import BlockRejected
from archivas.chain.ledger import MemoryState, StateDelta
from archivas.chain.params import COIN
from archivas.chain.transactions import (
    REASONS,
    InvalidTransaction,
    Transaction,
    check_stateless,
    sign_transfer,
)
from tests.common import ALICE, BOB, CAROL, PARAMS, builder, now_ms, open_chain, snapshot


def transfer(**overrides):
    tx = sign_transfer(ALICE, PARAMS, BOB.address, 5 * COIN, PARAMS.min_fee, 0)
    return dataclasses.replace(tx, **overrides) if overrides else tx


def resigned(tx):
    return dataclasses.replace(tx, signature=ALICE.sign(tx.signing_bytes()))


BAD = {
    "wrong_chain": lambda: resigned(transfer(chain_id=PARAMS.chain_id + 1)),
    "bad_address": lambda: resigned(transfer(recipient="arcv1notanaddress")),
    "key_mismatch": lambda: dataclasses.replace(
        sign_transfer(CAROL, PARAMS, BOB.address, COIN, PARAMS.min_fee, 0), sender=ALICE.address
    ),
    "bad_signature": lambda: transfer(amount=6 * COIN),
    "non_positive_amount": lambda: resigned(transfer(amount=0)),
    "fee_too_low": lambda: resigned(transfer(fee=PARAMS.min_fee - 1)),
    "bad_nonce": lambda: resigned(transfer(nonce=1)),
    "insufficient_balance": lambda: resigned(transfer(amount=1000 * COIN)),
}


class EncodingTests(unittest.TestCase):
    def test_json_round_trip_and_stable_hash(self):
        tx = transfer()
        again = Transaction.from_json(tx.to_json())
        self.assertEqual(again, tx)
        self.assertEqual(again.hash, tx.hash)
        check_stateless(again, PARAMS)

    def test_hash_ignores_signature_but_covers_content(self):
        tx = transfer()
        self.assertEqual(dataclasses.replace(tx, signature=b"\x01" * 64).hash, tx.hash)
        self.assertNotEqual(transfer(amount=6 * COIN).hash, tx.hash)

    def test_malformed_shapes(self):
        good = transfer().to_json()
        cases = [
            [],
            {**good, "extra": 1},
            {k: v for k, v in good.items() if k != "fee"},
            {**good, "amount": "5"},
            {**good, "amount": True},
            {**good, "amount": -1},
            {**good, "nonce": 2**64},
            {**good, "publicKey": "zz" * 32},
            {**good, "signature": "ab"},
            {**good, "from": "a" * 1000},
            {**good, "publicKey": good["publicKey"].upper()},
        ]
        for doc in cases:
            with self.assertRaises(InvalidTransaction) as cm:
                Transaction.from_json(doc)
            self.assertEqual(cm.exception.reason, "malformed", doc)

    def test_every_reason_has_a_case(self):
        self.assertEqual(set(BAD) | {"malformed"}, set(REASONS))


class RejectionTests(unittest.TestCase):
    def assertRejected(self, tx, reason):
        state = MemoryState({ALICE.address: (10 * COIN, 0)})
        before = dict(state.accounts)
        delta = StateDelta(state)
        with self.assertRaises(InvalidTransaction) as cm:
            check_stateless(tx, PARAMS)
            delta.apply_transaction(tx)
        self.assertEqual(cm.exception.reason, reason)
        self.assertEqual(state.accounts, before)

    def test_each_reason(self):
        for reason, make in BAD.items():
            with self.subTest(reason=reason):
                self.assertRejected(make(), reason)

    def test_valid_transfer_moves_amount_and_fee(self):
        state = MemoryState({ALICE.address: (10 * COIN, 0)})
        delta = StateDelta(state)
        tx = transfer()
        check_stateless(tx, PARAMS)
        delta.apply_transaction(tx)
        self.assertEqual(delta.account(ALICE.address), (10 * COIN - 5 * COIN - PARAMS.min_fee, 1))
        self.assertEqual(delta.account(BOB.address), (5 * COIN, 0))
        self.assertEqual(delta.before, {ALICE.address: (10 * COIN, 0), BOB.address: None})

    def test_replay_of_a_mined_transfer_fails(self):
        state = MemoryState({ALICE.address: (10 * COIN, 0)})
        delta = StateDelta(state)
        tx = transfer()
        delta.apply_transaction(tx)
        with self.assertRaises(InvalidTransaction) as cm:
            delta.apply_transaction(tx)
        self.assertEqual(cm.exception.reason, "bad_nonce")


class InBlockTests(unittest.TestCase):
    """A block carrying a bad transfer is refused and the chain is unchanged."""

    def test_each_reason_rejects_the_block(self):
        b = builder()
        chain = open_chain(self)
        base = b.extend(b.genesis, 2)
        for block in base:
            chain.add_block(block, now_ms())
        for reason, make in BAD.items():
            with self.subTest(reason=reason):
                tx = make()
                before = snapshot(chain)
                bad = b.make_block(base[-1], [tx])
                with self.assertRaises(BlockRejected) as cm:
                    chain.add_block(bad, now_ms())
                self.assertEqual(cm.exception.reason, "bad_transaction")
                self.assertIn(reason, str(cm.exception))
                tip, accounts, _ = snapshot(chain)
                self.assertEqual((tip, accounts), before[:2])

    def test_same_transfer_twice_in_one_block(self):
        b = builder()
        chain = open_chain(self)
        base = b.extend(b.genesis, 1)
        chain.add_block(base[0], now_ms())
        tx = transfer()
        before = snapshot(chain)
        with self.assertRaises(BlockRejected) as cm:
            chain.add_block(b.make_block(base[0], [tx, tx]), now_ms())
        self.assertIn("bad_nonce", str(cm.exception))
        self.assertEqual(snapshot(chain)[:2], before[:2])


class MessageTests(unittest.TestCase):
    def test_refusals_speak_rchv(self):
        """People read amounts in RCHV: refusals name them so, never in base units."""
        from archivas.chain.mempool import Mempool
        from archivas.chain.transactions import InvalidTransaction, check_stateless

        low = builder().transfer(ALICE, BOB.address, COIN, 0, fee=PARAMS.min_fee - 1)
        with self.assertRaises(InvalidTransaction) as cm:
            check_stateless(low, PARAMS)
        self.assertIn("0.00099999 RCHV below the minimum 0.00100000 RCHV", str(cm.exception))
        pool = Mempool(PARAMS)
        first = builder().transfer(ALICE, BOB.address, COIN, 0, fee=2 * PARAMS.min_fee)
        pool.add(first, lambda address: (1000 * COIN, 0))
        again = builder().transfer(ALICE, BOB.address, 2 * COIN, 0, fee=2 * PARAMS.min_fee)
        with self.assertRaises(InvalidTransaction) as cm:
            pool.add(again, lambda address: (1000 * COIN, 0))
        self.assertIn("0.00200000 RCHV does not beat the pending fee 0.00200000 RCHV", str(cm.exception))
