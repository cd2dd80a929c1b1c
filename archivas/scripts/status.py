"""archivas-node status | peers: what a node says of itself, over its RPC (docs/metrics.md).

`status` (in the manner of `chia show -s`): network, sync state, height, tip, difficulty, a
netspace estimate, peers and recent blocks, from `/status`, `/readyz`, `/signagePoints` and
`/block/<h>`. `peers`: the connected peers from `/peers`. Both take `--node URL` (default the
local node) and `--json`. A short-lived program, so plain blocking urllib; an unreachable node
or a refusal is one line on stderr and exit 1, a bad flag exit 2.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, NoReturn, Optional

from twisted.python import usage

from archivas.chain.pos import PLOT_BYTES_PER_ENTRY, netspace_entries, space
from archivas.scripts.common import VersionedOptions, die, parse

DEFAULT_NODE = "http://127.0.0.1:8080"
TIMEOUT_SECONDS = 5.0  # per request
DEFAULT_BLOCKS = 10  # recent blocks shown (and used for the netspace estimate)
MAX_BLOCKS = 100
MAX_ANSWER_BYTES = 16 * 1024 * 1024  # an answer larger than this is refused
COMMANDS = ("status", "peers")


class NodeUnreachable(Exception):
    pass


def check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise usage.UsageError(f"--node {url!r} is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 (raises for a port that is not a number)
    except ValueError:
        raise usage.UsageError(f"--node {url!r} has a bad port") from None
    return url.rstrip("/")


class _Common(VersionedOptions):
    optFlags = [["json", None, "print JSON instead of text"]]
    optParameters = [["node", None, DEFAULT_NODE, "the node's RPC URL"]]

    def postOptions(self) -> None:
        self["node"] = check_url(self["node"])


class StatusOptions(_Common):
    program = "archivas-node status"
    synopsis = "[--node URL] [--json] [--blocks N]"
    longdesc = "Show the node's network, sync state, tip, difficulty, netspace, peers and recent blocks."
    optParameters: list[list[Any]] = [["blocks", None, DEFAULT_BLOCKS, f"recent blocks to show (0 to {MAX_BLOCKS})",
                                       int]]

    def postOptions(self) -> None:
        super().postOptions()
        if not 0 <= self["blocks"] <= MAX_BLOCKS:
            raise usage.UsageError(f"--blocks must be from 0 to {MAX_BLOCKS}")


class PeersOptions(_Common):
    program = "archivas-node peers"
    synopsis = "[--node URL] [--json]"
    longdesc = "List the node's connected peers."


def get(base: str, path: str, allow: tuple[int, ...] = ()) -> Any:
    """GET a JSON answer; NodeUnreachable for no answer, an error status (unless allowed) or
    an answer that is not JSON."""
    url = base + path
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            body = response.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as e:
        body = e.read(MAX_ANSWER_BYTES + 1)
        if e.code not in allow:
            raise NodeUnreachable(f"{url} answered {e.code}: {_error_text(body)}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise NodeUnreachable(f"cannot reach the node at {base} ({reason})") from None
    if len(body) > MAX_ANSWER_BYTES:
        raise NodeUnreachable(f"the answer from {url} is over {MAX_ANSWER_BYTES} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise NodeUnreachable(f"the answer from {url} is not JSON: is {base} an Archivas node?") from None


def _error_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)
    except (ValueError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace")


# status


def recent_blocks(base: str, height: int, count: int) -> list[dict[str, Any]]:
    """The last `count` main-chain blocks, newest first, genesis left out."""
    from archivas.chain.block import Block
    from archivas.chain.encoding import DecodeError

    out = []
    for h in range(height, max(0, height - count), -1):
        doc = get(base, f"/block/{h}")
        header = doc.get("header", {}) if isinstance(doc, dict) else {}
        try:
            block_hash = Block.from_json(doc).hash.hex()
        except (DecodeError, ValueError, TypeError, AttributeError, KeyError):
            block_hash = None
        out.append({
            "height": header.get("height", h),
            "hash": block_hash,
            "timestamp": header.get("timestamp"),
            "difficulty": header.get("difficulty"),
            "segments": len(header.get("vdf") or []),
            "transactions": len(doc.get("transactions") or []),
            "k": (header.get("proofOfSpace") or {}).get("k"),
            "rewardAddress": header.get("rewardAddress"),
        })
    return out


def netspace(blocks: list[dict[str, Any]], k_min: int, filter_bits: int) -> Optional[dict[str, Any]]:
    """The space that wins the recent blocks at their difficulty in as many signage points
    as they took (pos.netspace_entries, the explorer's estimate too); when every block
    answered its first signage point it is a lower bound."""
    usable = [b for b in blocks if b["segments"] and b["difficulty"]]
    if not usable:
        return None
    mean_segments = sum(b["segments"] for b in usable) / len(usable)
    mean_difficulty = sum(b["difficulty"] for b in usable) / len(usable)
    entries, lower_bound = netspace_entries(mean_segments, mean_difficulty, len(usable), k_min, filter_bits)
    return {
        "bytes": int(entries * PLOT_BYTES_PER_ENTRY),
        "plotsOfKMin": round(entries / space(k_min), 2),
        "kMin": k_min,
        "fromBlocks": len(usable),
        "meanSegments": round(mean_segments, 3),
        "lowerBound": lower_bound,
    }


def gather_status(base: str, count: int) -> dict[str, Any]:
    status = get(base, "/status")
    if not isinstance(status, dict) or "height" not in status:
        raise NodeUnreachable(f"{base}/status is not an Archivas node's status")
    ready = get(base, "/readyz", allow=(404, 503))
    out = dict(status)
    if isinstance(ready, dict) and "ready" in ready:
        out["ready"] = bool(ready["ready"])
        out["notReadyReason"] = None if ready["ready"] else ready.get("error")
    else:  # a node without /readyz
        out["ready"] = None
        out["notReadyReason"] = None
    blocks = recent_blocks(base, int(status["height"]), max(count, 1) if status["height"] else 0)
    tip = blocks[0] if blocks else None
    out["tipTimestamp"] = tip["timestamp"] if tip else None
    out["tipAgeSeconds"] = (round(time.time() - tip["timestamp"] / 1000, 1)
                            if tip and isinstance(tip["timestamp"], int) else None)
    points = get(base, "/signagePoints")
    k_min, filter_bits = points.get("kMin", 18), points.get("plotFilterBits", 0)
    out["netspace"] = netspace(blocks, int(k_min), int(filter_bits))
    out["recentBlocks"] = blocks[:count]
    return out


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if nbytes < 1024 or unit == "EiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes:.0f} B"
        nbytes /= 1024
    return f"{nbytes:.1f} EiB"


def _when(ms: Any) -> str:
    if not isinstance(ms, int):
        return "?"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _ago(seconds: Optional[float]) -> str:
    if seconds is None or math.isnan(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def format_status(s: dict[str, Any], base: str) -> str:
    if s.get("syncing"):
        sync = "syncing"
    elif s.get("ready") is None:  # a node without /readyz: its word only
        sync = "not syncing"
    else:
        sync = "synced" if s["ready"] else f"not synced ({s.get('notReadyReason')})"
    space_doc = s.get("netspace")
    if space_doc:
        space_text = (f"{'at least ' if space_doc['lowerBound'] else '~'}{_size(space_doc['bytes'])} "
                      f"(about {space_doc['plotsOfKMin']:g} k={space_doc['kMin']} plots, "
                      f"from the last {space_doc['fromBlocks']} blocks)")
    else:
        space_text = "unknown (no blocks yet)"
    lines = [
        f"Network:     {s.get('network')} (genesis {str(s.get('genesisHash'))[:16]}…)",
        f"Node:        {base} (version {s.get('version')})",
        f"Sync state:  {sync}",
        f"Height:      {s.get('height')}",
        f"Tip:         {s.get('tipHash')}",
        f"Tip time:    {_when(s.get('tipTimestamp'))} UTC ({_ago(s.get('tipAgeSeconds'))} ago)"
        if s.get("tipTimestamp") is not None else "Tip time:    genesis",
        f"Weight:      {s.get('weight')}",
        f"Difficulty:  {s.get('difficulty')}",
        f"Netspace:    {space_text}",
        f"Peers:       {s.get('peers')} ready ({s.get('peersIn', '?')} inbound, "
        f"{s.get('peersOut', '?')} outbound connections)",
        f"Mempool:     {s.get('mempool', '?')} transfers",
    ]
    history = s.get("history")
    if isinstance(history, dict):  # loaded from a snapshot (docs/snapshots.md)
        lines.append(f"History:     from a snapshot at height {history.get('snapshotHeight')}, "
                     + ("history validated" if history.get("validated") else "history not yet validated"))
    blocks = s.get("recentBlocks") or []
    if blocks:
        now = time.time()
        lines += ["", "Recent blocks:",
                  f"  {'height':>8}  {'hash':16}  {'time (UTC)':19}  {'age':>7}  {'diff':>6}  {'seg':>4}  "
                  f"{'txs':>4}  farmer reward address"]
        for b in blocks:
            age = now - b["timestamp"] / 1000 if isinstance(b["timestamp"], int) else None
            lines.append(f"  {b['height']:>8}  {(b['hash'] or '?')[:16]:16}  {_when(b['timestamp']):19}  "
                         f"{_ago(age):>7}  {b['difficulty']!s:>6}  {b['segments']:>4}  {b['transactions']:>4}  "
                         f"{b['rewardAddress']}")
    return "\n".join(lines)


# peers


def format_peers(peers: list[dict[str, Any]]) -> str:
    if not peers:
        return "No peers connected."
    now = time.time()
    lines = [f"{len(peers)} peer(s):",
             f"  {'address':28}  {'dir':3}  {'slot':11}  {'state':9}  {'height':>8}  {'weight':>10}  "
             f"{'ping':>8}  {'seen':>6}  {'since':>6}  node"]
    for p in peers:
        ping = f"{p['pingMs']:.1f} ms" if isinstance(p.get("pingMs"), (int, float)) else "-"
        seen = _ago(now - p["lastSeen"]) if isinstance(p.get("lastSeen"), (int, float)) else "?"
        since = _ago(now - p["connectedSince"]) if isinstance(p.get("connectedSince"), (int, float)) else "?"
        direction = {"inbound": "in", "outbound": "out"}.get(str(p.get("direction")), "?")
        lines.append(f"  {str(p.get('address')):28}  {direction:3}  {str(p.get('slot')):11}  "
                     f"{str(p.get('state')):9}  {p.get('height')!s:>8}  {p.get('weight')!s:>10}  {ping:>8}  "
                     f"{seen:>6}  {since:>6}  {(p.get('nodeId') or 'seed peer')[:12]}")
    return "\n".join(lines)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> NoReturn:
    """`argv` is `status ...` or `peers ...` (archivas-node's arguments)."""
    command, rest = argv[0], argv[1:]
    program = f"archivas-node {command}"
    try:
        if command == "status":
            options = parse(program, StatusOptions(), rest)
            doc: Any = gather_status(options["node"], options["blocks"])
            text = format_status(doc, options["node"]) if not options["json"] else None
        elif command == "peers":
            options = parse(program, PeersOptions(), rest)
            doc = get(options["node"], "/peers")
            if not isinstance(doc, list):
                raise NodeUnreachable(f"{options['node']}/peers is not a list of peers")
            text = format_peers(doc) if not options["json"] else None
        else:
            die("archivas-node", f"unknown command {command!r} (status, peers)", 2)
    except NodeUnreachable as e:
        die(program, str(e))
    _out(json.dumps(doc, indent=2) if text is None else text)
    raise SystemExit(0)


__all__ = ["main", "COMMANDS", "gather_status", "netspace", "DEFAULT_NODE"]
