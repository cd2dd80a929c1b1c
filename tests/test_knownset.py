"""RollingKnownSet: recent ids always present, bounded false positives, fixed memory,
old ids forgotten. Ids come from seeded generators and each set gets a fixed tweak, so
every count below is the same on every run."""

import random

from twisted.trial import unittest

from archivas.protocols.knownset import (
    GENERATIONS,
    KNOWN_CAPACITY,
    KNOWN_FALSE_POSITIVE_RATE,
    RollingKnownSet,
)

TWEAK = 0x5EED_0F_C0FFEE


def ids(seed, count):
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(count)]


class RecentMembersTest(unittest.TestCase):
    def test_last_capacity_always_present(self):
        """After each of 10 * capacity adds, the last `capacity` ids are all members."""
        capacity = 512  # small, so the window is checked after every add
        known = RollingKnownSet(capacity, tweak=TWEAK)
        items = ids(1, 10 * capacity)
        for n, item in enumerate(items, 1):
            known.add(item)
            window = items[max(0, n - capacity) : n]
            if n % 97 == 0 or n == len(items):  # rotations fall between and on checks alike
                missing = [i for i in window if i not in known]
                self.assertEqual(missing, [], f"after {n} adds")

    def test_last_capacity_present_at_default_size(self):
        known = RollingKnownSet(tweak=TWEAK)
        items = ids(2, 10 * KNOWN_CAPACITY)
        for item in items:
            known.add(item)
        self.assertTrue(all(item in known for item in items[-KNOWN_CAPACITY:]))

    def test_every_rotation_point(self):
        """Just before and just after each rotation, the window is intact (odd capacity)."""
        capacity = 101
        per_generation = (capacity + 1) // 2
        known = RollingKnownSet(capacity, tweak=TWEAK)
        items = ids(3, 8 * capacity)
        for n, item in enumerate(items, 1):
            known.add(item)
            if n % per_generation in (0, 1):
                self.assertTrue(all(i in known for i in items[max(0, n - capacity) : n]), f"after {n} adds")

    def test_len_is_bounded(self):
        capacity = 1000
        known = RollingKnownSet(capacity, tweak=TWEAK)
        self.assertEqual(len(known), 0)
        for n, item in enumerate(ids(4, 5 * capacity), 1):
            known.add(item)
            self.assertLessEqual(len(known), 3 * capacity // 2)
            self.assertGreaterEqual(len(known), min(n, capacity))


class FalsePositiveTest(unittest.TestCase):
    def _rate(self, false_positive_rate, tweak=TWEAK):
        """Observed rate over 100,000 never-added ids, with every generation full."""
        known = RollingKnownSet(KNOWN_CAPACITY, false_positive_rate, tweak=tweak)
        per_generation = (KNOWN_CAPACITY + 1) // 2
        full = GENERATIONS * per_generation
        # Fill to the worst moment, just before a rotation. An add that is already a false
        # positive of the newest generation takes no room, so count insertions, not adds.
        for item in ids(10, 2 * full):
            if len(known) == full:
                break
            known.add(item)
        self.assertEqual(len(known), full)
        probes = ids(11, 100_000)
        return sum(probe in known for probe in probes) / len(probes)

    def test_rate_below_ten_times_configured(self):
        configured = 1e-3
        observed = self._rate(configured)
        print(f"\nfalse positives at rate {configured:g}: observed {observed:g}")
        self.assertLess(observed, 10 * configured)

    def test_rate_is_not_tweak_luck(self):
        for tweak in (1, 2, 3):
            self.assertLess(self._rate(1e-3, tweak), 10 * 1e-3)

    def test_default_rate(self):
        """At 1e-6, 100,000 probes expect 0.1 false positives: allow at most 1."""
        observed = self._rate(KNOWN_FALSE_POSITIVE_RATE)
        self.assertLessEqual(observed * 100_000, 1)


class MemoryTest(unittest.TestCase):
    def test_two_default_sets_under_100_kb(self):
        blocks, transfers = RollingKnownSet(), RollingKnownSet()
        empty = blocks.memory_bytes() + transfers.memory_bytes()
        for known, seed in ((blocks, 20), (transfers, 21)):
            for item in ids(seed, 4 * KNOWN_CAPACITY):
                known.add(item)
        total = blocks.memory_bytes() + transfers.memory_bytes()
        print(f"\nmemory: {blocks.memory_bytes()} bytes per default set, {total} bytes per peer (two sets)")
        self.assertEqual(total, empty)  # fixed at construction: rotation reuses the bit arrays
        self.assertLess(total, 100_000)
        self.assertEqual(blocks.memory_bytes(), 23_841)  # rbloom 1.5.4: 3 x 63,576 bits

    def test_memory_scales_with_capacity_not_use(self):
        small, large = RollingKnownSet(1024), RollingKnownSet(8192)
        self.assertLess(small.memory_bytes(), large.memory_bytes())
        self.assertTrue(abs(large.memory_bytes() / small.memory_bytes() - 8) < 0.05)


class ForgettingTest(unittest.TestCase):
    def test_old_ids_forgotten(self):
        capacity = KNOWN_CAPACITY
        known = RollingKnownSet(capacity, tweak=TWEAK)
        first = ids(30, capacity)
        for item in first:
            known.add(item)
        self.assertTrue(all(item in known for item in first))
        for item in ids(31, 3 * capacity):
            known.add(item)
        remembered = sum(item in known for item in first)
        print(f"\nforgotten: {capacity - remembered} of {capacity} after {3 * capacity} more adds")
        self.assertLessEqual(remembered, capacity * 3 // 100)

    def test_forgotten_after_one_and_a_half_capacity(self):
        """Every generation the first batch was in has been cleared after 1.5 * capacity more."""
        capacity = 1000
        known = RollingKnownSet(capacity, 1e-3, tweak=TWEAK)
        first = ids(32, capacity)
        for item in first:
            known.add(item)
        for item in ids(33, 3 * capacity // 2 + 1):
            known.add(item)
        self.assertLessEqual(sum(item in known for item in first), 10)  # false positives only


class DropInTest(unittest.TestCase):
    """The parts of BoundedSet's behaviour the node relies on."""

    def test_add_and_contains(self):
        known = RollingKnownSet(tweak=TWEAK)
        item = b"\xab" * 32
        self.assertNotIn(item, known)
        known.add(item)
        self.assertIn(item, known)
        self.assertEqual(len(known), 1)

    def test_re_adding_takes_no_room(self):
        known = RollingKnownSet(16, tweak=TWEAK)
        item = ids(40, 1)[0]
        for _ in range(100):
            known.add(item)
        self.assertEqual(len(known), 1)

    def test_re_added_id_is_refreshed(self):
        """An id seen again is kept as if new, like BoundedSet's move_to_end."""
        capacity = 100
        known = RollingKnownSet(capacity, tweak=TWEAK)
        keep = ids(41, 1)[0]
        for n, item in enumerate(ids(42, 20 * capacity), 1):
            known.add(item)
            if n % (capacity // 2) == 0:
                known.add(keep)
        self.assertIn(keep, known)

    def test_non_bytes_are_not_members(self):
        known = RollingKnownSet(tweak=TWEAK)
        known.add(b"\x01" * 32)
        self.assertNotIn("x" * 32, known)
        self.assertNotIn(None, known)
        self.assertNotIn(1, known)

    def test_tweak_changes_the_bits(self):
        """Sets with different tweaks (random by default) err on different ids."""
        a, b = RollingKnownSet(64, 0.1, tweak=1), RollingKnownSet(64, 0.1, tweak=2)
        for item in ids(43, 64):
            a.add(item)
            b.add(item)
        probes = ids(44, 2000)
        self.assertNotEqual([p in a for p in probes], [p in b for p in probes])

    def test_bad_arguments(self):
        self.assertRaises(ValueError, RollingKnownSet, 0)
        self.assertRaises(ValueError, RollingKnownSet, 100, 0.0)
        self.assertRaises(ValueError, RollingKnownSet, 100, 1.0)


class BatchTest(unittest.TestCase):
    """add_all and add_unknown are add and `in` one id at a time, rotations included."""

    def test_add_unknown_matches_one_at_a_time(self):
        capacity = 101  # rotations every 51 adds, inside the batches
        one, batch = RollingKnownSet(capacity, tweak=TWEAK), RollingKnownSet(capacity, tweak=TWEAK)
        pool = ids(20, 300)
        rng = random.Random(21)
        for _ in range(200):
            chunk = [rng.choice(pool) for _ in range(rng.randrange(0, 12))]
            expected = []
            for item in chunk:
                if item not in one:
                    one.add(item)
                    expected.append(item)
            self.assertEqual(batch.add_unknown(chunk), expected)
            self.assertEqual(batch._counts, one._counts)
            self.assertEqual(batch._current, one._current)
        self.assertEqual([i in batch for i in pool], [i in one for i in pool])

    def test_add_all_matches_add(self):
        capacity = 101
        one, batch = RollingKnownSet(capacity, tweak=TWEAK), RollingKnownSet(capacity, tweak=TWEAK)
        pool = ids(22, 300)
        rng = random.Random(23)
        for _ in range(200):
            chunk = [rng.choice(pool) for _ in range(rng.randrange(0, 12))]
            for item in chunk:
                one.add(item)
            batch.add_all(chunk)
            self.assertEqual((batch._counts, batch._current), (one._counts, one._current))
        self.assertEqual([i in batch for i in pool], [i in one for i in pool])
