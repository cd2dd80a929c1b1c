"""Inbound eviction (archivas.protocols.eviction): which peers are protected, which one is
evicted, and address grouping. Each test uses a fixed keyed group hash, so results are the same
on every run."""

import dataclasses
import hashlib
import math

from twisted.trial import unittest

from archivas.protocols import eviction
from archivas.protocols.eviction import Candidate, address_group, protect_by_ratio, select_to_evict


def KG(group):
    return int.from_bytes(hashlib.sha256(b"k" + group).digest()[:8], "big")


def ranked_groups(count, prefix=b"g", out_of=None):
    """The ``count`` names with the highest keyed values under KG among ``out_of`` (default
    ``count``) names ``prefix + number``, highest first."""
    names = (prefix + b"%d" % i for i in range(out_of or count))
    return sorted(names, key=KG, reverse=True)[:count]


def top_groups():
    """20 groups for anchors(): the best 20 of 5000, so that the first four outrank, under KG,
    every other group these tests use (checked by assert_anchors_lead)."""
    return ranked_groups(20, b"anchor-", out_of=5_000)


def assert_anchors_lead(case, pool):
    keys = sorted({KG(c.group) for c in pool}, reverse=True)
    case.assertEqual(keys[:4], [KG(g) for g in top_groups()[:4]])


def drain(pool):
    """Evict over and over until everyone left is protected. Returns (evicted ids, survivors)."""
    pool = list(pool)
    evicted = []
    while True:
        victim = select_to_evict(pool, KG)
        if victim is None:
            return evicted, pool
        evicted.append(victim)
        pool = [c for c in pool if c.id != victim]


def anchors(groups, start_id=0):
    """20 peers that steps 1 to 5 protect, given 20 groups of which the first four rank highest
    among all candidates: 4 by netgroup, 8 by ping, 4 by transactions, 4 by blocks."""
    out = []
    for i, group in enumerate(groups[:20]):
        out.append(
            Candidate(
                id=start_id + i,
                group=group,
                connected_at=5_000.0 + i,
                min_ping=0.01 * (i - 3) if 4 <= i < 12 else math.inf,
                last_tx_time=9_000.0 + i if 12 <= i < 16 else 0.0,
                last_block_time=9_000.0 + i if 16 <= i < 20 else 0.0,
            )
        )
    return out


def honest_and_flood(flood_group):
    honest = []
    for i in range(20):
        honest.append(
            Candidate(
                id=i,
                group=b"honest-%d" % i,
                connected_at=100.0 + i,
                min_ping=0.02 + 0.01 * (i - 4) if 4 <= i < 12 else 0.5,
                last_block_time=5_000.0 + i if i < 4 else 0.0,
                last_tx_time=6_000.0 + i if 12 <= i < 16 else 0.0,
            )
        )
    flood = [
        Candidate(id=1_000 + j, group=flood_group, connected_at=10_000.0 + j, min_ping=math.inf if j % 2 else 2.0)
        for j in range(500)
    ]
    return honest, flood


class ProtectionTests(unittest.TestCase):
    def test_block_relayers_fast_and_old_peers_are_not_evicted(self):
        crowded = b"crowded"
        others = ranked_groups(20)
        pool = []
        # ids 0-3 relayed blocks recently. ids 4-11 have the lowest pings. ids 12-16 are the
        # oldest connections. All of them sit in the largest group, which is the one that
        # would lose a member without protection.
        for i in range(4):
            pool.append(Candidate(id=i, group=crowded, connected_at=900.0 + i, last_block_time=800.0 + i))
        for i in range(4, 12):
            pool.append(Candidate(id=i, group=crowded, connected_at=900.0 + i, min_ping=0.001 * i))
        for i in range(12, 17):
            pool.append(Candidate(id=i, group=crowded, connected_at=float(i)))
        # ids 17-20 sent transactions. ids 21-29 are ordinary peers in groups of their own.
        for i in range(17, 30):
            pool.append(
                Candidate(
                    id=i,
                    group=others[i - 17],
                    connected_at=500.0 + i,
                    min_ping=1.0,
                    last_tx_time=700.0 + i if i <= 20 else 0.0,
                )
            )
        self.assertEqual(len(pool), 30)
        blocks, pings, oldest = set(range(4)), set(range(4, 12)), set(range(12, 17))

        victim = select_to_evict(pool, KG)
        self.assertIsNotNone(victim)
        self.assertNotIn(victim, blocks | pings | oldest)

        evicted, survivors = drain(pool)
        self.assertTrue(evicted)
        self.assertFalse(set(evicted) & (blocks | pings))
        self.assertTrue(blocks | pings <= {c.id for c in survivors})

    def test_flood_from_one_group_evicts_only_the_flood(self):
        honest_groups = {b"honest-%d" % i for i in range(20)}
        fourth = sorted(map(KG, honest_groups), reverse=True)[3]
        # A flood group that step 1 does not protect (the top four are honest) ...
        flood_group = next(g for g in ranked_groups(64, b"flood-") if KG(g) < fourth)
        honest, flood = honest_and_flood(flood_group)
        evicted, survivors = drain(honest + flood)
        self.assertEqual(sorted(evicted), [c.id for c in flood])
        self.assertEqual(evicted[:3], [1_499, 1_498, 1_497])  # youngest first
        self.assertEqual({c.id for c in survivors}, {c.id for c in honest})

    def test_flood_from_a_protected_group_still_spares_the_useful_peers(self):
        honest_groups = {b"honest-%d" % i for i in range(20)}
        # ... and one that outranks every honest group, so step 1 always keeps one flood peer.
        flood_group = next(g for g in ranked_groups(64, b"flood-") if KG(g) > max(map(KG, honest_groups)))
        honest, flood = honest_and_flood(flood_group)
        evicted, survivors = drain(honest + flood)
        honest_evicted = [v for v in evicted if v < 1_000]
        # Only when a single flood peer is left (protected in step 1) does an honest peer go.
        self.assertEqual(evicted[: len(flood) - 1], [c.id for c in reversed(flood)][: len(flood) - 1])
        self.assertEqual(len(honest_evicted), 1)
        self.assertIn(honest_evicted[0], range(16, 20))  # block relayers, fastest pings and tx senders stay
        self.assertIn(flood[0].id, {c.id for c in survivors})  # the oldest flood peer was the protected one

    def test_block_relay_only_peers_are_protected(self):
        pool = anchors(top_groups())
        crowded = [Candidate(id=100 + j, group=b"crowd", connected_at=20_000.0 + j) for j in range(10)]
        # The two youngest crowd members are block-relay-only: one flagged, one that never asked for txs.
        crowded[-1] = dataclasses.replace(crowded[-1], block_relay_only=True)
        crowded[-2] = dataclasses.replace(crowded[-2], relay_txs=False)
        assert_anchors_lead(self, pool + crowded)
        victim = select_to_evict(pool + crowded, KG)
        self.assertEqual(victim, crowded[-3].id)
        # Without relevant services they get no such protection.
        crowded[-1] = dataclasses.replace(crowded[-1], relevant_services=False)
        self.assertEqual(select_to_evict(pool + crowded, KG), crowded[-1].id)

    def test_at_most_eight_block_relay_only_peers_are_protected(self):
        pool = anchors(top_groups())
        crowded = [
            Candidate(id=100 + j, group=b"crowd", connected_at=20_000.0 + j, block_relay_only=True) for j in range(12)
        ]
        assert_anchors_lead(self, pool + crowded)
        evicted, survivors = drain(pool + crowded)
        # With 20 anchors, step 4 keeps 8 of them. Once all 8 are kept, steps 1 to 5 cover everyone.
        self.assertEqual(len([c for c in survivors if c.block_relay_only]), 8)
        self.assertFalse(set(evicted) & {c.id for c in pool})


class SelectionTests(unittest.TestCase):
    def test_prefer_evict_peers_go_first(self):
        pool = anchors(top_groups())
        crowd = [Candidate(id=100 + j, group=b"crowd", connected_at=20_000.0 + j) for j in range(6)]
        loner = Candidate(id=200, group=b"loner", connected_at=25_000.0, prefer_evict=True)
        assert_anchors_lead(self, pool + crowd + [loner])
        self.assertEqual(select_to_evict(pool + crowd + [loner], KG), 200)
        # When no peer is discouraged, the crowd's youngest goes.
        loner = dataclasses.replace(loner, prefer_evict=False)
        self.assertEqual(select_to_evict(pool + crowd + [loner], KG), 105)

    def test_protection_comes_before_prefer_evict(self):
        pool = anchors(top_groups())
        pool[-1] = dataclasses.replace(pool[-1], prefer_evict=True)  # the freshest block relayer
        crowd = [Candidate(id=100 + j, group=b"crowd", connected_at=20_000.0 + j) for j in range(6)]
        assert_anchors_lead(self, pool + crowd)
        self.assertEqual(select_to_evict(pool + crowd, KG), 105)

    def test_no_ban_peers_are_never_evicted(self):
        pool = anchors(top_groups())
        crowd = [Candidate(id=100 + j, group=b"crowd", connected_at=20_000.0 + j) for j in range(6)]
        crowd[-1] = dataclasses.replace(crowd[-1], no_ban=True, prefer_evict=True)
        assert_anchors_lead(self, pool + crowd)
        self.assertEqual(select_to_evict(pool + crowd, KG), 104)
        evicted, survivors = drain(pool + crowd)
        self.assertNotIn(105, evicted)
        self.assertIsNone(select_to_evict([dataclasses.replace(c, no_ban=True) for c in pool + crowd], KG))

    def test_empty_or_fully_protected_gives_none(self):
        self.assertIsNone(select_to_evict([], KG))
        self.assertIsNone(select_to_evict([], None))
        pool = anchors(top_groups())
        self.assertIsNone(select_to_evict(pool, KG))
        # Any 20 peers from at least four groups are all protected, whatever their stats.
        plain = [Candidate(id=i, group=b"g%d" % (i % 4), connected_at=float(i)) for i in range(20)]
        self.assertIsNone(select_to_evict(plain, KG))
        # The 21st can be evicted: the youngest peer in the largest group goes.
        plain.append(Candidate(id=20, group=b"g0", connected_at=20.0))
        self.assertEqual(select_to_evict(plain, KG), 20)

    def test_largest_group_loses_its_youngest(self):
        pool = anchors(top_groups())
        extra = [b"old-%d" % i for i in range(6)]
        # Six old peers take the uptime half. A, B and C are what is left.
        pool += [Candidate(id=300 + i, group=extra[i], connected_at=float(i), min_ping=1.0) for i in range(6)]
        a = [Candidate(id=400 + i, group=b"A", connected_at=500.0 + 10 * i, min_ping=1.0) for i in range(3)]
        b = [Candidate(id=500, group=b"B", connected_at=530.0, min_ping=1.0)]
        b.append(Candidate(id=501, group=b"B", connected_at=600.0, min_ping=1.0))
        c = [Candidate(id=600, group=b"C", connected_at=700.0, min_ping=1.0)]
        assert_anchors_lead(self, pool + a + b + c)
        self.assertEqual(select_to_evict(pool + a + b + c, KG), 402)  # not B's or C's younger peer
        # With A and B the same size (11 left, 5 old ones protected), the group whose youngest
        # member is younger loses: B.
        self.assertEqual(select_to_evict(pool + a[:2] + b + c, KG), 501)

    def test_input_order_does_not_matter(self):
        honest, flood = honest_and_flood(b"flood")
        pool = honest + flood[:40]
        expected = select_to_evict(pool, KG)
        self.assertEqual(select_to_evict(list(reversed(pool)), KG), expected)
        self.assertEqual(select_to_evict(pool[1::2] + pool[::2], KG), expected)

    def test_default_keyed_group(self):
        honest, flood = honest_and_flood(b"flood")
        victim = select_to_evict(honest + flood)
        self.assertIn(victim, {c.id for c in flood})
        self.assertEqual(eviction.default_keyed_group(b"x"), eviction.default_keyed_group(b"x"))
        self.assertNotEqual(eviction.default_keyed_group(b"x"), eviction.default_keyed_group(b"y"))

    def test_duplicate_ids_are_rejected(self):
        c = Candidate(id=1, group=b"g", connected_at=0.0)
        self.assertRaises(ValueError, select_to_evict, [c, c], KG)


class RatioTests(unittest.TestCase):
    def test_half_by_uptime(self):
        pool = [Candidate(id=i, group=b"g", connected_at=float(i)) for i in range(9)]
        left = protect_by_ratio(pool)
        self.assertEqual([c.id for c in left], [8, 7, 6, 5, 4])  # the 4 oldest are protected

    def test_local_peers_get_a_share(self):
        pool = [Candidate(id=i, group=b"g", connected_at=float(i)) for i in range(10)]
        pool += [Candidate(id=10 + i, group=b"l", connected_at=100.0 + i, is_local=True) for i in range(6)]
        left = protect_by_ratio(pool)
        # 16 candidates: 8 protected, of which at most 4 are local (the 4 oldest local ones).
        self.assertEqual(sorted(c.id for c in left), [4, 5, 6, 7, 8, 9, 14, 15])

    def test_unused_local_share_goes_to_uptime(self):
        pool = [Candidate(id=i, group=b"g", connected_at=float(i)) for i in range(10)]
        pool.append(Candidate(id=10, group=b"l", connected_at=100.0, is_local=True))
        left = protect_by_ratio(pool)
        # 11 candidates: 5 protected. The single local peer takes one, and uptime takes the other 4.
        self.assertEqual(sorted(c.id for c in left), [4, 5, 6, 7, 8, 9])

    def test_disadvantaged_networks_share_the_slots(self):
        pool = [Candidate(id=i, group=b"g", connected_at=float(i)) for i in range(16)]
        pool += [Candidate(id=100 + i, group=b"o", connected_at=200.0 + i, network="onion") for i in range(4)]
        pool += [Candidate(id=200 + i, group=b"i", connected_at=300.0 + i, network="i2p") for i in range(4)]
        left = {c.id for c in protect_by_ratio(pool)}
        # 24 candidates: 12 protected. Of those, 6 go to onion and i2p, 3 each, oldest first.
        self.assertFalse({100, 101, 102, 200, 201, 202} & left)
        self.assertTrue({103, 203} <= left)
        self.assertFalse(set(range(6)) & left)
        self.assertEqual(len(left), 12)

    def test_small_sets(self):
        self.assertEqual(protect_by_ratio([]), [])
        one = [Candidate(id=1, group=b"g", connected_at=0.0, is_local=True)]
        self.assertEqual(protect_by_ratio(one), one)


class AddressGroupTests(unittest.TestCase):
    def test_ipv4_by_16(self):
        self.assertEqual(address_group("1.2.3.4"), address_group("1.2.99.99"))
        self.assertNotEqual(address_group("1.2.3.4"), address_group("1.3.0.1"))
        self.assertNotEqual(address_group("1.2.3.4", ipv4_prefix=24), address_group("1.2.99.99", ipv4_prefix=24))
        self.assertEqual(address_group("1.2.3.4", ipv4_prefix=12), address_group("1.15.0.1", ipv4_prefix=12))
        self.assertNotEqual(address_group("1.2.3.4", ipv4_prefix=12), address_group("1.16.0.1", ipv4_prefix=12))

    def test_ipv4_inside_ipv6(self):
        self.assertEqual(address_group("::ffff:1.2.3.4"), address_group("1.2.3.4"))
        self.assertEqual(address_group("[::ffff:1.2.3.4]"), address_group("1.2.3.4"))
        self.assertEqual(address_group("2002:102:304::1"), address_group("1.2.3.4"))  # 6to4
        self.assertEqual(address_group("64:ff9b::102:304"), address_group("1.2.3.4"))  # NAT64

    def test_ipv6_by_32(self):
        self.assertEqual(address_group("2001:db8:1::1"), address_group("2001:db8:2::1"))
        self.assertNotEqual(address_group("2001:db8:1::1"), address_group("2001:db9:1::1"))
        self.assertNotEqual(address_group("2001:db8::1"), address_group("1.2.3.4"))
        self.assertNotEqual(address_group("2a00:1::1", ipv6_prefix=48), address_group("2a00:1:2::1", ipv6_prefix=48))

    def test_local_and_private(self):
        self.assertEqual(address_group("127.0.0.1"), address_group("127.0.0.2"))
        self.assertEqual(address_group("127.0.0.1"), eviction.LOCAL_GROUP)
        self.assertEqual(address_group("::1"), eviction.LOCAL_GROUP)
        self.assertEqual(address_group("::ffff:127.0.0.1"), eviction.LOCAL_GROUP)
        self.assertEqual(address_group("10.0.0.1"), address_group("192.168.1.1"))
        self.assertEqual(address_group("fe80::1%eth0"), eviction.PRIVATE_GROUP)
        self.assertNotEqual(address_group("10.0.0.1"), eviction.LOCAL_GROUP)

    def test_host_names(self):
        self.assertEqual(address_group("Seed.Example.COM"), b"seed.example.com")
        self.assertEqual(address_group("seed.example.com"), address_group("SEED.example.com"))
        self.assertNotEqual(address_group("a.example.com"), address_group("b.example.com"))

    def test_bad_prefixes(self):
        self.assertRaises(ValueError, address_group, "1.2.3.4", ipv4_prefix=33)
        self.assertRaises(ValueError, address_group, "::2", ipv6_prefix=-1)


class ConstantsTests(unittest.TestCase):
    def test_bitcoin_core_numbers(self):
        self.assertEqual(
            (
                eviction.PROTECT_BY_NETGROUP,
                eviction.PROTECT_BY_PING,
                eviction.PROTECT_BY_TX,
                eviction.PROTECT_BLOCK_RELAY_ONLY,
                eviction.PROTECT_BY_BLOCK,
            ),
            (4, 8, 4, 8, 4),
        )
        self.assertEqual(eviction.UPTIME_PROTECT_RATIO, 0.5)
