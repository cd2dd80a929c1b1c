"""A block's VDF origin: a form drawn from its seed, in the encoding chiavdf takes, and a
discriminant shared by an epoch of blocks without letting one block's VDF serve another."""

import dataclasses
import hashlib
import math

import chiavdf
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from archivas.chain import classgroup, vdf
from archivas.chain.block import ProofOfSpace, child_discriminant_seed, child_seed, genesis_block
from archivas.chain.consensus import BlockRejected, check_header
from archivas.chain.params import load

DEVNET, FASTNET = load("devnet"), load("fastnet")
SEEDS = {bits: hashlib.sha256(b"classgroup test %d" % bits).digest() for bits in (256, 1024)}
DISCRIMINANTS = {bits: int(vdf.discriminant(seed, bits), 0) for bits, seed in SEEDS.items()}


def decoded(discriminant: int, data: bytes, bits: int) -> tuple[int, int]:
    """(a, b) as chiavdf reads `data` (a sign byte, then big-endian magnitude, for each)."""
    raw = chiavdf.bqfc_deserialize(hex(discriminant), data)

    def number(v: bytes) -> int:
        n = int.from_bytes(v[1:], "big")
        return -n if v[0] else n

    return number(raw[0]), number(raw[1])


class PrimeFormTests(unittest.TestCase):
    @settings(max_examples=150, deadline=None)
    @given(seed=st.binary(min_size=32, max_size=32), bits=st.sampled_from([256, 1024]))
    def test_a_reduced_form_of_the_discriminant(self, seed, bits):
        d = DISCRIMINANTS[bits]
        a, b = classgroup.prime_form(d, seed)
        self.assertEqual((b * b - d) % (4 * a), 0)
        c = (b * b - d) // (4 * a)
        self.assertTrue(0 < b < a <= c)
        self.assertEqual(a.bit_length(), classgroup.A_BITS)
        self.assertEqual(b % 2, 1)
        self.assertEqual(math.gcd(a, classgroup._SMALL_PRIMES), 1)  # (the sieve's rule)

    def test_the_sieve_is_the_odd_primes_below_its_limit(self):
        self.assertEqual(classgroup._odd_primes_product(30), 3 * 5 * 7 * 11 * 13 * 17 * 19 * 23 * 29)
        small = classgroup._SMALL_PRIMES
        self.assertEqual((small % 3, small % 997, small % 2), (0, 0, 1))
        self.assertNotEqual(small % 9, 0)  # each prime once
        self.assertNotEqual(small % 1009, 0)  # none from the limit on

    @settings(max_examples=150, deadline=None)
    @given(seed=st.binary(min_size=32, max_size=32), bits=st.sampled_from([256, 1024]))
    def test_chiavdf_reads_the_encoding_back_as_canonical(self, seed, bits):
        """chiavdf refuses any but the canonical encoding of a form: this one round-trips."""
        d = DISCRIMINANTS[bits]
        a, b = classgroup.prime_form(d, seed)
        data = classgroup.compress(a, b, bits)
        self.assertEqual(len(data), classgroup.FORM_SIZE)
        self.assertEqual(decoded(d, data, bits), (a, b))

    def test_the_same_seed_gives_the_same_form_and_others_differ(self):
        d = DISCRIMINANTS[256]
        forms = {classgroup.prime_form(d, bytes([i]) * 32) for i in range(50)}
        self.assertEqual(len(forms), 50)
        self.assertEqual(classgroup.prime_form(d, b"\x01" * 32), classgroup.prime_form(d, b"\x01" * 32))

    def test_not_a_discriminant(self):
        for d in (7, -7 + 1, 0):  # positive, 2 mod 8, zero
            with self.subTest(d=d):
                self.assertRaises(ValueError, classgroup.prime_form, d, b"\x00" * 32)
        self.assertRaises(ValueError, classgroup.compress, 5, 7, 256)  # b outside (0, a)
        self.assertRaises(ValueError, classgroup.compress, 1 << 70, 7, 1024)  # a of 71 bits


class OriginTests(unittest.TestCase):
    bits = FASTNET.discriminant_bits
    iterations = 2000

    def test_a_segment_from_one_origin_does_not_verify_from_another_in_the_same_group(self):
        """Two blocks of one epoch share a discriminant; a segment proved for one is no
        proof for the other (the reuse a shared discriminant would open without origins)."""
        dseed = SEEDS[256]
        one, other = vdf.origin(dseed, b"\x01" * 32, self.bits), vdf.origin(dseed, b"\x02" * 32, self.bits)
        segment = vdf.prove_segment(dseed, one, self.bits, self.iterations)
        self.assertTrue(vdf.verify_segment(dseed, one, segment, self.bits, self.iterations))
        self.assertFalse(vdf.verify_segment(dseed, other, segment, self.bits, self.iterations))
        self.assertFalse(vdf.verify_segment(dseed, vdf.GENERATOR, segment, self.bits, self.iterations))
        self.assertFalse(vdf.verify_segment(b"\x03" * 32, one, segment, self.bits, self.iterations))

    def test_the_discriminant_seed_changes_once_per_epoch(self):
        """Heights 1..E-1 carry genesis's discriminant seed; E opens an epoch with its own
        seed, which E+1.. carry on."""
        params = FASTNET
        header = genesis_block(params).header
        epoch = vdf.DISCRIMINANT_EPOCH
        seeds = []
        for height in range(1, 2 * epoch + 2):
            child = dataclasses.replace(
                header, height=height, parent_hash=header.hash,
                proof_of_space=ProofOfSpace(18, bytes([height % 256]) * 32, b"\x00" * 32, bytes([height % 256]) * 144),
                vdf=(vdf.Segment(bytes([height % 256]) * 100, b"\x00" * 100),),
                discriminant_seed=child_discriminant_seed(header, params))
            seeds.append(child.discriminant_seed)
            if height % epoch == 0:
                self.assertEqual(child.discriminant_seed, child_seed(header, params))
            header = child
        self.assertEqual(len(set(seeds[:epoch - 1])), 1)
        self.assertEqual(seeds[0], genesis_block(params).header.discriminant_seed)
        self.assertEqual(len(set(seeds[epoch - 1:2 * epoch - 1])), 1)
        self.assertNotEqual(seeds[epoch - 1], seeds[0])
        self.assertNotEqual(seeds[2 * epoch - 1], seeds[epoch - 1])
        self.assertEqual(len(set(seeds)), 3)

    def test_devnet_origin_costs_little_once_the_discriminant_is_made(self):
        """The origin is a few modular powers (no discriminant of its own): many blocks of
        one epoch share the one discriminant (vdf.discriminant is remembered)."""
        dseed = hashlib.sha256(b"devnet epoch").digest()
        before = vdf.discriminant.cache_info().misses
        for i in range(20):
            vdf.origin(dseed, bytes([i]) * 32, DEVNET.discriminant_bits)
        self.assertEqual(vdf.discriminant.cache_info().misses - before, 1)


class EpochBoundaryTests(unittest.TestCase):
    def test_the_block_that_opens_an_epoch_carries_its_own_seed(self):
        """Block 32 of the fixture chain opens an epoch: its parent's discriminant seed is
        refused there, as a new one is refused inside an epoch (tests/test_blocks.py)."""
        from tests.common import PARAMS, fixture_blocks

        epoch = vdf.DISCRIMINANT_EPOCH
        blocks = fixture_blocks(epoch + 1)
        parent, block = blocks[epoch - 2].header, blocks[epoch - 1].header  # heights 31, 32
        self.assertEqual(block.height, epoch)
        self.assertEqual(block.discriminant_seed, child_seed(parent, PARAMS))
        check_header(block, parent, PARAMS)
        stale = dataclasses.replace(block, discriminant_seed=parent.discriminant_seed)
        error = self.assertRaises(BlockRejected, check_header, stale, parent, PARAMS)
        self.assertEqual(error.reason, "bad_vdf")
        # and the next block carries block 32's on
        self.assertEqual(blocks[epoch].header.discriminant_seed, child_discriminant_seed(block, PARAMS))


class DiscriminantSizeTests(unittest.TestCase):
    def test_a_network_with_a_discriminant_too_small_for_reduced_origins_is_refused(self):
        """Below 256 bits a 62-bit origin need not be reduced (a must stay under
        sqrt(|D|)/2); above 1024 chiavdf's 100-byte forms do not hold it."""
        import json
        from importlib import resources

        from archivas.chain import params as network_params

        doc = json.loads(resources.files("archivas.chain.networks").joinpath("fastnet.json").read_text())
        self.assertEqual(network_params.from_json(doc).discriminant_bits, 256)
        for bits in (128, 255, 1025, 2048):
            with self.subTest(bits=bits):
                with self.assertRaisesRegex(ValueError, "discriminantBits must be 256 to 1024"):
                    network_params.from_json({**doc, "discriminantBits": bits})
