"""The operator's bans: addresses or CIDR subnets refused until a time, kept in a store
that survives restarts (the node's database), listed and lifted over the RPC."""

from __future__ import annotations

import collections
import ipaddress
from typing import Callable, Optional, Protocol

from archivas.protocols.addrman import canonical_ip

MAX_BANS = 10_000  # entries an operator may hold; the oldest-expiring goes first beyond it


class BanStore(Protocol):
    def load_bans(self) -> list[tuple[str, float, str]]: ...
    def save_ban(self, subnet: str, until: float, reason: str) -> None: ...
    def delete_ban(self, subnet: str) -> None: ...


def normalise(target: str) -> str:
    """`1.2.3.4`, `1.2.0.0/16`, `::1`, `[::1]`: the canonical subnet text; ValueError else."""
    text = target.strip().strip("[]")
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError(f"{target!r} is not an IP address or CIDR subnet") from None


class BanList:
    def __init__(self, now: Callable[[], float], store: Optional[BanStore] = None) -> None:
        self.now = now
        self.store = store
        self._bans: dict[str, tuple[float, str]] = {}
        self._networks: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}  # parsed once
        self._prefixes: collections.Counter[tuple[int, int]] = collections.Counter()  # (version, length) in use
        if store is not None:
            for subnet, until, reason in store.load_bans():
                self._bans[subnet] = (until, reason)
                self._index(subnet)

    def ban(self, target: str, seconds: float, reason: str = "operator") -> str:
        subnet = normalise(target)
        until = self.now() + seconds
        if subnet not in self._bans:
            self._index(subnet)
        self._bans[subnet] = (until, reason)
        while len(self._bans) > MAX_BANS:
            oldest = min(self._bans, key=lambda s: self._bans[s][0])
            self.unban(oldest)
        if self.store is not None:
            self.store.save_ban(subnet, until, reason)
        return subnet

    def _index(self, subnet: str) -> None:
        network = ipaddress.ip_network(subnet)
        self._networks[subnet] = network
        self._prefixes[(network.version, network.prefixlen)] += 1

    def unban(self, target: str) -> bool:
        subnet = normalise(target)
        found = self._bans.pop(subnet, None) is not None
        network = self._networks.pop(subnet, None)
        if network is not None:
            key = (network.version, network.prefixlen)
            self._prefixes[key] -= 1
            if self._prefixes[key] <= 0:
                del self._prefixes[key]
        if found and self.store is not None:
            self.store.delete_ban(subnet)
        return found

    def _expire(self) -> None:
        now = self.now()
        for subnet in [s for s, (until, _) in self._bans.items() if until <= now]:
            self.unban(subnet)

    def listing(self) -> list[dict[str, object]]:
        self._expire()
        return [{"subnet": s, "until": until, "reason": reason}
                for s, (until, reason) in sorted(self._bans.items())]

    def listing_for(self, subnet: str) -> Optional[float]:
        entry = self._bans.get(normalise(subnet))
        return None if entry is None else entry[0]

    def remaining(self, host: str) -> float:
        """Seconds until `host` may connect again (0: not banned)."""
        if not self._bans:
            return 0.0
        address = canonical_ip(host)  # an IPv4 peer seen through a dual-stack listener: its IPv4
        if address is None:
            return 0.0
        now = self.now()
        left = 0.0
        # One dictionary look-up per prefix length in use (not one test per ban): a check
        # costs the same with ten bans or ten thousand.
        for version, prefix in list(self._prefixes):
            if version != address.version:
                continue
            subnet = str(ipaddress.ip_network((address, prefix), strict=False))
            entry = self._bans.get(subnet)
            if entry is None:
                continue
            if entry[0] <= now:
                self.unban(subnet)
            else:
                left = max(left, entry[0] - now)
        return left

    def is_banned(self, host: str) -> bool:
        return self.remaining(host) > 0

    def __len__(self) -> int:
        self._expire()
        return len(self._bans)
