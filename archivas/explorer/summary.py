"""What the explorer shows, computed from the node's answers: plain synchronous functions
(amounts in RCHV, times, the netspace estimate, sync progress, block and peer rows)."""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any, Optional, Sequence

from archivas.chain.block import Block
from archivas.chain.params import COIN, NetworkParams
from archivas.chain.pos import PLOT_BYTES_PER_ENTRY, netspace_entries

NETSPACE_WINDOW = 64  # blocks behind the tip the netspace estimate averages over
# Bytes per plot entry (space(k) counts entries): finished plots measured 0.75..0.83 space(k)
# at k=18..25 (archivas/farmer/plotter.py), the tests' two k=18 plots 0.84 and 0.88, and
# Chia's published k=32 plot (101.4 GiB) 0.78.


def rchv(units: int) -> str:
    """Base units as RCHV, 8 decimals (what the wallet prints): 150000000 -> "1.50000000 RCHV"."""
    sign = "-" if units < 0 else ""
    units = abs(units)
    return f"{sign}{units // COIN}.{units % COIN:08d} RCHV"


def short(text: Optional[str], head: int = 10, tail: int = 6) -> str:
    """A long hash or address cut in the middle (the full text goes in a title)."""
    if not text:
        return ""
    return text if len(text) <= head + tail + 1 else f"{text[:head]}…{text[-tail:]}"


def utc(ms: Optional[int]) -> str:
    """Unix milliseconds as `2026-01-01 00:00:00 UTC`."""
    if ms is None:
        return ""
    try:
        moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def age(seconds: Optional[float]) -> str:
    """A duration as people say it: `4 s`, `3 min`, `2 h 5 min`, `6 d`."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    if seconds < 0:
        return "in the future"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d"


def size(n: Optional[float]) -> str:
    """Bytes in binary units: `3.7 MiB`, `1.2 PiB`."""
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} EiB"  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class Netspace:
    """Space farming the chain, estimated from the last blocks (docs/explorer.md)."""

    entries: float  # plot entries, the unit of space(k)
    bytes: float
    blocks: int  # blocks in the window
    mean_segments: float  # VDF segments (signage points) per block
    mean_difficulty: float
    lower_bound: bool  # every block won at its first signage point: at least this much

    @property
    def text(self) -> str:
        return ("≥ " if self.lower_bound else "") + size(self.bytes)


def netspace(window: Sequence[Any], params: NetworkParams) -> Optional[Netspace]:
    """From the blocks' difficulty and how many signage points each took to win.

    A signage point is won with probability 1 - exp(-λ), where λ (the expected number of
    winning proofs) is S / (difficulty · space(k_min) · 2^filter_bits) for S the summed
    space(k) of every plot (one quality per challenge per plot). A block needs m signage
    points on average, m = 1 / (1 - exp(-λ)), so λ = -ln(1 - 1/m) and
    S = λ · difficulty · space(k_min) · 2^filter_bits. `window`: block metas (segments,
    difficulty, height), genesis left out."""
    blocks = [m for m in window if m.height > 0 and m.segments > 0]
    if not blocks:
        return None
    n = len(blocks)
    mean_segments = sum(m.segments for m in blocks) / n
    mean_difficulty = sum(m.difficulty for m in blocks) / n
    entries, lower_bound = netspace_entries(mean_segments, mean_difficulty, n, params.k_min,
                                            params.plot_filter_bits)
    return Netspace(entries, entries * PLOT_BYTES_PER_ENTRY, n, mean_segments, mean_difficulty, lower_bound)


def mean_block_seconds(window: Sequence[Any]) -> Optional[float]:
    """Mean time between the window's blocks (genesis left out: its time is fixed)."""
    blocks = [m for m in window if m.height > 0]
    if len(blocks) < 2:
        return None
    return (blocks[-1].timestamp - blocks[0].timestamp) / 1000 / (len(blocks) - 1)


def block_row(block: Block, main: bool = True) -> dict[str, Any]:
    """A block as one row of the strip (and as it goes out in events)."""
    header = block.header
    pos = header.proof_of_space
    fees = sum(tx.fee for tx in block.transactions)
    return {
        "height": header.height,
        "hash": block.hash.hex(),
        "timestamp": header.timestamp,
        "time": utc(header.timestamp),
        "farmer": header.reward_address,
        "farmerKey": pos.farmer_public_key.hex() if pos else None,
        "k": pos.k if pos else None,
        "transfers": len(block.transactions),
        "moved": sum(tx.amount for tx in block.transactions),
        "fees": fees,
        "reward": header.reward,
        "segments": header.segments,
        "difficulty": header.difficulty,
        "main": main,
    }


def sync_progress(status: dict[str, Any], peers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`status()["sync"]` (active, targetHeight, blocksPerSecond, etaSeconds) with the
    share done; a node without it gets the best height its peers show as the target."""
    height = status.get("height", 0)
    sync = status.get("sync")
    if isinstance(sync, dict):
        active = bool(sync.get("active"))
        target = sync.get("targetHeight")
        rate = sync.get("blocksPerSecond")
        eta = sync.get("etaSeconds")
    else:
        active = bool(status.get("syncing"))
        target = max([p.get("height") or 0 for p in peers] + [height])
        rate = eta = None
    if not isinstance(target, int) or target < height:
        target = height
    percent = 100.0 if target <= 0 else min(100.0, 100.0 * height / target)
    if eta is None and rate and target > height:
        eta = (target - height) / rate
    if target <= height:
        eta = None  # nothing left to fetch: no ETA to show
    return {
        "active": active,
        "height": height,
        "targetHeight": target,
        "percent": round(percent, 2),
        "blocksPerSecond": rate,
        "etaSeconds": eta,
        "eta": age(eta) if eta is not None else "",
    }


def peer_row(peer: dict[str, Any], now: float) -> dict[str, Any]:
    """A connected peer as a row of the peers table (as `chia peer -c`)."""
    def since(t: Any) -> str:
        return age(now - t) if isinstance(t, (int, float)) else ""

    sent = sum((peer.get("bytesOut") or {}).values())
    received = sum((peer.get("bytesIn") or {}).values())
    return {
        **peer,
        "connectedFor": since(peer.get("connectedSince")),
        "lastSeenAgo": since(peer.get("lastSeen")),
        "mibUp": f"{sent / 2**20:.2f}",
        "mibDown": f"{received / 2**20:.2f}",
    }
