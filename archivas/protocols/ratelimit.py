"""Per-message-type rate limits for one peer connection (in the manner of Chia's
`rate_limit_numbers.py`): for each message NAME a count a minute, a size per message and
bytes a minute, plus one limit for all messages together.

Accounting is two token buckets per type (messages and bytes) and two for the total, on an
injected clock: a bucket holds at most one minute's budget and refills at that budget per
60 s, so a peer may spend a whole minute's allowance at once (an honest sync burst, a
test's burst of pings) but not sustain more than the budget a minute. Each check is O(1)
and the state is a fixed number of buckets, created up front: names that are not in the
table (the original project's reserved types, unknown types, and a type added to `wire`
without an entry here) all count as "OTHER".

`RateLimiter.check(name, nbytes)` returns None when the message is allowed (and counts
it), or a short stable reason when it is not; a refused message is not counted. A message
over its type's `max_bytes` is refused whatever the rate.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional

from archivas.protocols import wire

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

PERIOD = 60.0  # seconds: every budget is "per minute"
OTHER = "OTHER"  # the reserved type (0 HANDSHAKE) and unknown types


@dataclasses.dataclass(frozen=True)
class Limit:
    per_minute: int  # messages a minute (and at most this many at once)
    max_bytes: int  # bytes in one message (its line, without the newline)
    bytes_per_minute: int  # bytes a minute (and at most this many at once)

    def __post_init__(self) -> None:
        if min(self.per_minute, self.max_bytes, self.bytes_per_minute) <= 0:
            raise ValueError(f"limits must be positive: {self}")
        if self.bytes_per_minute < self.max_bytes:
            raise ValueError(f"bytes_per_minute below max_bytes: {self}")


# Honest traffic assumed (docs/protocol.md): a PING every 10 s; GET_STATUS once a
# connection; sync of up to 3 requests in flight per peer, as fast as the link allows: a
# loopback peer serving 500 blocks/s of 1-2 KB, or 60 blocks/s of up to 1 MiB on a devnet
# (BLOCKS_BATCH: 2 MiB of blocks, ~2.5 MiB of JSON, at most a 4 MiB line); TX_BROADCAST up
# to 100/s; VDF_OUTPUT, PUSH_BLOCK and NEW_BLOCK a few a second. Each budget is that with a
# margin of 2x or more; the reason is on its line.
LIMITS: dict[str, Limit] = {
    # honest: 6/min; 1,200 lets a test send ~1,000 pings in a row, a 3,000-ping flood trips; a line is ~50 B
    "PING": Limit(1_200, 4 * KiB, 1 * MiB),
    # answers to our PINGs (6/min); as PING, so a peer answering a test's burst of pings is fine
    "PONG": Limit(1_200, 4 * KiB, 1 * MiB),
    # a seed peer announces each new block once, a few/s: 20/s; ~170 B with an array hash
    "NEW_BLOCK": Limit(1_200, 4 * KiB, 2 * MiB),
    # a seed peer syncing from us asks one height a message: 500 blocks/s = 30,000/min, x2
    "GET_BLOCK": Limit(60_000, 4 * KiB, 8 * MiB),
    # our sync from a seed peer, one reply a height: 30,000/min x2; 60 x 1 MiB/s = 3.5 GiB/min x2
    "BLOCK_DATA": Limit(60_000, 4 * MiB, 8 * GiB),
    # sent once a connection (and the odd poll): 5/s
    "GET_STATUS": Limit(300, 4 * KiB, 1 * MiB),
    # answers to our GET_STATUS; 32 capabilities of 32 chars and array hashes are < 2 KiB
    "STATUS": Limit(300, 8 * KiB, 2 * MiB),
    # answers to GET_PEERS (one per HELLO); 64 addresses of <= 270 chars are ~18 KB
    "GOSSIP_PEERS": Limit(60, 32 * KiB, 2 * MiB),
    # honest gossip at most 100/s = 6,000/min, x2; a transfer is ~600 B
    "TX_BROADCAST": Limit(12_000, 4 * KiB, 16 * MiB),
    # a peer syncing from us: 500 blocks/s in 32s = ~940/min, plus one-block parent fetches: 100/s
    "REQUEST_BLOCKS": Limit(6_000, 4 * KiB, 4 * MiB),
    # our sync: 500 blocks/s in 32s = ~940/min, 60 blocks/s even one a reply = 3,600/min: 100/s;
    # bytes: 60 x 1 MiB blocks/s = ~4.4 GiB/min of JSON, and 3 x 2.2 MiB each 50 ms = 7.7 GiB/min, x1.5
    "BLOCKS_BATCH": Limit(6_000, 4 * MiB, 12 * GiB),
    # once a connection
    "HELLO": Limit(60, 8 * KiB, 512 * KiB),
    # timelord segments, a few/s: 50/s; a segment (two 100-byte forms in hex) is ~500 B
    "VDF_OUTPUT": Limit(3_000, 4 * KiB, 8 * MiB),
    # once per HELLO
    "GET_PEERS": Limit(60, 4 * KiB, 256 * KiB),
    # fork-point search: a handful of windows a sync round: 10/s
    "GET_HASHES": Limit(600, 4 * KiB, 2 * MiB),
    # answers to our GET_HASHES; 512 hashes are ~34 KB
    "HASHES": Limit(600, 64 * KiB, 32 * MiB),
    # each new block once, a few/s: 20/s; 5 x 1 MiB/s = 300 MiB/min, x3
    "PUSH_BLOCK": Limit(1_200, 4 * MiB, 1 * GiB),
    # the proof of a HELLO's key, once a connection; a 64-byte signature in hex is ~170 B
    "HELLO_ACK": Limit(60, 4 * KiB, 256 * KiB),
    # headers-first sync: one request in flight per peer, each for 512 headers: a sync of
    # 10,000 blocks in 46 s asked 26/min; 300/min lets a 10x faster one through. Each costs
    # the server up to 1 MiB of headers decoded from its blocks, so this one stays tight.
    "GET_HEADERS": Limit(300, 8 * KiB, 2 * MiB),
    # answers to our GET_HEADERS, at most 2,000 headers and 1 MiB of them (~1.5 MiB of
    # JSON) each; 10/s on a fast link, x1.5; a line up to the 4 MiB cap
    "HEADERS": Limit(1_200, 4 * MiB, 2 * GiB),
    # a peer fetching bodies from us: as REQUEST_BLOCKS
    "GET_BODIES": Limit(6_000, 8 * KiB, 16 * MiB),
    # answers to our GET_BODIES: as BLOCKS_BATCH
    "BODIES": Limit(6_000, 4 * MiB, 12 * GiB),
    # transfer inventory: one INV per peer every 2 s (30/min), each up to 1,000 ids of 43
    # characters (~43 KB); a burst of 100 transfers/s is ~2 lines a peer a second: 600/min, x2
    "INV": Limit(1_200, 64 * KiB, 32 * MiB),
    # our asks for what a peer announced: as INV
    "REQ": Limit(1_200, 64 * KiB, 32 * MiB),
    # answers to our REQs: at most 1,000 transfers of ~600 B (node.MAX_RES_BYTES is 1 MiB);
    # honest gossip at most 100 transfers/s = 6,000/min of ~600 B = 3.6 MiB/min, x4
    "RES": Limit(1_200, 2 * MiB, 16 * MiB),
    # a node picks its 3 fast peers again when they change: a few a block
    "SEND_CMPCT": Limit(120, 1 * KiB, 64 * KiB),
    # each new block once, a few/s (as PUSH_BLOCK); a header with up to 1,024 VDF segments
    # (~410 KB) and up to 2,000 transfers prefilled: a line up to the 4 MiB cap
    "CMPCT_BLOCK": Limit(1_200, 4 * MiB, 1 * GiB),
    # at most one a compact block we got: as CMPCT_BLOCK; 2,000 indexes are ~10 KB
    "GET_BLOCK_TXN": Limit(1_200, 64 * KiB, 16 * MiB),
    # answers to our GET_BLOCK_TXN: a whole block's transfers at most
    "BLOCK_TXN": Limit(1_200, 4 * MiB, 1 * GiB),
    # a low-bandwidth peer asks once a NEW_BLOCK we sent
    "GET_CMPCT": Limit(1_200, 4 * KiB, 2 * MiB),
    # a Go peer's HANDSHAKE and unknown types, read and dropped: 20/s, 16 full lines/min
    OTHER: Limit(1_200, 4 * MiB, 64 * MiB),
}

# all types together: the seed-peer sync (30,000/min) plus gossip, x1.5; bytes: the
# BLOCKS_BATCH ceiling plus room for PUSH_BLOCK and the rest (the old limit: 12,000/min)
TOTAL = Limit(60_000, 4 * MiB, 16 * GiB)



def missing_names() -> set[str]:
    """wire message names without an entry (they would count as OTHER; the tests want none)."""
    return {m.NAME for m in wire.MESSAGES.values()} - set(LIMITS)


class _Bucket:
    """A minute's budget of messages and of bytes, refilled continuously."""

    __slots__ = ("limit", "messages", "bytes", "stamp")

    def __init__(self, limit: Limit, now: float) -> None:
        self.limit = limit
        self.messages = float(limit.per_minute)
        self.bytes = float(limit.bytes_per_minute)
        self.stamp = now

    def refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed <= 0:  # the same instant, or a clock that went back: no refill
            return
        self.stamp = now
        limit = self.limit
        if elapsed >= PERIOD:
            self.messages = float(limit.per_minute)
            self.bytes = float(limit.bytes_per_minute)
            return
        share = elapsed / PERIOD
        self.messages = min(float(limit.per_minute), self.messages + share * limit.per_minute)
        self.bytes = min(float(limit.bytes_per_minute), self.bytes + share * limit.bytes_per_minute)

    def refusal(self, label: str, nbytes: int) -> Optional[str]:
        if self.messages < 1:
            return f"{label}: more than {self.limit.per_minute} a minute"
        if self.bytes < nbytes:
            return f"{label}: more than {self.limit.bytes_per_minute} bytes a minute"
        return None

    def take(self, nbytes: int) -> None:
        self.messages -= 1
        self.bytes -= nbytes


class RateLimiter:
    """The limits of one connection, on the clock `now` (e.g. `reactor.seconds`)."""

    def __init__(self, now: Callable[[], float], limits: Mapping[str, Limit] = LIMITS,
                 total: Limit = TOTAL) -> None:
        if OTHER not in limits:
            raise ValueError(f"limits need an {OTHER!r} entry")
        self._now = now
        start = now()
        self._buckets = {name: _Bucket(limit, start) for name, limit in limits.items()}
        self._total = _Bucket(total, start)

    def key(self, name: str) -> str:
        """The table entry a message name counts under."""
        return name if name in self._buckets else OTHER

    def check(self, name: str, nbytes: int) -> Optional[str]:
        """None if a message `name` of `nbytes` is allowed now (it is counted), else why not."""
        if nbytes < 0:
            raise ValueError("nbytes must not be negative")
        bucket = self._buckets.get(name)
        label = name
        if bucket is None:
            label = OTHER
            bucket = self._buckets[OTHER]
        total = self._total
        if nbytes > bucket.limit.max_bytes:
            return f"{label}: {nbytes} bytes > {bucket.limit.max_bytes}"
        if nbytes > total.limit.max_bytes:
            return f"total: {nbytes} bytes > {total.limit.max_bytes}"
        now = self._now()
        # (every message passes here: the common case, both buckets full enough, inline)
        if now > bucket.stamp:
            bucket.refill(now)
        if now > total.stamp:
            total.refill(now)
        if bucket.messages >= 1 and bucket.bytes >= nbytes and total.messages >= 1 and total.bytes >= nbytes:
            bucket.messages -= 1
            bucket.bytes -= nbytes
            total.messages -= 1
            total.bytes -= nbytes
            return None
        return bucket.refusal(label, nbytes) or total.refusal("total", nbytes)


def _size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale:,} {unit}"
    return f"{n:,}"


def render_table(limits: Mapping[str, Limit] = LIMITS, total: Limit = TOTAL) -> str:
    """The limits as a markdown table (for docs/protocol.md)."""
    rows = ["| message | messages/min | bytes/message | bytes/min |", "| --- | --- | --- | --- |"]
    for name, limit in [*limits.items(), ("all together", total)]:
        rows.append(f"| {name} | {limit.per_minute:,} | {_size(limit.max_bytes)} | {_size(limit.bytes_per_minute)} |")
    return "\n".join(rows) + "\n"
