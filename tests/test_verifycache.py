"""Verification caches: a hit skips the verify, a forged copy never hits, the bound holds."""

import dataclasses
import threading

from twisted.trial import unittest

from archivas.chain import vdf
from archivas.chain.block import Block, child_discriminant_seed, child_origin, child_seed, genesis_block, sign_header
from archivas.chain.consensus import BlockRejected, check_header, check_standalone, check_transactions
from archivas.chain.ledger import MemoryState
from archivas.chain.mempool import Mempool
from archivas.chain.params import COIN
from archivas.chain.transactions import InvalidTransaction, verify_signature
from archivas.chain.verifycache import (
    SEGMENT_CAPACITY,
    TRANSFER_CAPACITY,
    VerifiedSegments,
    VerifiedTransfers,
    segment_key,
)
from archivas.testing.chainbuilder import farmer_key
from tests.common import ALICE, BOB, CAROL, PARAMS, builder, fixture_blocks

FARMERS = {k.public_key: k for k in (farmer_key(0), farmer_key(1))}


def flip(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1:]


class Counting:
    """A verify function that counts its calls."""

    def __init__(self, real):
        self.real = real
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return self.real(*args)


def transfer(nonce=0, key=ALICE, to=BOB, amount=COIN):
    return builder().transfer(key, to.address, amount, nonce)


def forged(tx):
    """The same transfer (same id) with a signature that does not verify."""
    copy = dataclasses.replace(tx, signature=flip(tx.signature, 5))
    assert copy.hash == tx.hash and not verify_signature(copy)
    return copy


class TransferCacheTests(unittest.TestCase):
    def test_a_hit_does_not_verify_a_miss_does(self):
        verify = Counting(verify_signature)
        cache = VerifiedTransfers(verify=verify)
        tx = transfer()
        self.assertNotIn(tx, cache)
        self.assertTrue(cache.check(tx))
        self.assertEqual((verify.calls, cache.hits, cache.misses), (1, 0, 1))
        self.assertIn(tx, cache)
        self.assertTrue(cache.check(tx))
        self.assertEqual((verify.calls, cache.hits, cache.misses), (1, 1, 1))
        self.assertEqual(cache.lookup_or_verify(tx), (True, False))
        other = transfer(nonce=1)
        self.assertEqual(cache.lookup_or_verify(other), (True, True))
        self.assertEqual(verify.calls, 2)
        self.assertEqual(len(cache), 2)

    def test_failures_are_not_remembered(self):
        verify = Counting(verify_signature)
        cache = VerifiedTransfers(verify=verify)
        bad = forged(transfer())
        self.assertFalse(cache.check(bad))
        self.assertFalse(cache.check(bad))
        self.assertEqual((verify.calls, cache.misses, cache.hits, len(cache)), (2, 2, 0, 0))
        self.assertNotIn(bad, cache)

    def test_the_key_frames_the_whole_signed_transfer(self):
        # Transaction.signed_hash (made once a transfer) is the framed sha256 it always was.
        import struct

        from archivas.chain.encoding import sha256
        from archivas.chain.verifycache import transfer_key

        tx = transfer()
        parts = (tx.signing_bytes(), tx.public_key, tx.signature)
        self.assertEqual(transfer_key(tx), sha256(*(struct.pack(">I", len(p)) + p for p in parts)))

    def test_keyed_by_the_signature_too(self):
        cache = VerifiedTransfers()
        tx = transfer()
        cache.add(tx)
        self.assertIn(tx, cache)
        self.assertNotIn(forged(tx), cache)
        self.assertFalse(cache.check(forged(tx)))
        self.assertNotIn("not a transfer", cache)

    def test_the_bound_evicts_the_least_recently_used(self):
        cache = VerifiedTransfers(capacity=3)
        txs = [transfer(nonce=n) for n in range(5)]
        for tx in txs[:3]:
            cache.add(tx)
        self.assertTrue(cache.check(txs[0]))  # a hit: now the most recent
        cache.add(txs[3])
        self.assertEqual(len(cache), 3)
        self.assertNotIn(txs[1], cache)  # the least recently used went
        self.assertIn(txs[0], cache)
        cache.check(txs[4])
        self.assertEqual(len(cache), 3)
        self.assertEqual([tx in cache for tx in txs], [True, False, False, True, True])

    def test_default_capacity(self):
        self.assertEqual(VerifiedTransfers().capacity, TRANSFER_CAPACITY)
        self.assertEqual(TRANSFER_CAPACITY, 65_536)
        self.assertRaises(ValueError, VerifiedTransfers, 0)

    def test_concurrent_use_does_not_raise(self):
        cache = VerifiedTransfers(capacity=16)
        txs = [transfer(nonce=n) for n in range(40)]
        bad = forged(txs[0])
        errors = []

        def work(offset):
            try:
                for _ in range(5):
                    for i in range(len(txs)):
                        tx = txs[(i + offset) % len(txs)]
                        if not cache.check(tx):
                            errors.append(f"valid {tx.nonce} refused")
                        cache.add(txs[(i * 7 + offset) % len(txs)])
                        _ = tx in cache
                        len(cache)
                    if cache.check(bad):
                        errors.append("forged copy passed")
            except Exception as e:  # noqa: BLE001 (any exception fails the test)
                errors.append(repr(e))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertLessEqual(len(cache), 16)
        self.assertEqual(cache.hits + cache.misses, 8 * (5 * 40 + 5))


class ForgedTransferBlockTests(unittest.TestCase):
    """A block carrying a forged copy of a cached transfer (same id, same root) is refused."""

    def setUp(self):
        self.b = builder()
        self.tx = transfer()
        self.good = self.b.make_block(self.b.genesis, [self.tx])
        self.parent = self.b.genesis.header
        # The mutated block: the header (and so the block id) unchanged, the farmer's
        # signature still valid, only the transfer's signature forged.
        self.bad = Block(self.good.header, (forged(self.tx),))
        self.assertEqual(self.bad.hash, self.good.hash)

    def test_check_standalone_refuses_the_forged_copy(self):
        cache = VerifiedTransfers()
        check_standalone(self.good, self.parent, PARAMS, transfers=cache)
        self.assertIn(self.tx, cache)
        with self.assertRaises(BlockRejected) as cm:
            check_standalone(self.bad, self.parent, PARAMS, transfers=cache)
        self.assertEqual(cm.exception.reason, "bad_transaction")
        self.assertIn("bad_signature", str(cm.exception))
        self.assertFalse(cm.exception.permanent)
        self.assertEqual(len(cache), 1)

    def test_check_transactions_refuses_the_forged_copy(self):
        cache = VerifiedTransfers()
        cache.add(self.tx)
        check_transactions(self.good, PARAMS, transfers=cache)
        timings = {}
        with self.assertRaises(BlockRejected) as cm:
            check_transactions(self.bad, PARAMS, timings, transfers=cache)
        self.assertEqual(cm.exception.reason, "bad_transaction")
        self.assertEqual(cache.hits, 1)

    def test_without_a_cache_the_same(self):
        check_standalone(self.good, self.parent, PARAMS)
        with self.assertRaises(BlockRejected) as cm:
            check_standalone(self.bad, self.parent, PARAMS)
        self.assertEqual(cm.exception.reason, "bad_transaction")


class SegmentCacheTests(unittest.TestCase):
    def setUp(self):
        blocks = fixture_blocks(40)
        self.block = next(b for b in blocks if b.header.segments >= 2)
        self.parent = blocks[self.block.height - 2].header if self.block.height > 1 else genesis_block(PARAMS).header
        self.seed = child_discriminant_seed(self.parent, PARAMS)
        self.block_seed = child_seed(self.parent, PARAMS)
        self.origin = child_origin(self.parent, PARAMS)
        self.args = (PARAMS.discriminant_bits, self.block.header.vdf_iterations)

    def resigned(self, segments):
        header = dataclasses.replace(self.block.header, vdf=tuple(segments))
        key = FARMERS[header.proof_of_space.farmer_public_key]
        return dataclasses.replace(self.block, header=sign_header(header, key))

    def test_a_hit_does_not_verify(self):
        verify = Counting(vdf.verify_segment)
        cache = VerifiedSegments(verify=verify)
        segment = self.block.header.vdf[0]
        self.assertTrue(cache.check(self.seed, self.origin, segment, *self.args))
        self.assertTrue(cache.check(self.seed, self.origin, segment, *self.args))
        self.assertEqual((verify.calls, cache.hits, cache.misses, len(cache)), (1, 1, 1, 1))
        self.assertIn((self.seed, self.origin, segment, *self.args), cache)
        self.assertNotIn((self.seed, self.origin, segment, self.args[0], self.args[1] + 1), cache)
        self.assertNotIn("nonsense", cache)
        # Another start form is another key: verified (and fails).
        self.assertFalse(cache.check(self.seed, segment.output, segment, *self.args))
        self.assertEqual(verify.calls, 2)
        self.assertEqual(len(cache), 1)

    def test_failures_are_not_remembered(self):
        verify = Counting(vdf.verify_segment)
        cache = VerifiedSegments(verify=verify)
        segment = self.block.header.vdf[0]
        bad = dataclasses.replace(segment, proof=flip(segment.proof, 50))
        self.assertFalse(cache.check(self.seed, self.origin, bad, *self.args))
        self.assertFalse(cache.check(self.seed, self.origin, bad, *self.args))
        self.assertEqual((verify.calls, len(cache)), (2, 0))

    def test_keys_cover_every_input(self):
        segment = self.block.header.vdf[0]
        base = segment_key(self.seed, self.origin, segment, *self.args)
        variants = [
            segment_key(flip(self.seed), self.origin, segment, *self.args),
            segment_key(self.seed, flip(self.origin, 9), segment, *self.args),
            segment_key(self.seed, self.origin, dataclasses.replace(segment, output=flip(segment.output, 3)),
                        *self.args),
            segment_key(self.seed, self.origin, dataclasses.replace(segment, proof=flip(segment.proof, 3)),
                        *self.args),
            segment_key(self.seed, self.origin, segment, 1024, self.args[1]),
            segment_key(self.seed, self.origin, segment, self.args[0], 200_000),
        ]
        self.assertNotIn(base, variants)
        self.assertEqual(len(set(variants)), len(variants))

    def test_bound(self):
        self.assertEqual(VerifiedSegments().capacity, SEGMENT_CAPACITY)
        self.assertEqual(SEGMENT_CAPACITY, 16_384)
        cache = VerifiedSegments(capacity=2, verify=lambda *a: True)
        segs = [vdf.Segment(bytes([i]) * vdf.FORM_SIZE, bytes([i]) * vdf.FORM_SIZE) for i in range(4)]
        for s in segs:
            cache.check(self.seed, self.origin, s, *self.args)
        self.assertEqual(len(cache), 2)
        self.assertEqual([(self.seed, self.origin, s, *self.args) in cache for s in segs],
                         [False, False, True, True])

    def test_verify_chain_through_the_cache(self):
        segments = list(self.block.header.vdf)
        verify = Counting(vdf.verify_segment)
        cache = VerifiedSegments(verify=verify)
        self.assertEqual(vdf.verify_chain(self.seed, self.block_seed, segments, *self.args, cache=cache), -1)
        self.assertEqual(verify.calls, len(segments))
        self.assertEqual(vdf.verify_chain(self.seed, self.block_seed, segments, *self.args, cache=cache), -1)
        self.assertEqual(verify.calls, len(segments))
        self.assertEqual(vdf.verify_chain(self.seed, self.block_seed, segments, *self.args), -1)  # no cache: as before

    def test_a_block_one_byte_off_the_cached_segments_is_refused(self):
        cache = VerifiedSegments()
        timings = {}
        check_standalone(self.block, self.parent, PARAMS, timings, segments=cache)
        segments = list(self.block.header.vdf)
        self.assertEqual(timings["vdf_segments_checked"], len(segments))
        self.assertEqual(len(cache), len(segments))
        timings = {}
        check_header(self.block.header, self.parent, PARAMS, timings, segments=cache)
        self.assertEqual(timings["vdf_segments_checked"], 0)
        last = len(segments) - 1
        cases = {
            # An earlier segment's output (the last one's is the proof of space's challenge).
            "output": [dataclasses.replace(s, output=flip(s.output, 40)) if i == 0 else s
                       for i, s in enumerate(segments)],
            "proof": [dataclasses.replace(s, proof=flip(s.proof, 40)) if i == last else s
                      for i, s in enumerate(segments)],
        }
        for name, changed in cases.items():
            block = self.resigned(changed)
            with self.assertRaises(BlockRejected, msg=name) as cm:
                check_standalone(block, self.parent, PARAMS, segments=cache)
            self.assertEqual(cm.exception.reason, "bad_vdf", name)
            with self.assertRaises(BlockRejected, msg=name) as cm:
                check_header(block.header, self.parent, PARAMS, segments=cache)
            self.assertEqual(cm.exception.reason, "bad_vdf", name)
        self.assertEqual(len(cache), len(segments))  # the failures left nothing behind


class CountTests(unittest.TestCase):
    def test_counts_without_caches(self):
        b = builder()
        block = b.make_block(b.genesis, [transfer(nonce=0), transfer(nonce=1)])
        timings = {}
        check_standalone(block, b.genesis.header, PARAMS, timings)
        self.assertEqual(timings["signatures_checked"], 2)
        self.assertEqual(timings["vdf_segments_checked"], block.header.segments)
        for part in ("farmer_signature", "proof_of_space", "vdf", "signatures"):
            self.assertGreater(timings[part], 0.0, part)

    def test_mempool_admission_warms_the_transfer_cache(self):
        b = builder()
        state = MemoryState({ALICE.address: (100 * COIN, 0), BOB.address: (100 * COIN, 0)})

        def lookup(address):
            return state.get_account(address) or (0, 0)

        verify = Counting(verify_signature)
        cache = VerifiedTransfers(verify=verify)
        pool = Mempool(PARAMS)
        txs = [b.transfer(ALICE, CAROL.address, COIN, 0), b.transfer(BOB, CAROL.address, COIN, 0)]
        for tx in txs:
            pool.add(tx, lookup, transfers=cache)
            self.assertIn(tx, cache)
        self.assertEqual(verify.calls, 2)
        with self.assertRaises(InvalidTransaction) as cm:
            pool.add(forged(b.transfer(ALICE, CAROL.address, COIN, 1)), lookup, transfers=cache)
        self.assertEqual(cm.exception.reason, "bad_signature")
        self.assertEqual((len(pool), len(cache)), (2, 2))

        block = b.make_block(b.genesis, pool.select(10))
        timings = {}
        check_standalone(block, b.genesis.header, PARAMS, timings, transfers=cache)
        self.assertEqual(timings["signatures_checked"], 0)
        self.assertEqual(verify.calls, 3)  # the two admissions and the forged one, none for the block
        self.assertEqual(cache.hits, 2)
