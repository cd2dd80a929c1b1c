"""Per-message-type rate limits (archivas.protocols.ratelimit) on a fake clock."""

from __future__ import annotations

import dataclasses
import heapq
import random

from twisted.internet.task import Clock
from twisted.trial import unittest

from archivas.chain.encoding import MAX_INT
from archivas.chain.transactions import Transaction
from archivas.chain.vdf import FORM_SIZE, Segment
from archivas.protocols import ratelimit, wire
from archivas.protocols.peer import MAX_LINE_BYTES
from archivas.protocols.ratelimit import LIMITS, OTHER, TOTAL, GiB, KiB, Limit, MiB, RateLimiter
from tests.common import ALICE, BOB

PING_LINE = len(b'{"type":1,"payload":{"timestamp":1767225600}}')


def run(limiter, clock, streams, seconds):
    """Feed `streams` for `seconds` of fake time; the refusals, as (time, name, reason).

    A stream is (interval, name, nbytes, burst): `burst` messages every `interval` s from 0.
    """
    events = [(0.0, i) for i in range(len(streams))]
    refusals = []
    while events:
        at, i = heapq.heappop(events)
        if at >= seconds:
            continue
        clock.advance(at - clock.seconds())
        interval, name, nbytes, burst = streams[i]
        for _ in range(burst):
            reason = limiter.check(name, nbytes)
            if reason is not None:
                refusals.append((at, name, reason))
        heapq.heappush(events, (at + interval, i))
    return refusals


# Honest traffic next to a sync: pings every 10 s, transfer gossip at 100/s, a few VDF
# segments and new blocks a second (PUSH_BLOCK of 1 MiB blocks at the extreme).
GOSSIP = [
    (10.0, "PING", PING_LINE, 1),
    (10.0, "PONG", PING_LINE, 1),
    (0.01, "TX_BROADCAST", 700, 1),
    (0.2, "VDF_OUTPUT", 600, 1),
    (0.2, "PUSH_BLOCK", 1 * MiB + 300, 1),
    (0.5, "NEW_BLOCK", 200, 1),
    (30.0, "GET_STATUS", 30, 1),
    (30.0, "STATUS", 2 * KiB, 1),
]


def widest(cls, caps):
    """A message with every field at its widest (by its annotation), for size checks."""
    values = {"str": "n" * 32, "bytes": b"\xff" * 64, "int": MAX_INT, "bool": True,
              "tuple[str, ...]": caps, "Optional[int]": MAX_INT}
    fields = {}
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.init and (required or f.type in values):
            fields[f.name] = values[f.type]  # a KeyError: a new kind of field, teach this helper
    return cls(**fields)


class TableTests(unittest.TestCase):
    def test_every_message_type_has_a_limit(self):
        names = {m.NAME for m in wire.MESSAGES.values()}
        self.assertEqual(set(LIMITS), names | {OTHER})
        self.assertEqual(ratelimit.missing_names(), set())
        for kind in wire.RESERVED_TYPES:
            self.assertEqual(RateLimiter(Clock().seconds).key(wire.type_name(kind)), OTHER)

    def test_numbers_are_positive_and_fit_a_line(self):
        for name, limit in [*LIMITS.items(), ("total", TOTAL)]:
            with self.subTest(name=name):
                self.assertGreater(limit.per_minute, 0)
                self.assertGreater(limit.max_bytes, 0)
                self.assertGreaterEqual(limit.bytes_per_minute, limit.max_bytes)
                self.assertLessEqual(limit.max_bytes, MAX_LINE_BYTES)
        self.assertRaises(ValueError, Limit, 0, 1, 1)
        self.assertRaises(ValueError, Limit, 1, 2, 1)

    def test_largest_honest_messages_fit(self):
        """Each small type's largest honest line (in the widest hash encoding) is under its cap."""
        h = b"\xff" * 32
        caps = tuple("c" * 32 for _ in range(32))
        tx = Transaction(MAX_INT, ALICE.address, BOB.address, MAX_INT, MAX_INT, MAX_INT,
                         b"\xff" * 32, b"\xff" * 64)
        largest = [
            (wire.Ping(MAX_INT), wire.HEX), (wire.Pong(1.7976931348623157e308), wire.HEX),
            (wire.NewBlock(MAX_INT, h), wire.ARRAY), (wire.GetBlock(MAX_INT), wire.HEX),
            (wire.GetStatus(), wire.HEX),
            (wire.Status(MAX_INT, MAX_INT, h, MAX_INT, h, "n" * 32, MAX_INT, caps), wire.ARRAY),
            (wire.Peers(tuple("a" * 270 for _ in range(wire.MAX_PEERS_LISTED)), MAX_INT, "n" * 64), wire.HEX),
            (wire.NewTransaction(tx), wire.HEX), (wire.GetBlocks(MAX_INT, wire.MAX_BATCH), wire.HEX),
            (widest(wire.Hello, caps), wire.HEX), (widest(wire.HelloAck, caps), wire.HEX),
            (wire.VdfOutput(h, MAX_INT, Segment(b"\xff" * FORM_SIZE, b"\xff" * FORM_SIZE)), wire.HEX),
            (wire.GetPeers(), wire.HEX), (wire.GetHashes(MAX_INT, wire.MAX_HASHES), wire.HEX),
            (wire.Hashes(MAX_INT, (h,) * wire.MAX_HASHES), wire.HEX),
        ]
        for message, style in largest:
            with self.subTest(name=message.NAME):
                size = len(wire.encode(message, style))
                self.assertLessEqual(size, LIMITS[message.NAME].max_bytes // 1.5, size)

    def test_render_table(self):
        table = ratelimit.render_table()
        lines = table.splitlines()
        self.assertEqual(lines[0], "| message | messages/min | bytes/message | bytes/min |")
        self.assertEqual(len(lines), 2 + len(LIMITS) + 1)
        self.assertIn("| PING | 1,200 | 4 KiB | 1 MiB |", lines)
        self.assertIn("| BLOCKS_BATCH | 6,000 | 4 MiB | 12 GiB |", lines)
        self.assertTrue(lines[-1].startswith("| all together | 60,000 |"))


class PingFloodTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.limiter = RateLimiter(self.clock.seconds)

    def pings(self, count, seconds):
        """`count` PINGs spread over `seconds`; the index and reason of the first refusal."""
        for i in range(count):
            reason = self.limiter.check("PING", PING_LINE)
            if reason is not None:
                return i, reason
            self.clock.advance(seconds / count)
        return None

    def test_a_flood_is_refused_before_its_end(self):
        refused = self.pings(3000, 1.0)
        self.assertIsNotNone(refused)
        index, reason = refused
        self.assertLess(index, 1300)
        self.assertEqual(reason, "PING: more than 1200 a minute")

    def test_a_burst_of_999_is_allowed(self):
        self.assertIsNone(self.pings(999, 1.0))

    def test_the_budget_refills_after_a_minute(self):
        self.assertIsNone(self.pings(1200, 0.0))
        self.assertEqual(self.limiter.check("PING", PING_LINE), "PING: more than 1200 a minute")
        self.clock.advance(30)
        self.assertIsNone(self.pings(600, 0.0))  # half a minute: half the budget
        self.assertIsNotNone(self.limiter.check("PING", PING_LINE))
        self.clock.advance(60)
        self.assertIsNone(self.pings(1200, 0.0))
        self.assertIsNotNone(self.limiter.check("PING", PING_LINE))

    def test_the_old_bucket_pattern(self):
        """test_protocol's pattern for the old bucket: 999, a second, 100 more pass; 1,000 more trip."""
        self.assertIsNone(self.pings(999, 0.0))
        self.clock.advance(1)
        self.assertIsNone(self.pings(100, 0.0))
        self.assertIsNotNone(self.pings(1000, 0.0))

    def test_honest_pings_pass_for_an_hour(self):
        self.assertEqual(run(self.limiter, self.clock, [(10.0, "PING", PING_LINE, 1)], 3600), [])


class SyncTests(unittest.TestCase):
    """BLOCKS_BATCH replies to our own requests, 3 in flight, as fast as the peer serves."""

    # (interval, replies a time, bytes a reply): 500 blocks/s of 2 KB in batches of 32;
    # 60 blocks/s of 1 MiB, two to a ~2.5 MiB reply (the devnet extreme); and twice that:
    # 3 replies of 2.2 MiB every 50 ms.
    SMALL = (3 * 32 / 500, 3, 32 * 2 * KiB + 500)
    DEVNET = (0.1, 3, int(2.5 * MiB))
    ENVELOPE = (0.05, 3, int(2.2 * MiB))

    def sync(self, interval, burst, nbytes, seconds, gossip=True):
        clock = Clock()
        limiter = RateLimiter(clock.seconds)
        streams = [(interval, "BLOCKS_BATCH", nbytes, burst)] + (GOSSIP if gossip else [])
        return run(limiter, clock, streams, seconds)

    def test_honest_sync_bursts_pass(self):
        for name in ("SMALL", "DEVNET", "ENVELOPE"):
            with self.subTest(name):
                self.assertEqual(self.sync(*getattr(self, name), seconds=180), [])

    def test_honest_seed_peer_sync_passes(self):
        """A seed peer answers GET_BLOCK one height a reply: 500 small blocks/s, or 60 of 1 MiB."""
        for interval, nbytes in ((1 / 500, 2 * KiB), (1 / 60, 1 * MiB + 100)):
            clock = Clock()
            limiter = RateLimiter(clock.seconds)
            streams = [(interval, "BLOCK_DATA", nbytes, 1)] + GOSSIP
            self.assertEqual(run(limiter, clock, streams, 120), [])

    def test_ten_times_the_rate_is_refused(self):
        for name in ("SMALL", "DEVNET", "ENVELOPE"):
            with self.subTest(name):
                interval, burst, nbytes = getattr(self, name)
                refusals = self.sync(interval / 10, burst, nbytes, seconds=180, gossip=False)
                self.assertTrue(refusals)
                at, kind, reason = refusals[0]
                self.assertEqual(kind, "BLOCKS_BATCH")
                self.assertTrue(reason.startswith("BLOCKS_BATCH: more than"), reason)
                self.assertLess(at, 120)

    def test_oversized_batches_at_the_honest_rate_are_refused(self):
        """Full 4 MiB lines at 80 a second (320 MiB/s): the byte budget trips, the count would not."""
        refusals = self.sync(0.025, 2, 4 * MiB, seconds=180, gossip=False)
        self.assertTrue(refusals)
        self.assertEqual(refusals[0][2], f"BLOCKS_BATCH: more than {12 * GiB} bytes a minute")


class SizeAndTotalTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.limiter = RateLimiter(self.clock.seconds)

    def test_a_message_over_its_size_is_refused_whatever_the_rate(self):
        for name, limit in LIMITS.items():
            with self.subTest(name=name):
                limiter = RateLimiter(self.clock.seconds)
                self.assertEqual(limiter.check(name, limit.max_bytes + 1),
                                 f"{name}: {limit.max_bytes + 1} bytes > {limit.max_bytes}")
                self.assertIsNone(limiter.check(name, limit.max_bytes))
        self.assertEqual(self.limiter.check("BLOCK_DATA", 5_000_000), "BLOCK_DATA: 5000000 bytes > 4194304")
        self.assertEqual(self.limiter.check("type 999", 5 * MiB), f"OTHER: {5 * MiB} bytes > {4 * MiB}")

    def test_a_refused_message_is_not_counted(self):
        for _ in range(10_000):
            self.assertIsNotNone(self.limiter.check("PING", 5 * KiB))
        self.assertIsNone(self.pings_at_once(1200))

    def pings_at_once(self, count):
        for _ in range(count):
            reason = self.limiter.check("PING", PING_LINE)
            if reason is not None:
                return reason
        return None

    def test_unknown_and_reserved_types_share_other(self):
        names = [wire.type_name(k) for k in sorted(wire.RESERVED_TYPES)] + ["type 99", "type 65535"]
        reasons = [self.limiter.check(names[i % len(names)], 100) for i in range(LIMITS[OTHER].per_minute + 1)]
        self.assertEqual(reasons[:-1], [None] * LIMITS[OTHER].per_minute)
        self.assertEqual(reasons[-1], f"OTHER: more than {LIMITS[OTHER].per_minute} a minute")

    def fill(self, size_of):
        """Every type up to its own budget, at one instant, largest budgets first; the first refusal."""
        order = sorted(LIMITS, key=lambda n: -LIMITS[n].bytes_per_minute)
        for name in order:
            limit = LIMITS[name]
            nbytes = size_of(limit)
            for _ in range(min(limit.per_minute, limit.bytes_per_minute // nbytes)):
                reason = self.limiter.check(name, nbytes)
                if reason is not None:
                    return name, reason
        return None

    def test_the_total_byte_budget_trips(self):
        self.assertGreater(sum(limit.bytes_per_minute for limit in LIMITS.values()), TOTAL.bytes_per_minute)
        refused = self.fill(lambda limit: limit.max_bytes)
        self.assertIsNotNone(refused)
        self.assertEqual(refused[1], f"total: more than {TOTAL.bytes_per_minute} bytes a minute")

    def test_the_total_message_budget_trips(self):
        self.assertGreater(sum(limit.per_minute for limit in LIMITS.values()), TOTAL.per_minute)
        refused = self.fill(lambda limit: 64)
        self.assertIsNotNone(refused)
        self.assertEqual(refused[1], f"total: more than {TOTAL.per_minute} a minute")

    def test_the_total_refills_too(self):
        self.assertIsNotNone(self.fill(lambda limit: 64))
        self.clock.advance(60)
        self.assertIsNone(self.limiter.check("PING", PING_LINE))

    def test_custom_limits(self):
        limiter = RateLimiter(self.clock.seconds, {"PING": Limit(2, 10, 100), OTHER: Limit(1, 10, 10)},
                              Limit(2, 10, 100))
        self.assertIsNone(limiter.check("PING", 5))
        self.assertIsNone(limiter.check("PONG", 5))  # not in this table: OTHER
        self.assertEqual(limiter.check("PING", 5), "total: more than 2 a minute")
        self.assertRaises(ValueError, RateLimiter, self.clock.seconds, {"PING": Limit(1, 1, 1)})

    def test_a_clock_that_goes_back_adds_nothing(self):
        times = iter([100.0] + [100.0] * 1200 + [50.0, 40.0])
        limiter = RateLimiter(lambda: next(times))
        for _ in range(1200):
            self.assertIsNone(limiter.check("PING", PING_LINE))
        self.assertIsNotNone(limiter.check("PING", PING_LINE))
        self.assertIsNotNone(limiter.check("PING", PING_LINE))


class MemoryTests(unittest.TestCase):
    def test_state_is_bounded_by_the_table(self):
        clock = Clock()
        limiter = RateLimiter(clock.seconds)
        attributes = dict(vars(limiter))
        names = [*LIMITS, *(wire.type_name(k) for k in wire.RESERVED_TYPES)]
        rng = random.Random(7)
        for i in range(100_000):
            name = names[i % len(names)] if i % 3 else f"type {i}"  # a fresh unknown name a third of the time
            limiter.check(name, rng.randrange(0, 8 * MiB))
            clock.advance(rng.random() / 100)
        self.assertEqual(set(vars(limiter)), set(attributes))
        self.assertEqual(len(limiter._buckets), len(LIMITS))
        self.assertEqual(set(limiter._buckets), set(LIMITS))
        for bucket in [*limiter._buckets.values(), limiter._total]:
            self.assertFalse(hasattr(bucket, "__dict__"))
            self.assertIsInstance(bucket.messages, float)
            self.assertIsInstance(bucket.bytes, float)

    def test_limits_are_frozen(self):
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, LIMITS["PING"], "per_minute", 1)


class HeaderRequestTests(unittest.TestCase):
    def test_an_honest_headers_sync_passes_and_a_request_flood_does_not(self):
        """GET_HEADERS costs the server up to 1 MiB of headers each: an honest sync asks one
        every 2 s or so (26 a minute seen in bench/), ten times that still passes, and a
        flood is refused within the minute's budget of 300."""
        clock = Clock()
        limiter = RateLimiter(clock.seconds)
        line = 64 * 66 + 100  # a full 64-hash locator
        for _ in range(600):  # 10 minutes at 1 a second
            self.assertIsNone(limiter.check("GET_HEADERS", line))
            clock.advance(1.0)
        flood = RateLimiter(clock.seconds)
        refused = next(i for i in range(1000) if flood.check("GET_HEADERS", line) is not None)
        self.assertEqual(refused, 300)
