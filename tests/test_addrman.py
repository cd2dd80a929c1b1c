"""The peer address book (archivas.protocols.addrman): address syntax, the new and tried
tables, eviction, persistence, the bound on what one source group can fill, the share of
honest addresses select() still returns under a flood, sampling for peer exchange, and the
received-address rate limit. Deterministic: fixed keys and seeds, a fake clock."""

import copy
import json
import random

from twisted.trial import unittest

from archivas.protocols import addrman
from archivas.protocols.addrman import AddressBook, AddrRateLimiter, address_group, parse_address

KEY = bytes(range(32))
DAY = 86400.0


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def own_group(host: str) -> bytes:
    return host.encode()


def one_group(host: str) -> bytes:
    return b"everyone"


def make_book(seed: int = 1, group=address_group, clock=None) -> tuple[AddressBook, Clock]:
    clock = clock or Clock()
    return AddressBook(clock, random.Random(seed), group=group, key=KEY), clock


class ParseAddressTests(unittest.TestCase):
    def test_accepts(self):
        self.assertEqual(parse_address("[::1]:9090"), ("::1", 9090))
        self.assertEqual(parse_address("localhost:9090"), ("localhost", 9090))
        self.assertEqual(parse_address("1.2.3.4:1"), ("1.2.3.4", 1))
        self.assertEqual(parse_address("10.1.2.3:65535"), ("10.1.2.3", 65535))
        self.assertEqual(parse_address("Seed.Example.ORG:9090"), ("seed.example.org", 9090))
        self.assertEqual(parse_address("[0:0:0::1]:9090"), ("::1", 9090))

    def test_refuses(self):
        for text, words in [
            ("1.2.3.4:0", "outside"),
            ("1.2.3.4:70000", "outside"),
            ("1.2.3.4:9999999", "outside"),
            ("::1:9090", "brackets"),
            ("", "empty"),
            ("a b:1", "characters"),
            ("1.2.3.4", "no port"),
            ("1.2.3.4:", "not a decimal"),
            ("1.2.3.4:+80", "not a decimal"),
            ("[::1]9090", "[ipv6]:port"),
            ("[1.2.3.4]:9090", "not an IPv6"),
            ("[fe80::1%eth0]:9090", "zone"),
            ("1.2.3.256:9090", "neither"),
            ("-bad.example:9090", "'-'"),
            ("a..b:9090", "empty label"),
            (":9090", "empty host"),
            ("x" * 64 + ".org:9090", "label over"),
            (".".join(["a" * 60] * 5) + ":1", "characters, over"),
        ]:
            with self.assertRaises(ValueError, msg=text) as caught:
                parse_address(text)
            self.assertIn(words, str(caught.exception), text)
        with self.assertRaises(ValueError):
            parse_address(9090)

    def test_groups(self):
        self.assertEqual(address_group("10.1.2.3"), address_group("10.1.200.9"))
        self.assertNotEqual(address_group("10.1.2.3"), address_group("10.2.2.3"))
        self.assertEqual(address_group("2001:db8:1::1"), address_group("2001:db8:ffff::2"))
        self.assertNotEqual(address_group("2001:db8::1"), address_group("2001:db9::1"))
        self.assertEqual(address_group("::ffff:10.1.2.3"), address_group("10.1.9.9"))
        self.assertEqual(address_group("seed.example.org"), b"name:seed.example.org")


class RoundTripTests(unittest.TestCase):
    def test_add_select_good(self):
        book, clock = make_book(group=own_group)
        addresses = ["10.0.0.1:9090", "10.0.0.2:9090", "[2001:db8::1]:9090", "seed.example.org:9090"]
        self.assertEqual(book.add(addresses, "192.0.2.1"), 4)
        self.assertEqual(book.counts(), (4, 0))
        self.assertEqual(len(book), 4)
        self.assertIn("[2001:DB8:0::1]:9090", book)
        self.assertNotIn("10.0.0.3:9090", book)
        self.assertNotIn("not an address", book)
        # Known ones again, plus two invalid ones: nothing new, the invalid counted.
        self.assertEqual(book.add(addresses + ["bogus", "1.2.3.4:0"], "192.0.2.2"), 0)
        self.assertEqual(book.dropped_counts["invalid"], 2)
        for _ in range(20):
            self.assertIn(book.select(), addresses)

        clock.advance(10)
        self.assertTrue(book.attempt("10.0.0.1:9090"))
        self.assertTrue(book.good("10.0.0.1:9090"))
        self.assertEqual(book.counts(), (3, 1))
        self.assertEqual(book.position("10.0.0.1:9090")[0], "tried")
        self.assertTrue(book.good("10.0.0.1:9090"))  # again: no change
        self.assertEqual(book.counts(), (3, 1))
        self.assertFalse(book.good("10.9.9.9:9090"))  # unknown: add it first
        self.assertFalse(book.attempt("10.9.9.9:9090"))
        self.assertFalse(book.failed("10.9.9.9:9090"))

        for _ in range(50):
            self.assertNotEqual(book.select(new_only=True), "10.0.0.1:9090")
        picks = [book.select() for _ in range(400)]
        self.assertTrue(150 <= picks.count("10.0.0.1:9090") <= 250, picks.count("10.0.0.1:9090"))

        self.assertIsNone(book.select(exclude=addresses))
        self.assertEqual(book.select(exclude=addresses[1:]), "10.0.0.1:9090")
        self.assertIsNone(book.select(new_only=True, exclude=addresses[1:]))

        self.assertTrue(book.remove("10.0.0.1:9090"))
        self.assertFalse(book.remove("10.0.0.1:9090"))
        self.assertEqual(book.counts(), (3, 0))
        self.assertEqual(len(book), 3)

    def test_empty_book(self):
        book, _ = make_book()
        self.assertIsNone(book.select())
        self.assertEqual(book.addresses_for_exchange(100), [])
        self.assertEqual(book.counts(), (0, 0))

    def test_bad_source_and_key(self):
        book, clock = make_book()
        with self.assertRaises(ValueError):
            book.add(["10.0.0.1:9090"], "10.0.0.2:9090")
        self.assertEqual(book.add(["10.0.0.1:9090"], "[2001:db8::5]"), 1)
        self.assertEqual(book.add(["10.0.0.2:9090"], "2001:db8::5"), 1)
        with self.assertRaises(ValueError):
            AddressBook(clock, random.Random(1), key=b"short")
        self.assertEqual(len(AddressBook(clock, random.Random(1)).key), 32)

    def test_recently_tried_is_picked_less(self):
        book, clock = make_book(group=own_group)
        book.add(["10.0.0.1:9090", "10.0.0.2:9090"], "192.0.2.1")
        book.attempt("10.0.0.1:9090")
        picks = [book.select() for _ in range(1000)]
        self.assertLess(picks.count("10.0.0.1:9090"), 100)

    def test_failures_count_once_per_success_elsewhere(self):
        book, clock = make_book(group=own_group)
        book.add(["10.0.0.1:9090", "10.0.0.2:9090", "10.0.0.3:9090"], "192.0.2.1")
        doc = lambda: {e["address"]: e for e in book.to_json()["entries"]}  # noqa: E731
        for _ in range(5):  # offline: every failure after the first is not counted
            clock.advance(1)
            book.failed("10.0.0.1:9090")
        self.assertEqual(doc()["10.0.0.1:9090"]["attempts"], 1)
        for _ in range(2):
            clock.advance(1)
            book.good("10.0.0.2:9090")
            clock.advance(1)
            book.failed("10.0.0.1:9090")
        self.assertEqual(doc()["10.0.0.1:9090"]["attempts"], 3)
        # Three failures and never a success: terrible, so no longer shared.
        for _ in range(20):
            self.assertNotIn("10.0.0.1:9090", book.addresses_for_exchange(10))
        clock.advance(1)
        book.good("10.0.0.1:9090")
        self.assertEqual(doc()["10.0.0.1:9090"]["attempts"], 0)


class EvictionTests(unittest.TestCase):
    """With one group for everything, all addresses from one source share a new bucket and
    fall in 8 tried buckets, so slot collisions are easy to find."""

    def colliding(self, table: str) -> tuple[str, str]:
        scratch, _ = make_book(group=one_group)
        seen: dict[tuple, str] = {}
        for i in range(5000):
            address = f"10.0.{i // 256}.{i % 256}:9090"
            scratch.add([address], "192.0.2.1")
            if table == "tried":
                scratch.good(address)
            where = scratch.position(address)
            scratch.remove(address)
            if where in seen:
                return seen[where], address
            seen[where] = address
        raise AssertionError("no collision found")

    def test_new_collision_drops_incoming_unless_occupant_terrible(self):
        first, second = self.colliding("new")
        book, clock = make_book(group=one_group)
        self.assertEqual(book.add([first], "192.0.2.1"), 1)
        self.assertEqual(book.add([second], "192.0.2.1"), 0)
        self.assertEqual(book.dropped_counts["bucket_full"], 1)
        self.assertNotIn(second, book)
        # 31 days unseen: the occupant is terrible and is replaced.
        clock.advance(31 * DAY)
        self.assertEqual(book.add([second], "192.0.2.1"), 1)
        self.assertNotIn(first, book)
        self.assertIn(second, book)
        self.assertEqual(book.dropped_counts["replaced_terrible"], 1)

    def test_recent_try_protects_old_entry(self):
        first, second = self.colliding("new")
        book, clock = make_book(group=one_group)
        book.add([first], "192.0.2.1")
        clock.advance(31 * DAY)
        book.attempt(first)
        self.assertEqual(book.add([second], "192.0.2.1"), 0)
        self.assertIn(first, book)

    def test_tried_collision_demotes_occupant(self):
        first, second = self.colliding("tried")
        book, clock = make_book(group=one_group)
        book.add([first], "192.0.2.1")
        book.good(first)
        book.add([second], "192.0.2.1")
        clock.advance(1)
        book.good(second)
        self.assertEqual(book.position(second)[0], "tried")
        self.assertEqual(book.position(first)[0], "new")
        self.assertEqual(book.counts(), (1, 1))
        self.assertEqual(book.dropped_counts["demoted"], 1)
        # A terrible occupant is deleted instead.
        clock.advance(31 * DAY)
        book.good(first)
        self.assertNotIn(second, book)
        self.assertEqual(book.counts(), (0, 1))
        self.assertEqual(book.dropped_counts["replaced_terrible"], 1)


class PersistenceTests(unittest.TestCase):
    def build(self) -> tuple[AddressBook, Clock]:
        book, clock = make_book(seed=3)
        gen = random.Random(4)
        for s in range(10):
            batch = [f"{gen.randrange(1, 224)}.{gen.randrange(256)}.{gen.randrange(256)}.1:9090" for _ in range(30)]
            book.add(batch, f"198.{s}.0.1")
            clock.advance(60)
        book.add(["[2001:db8::7]:9090", "seed.example.org:9090"], "203.0.113.5")
        everything = sorted(book.to_json()["entries"], key=lambda e: e["address"])
        for entry in everything[:20]:
            book.attempt(entry["address"])
            book.good(entry["address"])
            clock.advance(5)
        for entry in everything[20:30]:
            book.attempt(entry["address"])
            book.failed(entry["address"])
        return book, clock

    def test_round_trip(self):
        book, clock = self.build()
        doc = json.loads(json.dumps(book.to_json()))
        loaded = AddressBook.from_json(doc, clock, random.Random(9))
        self.assertEqual(loaded.key, book.key)
        self.assertEqual(loaded.counts(), book.counts())
        self.assertEqual(loaded.counts(), (len(book) - 20, 20))
        self.assertEqual(len(loaded), len(book))
        for entry in doc["entries"]:
            self.assertEqual(loaded.position(entry["address"]), book.position(entry["address"]))
        again = loaded.to_json()
        by_address = lambda d: sorted(d["entries"], key=lambda e: e["address"])  # noqa: E731
        self.assertEqual(by_address(again), by_address(doc))
        self.assertEqual(again["last_good"], doc["last_good"])
        self.assertEqual(sum(loaded.dropped_counts.values()), 0)

    def test_other_group_function_rebuckets(self):
        book, clock = self.build()
        loaded = AddressBook.from_json(book.to_json(), clock, random.Random(9), group=one_group)
        self.assertEqual(loaded.key, book.key)
        self.assertEqual(len(loaded) + loaded.dropped_counts["load_dropped"], len(book))
        self.assertLessEqual(loaded.counts()[1], addrman.TRIED_BUCKETS_PER_GROUP * addrman.BUCKET_SIZE)

    def test_corrupt_documents_refused(self):
        book, clock = self.build()
        good = book.to_json()

        def broken(change):
            doc = copy.deepcopy(good)
            change(doc)
            return doc

        def set_entry(field, value):
            return lambda d: d["entries"][0].__setitem__(field, value)

        docs = [
            [],
            "{}",
            None,
            {},
            broken(lambda d: d.__setitem__("version", 2)),
            broken(lambda d: d.__setitem__("version", True)),
            broken(lambda d: d.__setitem__("extra", 1)),
            broken(lambda d: d.pop("key")),
            broken(lambda d: d.__setitem__("key", "00" * 31)),
            broken(lambda d: d.__setitem__("key", "zz" * 32)),
            broken(lambda d: d.__setitem__("key", 5)),
            broken(lambda d: d.__setitem__("last_good", "yesterday")),
            broken(lambda d: d.__setitem__("entries", {})),
            broken(lambda d: d["entries"].append(42)),
            broken(lambda d: d["entries"].append(dict(d["entries"][0]))),
            broken(lambda d: d["entries"][0].pop("tried")),
            broken(set_entry("address", "1.2.3.4:0")),
            broken(set_entry("address", None)),
            broken(set_entry("source", "a b")),
            broken(set_entry("attempts", -1)),
            broken(set_entry("attempts", 1.5)),
            broken(set_entry("attempts", True)),
            broken(set_entry("tried", 1)),
            broken(set_entry("first_seen", None)),
            broken(set_entry("last_seen", float("nan"))),
            broken(set_entry("last_try", float("inf"))),
            broken(set_entry("last_success", "now")),
            broken(set_entry("last_counted_failure", [])),
        ]
        for doc in docs:
            with self.assertRaises(ValueError, msg=repr(doc)[:200]) as caught:
                AddressBook.from_json(doc, clock, random.Random(1))
            self.assertIn("address book", str(caught.exception))
        AddressBook.from_json(copy.deepcopy(good), clock, random.Random(1))  # the original still loads


class FloodTests(unittest.TestCase):
    """One source group announcing 10,000 addresses fills at most 64 new buckets, and
    honest addresses from other groups keep a real share of select()."""

    def test_one_source_group_cannot_take_over(self):
        book, clock = make_book(seed=7)
        gen = random.Random(2)
        flood: set[str] = set()
        while len(flood) < 10_000:
            flood.add(f"{gen.randrange(1, 100)}.{gen.randrange(256)}.{gen.randrange(256)}.{gen.randrange(256)}:9090")
        flood_groups = {address_group(parse_address(a)[0]) for a in flood}
        self.assertGreater(len(flood_groups), 1000)  # many address groups, one source group
        book.add(sorted(flood), "6.6.6.6")
        stored = [a for a in flood if a in book]
        buckets = {book.position(a)[1] for a in stored}
        self.assertLessEqual(len(buckets), addrman.NEW_BUCKETS_PER_SOURCE_GROUP)
        self.assertLessEqual(len(stored), addrman.NEW_BUCKETS_PER_SOURCE_GROUP * addrman.BUCKET_SIZE)
        self.assertEqual(book.counts(), (len(stored), 0))
        self.assertEqual(book.dropped_counts["bucket_full"], len(flood) - len(stored))

        honest = [f"{100 + i}.{i}.0.1:9090" for i in range(50)]
        for i, address in enumerate(honest):
            book.add([address], f"{150 + i}.{i}.7.7")
        kept = [a for a in honest if a in book]
        self.assertGreaterEqual(len(kept), 40)
        clock.advance(3600)

        picks = [book.select() for _ in range(1000)]
        honest_share = sum(p in kept for p in picks) / len(picks)
        self.assertGreaterEqual(honest_share, 0.2)

        connected = kept[:5]
        for address in connected:
            book.attempt(address)
            book.good(address)
        self.assertEqual(book.counts()[1], 5)
        clock.advance(3600)
        picks = [book.select() for _ in range(1000)]
        tried_share = sum(p in connected for p in picks) / len(picks)
        self.assertTrue(0.4 <= tried_share <= 0.6, tried_share)
        self.assertGreaterEqual(sum(p in kept for p in picks) / len(picks), 0.6)


class ExchangeTests(unittest.TestCase):
    def test_bounded_by_share_and_limit(self):
        for size in (1, 4, 5, 10, 44, 100, 1000):
            book, _ = make_book(seed=size, group=own_group)
            for i in range(size):  # each from itself, as seeds are: spread over all new buckets
                book.add([f"10.{i // 256}.{i % 256}.1:9090"], f"10.{i // 256}.{i % 256}.1")
            self.assertGreaterEqual(len(book), size * 0.95)  # a few slot collisions at most
            size = len(book)
            for limit in (0, 1, 7, 50, 10_000):
                sample = book.addresses_for_exchange(limit)
                self.assertLessEqual(len(sample), limit)
                self.assertLessEqual(len(sample), size * addrman.GETADDR_MAX_PERCENT // 100)
                self.assertEqual(len(sample), min(limit, size * 23 // 100))  # none terrible here
                self.assertEqual(len(set(sample)), len(sample))
                self.assertTrue(all(a in book for a in sample))

    def test_skips_terrible(self):
        book, clock = make_book(group=own_group)
        book.add([f"10.0.0.{i}:9090" for i in range(1, 101)], "192.0.2.1")
        clock.advance(31 * DAY)
        self.assertEqual(book.addresses_for_exchange(100), [])
        book.add([f"10.0.0.{i}:9090" for i in range(1, 11)], "192.0.2.1")  # seen again
        sample = book.addresses_for_exchange(100)
        self.assertTrue(0 < len(sample) <= 10)
        self.assertTrue(set(sample) <= {f"10.0.0.{i}:9090" for i in range(1, 11)})


class RateLimiterTests(unittest.TestCase):
    def test_burst_then_refill(self):
        clock = Clock()
        limiter = AddrRateLimiter(clock)
        for _ in range(1000):
            self.assertEqual(limiter.allow("peer-1"), 1)
        self.assertEqual(limiter.allow("peer-1"), 0)
        self.assertEqual(limiter.dropped, 1)
        self.assertEqual(limiter.allow("peer-2", 5), 5)  # other sources are unaffected
        clock.advance(100)
        self.assertEqual(limiter.allow("peer-1", 11), 10)
        self.assertEqual(limiter.dropped, 2)
        self.assertEqual(limiter.allow("peer-1"), 0)

    def test_filter_and_forget(self):
        clock = Clock()
        limiter = AddrRateLimiter(clock, rate=1.0, burst=3)
        addresses = [f"10.0.0.{i}:9090" for i in range(5)]
        self.assertEqual(limiter.filter("c", addresses), addresses[:3])
        self.assertEqual(limiter.filter("c", addresses), [])
        self.assertEqual(limiter.dropped, 7)
        clock.advance(2)
        self.assertEqual(limiter.filter("c", addresses), addresses[:2])
        limiter.forget("c")
        self.assertEqual(limiter.tokens("c"), 3)
        self.assertEqual(limiter.filter("c", addresses), addresses[:3])

    def test_sources_bounded(self):
        clock = Clock()
        limiter = AddrRateLimiter(clock, max_sources=10)
        for i in range(100):
            limiter.allow(i, 1000)
        self.assertLessEqual(len(limiter._buckets), 10)
        self.assertEqual(limiter.allow(99), 0)  # the most recent source is remembered
