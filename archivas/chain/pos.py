"""Proof of space: plot identity, the plot filter, verification, and the winning rule."""

from __future__ import annotations

import math
from typing import Optional

from chiapos import Verifier

from archivas.chain.encoding import sha256

_verifier = Verifier()


def plot_id(farmer_public_key: bytes, plot_nonce: bytes) -> bytes:
    """A plot is bound to its farmer: id = sha256(farmer public key || plot nonce)."""
    return sha256(farmer_public_key, plot_nonce)


def plot_memo(farmer_public_key: bytes, plot_nonce: bytes) -> bytes:
    """What a plot file's memo holds, so the farmer can recover its binding."""
    return farmer_public_key + plot_nonce


def space(k: int) -> int:
    """Expected plot size in entries: (2k+1) * 2^(k-1)."""
    return (2 * k + 1) * 2 ** (k - 1)


PLOT_BYTES_PER_ENTRY = 0.8  # a plot file's bytes per entry of space(k) (measured at k=18..25: at most 0.83)


def netspace_entries(mean_segments: float, mean_difficulty: float, blocks: int, k_min: int,
                     filter_bits: int) -> tuple[float, bool]:
    """The space (in entries of space(k)) that wins a block every `mean_segments` signage
    points at `mean_difficulty`, and whether it is only a lower bound.

    A signage point is won with probability 1 - exp(-λ), where λ, the expected number of
    winning proofs, is S / (difficulty · space(k_min) · 2^filter_bits) for S the summed
    space of every plot. A block needs m = 1 / (1 - exp(-λ)) signage points on average, so
    λ = -ln(1 - 1/m). When every one of the `blocks` was won at its first signage point
    (m = 1) the space could be any larger: λ is taken as for one block in 2n not won at
    once, the least that fits n of n, and the estimate is a lower bound."""
    p = 1 / mean_segments
    lower_bound = p >= 1
    if lower_bound:
        p = 1 - 1 / (2 * blocks)
    return -math.log(1 - p) * mean_difficulty * space(k_min) * 2 ** filter_bits, lower_bound


def passes_filter(pid: bytes, challenge: bytes, filter_bits: int) -> bool:
    """The top `filter_bits` bits of sha256(plot id || challenge) must be zero."""
    if filter_bits == 0:
        return True
    return int.from_bytes(sha256(pid, challenge), "big") >> (256 - filter_bits) == 0


def verify(pid: bytes, k: int, challenge: bytes, proof: bytes) -> Optional[bytes]:
    """The proof's quality string, or None when the proof is invalid."""
    quality = _verifier.validate_proof(pid, k, challenge, proof)
    return bytes(quality) if quality else None


def score(quality: bytes, challenge: bytes) -> int:
    return int.from_bytes(sha256(quality, challenge), "big")


def wins(quality: bytes, challenge: bytes, k: int, difficulty: int, k_min: int) -> bool:
    """score * difficulty * space(k_min) < 2^256 * space(k): more space, more wins."""
    return score(quality, challenge) * difficulty * space(k_min) < 2**256 * space(k)
