"""Proof of time: chiavdf Wesolowski segments, chained from a start drawn from the block's seed.

A block on parent P has a `seed` (sha256 of P's proof of space and P's last VDF output; a
fixed per-network string for block 1) and a discriminant seed: its own seed when its
height is a multiple of DISCRIMINANT_EPOCH, its parent's discriminant seed otherwise
(block.child_discriminant_seed). The discriminant D comes from the discriminant seed, so
it is made once per epoch, as Chia makes one per sub-slot. The VDF starts from
origin(discriminant seed, seed): a form of D hashed from the block's own seed
(classgroup.py). Segment i runs T iterations from the output of segment i-1 (segment 1
from the origin) and yields y_i with a proof; signage point i has challenge
c_i = sha256(seed || y_i).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Protocol

import chiavdf

from archivas.chain import classgroup
from archivas.chain.classgroup import FORM_SIZE
from archivas.chain.encoding import sha256

# The class group's generator: a start for a lone segment (tests, benches); since block
# version 4 no block's VDF starts there (origin() below)
GENERATOR = b"\x08" + b"\x00" * (FORM_SIZE - 1)
# Blocks per discriminant: 32 devnet blocks are about 10 minutes, Chia's sub-slot
DISCRIMINANT_EPOCH = 32


@dataclasses.dataclass(frozen=True)
class Segment:
    output: bytes  # y_i, FORM_SIZE bytes
    proof: bytes  # Wesolowski proof, FORM_SIZE bytes


@functools.lru_cache(maxsize=4096)
def discriminant(seed: bytes, bits: int) -> str:
    return chiavdf.create_discriminant(seed, bits)


@functools.lru_cache(maxsize=4096)
def origin(discriminant_seed: bytes, seed: bytes, bits: int) -> bytes:
    """Where the VDF of the block with `seed` starts (serialized, FORM_SIZE bytes)."""
    d = int(discriminant(discriminant_seed, bits), 0)
    return classgroup.compress(*classgroup.prime_form(d, seed), bits)


def clear_caches() -> None:
    """Forget every discriminant and origin made (a bench that measures them cold)."""
    discriminant.cache_clear()
    origin.cache_clear()


def signage_challenge(seed: bytes, output: bytes) -> bytes:
    return sha256(seed, output)


def prove_segment(discriminant_seed: bytes, start: bytes, bits: int, iterations: int) -> Segment:
    """T iterations from `start` (releases the GIL: run it in a thread)."""
    result = chiavdf.prove(discriminant_seed, start, bits, iterations, "")
    return Segment(bytes(result[:FORM_SIZE]), bytes(result[FORM_SIZE:]))


def verify_segment(discriminant_seed: bytes, start: bytes, segment: Segment, bits: int,
                   iterations: int) -> bool:
    if len(segment.output) != FORM_SIZE or len(segment.proof) != FORM_SIZE:
        return False
    try:
        return bool(
            chiavdf.verify_wesolowski(
                discriminant(discriminant_seed, bits), start, segment.output, segment.proof, iterations
            )
        )
    except (ValueError, RuntimeError):
        return False


class SegmentCache(Protocol):
    """What verify_chain asks of a cache (verifycache.VerifiedSegments): verify_segment's
    answer, from memory for a segment that verified before."""

    def check(self, discriminant_seed: bytes, start: bytes, segment: Segment, bits: int,
              iterations: int) -> bool: ...


def verify_chain(discriminant_seed: bytes, seed: bytes, segments: list[Segment], bits: int,
                 iterations: int, cache: Optional[SegmentCache] = None) -> int:
    """Index of the first segment that fails, or -1 when all verify, for the block with
    `seed`. With `cache`, each segment is checked through it (`cache.check`) instead of
    verified outright."""
    check = verify_segment if cache is None else cache.check
    start = origin(discriminant_seed, seed, bits)
    for i, segment in enumerate(segments):
        if not check(discriminant_seed, start, segment, bits, iterations):
            return i
        start = segment.output
    return -1
