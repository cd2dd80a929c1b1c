"""Proof of time: chiavdf Wesolowski segments chained from the class-group generator.

For a block on parent P the VDF starts from `seed` (sha256 of P's proof of space and P's
last VDF output; a fixed per-network string for genesis). Segment i runs T iterations from
the output of segment i-1 (segment 1 from the generator) and yields y_i with a proof;
signage point i has challenge c_i = sha256(seed || y_i).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Protocol

import chiavdf

from archivas.chain.encoding import sha256

FORM_SIZE = 100  # bytes of a serialized class-group element, at every discriminant size
GENERATOR = b"\x08" + b"\x00" * (FORM_SIZE - 1)


@dataclasses.dataclass(frozen=True)
class Segment:
    output: bytes  # y_i, FORM_SIZE bytes
    proof: bytes  # Wesolowski proof, FORM_SIZE bytes


@functools.lru_cache(maxsize=4096)
def discriminant(seed: bytes, bits: int) -> str:
    return chiavdf.create_discriminant(seed, bits)


def signage_challenge(seed: bytes, output: bytes) -> bytes:
    return sha256(seed, output)


def prove_segment(seed: bytes, start: bytes, bits: int, iterations: int) -> Segment:
    """T iterations from `start` (releases the GIL: run it in a thread)."""
    result = chiavdf.prove(seed, start, bits, iterations, "")
    return Segment(bytes(result[:FORM_SIZE]), bytes(result[FORM_SIZE:]))


def verify_segment(seed: bytes, start: bytes, segment: Segment, bits: int, iterations: int) -> bool:
    if len(segment.output) != FORM_SIZE or len(segment.proof) != FORM_SIZE:
        return False
    try:
        return bool(
            chiavdf.verify_wesolowski(
                discriminant(seed, bits), start, segment.output, segment.proof, iterations
            )
        )
    except (ValueError, RuntimeError):
        return False


class SegmentCache(Protocol):
    """What verify_chain asks of a cache (verifycache.VerifiedSegments): verify_segment's
    answer, from memory for a segment that verified before."""

    def check(self, seed: bytes, start: bytes, segment: Segment, bits: int, iterations: int) -> bool: ...


def verify_chain(seed: bytes, segments: list[Segment], bits: int, iterations: int,
                 cache: Optional[SegmentCache] = None) -> int:
    """Index of the first segment that fails, or -1 when all verify. With `cache`, each
    segment is checked through it (`cache.check`) instead of verified outright."""
    check = verify_segment if cache is None else cache.check
    start = GENERATOR
    for i, segment in enumerate(segments):
        if not check(seed, start, segment, bits, iterations):
            return i
        start = segment.output
    return -1
