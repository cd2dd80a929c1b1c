"""Proof of space: plot identity, the plot filter, verification, and the winning rule."""

from __future__ import annotations

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
