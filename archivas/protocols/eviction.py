"""Which inbound peer to drop when the inbound slots are full and a newcomer connects.

This follows Bitcoin Core's inbound eviction (``SelectNodeToEvict`` and
``ProtectEvictionCandidatesByRatio`` in src/node/eviction.cpp). It is pure and synchronous:
no sockets, no clock, no reactor. The caller takes a snapshot of its inbound peers as
:class:`Candidate` records, calls :func:`select_to_evict`, and disconnects the peer whose id
comes back. ``None`` means every candidate is protected, so the newcomer should be refused.

The idea: an attacker can open many connections cheaply, but cannot cheaply fake certain
qualities. Each step below sets aside ("protects") a few peers that are best by one such
quality. Only peers left over after every step can be evicted. Steps, in order:

0. ``no_ban`` (whitelisted) peers are never candidates. Outbound peers are never candidates
   either: the caller passes inbound peers only.
1. :data:`PROTECT_BY_NETGROUP` peers from distinct network groups, picked by a keyed hash of
   the group. The key is secret and per process, so an attacker cannot tell which groups are
   safe.
2. :data:`PROTECT_BY_PING` peers with the lowest minimum ping. A low ping needs a peer that is
   physically close.
3. :data:`PROTECT_BY_TX` peers that most recently sent novel transactions. This costs useful
   work.
4. Up to :data:`PROTECT_BLOCK_RELAY_ONLY` block-relay-only peers that most recently sent novel
   blocks.
5. :data:`PROTECT_BY_BLOCK` peers that most recently sent novel blocks. This costs useful work.
6. :data:`UPTIME_PROTECT_RATIO` of the peers still left, by longest connection. This matches
   what would happen with no eviction at all, and stops attacks that begin later. A share
   (:data:`DISADVANTAGED_SHARE`) of those slots goes first to the longest-connected peers of
   the disadvantaged categories in :data:`DISADVANTAGED_CATEGORIES` (``is_local``, onion,
   I2P, CJDNS). Those peers have high pings and would otherwise lose. See
   :func:`protect_by_ratio`.
7. If nothing is left, return ``None``.
8. If any leftover peer has ``prefer_evict`` (discouraged), only those peers are considered.
9. Take the network group with the most leftover peers. On a tie, take the group whose youngest
   member connected most recently. Evict that group's youngest member (latest
   ``connected_at``).

Differences from Bitcoin Core, on purpose:

* Step 1 protects peers from *distinct* groups, choosing the longest-connected member of each
  group. Bitcoin Core protects the four peers with the highest keyed group values, and these
  can all come from one group. So with fewer than four distinct groups, fewer peers are
  protected here.
* Ties that Bitcoin Core's ``std::sort`` leaves unspecified are broken by longer uptime, then
  by lower id. The result therefore never depends on the order of the input.
* ``block_relay_only=True`` counts as "does not relay transactions", whatever ``relay_txs``
  says. Bitcoin Core only knows ``m_relay_txs``.
* Archivas peers today are plain IPv4/IPv6. In that case step 6 comes down to this: ``is_local``
  peers get up to a quarter of the candidates (half of the protected half), and the rest of
  the half goes by uptime alone.

Step 4, like Bitcoin Core's code, protects block-relay-only peers (with relevant services)
even if they have not relayed a block yet. Steps 1 to 5 protect at most 28 peers. If the
candidates come from at least four distinct groups, a set of 20 or fewer is fully protected
and :func:`select_to_evict` returns ``None``. With fewer groups, step 1 protects fewer peers.

:func:`address_group` computes the ``group`` bytes the way Bitcoin Core groups addresses
(IPv4 /16, IPv6 /32). A caller may use any other grouping.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import math
import os
from fractions import Fraction
from typing import Callable, Iterable, Optional, Sequence

# Step 1: peers kept from distinct network groups chosen by a secret keyed hash. An attacker
# cannot predict these groups, so cannot target them.
PROTECT_BY_NETGROUP = 4
# Step 2: peers with the lowest minimum ping. Hard to fake without being physically close.
PROTECT_BY_PING = 8
# Step 3: peers that most recently sent novel transactions (accepted into the mempool).
PROTECT_BY_TX = 4
# Step 4: most block-relay-only peers protected, ranked by the last novel block they sent.
PROTECT_BLOCK_RELAY_ONLY = 8
# Step 5: peers that most recently sent novel blocks.
PROTECT_BY_BLOCK = 4
# Step 6: share of the leftover candidates protected for longest uptime (rounded down).
UPTIME_PROTECT_RATIO = Fraction(1, 2)
# Step 6: share of the uptime-protected slots (rounded down) kept first for disadvantaged
# categories: 1/2 of 1/2, so at most a quarter of the leftover candidates.
DISADVANTAGED_SHARE = Fraction(1, 2)
# Step 6: the disadvantaged categories, in Bitcoin Core's order. When two categories have
# equal candidate counts, the earlier one gets first pick of slots the others leave unused.
# LOCAL_CATEGORY matches ``Candidate.is_local``. The others match ``Candidate.network``.
LOCAL_CATEGORY = "localhost"
DISADVANTAGED_CATEGORIES: tuple[str, ...] = ("cjdns", "i2p", LOCAL_CATEGORY, "onion")

# address_group defaults: Bitcoin Core groups IPv4 by /16 and IPv6 by /32.
IPV4_GROUP_PREFIX = 16
IPV6_GROUP_PREFIX = 32
# Group of every loopback address (127.0.0.0/8, ::1).
LOCAL_GROUP = b"local"
# Group of every private or otherwise non-routable address (see _PRIVATE_NETWORKS).
PRIVATE_GROUP = b"private"

KeyedGroup = Callable[[bytes], int]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One inbound peer as eviction sees it. Mirrors Bitcoin Core's ``NodeEvictionCandidate``.

    All times are in seconds and share one clock (the caller chooses which). The defaults for
    ``min_ping``, ``last_block_time`` and ``last_tx_time`` mean "nothing known yet". Like in
    Bitcoin Core, those values make a new peer the easiest one to evict.
    """

    id: int
    group: bytes  # network group, e.g. address_group(host); compared only through keyed_group
    connected_at: float  # when the connection was made; smaller means connected longer
    min_ping: float = math.inf  # lowest ping seen; inf when unknown
    last_block_time: float = 0.0  # when it last sent a novel block; 0 = never
    last_tx_time: float = 0.0  # when it last sent a novel transaction; 0 = never
    relevant_services: bool = True  # offers the services we need from a peer (full blocks)
    relay_txs: bool = True  # asked us to relay transactions to it
    bloom_filter: bool = False  # loaded a bloom filter (a light client)
    prefer_evict: bool = False  # discouraged peer: evicted first among the unprotected
    no_ban: bool = False  # whitelisted: never evicted
    is_local: bool = False  # connected from this host (loopback)
    network: str = "ipv4"  # "ipv4", "ipv6", "onion", "i2p" or "cjdns"
    block_relay_only: bool = False  # relays blocks only, no transactions (implies relay_txs off)

    @property
    def relays_txs(self) -> bool:
        """Whether the peer takes part in transaction relay."""
        return self.relay_txs and not self.block_relay_only


_PROCESS_KEY = os.urandom(32)


def default_keyed_group(group: bytes) -> int:
    """The first 64 bits of SHA-256(per-process random key + group), as a number.

    The key is secret and changes with every process, so nobody outside can work out which
    groups step 1 protects.
    """
    return int.from_bytes(hashlib.sha256(_PROCESS_KEY + group).digest()[:8], "big")


# Sort keys. A smaller key means more deserving of protection. Each step protects from the
# front of its order. Ties go to longer uptime, then to the lower id.


def _uptime_key(c: Candidate) -> tuple[float, int]:
    return (c.connected_at, c.id)


def _ping_key(c: Candidate) -> tuple[float, float, int]:
    ping = c.min_ping if not math.isnan(c.min_ping) else math.inf
    return (ping, c.connected_at, c.id)


def _tx_key(c: Candidate) -> tuple[float, bool, bool, float, int]:
    return (-c.last_tx_time, not c.relays_txs, c.bloom_filter, c.connected_at, c.id)


def _block_relay_only_key(c: Candidate) -> tuple[bool, float, bool, float, int]:
    return (c.relays_txs, -c.last_block_time, not c.relevant_services, c.connected_at, c.id)


def _block_key(c: Candidate) -> tuple[float, bool, float, int]:
    return (-c.last_block_time, not c.relevant_services, c.connected_at, c.id)


def _is_block_relay_only(c: Candidate) -> bool:
    return not c.relays_txs and c.relevant_services


def _protect(
    pool: list[Candidate],
    key: Callable[[Candidate], tuple],
    count: int,
    eligible: Optional[Callable[[Candidate], bool]] = None,
) -> list[Candidate]:
    """Rank ``pool`` by ``key`` and protect the first ``count`` peers that pass ``eligible``.

    Ineligible peers inside the first ``count`` still use up a slot, as in Bitcoin Core. That
    is why step 4 protects "up to" its count. Returns what is left, unprotected.
    """
    ranked = sorted(pool, key=key)
    head = ranked[:count]
    kept = [c for c in head if eligible is not None and not eligible(c)]
    return kept + ranked[count:]


def _protect_by_netgroup(pool: list[Candidate], keys: dict[bytes, int], count: int) -> list[Candidate]:
    # The longest-connected member of each group speaks for it. Then the groups with the
    # highest keyed values win.
    representative: dict[bytes, Candidate] = {}
    for c in sorted(pool, key=_uptime_key):
        representative.setdefault(c.group, c)
    winners = sorted(representative.values(), key=lambda c: (-keys[c.group], _uptime_key(c)))[:count]
    protected = {c.id for c in winners}
    return [c for c in pool if c.id not in protected]


def _in_category(c: Candidate, category: str) -> bool:
    return c.is_local if category == LOCAL_CATEGORY else c.network == category


def protect_by_ratio(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Step 6: protect :data:`UPTIME_PROTECT_RATIO` of ``candidates`` and return the rest.

    The protected count is rounded down. At most :data:`DISADVANTAGED_SHARE` of it (also
    rounded down) goes first to the longest-connected peers of the
    :data:`DISADVANTAGED_CATEGORIES`. The slots are shared evenly across the categories that
    have peers, with at least one slot each per round. Categories with fewer peers come first
    and pick up the slots others cannot fill. The remaining slots go to the longest-connected
    peers overall. The result is sorted youngest first.
    """
    remaining = list(candidates)
    total_protect = math.floor(len(remaining) * UPTIME_PROTECT_RATIO)
    max_by_category = math.floor(total_protect * DISADVANTAGED_SHARE)

    # Candidates left per category. Categories are visited fewest first. The sort is stable,
    # so ties keep the order of DISADVANTAGED_CATEGORIES.
    left = {name: sum(1 for c in remaining if _in_category(c, name)) for name in DISADVANTAGED_CATEGORIES}
    order = sorted(DISADVANTAGED_CATEGORIES, key=lambda name: left[name])

    num_protected = 0
    while num_protected < max_by_category:
        active = sum(1 for name in order if left[name])
        if not active:
            break
        per_category = max((max_by_category - num_protected) // active, 1)
        progressed = False
        for name in order:
            if not left[name]:
                continue
            members = sorted((c for c in remaining if _in_category(c, name)), key=_uptime_key)[:per_category]
            if not members:
                continue
            progressed = True
            chosen = {c.id for c in members}
            remaining = [c for c in remaining if c.id not in chosen]
            num_protected += len(members)
            if num_protected >= max_by_category:
                break
            left[name] -= len(members)
        if not progressed:
            break

    remaining.sort(key=_uptime_key)
    remaining = remaining[total_protect - num_protected :]
    remaining.sort(key=lambda c: (-c.connected_at, -c.id))
    return remaining


def select_to_evict(candidates: Sequence[Candidate], keyed_group: Optional[KeyedGroup] = None) -> Optional[int]:
    """The id of the inbound peer to evict, or ``None`` when every candidate is protected.

    ``candidates`` are the inbound peers only, each with a distinct ``id``. ``keyed_group``
    maps a group to the number that ranks it in step 1. By default this is
    :func:`default_keyed_group`. Tests pass a fixed one to get the same result every run.
    """
    ids = [c.id for c in candidates]
    if len(set(ids)) != len(ids):
        raise ValueError("eviction candidates must have distinct ids")
    keyed = keyed_group if keyed_group is not None else default_keyed_group

    pool = [c for c in candidates if not c.no_ban]
    keys = {c.group: keyed(c.group) for c in pool}
    pool = _protect_by_netgroup(pool, keys, PROTECT_BY_NETGROUP)
    pool = _protect(pool, _ping_key, PROTECT_BY_PING)
    pool = _protect(pool, _tx_key, PROTECT_BY_TX)
    pool = _protect(pool, _block_relay_only_key, PROTECT_BLOCK_RELAY_ONLY, _is_block_relay_only)
    pool = _protect(pool, _block_key, PROTECT_BY_BLOCK)
    pool = protect_by_ratio(pool)  # youngest first from here on
    if not pool:
        return None

    # Protection came first: a discouraged peer that is the best by some measure stays.
    if any(c.prefer_evict for c in pool):
        pool = [c for c in pool if c.prefer_evict]

    # pool is youngest first, so each group's first member is its youngest. A group beats the
    # current best if it is larger, or equal in size with a younger youngest member.
    members: dict[bytes, list[Candidate]] = {}
    best: Optional[bytes] = None
    best_size = 0
    best_youngest = -math.inf
    for c in pool:
        group = members.setdefault(c.group, [])
        group.append(c)
        youngest = group[0].connected_at
        if len(group) > best_size or (len(group) == best_size and youngest > best_youngest):
            best, best_size, best_youngest = c.group, len(group), youngest
    assert best is not None
    return members[best][0].id


# Non-routable ranges (RFC 1918, RFC 6598 shared space, link-local, unique local, "this
# network"). Like loopback, they are not spread out on the internet, so they share one group.
# Documentation ranges (192.0.2.0/24, 2001:db8::/32, ...) are left out on purpose. They are
# grouped like public addresses, so examples and tests behave like real addresses.
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "::/128",
        "fc00::/7",
        "fe80::/10",
    )
)
# Well-known NAT64 prefix (RFC 6052): the last 32 bits are an IPv4 address.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> Optional[ipaddress.IPv4Address]:
    """The IPv4 address that an IPv4-mapped, NAT64, 6to4 or Teredo IPv6 address stands for."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    return None


def _prefix_bytes(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, bits: int) -> bytes:
    masked = int(addr) >> (addr.max_prefixlen - bits) << (addr.max_prefixlen - bits) if bits else 0
    return masked.to_bytes(addr.max_prefixlen // 8, "big")[: (bits + 7) // 8]


# A pure function of its arguments, asked for every address a peer gossips (the book files
# each by its group): the answers for recent hosts are kept (ValueErrors are not).
@functools.lru_cache(maxsize=16384)
def address_group(host: str, ipv4_prefix: int = IPV4_GROUP_PREFIX, ipv6_prefix: int = IPV6_GROUP_PREFIX) -> bytes:
    """The network group of ``host``, for :attr:`Candidate.group`.

    * IPv4 addresses group by their first ``ipv4_prefix`` bits. IPv6 addresses that carry an
      IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo) group as that IPv4 address.
    * Other IPv6 addresses group by their first ``ipv6_prefix`` bits.
    * Every loopback address is in :data:`LOCAL_GROUP`. Every private or non-routable address
      is in :data:`PRIVATE_GROUP`.
    * Anything that is not an IP address (a host name) is its own group: the lowercased name.

    Brackets (``[::1]``) and IPv6 zone ids (``%eth0``) are ignored.
    """
    if not 0 <= ipv4_prefix <= 32:
        raise ValueError(f"ipv4_prefix must be within 0..32, not {ipv4_prefix}")
    if not 0 <= ipv6_prefix <= 128:
        raise ValueError(f"ipv6_prefix must be within 0..128, not {ipv6_prefix}")
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return host.strip().lower().encode("utf-8")
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(addr)
        if embedded is not None:
            addr = embedded
    if addr.is_loopback:
        return LOCAL_GROUP
    if any(addr in net for net in _PRIVATE_NETWORKS if net.version == addr.version):
        return PRIVATE_GROUP
    if isinstance(addr, ipaddress.IPv4Address):
        return b"ipv4:" + _prefix_bytes(addr, ipv4_prefix)
    return b"ipv6:" + _prefix_bytes(addr, ipv6_prefix)
