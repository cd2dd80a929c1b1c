"""Bounded memories of signatures and VDF segments that verified, so that the same proof
is not verified twice: a transfer admitted to the mempool and later carried by a block, a
VDF segment relayed by a timelord and later carried by a block.

Each entry is keyed by everything its verification reads, hashed, never by an id: a
transfer's id leaves its signature out, so a copy with a forged signature has the honest
transfer's id but another key here, misses, and is verified (and refused) like any other.
Only successes are remembered: a failure costs its sender a verification every time, as
without a cache. Each cache is an LRU under a `threading.Lock` (the node verifies in a
thread pool); the lock is not held while verifying, so two threads verify in parallel.
"""

from __future__ import annotations

import collections
import struct
import threading
from typing import Callable, Optional

from archivas.chain import transactions, vdf
from archivas.chain.encoding import sha256
from archivas.chain.transactions import Transaction
from archivas.chain.vdf import Segment

# A full mempool is 5,000 transfers and a full block 2,000: 65,536 holds the pool 13 times
# over, or the transfers of the last ~32 full blocks, so a transfer seen in the pool is
# still here when the block that carries it arrives, even after a reorganisation or a
# burst of replacements. An entry is ~150 bytes (32-byte key, dict slot, LRU link,
# measured with tracemalloc): ~10 MiB full.
TRANSFER_CAPACITY = 65_536
# A block carries at most 1,024 segments and a node sees each of the tip's segments once
# from a timelord before the block that carries them: 16,384 is 16 blocks of the longest
# VDF (on fastnet, ~1 segment a block, thousands of blocks). ~2.5 MiB full.
SEGMENT_CAPACITY = 16_384

TransferVerify = Callable[[Transaction], bool]
SegmentVerify = Callable[[bytes, bytes, Segment, int, int], bool]


def _framed(*parts: bytes) -> bytes:
    """sha256 over the parts, each with its length in front: no two tuples share a key."""
    return sha256(*(struct.pack(">I", len(p)) + p for p in parts))


def transfer_key(tx: Transaction) -> bytes:
    """The whole signed transfer: the signing bytes (which hold the public key) and the
    signature (`Transaction.signed_hash`: made once a transfer, so the block that carries a
    gossiped transfer finds it computed). Not `tx.hash`, which leaves the signature out."""
    return tx.signed_hash


def segment_key(seed: bytes, start: bytes, segment: Segment, bits: int, iterations: int) -> bytes:
    """Everything verify_segment reads: the discriminant seed (the discriminant is made from it and
    the bits), the discriminant size, T, the start form, the output and the proof."""
    return _framed(seed, struct.pack(">IQ", bits, iterations), start, segment.output, segment.proof)


class _LRU:
    """A bounded set of keys, least recently used out first, with hit and miss counters."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._keys: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def _has(self, key: bytes) -> bool:
        """Membership without touching the order or the counters."""
        with self._lock:
            return key in self._keys

    def _hit(self, key: bytes) -> bool:
        """True (counted a hit, made most recent) when known; else counted a miss."""
        with self._lock:
            if key in self._keys:
                self._keys.move_to_end(key)
                self.hits += 1
                return True
            self.misses += 1
            return False

    def _remember(self, key: bytes) -> None:
        with self._lock:
            self._keys[key] = None
            self._keys.move_to_end(key)
            while len(self._keys) > self.capacity:
                self._keys.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()


class VerifiedTransfers(_LRU):
    """Transfers whose signature verified, keyed by the whole signed transfer."""

    def __init__(self, capacity: int = TRANSFER_CAPACITY,
                 verify: Optional[TransferVerify] = None) -> None:
        super().__init__(capacity)
        self.verify: TransferVerify = verify or transactions.verify_signature

    def lookup_or_verify(self, tx: Transaction) -> tuple[bool, bool]:
        """(the signature is valid, it was verified now: a miss)."""
        key = transfer_key(tx)
        if self._hit(key):
            return True, False
        ok = bool(self.verify(tx))
        if ok:
            self._remember(key)
        return ok, True

    def check(self, tx: Transaction) -> bool:
        """Whether tx's signature is valid: remembered, or verified now (and then
        remembered if it is)."""
        return self.lookup_or_verify(tx)[0]

    def __contains__(self, tx: object) -> bool:
        return isinstance(tx, Transaction) and self._has(transfer_key(tx))

    def add(self, tx: Transaction) -> None:
        """Remember tx as verified: only after its signature really verified."""
        self._remember(transfer_key(tx))


class VerifiedSegments(_LRU):
    """VDF segments that verified, keyed by (seed, bits, T, start, output, proof)."""

    def __init__(self, capacity: int = SEGMENT_CAPACITY,
                 verify: Optional[SegmentVerify] = None) -> None:
        super().__init__(capacity)
        self.verify: SegmentVerify = verify or vdf.verify_segment

    def lookup_or_verify(self, seed: bytes, start: bytes, segment: Segment, bits: int,
                         iterations: int) -> tuple[bool, bool]:
        """(the segment verifies from `start`, it was verified now: a miss)."""
        key = segment_key(seed, start, segment, bits, iterations)
        if self._hit(key):
            return True, False
        ok = bool(self.verify(seed, start, segment, bits, iterations))
        if ok:
            self._remember(key)
        return ok, True

    def check(self, seed: bytes, start: bytes, segment: Segment, bits: int, iterations: int) -> bool:
        """vdf.verify_segment's answer, from memory when this exact segment verified before."""
        return self.lookup_or_verify(seed, start, segment, bits, iterations)[0]

    def __contains__(self, item: object) -> bool:
        """`(seed, start, segment, bits, iterations) in cache`."""
        if not isinstance(item, tuple) or len(item) != 5:
            return False
        return self._has(segment_key(*item))

    def add(self, seed: bytes, start: bytes, segment: Segment, bits: int, iterations: int) -> None:
        """Remember the segment as verified: only after it really verified."""
        self._remember(segment_key(seed, start, segment, bits, iterations))


__all__ = ["VerifiedTransfers", "VerifiedSegments", "TRANSFER_CAPACITY", "SEGMENT_CAPACITY",
           "transfer_key", "segment_key"]
