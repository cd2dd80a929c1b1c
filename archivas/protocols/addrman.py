"""The peer address book: which "host:port" addresses we have heard of or connected to,
kept so that one source cannot fill it, and saved across restarts.

The design follows Bitcoin Core's addrman (src/addrman.cpp) and Chia's address_manager.py,
simplified; it is plain synchronous code with an injected clock and random source, and does
no I/O (the caller writes `to_json()` to disk and hands `from_json()` what it read).

- Two tables of fixed-size buckets: "new" (heard of, never connected; 1024 buckets) and
  "tried" (connected and found on our chain; 256 buckets), 64 slots per bucket. Each address
  has exactly one possible slot in each table.
- Slots are chosen with SHA-256 keyed by a secret 32-byte key, random per book and saved with
  it. A new bucket depends on (key, address group, source group) but only 64 values of it
  are reachable from one source group, so whoever announces from one group (a /16 by
  default) can fill at most 64 of the 1024 new buckets. A tried bucket depends on (key,
  address, address group), so one group reaches at most 8 tried buckets.
- Collisions: an incoming address takes an occupied slot only if the occupant is
  "terrible" (not seen for 30 days, or failing repeatedly); otherwise the incoming address
  is dropped. An address promoted to tried whose tried slot is taken pushes the occupant
  back to its slot in new (the occupant is deleted instead if it is terrible); the entry
  pushed back overwrites whatever was in that new slot, as Bitcoin Core does, since a peer
  we once connected to is worth more than one we only heard of.
- `select()` picks tried or new with even odds, then a random non-empty bucket and an entry
  in it, accepting it with a chance that falls with failed attempts and a very recent try.
  Picking buckets first (not entries) is what bounds a flooding source's share.
- `AddrRateLimiter`: a token bucket per source connection (0.1 addresses/s, burst 1,000),
  as Bitcoin Core applies to received ADDR messages; compose it with `AddressBook.add`.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import ipaddress
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Collection, Hashable, Iterable, Optional, Sequence

from archivas.protocols import entropy

# --- table geometry (Bitcoin Core's values) ---
NEW_BUCKET_COUNT = 1024  # buckets in the "new" table
TRIED_BUCKET_COUNT = 256  # buckets in the "tried" table
BUCKET_SIZE = 64  # slots per bucket, in both tables
NEW_BUCKETS_PER_SOURCE_GROUP = 64  # new buckets reachable from one source group
TRIED_BUCKETS_PER_GROUP = 8  # tried buckets reachable by one address group
KEY_BYTES = 32  # length of the secret bucketing key

# --- when an entry is "terrible" (may be overwritten, is not shared) ---
HORIZON_SECONDS = 30 * 86400.0  # not seen for this long
MAX_RETRIES = 3  # this many counted failures and never a success
MIN_FAIL_SECONDS = 7 * 86400.0  # no success for this long ...
MAX_FAILURES = 10  # ... and this many counted failures
RECENT_TRY_GRACE_SECONDS = 60.0  # an entry tried this recently is never terrible
FUTURE_TOLERANCE_SECONDS = 600.0  # a last-seen time this far in the future is bogus

# --- select() ---
SELECT_TRIED_SHARE = 0.5  # chance of drawing from tried when both tables have candidates
RECENT_TRY_SECONDS = 600.0  # an entry tried this recently ...
RECENT_TRY_CHANCE = 0.01  # ... has its chance multiplied by this
ATTEMPT_CHANCE = 0.66  # each counted failure multiplies the chance by this ...
MAX_ATTEMPT_PENALTIES = 8  # ... at most this many times
SELECT_CHANCE_GROWTH = 1.2  # each rejected draw makes the next acceptance this much likelier
SELECT_MAX_DRAWS = 10_000  # draws before falling back to a uniform pick (bounds the loop)

# --- addresses_for_exchange() ---
GETADDR_MAX_PERCENT = 23  # share of the book one answer may reveal, as Bitcoin Core's GetAddr

# --- address syntax ---
MIN_PORT = 1  # port 0 cannot be dialled
MAX_PORT = 65535  # largest TCP port
MAX_PORT_DIGITS = 5  # longer port text is out of range without converting it
MAX_HOSTNAME_LENGTH = 253  # DNS limit for a whole name
MAX_LABEL_LENGTH = 63  # DNS limit for one label
MAX_ADDRESS_LENGTH = MAX_HOSTNAME_LENGTH + 1 + MAX_PORT_DIGITS  # longest "host:port" accepted
HOSTNAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")  # per label, lowercased

# --- received-address rate limit (Bitcoin Core's MAX_ADDR_RATE_PER_SECOND and bucket size) ---
ADDR_RATE_PER_SECOND = 0.1  # tokens refilled per second per source
ADDR_RATE_BURST = 1000.0  # bucket capacity; a new source starts full
RATE_LIMITER_MAX_SOURCES = 4096  # sources remembered before the least recently used is dropped
TOKEN_EPSILON = 1e-9  # float slack, so that 100 s at 0.1/s is 10 whole tokens

# --- persistence ---
DOC_VERSION = 1  # the to_json() format
_DOC_FIELDS = frozenset({"version", "key", "last_good", "entries"})
_ENTRY_FIELDS = frozenset(
    {
        "address",
        "source",
        "first_seen",
        "last_seen",
        "last_try",
        "last_success",
        "attempts",
        "last_counted_failure",
        "tried",
    }
)

Group = Callable[[str], bytes]


# ---------------------------------------------------------------- address syntax


def _parse_host(text: str, bracketed: bool) -> str:
    """The canonical form of a host: compressed IPv6 (no brackets), dotted IPv4, or a
    lowercased host name. `bracketed` says the text came from inside [...]."""
    if bracketed:
        if "%" in text:
            raise ValueError(f"IPv6 address {text!r} has a zone index, which is not accepted")
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            raise ValueError(f"{text!r} in brackets is not an IPv6 address") from None
    if ":" in text:
        raise ValueError(f"IPv6 address {text!r} must be in brackets, as [::1]:9090")
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    name = text.lower()
    if not name:
        raise ValueError("empty host")
    if len(name) > MAX_HOSTNAME_LENGTH:
        raise ValueError(f"host name is {len(name)} characters, over {MAX_HOSTNAME_LENGTH}")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise ValueError(f"host name {text!r} has an empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise ValueError(f"host name {text!r} has a label over {MAX_LABEL_LENGTH} characters")
        if not set(label) <= HOSTNAME_CHARACTERS:
            raise ValueError(f"host name {text!r} has characters other than letters, digits, '-' and '.'")
        if label[0] == "-" or label[-1] == "-":
            raise ValueError(f"host name {text!r} has a label starting or ending with '-'")
    if labels[-1].isdigit():
        # "1.2.3.256" or "010.1.2.3": a malformed IPv4 address, not a name.
        raise ValueError(f"{text!r} is neither an IPv4 address nor a host name")
    return name


def parse_address(text: object) -> tuple[str, int]:
    """(host, port) from "host:port": IPv4 "10.1.2.3:9090", IPv6 "[::1]:9090", or a host
    name "seed.example.org:9090". The host comes back canonical (see `format_address`).
    Raises ValueError saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"address must be a string, not {type(text).__name__}")
    return _parse_address(text)


# Every gossiped address is parsed where it arrives, and the same addresses arrive from
# many peers: the answers for recent ones are kept (a ValueError is raised again each time).
@functools.lru_cache(maxsize=16384)
def _parse_address(text: str) -> tuple[str, int]:
    if not text:
        raise ValueError("empty address")
    if len(text) > MAX_ADDRESS_LENGTH:
        raise ValueError(f"address is {len(text)} characters, over {MAX_ADDRESS_LENGTH}")
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"address {text!r} must be written [ipv6]:port")
        host = _parse_host(text[1:close], bracketed=True)
        port_text = text[close + 2 :]
    else:
        host_text, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"address {text!r} has no port (expected host:port)")
        host = _parse_host(host_text, bracketed=False)
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"port {port_text!r} in {text!r} is not a decimal number")
    port = int(port_text) if len(port_text) <= MAX_PORT_DIGITS else MAX_PORT + 1
    if not MIN_PORT <= port <= MAX_PORT:
        raise ValueError(f"port {port_text} in {text!r} is outside {MIN_PORT}..{MAX_PORT}")
    return host, port


def format_address(host: str, port: int) -> str:
    """The "host:port" spelling, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def canonical_address(text: object) -> str:
    """The one spelling the book stores an address under ("[0::1]:9090" -> "[::1]:9090",
    "Seed.Example.ORG:9090" -> "seed.example.org:9090"). Raises ValueError."""
    return format_address(*parse_address(text))


def canonical_host(text: object) -> str:
    """A bare host (as a source of addresses), IPv6 with or without brackets, canonicalised.
    Raises ValueError."""
    if not isinstance(text, str):
        raise ValueError(f"host must be a string, not {type(text).__name__}")
    if text.startswith("[") and text.endswith("]"):
        return _parse_host(text[1:-1], bracketed=True)
    if ":" in text:
        try:
            return _parse_host(text, bracketed=True)
        except ValueError:
            raise ValueError(f"host {text!r} is neither an IPv6 address nor a host without a port") from None
    return _parse_host(text, bracketed=False)


def canonical_ip(host: str) -> Optional[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The address of a host, with an IPv4-mapped IPv6 address (a dual-stack listener's
    view of an IPv4 peer) unwrapped; None for a name."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_group(host: str) -> bytes:
    """The default grouping of a canonical host: the /16 of an IPv4 address (IPv4-mapped
    IPv6 counts as IPv4), the /32 of an IPv6 address, the lowercased name of a host name.
    Loopback and private addresses get no special group of their own."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return b"name:" + host.lower().encode()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        return b"ipv4:" + ip.packed[:2]
    return b"ipv6:" + ip.packed[:4]


# ---------------------------------------------------------------- the book


class _Table:
    """Fixed buckets of BUCKET_SIZE slots holding addresses, with the list of occupied
    buckets kept up to date so that a random occupied bucket is one draw away."""

    def __init__(self, buckets: int) -> None:
        self.rows: list[list[Optional[str]]] = [[None] * BUCKET_SIZE for _ in range(buckets)]
        self.fill = [0] * buckets  # occupied slots per bucket
        self.count = 0  # occupied slots in all
        self.occupied: list[int] = []  # buckets with fill > 0, in no order
        self._index: dict[int, int] = {}  # bucket -> its index in `occupied`

    def put(self, bucket: int, slot: int, address: str) -> None:
        self.rows[bucket][slot] = address
        self.fill[bucket] += 1
        self.count += 1
        if self.fill[bucket] == 1:
            self._index[bucket] = len(self.occupied)
            self.occupied.append(bucket)

    def clear(self, bucket: int, slot: int) -> None:
        self.rows[bucket][slot] = None
        self.fill[bucket] -= 1
        self.count -= 1
        if self.fill[bucket] == 0:
            index = self._index.pop(bucket)
            last = self.occupied.pop()
            if last != bucket:
                self.occupied[index] = last
                self._index[last] = index


@dataclass(slots=True)
class _Entry:
    address: str  # canonical "host:port"
    host: str  # canonical host of `address`
    source: str  # canonical host of the peer we first heard it from
    first_seen: float
    last_seen: float  # last time anyone mentioned it, or we connected
    last_try: Optional[float] = None  # last connection attempt started
    last_success: Optional[float] = None  # last good()
    attempts: int = 0  # counted failures since the last success
    last_counted_failure: Optional[float] = None
    tried: bool = False
    bucket: int = -1  # position in its table, -1 while in neither
    slot: int = -1


class AddressBook:
    """The new and tried tables (see the module docstring). Addresses given to any method
    may be in any accepted spelling; they are stored and returned canonical."""

    def __init__(
        self,
        now: Callable[[], float],
        rng: random.Random,
        group: Group = address_group,
        key: Optional[bytes] = None,
    ) -> None:
        if key is None:
            # Not from `rng`: Mersenne Twister state can be rebuilt from observed choices,
            # and the key must stay secret or bucket placement can be aimed.
            key = entropy.token_bytes(KEY_BYTES)
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ValueError(f"address book key must be {KEY_BYTES} bytes")
        self._now = now
        self._rng = rng
        self._group_of = group
        self._key = key
        self._keyed = hashlib.sha256(key)
        self._new = _Table(NEW_BUCKET_COUNT)
        self._tried = _Table(TRIED_BUCKET_COUNT)
        self._entries: dict[str, _Entry] = {}
        self._last_good: Optional[float] = None  # last good() of any address
        # Why addresses were not kept or were displaced: invalid, bucket_full,
        # replaced_terrible, demoted, displaced_by_demotion, load_dropped.
        self.dropped_counts: collections.Counter[str] = collections.Counter()

    @property
    def key(self) -> bytes:
        return self._key

    # ------------------------------------------------------------ hashing

    def _group(self, host: str) -> bytes:
        group = self._group_of(host)
        if not isinstance(group, bytes):
            raise TypeError(f"group function returned {type(group).__name__}, not bytes")
        return group

    def _hash(self, *parts: bytes | int) -> int:
        digest = self._keyed.copy()
        for part in parts:
            data = part.to_bytes(8, "big") if isinstance(part, int) else part
            digest.update(len(data).to_bytes(4, "big"))
            digest.update(data)
        return int.from_bytes(digest.digest()[:8], "big")

    def _new_position(self, entry: _Entry) -> tuple[int, int]:
        source_group = self._group(entry.source)
        spread = self._hash(b"new-group", self._group(entry.host), source_group) % NEW_BUCKETS_PER_SOURCE_GROUP
        bucket = self._hash(b"new-bucket", source_group, spread) % NEW_BUCKET_COUNT
        return bucket, self._hash(b"slot-new", bucket, entry.address.encode()) % BUCKET_SIZE

    def _tried_position(self, entry: _Entry) -> tuple[int, int]:
        spread = self._hash(b"tried-address", entry.address.encode()) % TRIED_BUCKETS_PER_GROUP
        bucket = self._hash(b"tried-bucket", self._group(entry.host), spread) % TRIED_BUCKET_COUNT
        return bucket, self._hash(b"slot-tried", bucket, entry.address.encode()) % BUCKET_SIZE

    # ------------------------------------------------------------ table bookkeeping

    def _place(self, entry: _Entry, tried: bool, bucket: int, slot: int) -> None:
        (self._tried if tried else self._new).put(bucket, slot, entry.address)
        entry.tried, entry.bucket, entry.slot = tried, bucket, slot
        self._entries[entry.address] = entry

    def _unplace(self, entry: _Entry) -> None:
        """Take the entry out of its slot (it stays in `_entries`)."""
        if entry.bucket < 0:
            return
        (self._tried if entry.tried else self._new).clear(entry.bucket, entry.slot)
        entry.bucket = entry.slot = -1

    def _delete(self, entry: _Entry) -> None:
        self._unplace(entry)
        del self._entries[entry.address]

    def _insert_new(self, entry: _Entry, force: bool, now: float) -> bool:
        """Put the entry in its new slot: always if `force`, else only if the slot is free
        or its occupant terrible. False if it was not placed."""
        bucket, slot = self._new_position(entry)
        occupant = self._new.rows[bucket][slot]
        if occupant is not None:
            old = self._entries[occupant]
            if force:
                self.dropped_counts["displaced_by_demotion"] += 1
            elif self._is_terrible(old, now):
                self.dropped_counts["replaced_terrible"] += 1
            else:
                return False
            self._delete(old)
        self._place(entry, False, bucket, slot)
        return True

    def _lookup(self, address: object) -> Optional[_Entry]:
        try:
            return self._entries.get(canonical_address(address))
        except ValueError:
            return None

    # ------------------------------------------------------------ quality

    def _is_terrible(self, entry: _Entry, now: float) -> bool:
        if entry.last_try is not None and now - entry.last_try < RECENT_TRY_GRACE_SECONDS:
            return False
        if entry.last_seen > now + FUTURE_TOLERANCE_SECONDS:
            return True
        if now - entry.last_seen > HORIZON_SECONDS:
            return True
        if entry.last_success is None:
            return entry.attempts >= MAX_RETRIES
        return now - entry.last_success > MIN_FAIL_SECONDS and entry.attempts >= MAX_FAILURES

    def _chance(self, entry: _Entry, now: float) -> float:
        chance = 1.0
        if entry.last_try is not None and now - entry.last_try < RECENT_TRY_SECONDS:
            chance *= RECENT_TRY_CHANCE
        return chance * ATTEMPT_CHANCE ** min(entry.attempts, MAX_ATTEMPT_PENALTIES)

    # ------------------------------------------------------------ public API

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, address: object) -> bool:
        return self._lookup(address) is not None

    def counts(self) -> tuple[int, int]:
        """(addresses in new, addresses in tried)."""
        return self._new.count, self._tried.count

    def position(self, address: object) -> Optional[tuple[str, int, int]]:
        """("new" or "tried", bucket, slot) of a known address, else None."""
        entry = self._lookup(address)
        if entry is None:
            return None
        return ("tried" if entry.tried else "new", entry.bucket, entry.slot)

    def add(self, addresses: Iterable[object], source_host: str) -> int:
        """Record addresses heard from the peer at `source_host` (for addresses from
        configuration or DNS seeds, pass each address's own host). Known ones only have
        their last-seen time refreshed. Invalid strings are skipped and counted in
        `dropped_counts["invalid"]`, those whose slot is held in `["bucket_full"]`.
        Returns how many were new to the book. Raises ValueError for a bad source host."""
        source = canonical_host(source_host)
        now = self._now()
        added = 0
        for text in addresses:
            try:
                host, port = parse_address(text)
            except ValueError:
                self.dropped_counts["invalid"] += 1
                continue
            address = format_address(host, port)
            known = self._entries.get(address)
            if known is not None:
                known.last_seen = max(known.last_seen, now)
                continue
            entry = _Entry(address=address, host=host, source=source, first_seen=now, last_seen=now)
            if self._insert_new(entry, force=False, now=now):
                added += 1
            else:
                self.dropped_counts["bucket_full"] += 1
        return added

    def attempt(self, address: str) -> bool:
        """A connection attempt to the address has started. False if it is unknown."""
        entry = self._lookup(address)
        if entry is None:
            return False
        entry.last_try = self._now()
        return True

    def failed(self, address: str) -> bool:
        """A connection to the address failed. As Bitcoin Core, a failure is counted only if
        some address succeeded since this one's last counted failure, so that while we are
        offline every address gathers at most one. False if it is unknown."""
        entry = self._lookup(address)
        if entry is None:
            return False
        if entry.last_counted_failure is None or (
            self._last_good is not None and entry.last_counted_failure < self._last_good
        ):
            entry.attempts += 1
            entry.last_counted_failure = self._now()
        return True

    def good(self, address: str) -> bool:
        """A connection to the address succeeded and the peer is on our chain: it moves to
        tried (see the module docstring for a taken tried slot). False if it is unknown;
        `add` it first."""
        entry = self._lookup(address)
        if entry is None:
            return False
        now = self._now()
        entry.last_success = entry.last_try = now
        entry.last_seen = max(entry.last_seen, now)
        entry.attempts = 0
        self._last_good = now
        if entry.tried:
            return True
        self._unplace(entry)
        bucket, slot = self._tried_position(entry)
        occupant = self._tried.rows[bucket][slot]
        if occupant is not None:
            old = self._entries[occupant]
            if self._is_terrible(old, now):
                self.dropped_counts["replaced_terrible"] += 1
                self._delete(old)
            else:
                self.dropped_counts["demoted"] += 1
                self._unplace(old)
                old.tried = False
                self._insert_new(old, force=True, now=now)
        self._place(entry, True, bucket, slot)
        return True

    def remove(self, address: str) -> bool:
        """Forget the address. False if it was unknown."""
        entry = self._lookup(address)
        if entry is None:
            return False
        self._delete(entry)
        return True

    def select(self, new_only: bool = False, exclude: Collection[str] = ()) -> Optional[str]:
        """An address to dial, or None if there is no candidate. Tried and new are drawn
        from with even odds when both have candidates; `new_only` draws from new alone;
        addresses in `exclude` (say, those connected already) are never returned."""
        excluded: set[str] = set()
        for text in exclude:
            entry = self._lookup(text)
            if entry is not None:
                excluded.add(entry.address)
        excluded_tried = sum(1 for address in excluded if self._entries[address].tried)
        new_open = self._new.count - (len(excluded) - excluded_tried) > 0
        tried_open = not new_only and self._tried.count - excluded_tried > 0
        if not (new_open or tried_open):
            return None
        use_tried = tried_open and (not new_open or self._rng.random() < SELECT_TRIED_SHARE)
        table = self._tried if use_tried else self._new
        now = self._now()
        chance_factor = 1.0
        for _ in range(SELECT_MAX_DRAWS):
            # A random occupied bucket: the same as drawing any bucket until one is occupied.
            row = table.rows[table.occupied[self._rng.randrange(len(table.occupied))]]
            start = self._rng.randrange(BUCKET_SIZE)
            found: Optional[str] = None
            for step in range(BUCKET_SIZE):
                found = row[(start + step) % BUCKET_SIZE]
                if found is not None:
                    break
            if found is None or found in excluded:
                continue
            if self._rng.random() < chance_factor * self._chance(self._entries[found], now):
                return found
            chance_factor *= SELECT_CHANCE_GROWTH
        candidates = [a for a, e in self._entries.items() if e.tried == use_tried and a not in excluded]
        return self._rng.choice(candidates)

    def addresses_for_exchange(self, limit: int) -> list[str]:
        """A random sample to send a peer that asked: at most `limit`, at most
        GETADDR_MAX_PERCENT of the book, no terrible entries (so possibly fewer)."""
        wanted = min(limit, len(self._entries) * GETADDR_MAX_PERCENT // 100)
        if wanted <= 0:
            return []
        now = self._now()
        pool = list(self._entries)
        chosen: list[str] = []
        for i in range(len(pool)):  # a partial Fisher-Yates shuffle
            j = self._rng.randrange(i, len(pool))
            pool[i], pool[j] = pool[j], pool[i]
            if not self._is_terrible(self._entries[pool[i]], now):
                chosen.append(pool[i])
                if len(chosen) >= wanted:
                    break
        return chosen

    # ------------------------------------------------------------ persistence

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready document of the whole book, key included (keep the file private)."""
        return {
            "version": DOC_VERSION,
            "key": self._key.hex(),
            "last_good": self._last_good,
            "entries": [
                {
                    "address": e.address,
                    "source": e.source,
                    "first_seen": e.first_seen,
                    "last_seen": e.last_seen,
                    "last_try": e.last_try,
                    "last_success": e.last_success,
                    "attempts": e.attempts,
                    "last_counted_failure": e.last_counted_failure,
                    "tried": e.tried,
                }
                for e in self._entries.values()
            ],
        }

    @classmethod
    def from_json(
        cls,
        doc: object,
        now: Callable[[], float],
        rng: random.Random,
        group: Group = address_group,
    ) -> AddressBook:
        """The book `to_json()` described, with the same key. Positions are recomputed, so a
        different `group` function rebuckets; entries that then collide are dropped (counted
        in `dropped_counts["load_dropped"]`). Raises ValueError for a malformed document."""
        if not isinstance(doc, dict):
            raise ValueError(f"address book document must be a JSON object, not {type(doc).__name__}")
        if set(doc) != _DOC_FIELDS:
            raise ValueError(f"address book document must have exactly the fields {sorted(_DOC_FIELDS)}")
        version = doc["version"]
        if type(version) is not int or version != DOC_VERSION:
            raise ValueError(f"address book version {version!r} is not {DOC_VERSION}")
        key_hex = doc["key"]
        if not isinstance(key_hex, str) or len(key_hex) != 2 * KEY_BYTES:
            raise ValueError(f"address book key must be {2 * KEY_BYTES} hex digits")
        try:
            key = bytes.fromhex(key_hex)
        except ValueError:
            raise ValueError("address book key is not hexadecimal") from None
        last_good = _optional_time(doc["last_good"], "address book last_good")
        raw_entries = doc["entries"]
        if not isinstance(raw_entries, list):
            raise ValueError("address book entries must be a list")
        capacity = (NEW_BUCKET_COUNT + TRIED_BUCKET_COUNT) * BUCKET_SIZE
        if len(raw_entries) > capacity:
            raise ValueError(f"address book has {len(raw_entries)} entries, more than its {capacity} slots")
        entries: dict[str, _Entry] = {}
        for index, raw in enumerate(raw_entries):
            entry = _entry_from_json(raw, index)
            if entry.address in entries:
                raise ValueError(f"address book entry {index}: {entry.address} appears twice")
            entries[entry.address] = entry

        book = cls(now, rng, group=group, key=key)
        book._last_good = last_good
        clock = now()
        pending_new = [e for e in entries.values() if not e.tried]
        for entry in entries.values():
            if entry.tried:
                bucket, slot = book._tried_position(entry)
                if book._tried.rows[bucket][slot] is None:
                    book._place(entry, True, bucket, slot)
                else:  # only if `group` changed: back to new, as good() would do
                    entry.tried = False
                    pending_new.append(entry)
        for entry in pending_new:
            if not book._insert_new(entry, force=False, now=clock):
                book.dropped_counts["load_dropped"] += 1
        return book


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def _optional_time(value: object, name: str) -> Optional[float]:
    return None if value is None else _number(value, name)


def _entry_from_json(raw: object, index: int) -> _Entry:
    where = f"address book entry {index}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a JSON object")
    if set(raw) != _ENTRY_FIELDS:
        raise ValueError(f"{where} must have exactly the fields {sorted(_ENTRY_FIELDS)}")
    try:
        host, port = parse_address(raw["address"])
        source = canonical_host(raw["source"])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    attempts = raw["attempts"]
    if type(attempts) is not int or attempts < 0:
        raise ValueError(f"{where}: attempts must be a non-negative integer, not {attempts!r}")
    tried = raw["tried"]
    if not isinstance(tried, bool):
        raise ValueError(f"{where}: tried must be true or false")
    return _Entry(
        address=format_address(host, port),
        host=host,
        source=source,
        first_seen=_number(raw["first_seen"], f"{where}: first_seen"),
        last_seen=_number(raw["last_seen"], f"{where}: last_seen"),
        last_try=_optional_time(raw["last_try"], f"{where}: last_try"),
        last_success=_optional_time(raw["last_success"], f"{where}: last_success"),
        attempts=attempts,
        last_counted_failure=_optional_time(raw["last_counted_failure"], f"{where}: last_counted_failure"),
        tried=tried,
    )


# ---------------------------------------------------------------- rate limit


class AddrRateLimiter:
    """A token bucket per source connection for received addresses, as Bitcoin Core's:
    each source earns `rate` tokens a second up to `burst`, starts full, and spends one per
    address; addresses beyond its tokens are refused and counted in `dropped`. Use
    `book.add(limiter.filter(connection, addresses), host)`, and `forget(connection)` when
    it closes. Beyond `max_sources` remembered sources, full
    buckets are forgotten first (losing nothing), then the least recently used ones (which
    then start full again, so keep `max_sources` above the connection count)."""

    def __init__(
        self,
        now: Callable[[], float],
        rate: float = ADDR_RATE_PER_SECOND,
        burst: float = ADDR_RATE_BURST,
        max_sources: int = RATE_LIMITER_MAX_SOURCES,
    ) -> None:
        if not (rate >= 0 and burst >= 1 and max_sources >= 1):
            raise ValueError("rate must be >= 0, burst >= 1 and max_sources >= 1")
        self._now = now
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # source -> (tokens, as of)
        self.dropped = 0  # addresses refused, all sources together

    def _refilled(self, tokens: float, since: float, now: float) -> float:
        return min(self.burst, tokens + max(0.0, now - since) * self.rate)

    def tokens(self, source: Hashable) -> float:
        """The tokens the source has now."""
        state = self._buckets.get(source)
        if state is None:
            return self.burst
        return self._refilled(state[0], state[1], self._now())

    def allow(self, source: Hashable, count: int = 1) -> int:
        """How many of `count` addresses from `source` may be processed now (take that many
        from the front); the rest are refused and counted."""
        now = self._now()
        state = self._buckets.pop(source, None)
        tokens = self.burst if state is None else self._refilled(state[0], state[1], now)
        passed = max(0, min(count, int(tokens + TOKEN_EPSILON)))
        self._buckets[source] = (max(0.0, tokens - passed), now)  # re-inserted: most recent last
        refused = max(0, count) - passed
        self.dropped += refused
        if len(self._buckets) > self.max_sources:
            self._prune(now)
        return passed

    def filter(self, source: Hashable, addresses: Sequence[str]) -> list[str]:
        """The addresses from `source` that are within its limit."""
        return list(addresses[: self.allow(source, len(addresses))])

    def forget(self, source: Hashable) -> None:
        """The source connection closed."""
        self._buckets.pop(source, None)

    def _prune(self, now: float) -> None:
        for source, (tokens, since) in list(self._buckets.items()):
            if self._refilled(tokens, since, now) >= self.burst:
                del self._buckets[source]
        while len(self._buckets) > self.max_sources:
            del self._buckets[next(iter(self._buckets))]
