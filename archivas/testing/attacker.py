"""The attacker of tests/test_adversarial.py, run as a child process so that the node's
honest peers are not timed against the attacker's share of one GIL:

    python -m archivas.testing.attacker SCENARIO --port P [--source 127.0.0.66]
        [--duration S] [--data FILE]

It attacks 127.0.0.1:P over plain sockets bound to `--source` (loopback only) for at most
`--duration` seconds (or until its stdin closes), then prints one JSON line with what it
did: bytes sent and received, connections made, connections the node closed, and the
scenario's own counts. Every loop is bounded; SIGALRM ends the process whatever happens.
`--data` is a JSON file with what a scenario needs from the test (blocks, a claimed tip).
The scenarios are listed in SCENARIOS; docs/protocol.md has the limits they probe.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import termios
import threading
import time
from typing import Any, Callable, Optional

HOST = "127.0.0.1"
HARD_TIMEOUT_MARGIN = 20  # seconds past --duration before SIGALRM ends the process
MAX_LINE = 4 * 1024 * 1024  # peer.MAX_LINE_BYTES
HANDSHAKE_LINE = 64 * 1024  # peer.HANDSHAKE_LINE_BYTES


def line(kind: int, payload: Optional[dict[str, Any]] = None) -> bytes:
    return json.dumps({"type": kind, "payload": payload if payload is not None else {}},
                      separators=(",", ":")).encode() + b"\n"


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.host = HOST
        self.port: int = args.port
        self.source: str = args.source
        self.duration: float = args.duration
        self.started = time.monotonic()
        self.deadline = self.started + args.duration
        self.stop = threading.Event()
        self.data: dict[str, Any] = {}
        if args.data:
            with open(args.data) as f:
                self.data = json.load(f)
        self.stats: dict[str, Any] = {"bytes_sent": 0, "bytes_received": 0, "connections": 0,
                                      "connect_failures": 0, "closed_by_node": 0}

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n


class Conn:
    """One socket to the node, with line framing and byte counts."""

    def __init__(self, ctx: Context, rcvbuf: Optional[int] = None, timeout: float = 3.0) -> None:
        self.ctx = ctx
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((ctx.source, 0))
        sock.settimeout(timeout)
        try:
            sock.connect((ctx.host, ctx.port))
        except OSError:
            sock.close()
            ctx.count("connect_failures")
            raise
        ctx.count("connections")
        self.sock = sock
        self.buffer = b""
        self.closed = False  # by the node (EOF or reset)
        self.mine_closed = False
        self.opened_at = time.monotonic()
        self.closed_at: Optional[float] = None
        self.answer_pings = True

    def _node_closed(self) -> None:
        if not self.closed and not self.mine_closed:
            self.closed = True
            self.closed_at = time.monotonic()
            self.ctx.count("closed_by_node")

    def send_raw(self, data: bytes, timeout: float = 5.0) -> bool:
        """All of `data` (False if the node closed the connection or did not read in time)."""
        if self.closed or self.mine_closed:
            return False
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
        except socket.timeout:
            return False
        except OSError:
            self._node_closed()
            return False
        self.ctx.stats["bytes_sent"] += len(data)
        return True

    def send_some(self, data: bytes, timeout: float) -> int:
        """As much of `data` as the node's window takes within `timeout` (never blocks longer)."""
        if self.closed or self.mine_closed:
            return 0
        try:
            _, writable, _ = select.select([], [self.sock], [], timeout)
            if not writable:
                return 0
            self.sock.setblocking(False)
            n = self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            self._node_closed()
            return 0
        finally:
            if not self.closed:
                self.sock.setblocking(True)
        self.ctx.stats["bytes_sent"] += n
        return n

    def send(self, kind: int, payload: Optional[dict[str, Any]] = None) -> bool:
        return self.send_raw(line(kind, payload))

    def read(self, timeout: float) -> list[dict[str, Any]]:
        """Messages that arrive within `timeout` (PINGs answered unless `answer_pings` is off)."""
        if self.closed or self.mine_closed:
            return []
        try:
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if not readable:
                return []
            self.sock.setblocking(False)
            chunk = self.sock.recv(1 << 16)
        except BlockingIOError:
            return []
        except OSError:
            self._node_closed()
            return []
        finally:
            if not self.closed:
                self.sock.setblocking(True)
        if not chunk:
            self._node_closed()
            return []
        self.ctx.stats["bytes_received"] += len(chunk)
        self.buffer += chunk
        out = []
        while b"\n" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\n", 1)
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            message["raw"] = raw
            out.append(message)
            if message.get("type") == 1 and self.answer_pings:
                self.send(2, message.get("payload"))
        return out

    def wait_for(self, kind: int, timeout: float = 5.0,
                 other: Optional[Callable[[dict[str, Any]], None]] = None) -> Optional[dict[str, Any]]:
        end = time.monotonic() + timeout
        while not self.closed and time.monotonic() < end:
            for message in self.read(min(0.1, max(0.0, end - time.monotonic()))):
                if message.get("type") == kind:
                    return message["payload"]
                if other is not None:
                    other(message)
        return None

    def wait_closed(self, timeout: float) -> bool:
        """Read (and discard) until the node closes the connection or `timeout` passes."""
        end = time.monotonic() + timeout
        while not self.closed and time.monotonic() < end:
            self.read(min(0.1, max(0.0, end - time.monotonic())))
        return self.closed

    def close(self) -> None:
        if not self.mine_closed:
            self.mine_closed = True
            try:
                self.sock.close()
            except OSError:
                pass


def node_status(conn: Conn) -> dict[str, Any]:
    conn.send(6)
    status = conn.wait_for(7)
    if status is None:
        raise RuntimeError("no STATUS from the node")
    return status


def seed_handshake(conn: Conn, claim: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Become a READY seed peer (a STATUS without "hello"): the node's own tip unless
    `claim` says otherwise. Returns the node's STATUS."""
    status = node_status(conn)
    keep = ("height", "difficulty", "tipHash", "weight", "genesisHash", "network")
    mine: dict[str, Any] = {k: status[k] for k in keep if k in status}
    mine.update(claim or {})
    conn.send(7, mine)
    return status


def archivas_handshake(conn: Conn, claim: Optional[dict[str, Any]] = None,
                       capabilities: tuple[str, ...] = ("hello", "blocks", "hashes", "push", "tx", "vdf", "peers"),
                       ) -> dict[str, Any]:
    """STATUS with "hello", HELLO, HELLO_ACK (an ephemeral node key): an Archivas peer that
    may send and is sent the extensions. Returns the node's STATUS."""
    from archivas.protocols import identity

    status = node_status(conn)
    mine: dict[str, Any] = {k: status[k] for k in ("height", "difficulty", "tipHash", "weight", "genesisHash",
                                                   "network")}
    mine.update(claim or {})
    mine["version"] = 2
    mine["capabilities"] = list(capabilities)
    conn.send(7, mine)
    hello = conn.wait_for(100)
    if hello is None:
        raise RuntimeError("no HELLO from the node")
    me = identity.NodeIdentity.ephemeral()
    nonce = identity.fresh_nonce()
    genesis = bytes.fromhex(status["genesisHash"])
    conn.send(100, {"network": status["network"], "genesisHash": status["genesisHash"], "protocolVersion": 2,
                    "nodeKey": me.public_key.hex(), "nodeId": me.node_id.hex(), "nonce": nonce.hex(),
                    "listenPort": 0, "capabilities": list(capabilities)})
    if conn.wait_for(106) is None:
        raise RuntimeError("no HELLO_ACK from the node")
    proof = me.prove(genesis, bytes.fromhex(hello["nonce"]), nonce)
    conn.send(106, {"signature": proof.hex()})
    return status


def fresh(ctx: Context, **kwargs: Any) -> Optional[Conn]:
    try:
        return Conn(ctx, **kwargs)
    except OSError:
        return None


def until_closed(ctx: Context, conn: Conn, lines: list[bytes], rounds: int = 50) -> int:
    """Send `lines` over and over until the node hangs up (or time runs out); how many sent."""
    sent = 0
    for _ in range(rounds):
        for data in lines:
            if not ctx.running() or not conn.send_raw(data):
                return sent
            sent += 1
            conn.read(0)
            if conn.closed:
                return sent
    return sent


def repeated(ctx: Context, lines: list[bytes], max_connections: int = 40, pause: float = 0.04) -> dict[str, Any]:
    """Reconnect and send `lines` until the node closes each connection, for the duration;
    each connection starts one line further on, so every line is read by the node before
    some connection reaches the score that closes it."""
    per_conn: list[Any] = []
    while ctx.running() and len(per_conn) < max_connections:
        conn = fresh(ctx)
        if conn is None:
            break
        shift = len(per_conn) % len(lines)
        per_conn.append(until_closed(ctx, conn, lines[shift:] + lines[:shift]))
        conn.wait_closed(min(2.0, ctx.left() + 0.5))
        conn.close()
        time.sleep(pause)
    return {"lines_per_connection": per_conn}


# scenarios


def s_long_line(ctx: Context) -> dict[str, Any]:
    """A line without a newline past the cap: before READY (64 KiB) and after (4 MiB), on
    new connections for the duration."""
    out: dict[str, Any] = {"before_ready": {"closed": True, "sent_without_newline": 0, "connections": 0},
                           "after_ready": {"closed": True, "sent_without_newline": 0, "connections": 0}}
    chunk = b"a" * 16384
    while ctx.running() and out["after_ready"]["connections"] < 20:
        for name, ready, total in (("before_ready", False, 256 * 1024), ("after_ready", True, 6 * 1024 * 1024)):
            conn = fresh(ctx)
            if conn is None:
                continue
            if ready:
                seed_handshake(conn)
            sent = 0
            while sent < total and conn.send_raw(chunk, timeout=2.0):
                sent += len(chunk)
                conn.read(0)
                if conn.closed:
                    break
            record = out[name]
            record["connections"] += 1
            record["sent_without_newline"] = max(record["sent_without_newline"], sent)
            record["closed"] = record["closed"] and conn.wait_closed(2.0)
            conn.close()
        time.sleep(0.1)
    return out


BAD_JSON = [
    b"{this is not json\n", b"[1, 2]\n", b"42\n", b'"a string"\n', b"null\n", b"true\n",
    b'{"type": 1, "payload": {"timestamp": NaN}}\n', b'{"type": 1, "payload": {"timestamp": Infinity}}\n',
    b'{"type": 1, "payload": {"timestamp": 1e999}}\n', b'{"type": 1, "type": 2, "payload": {}}\n',
    b"\xff\xfe\xfd\n", b"{\n", b"[" * 30000 + b"\n", b'{"a":' * 10000 + b"\n",
    b'{"type": ' + b"9" * 5000 + b"}\n", b"\x00\x00\x00\n",
]


def s_bad_json(ctx: Context) -> dict[str, Any]:
    """Invalid JSON and JSON that is not an object, on connection after connection."""
    return repeated(ctx, BAD_JSON)


def s_unknown_type(ctx: Context) -> dict[str, Any]:
    """Types nobody defined (5 points each), with the reserved ones (free) in between."""
    lines = [line(t, {"x": 1}) for t in (99, 50, 15, 16, 17, 107, 1000, 65535)]
    lines += [line(t, {}) for t in (0, 9, 10, 11)]
    return repeated(ctx, lines)


WRONG_TYPES = [
    b'{"type": 4, "payload": {"height": "two"}}\n', b'{"type": 4, "payload": {"height": 1.0}}\n',
    b'{"type": 4, "payload": {"height": true}}\n', b'{"type": 4, "payload": {"height": -1}}\n',
    b'{"type": 4, "payload": {"height": 9223372036854775808}}\n', b'{"type": 4, "payload": {}}\n',
    b'{"type": "1", "payload": {}}\n', b'{"type": 1.0, "payload": {}}\n', b'{"type": true, "payload": {}}\n',
    b'{"type": -1, "payload": {}}\n', b'{"type": 70000, "payload": {}}\n', b'{"payload": {}}\n',
    b'{"type": 5, "payload": []}\n', b'{"type": 6, "payload": null}\n', b'{"type": 6, "payload": "x"}\n',
    b'{"type": 1, "payload": {"timestamp": "now"}}\n', b'{"type": 1, "payload": {"timestamp": -5}}\n',
    b'{"type": 3, "payload": {"height": 1, "hash": "zz"}}\n',
    b'{"type": 3, "payload": {"height": 1, "hash": [1, 2, 3]}}\n',
    b'{"type": 3, "payload": {"height": 1, "hash": "' + b"AB" * 32 + b'"}}\n',
    b'{"type": 7, "payload": {"height": "1", "difficulty": 1, "tipHash": "' + b"ab" * 32 + b'"}}\n',
    b'{"type": 7, "payload": {"height": 1, "difficulty": 1, "tipHash": [256' + b", 0" * 31 + b"]}}\n",
    b'{"type": 5, "payload": {"height": 1, "blockData": {"header": 5}}}\n',
    b'{"type": 5, "payload": {"height": 1, "blockData": "block"}}\n',
]


def s_wrong_types(ctx: Context) -> dict[str, Any]:
    """Well-formed JSON with fields of the wrong type or out of range."""
    return repeated(ctx, WRONG_TYPES)


def _fragmented_round(conn: Conn, rng: random.Random) -> tuple[list[int], list[Any], bool]:
    stamps: list[int] = []
    pongs: list[Any] = []
    status_seen = []

    def collect(timeout: float) -> None:
        for message in conn.read(timeout):
            if message.get("type") == 2:
                pongs.append(message["payload"].get("timestamp"))
            elif message.get("type") == 7:
                status_seen.append(message["payload"])

    stamp = 1000
    for _ in range(10):  # a byte a write
        stamp += 1
        stamps.append(stamp)
        for byte in line(1, {"timestamp": stamp}):
            conn.send_raw(bytes([byte]))
            time.sleep(0.0005)
        collect(0)
    data = b""  # 300 in one write
    for _ in range(300):
        stamp += 1
        stamps.append(stamp)
        data += line(1, {"timestamp": stamp})
    conn.send_raw(data)
    data = b""  # 150 cut at random places, and a GET_STATUS
    for _ in range(150):
        stamp += 1
        stamps.append(stamp)
        data += line(1, {"timestamp": stamp})
    data += line(6)
    while data:
        cut = rng.randint(1, 97)
        conn.send_raw(data[:cut])
        data = data[cut:]
        collect(0)
    end = time.monotonic() + 3.0
    while (len(pongs) < len(stamps) or not status_seen) and time.monotonic() < end and not conn.closed:
        collect(0.1)
    return stamps, pongs, bool(status_seen)


def s_fragmented(ctx: Context) -> dict[str, Any]:
    """Messages split across many writes (down to a byte a write) and many messages in one
    write: each is answered once, in order. A new connection a round (PING's budget is
    1,200 a minute a connection), for the duration."""
    rng = random.Random(7)
    totals = {"pings": 0, "pongs": 0, "in_order": True, "status": True, "rounds": 0}
    while ctx.running() and totals["rounds"] < 10:
        totals["rounds"] += 1
        conn = fresh(ctx)
        assert conn is not None
        stamps, pongs, status = _fragmented_round(conn, rng)
        conn.close()
        totals["pings"] += len(stamps)
        totals["pongs"] += len(pongs)
        totals["in_order"] = totals["in_order"] and pongs == stamps
        totals["status"] = totals["status"] and status
        time.sleep(0.1)
    return totals


def s_unsolicited_block_data(ctx: Context) -> dict[str, Any]:
    """BLOCK_DATA nobody asked for: the node's own blocks (fetched from it) sent back, and
    blocks whose parent it does not have (--data "orphans")."""
    conn = fresh(ctx)
    assert conn is not None
    status = seed_handshake(conn)
    own = []
    for height in range(1, status["height"] + 1):
        conn.send(4, {"height": height})
        data = conn.wait_for(5)
        if data is not None:
            own.append(line(5, data))
    orphans = [line(5, {"height": b["header"]["height"], "blockData": b}) for b in ctx.data.get("orphans", [])]
    requests: list[Any] = []
    sent = 0
    while ctx.running() and not conn.closed and sent < 3000:
        for raw in own + orphans:
            if not conn.send_raw(raw):
                break
            sent += 1
        time.sleep(0.01)
        for message in conn.read(0.01):
            if message.get("type") == 4:
                requests.append(message["payload"].get("height"))
    conn.close()
    return {"own_blocks": len(own), "orphans": len(orphans), "block_data_sent": sent,
            "get_block_requests": len(requests), "requested_heights": sorted(set(requests))}


def s_invalid_block(ctx: Context) -> dict[str, Any]:
    """Invalid blocks at the next height (--data "invalid"): each twice, on new connections."""
    blocks = [line(5, {"height": b["header"]["height"], "blockData": b}) for b in ctx.data["invalid"]]
    per_conn: list[Any] = []
    while ctx.running() and len(per_conn) < 12:
        conn = fresh(ctx)
        if conn is None:
            break
        seed_handshake(conn)
        sent = 0
        for data in blocks + blocks:
            if not conn.send_raw(data):
                break
            sent += 1
            conn.read(0.2)  # the node verifies in its thread pool meanwhile
            if conn.closed:
                break
        per_conn.append({"sent": sent, "closed": conn.wait_closed(min(3.0, ctx.left() + 1))})
        conn.close()
        time.sleep(0.1)
    return {"connections_detail": per_conn}


def s_hash_mismatch(ctx: Context) -> dict[str, Any]:
    """NEW_BLOCK for one hash; the GET_BLOCK it draws gets another block (--data "reply")."""
    conn = fresh(ctx)
    assert conn is not None
    status = seed_handshake(conn)
    reply = ctx.data["reply"]
    height = reply["header"]["height"]
    announced = ctx.data.get("announce") or os.urandom(32).hex()
    announcements = replies = 0
    requests: list[Any] = []
    next_announce = 0.0
    while ctx.running() and not conn.closed:
        now = time.monotonic()
        if now >= next_announce and announcements < 20:
            conn.send(3, {"height": height, "hash": announced})
            announcements += 1
            next_announce = now + 0.1
        for message in conn.read(0.05):
            if message.get("type") == 4:
                requests.append(message["payload"].get("height"))
                if message["payload"].get("height") == height:
                    conn.send(5, {"height": height, "blockData": reply})
                    replies += 1
    conn.close()
    return {"node_height": status["height"], "announced": announced, "announcements": announcements,
            "get_block_requests": len(requests), "requested_heights": sorted(set(requests)), "replies": replies}


def s_huge_status(ctx: Context) -> dict[str, Any]:
    """A seed peer whose STATUS claims height and weight 10^18 and which serves the node's
    own blocks back to it (it asks the node for each height the node asks it for)."""
    conn = fresh(ctx)
    assert conn is not None
    claim = {"height": 10**18, "weight": 10**18, "difficulty": 1, "tipHash": os.urandom(32).hex()}
    seed_handshake(conn, claim)
    asked = echoed = 0
    while ctx.running() and not conn.closed:
        for message in conn.read(0.05):
            kind = message.get("type")
            if kind == 4:
                asked += 1
                conn.send(4, message["payload"])
            elif kind == 5:
                echoed += 1
                conn.send_raw(message["raw"] + b"\n")
    conn.close()
    return {"get_block_from_node": asked, "blocks_echoed": echoed}


def s_slowloris(ctx: Context) -> dict[str, Any]:
    """20 connections each trickling PINGs a byte at a time, one trickling a line that never
    ends; complete lines are answered, the rest only held."""
    conns = [c for c in (fresh(ctx) for _ in range(20)) if c is not None]
    endless = fresh(ctx)
    pending = {id(c): b"" for c in conns}
    stamps = {id(c): 0 for c in conns}
    completed = pongs = endless_bytes = 0
    while ctx.running():
        for c in conns:
            if not pending[id(c)]:
                stamps[id(c)] += 1
                pending[id(c)] = line(1, {"timestamp": stamps[id(c)]})
            if c.send_raw(pending[id(c)][:1]):
                pending[id(c)] = pending[id(c)][1:]
                if not pending[id(c)]:
                    completed += 1
            pongs += sum(1 for m in c.read(0) if m.get("type") == 2)
        if endless is not None and endless.send_raw(b"z"):
            endless_bytes += 1
            endless.read(0)
        time.sleep(0.02)
    end = time.monotonic() + 2.0
    while pongs < completed and time.monotonic() < end:
        for c in conns:
            pongs += sum(1 for m in c.read(0.01) if m.get("type") == 2)
    closed = sum(1 for c in conns if c.closed) + (1 if endless is not None and endless.closed else 0)
    for c in conns + ([endless] if endless is not None else []):
        c.close()
    return {"trickling": len(conns), "pings_completed": completed, "pongs": pongs,
            "endless_line_bytes": endless_bytes, "closed_during": closed}


def s_conn_flood(ctx: Context) -> dict[str, Any]:
    """Open --data "count" (200) connections at once (non-blocking connects, so the SYNs
    arrive together) and hold them, reading nothing; then count how many the node closed."""
    count = int(ctx.data.get("count", 200))
    pending: dict[int, socket.socket] = {}
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((ctx.source, 0))
        sock.setblocking(False)
        sock.connect_ex((ctx.host, ctx.port))
        pending[sock.fileno()] = sock
    opened: list[socket.socket] = []
    failed = 0
    while pending and ctx.running():
        _, writable, _ = select.select([], list(pending.values()), [], 0.1)
        for sock in writable:
            del pending[sock.fileno()]
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                opened.append(sock)
            else:
                failed += 1
                sock.close()
    opened_in = time.monotonic() - ctx.started
    ctx.count("connections", len(opened))
    ctx.count("connect_failures", failed + len(pending))
    for sock in pending.values():
        sock.close()
    while ctx.running():
        time.sleep(0.05)
    closed = 0
    for sock in opened:
        try:
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    closed += 1  # EOF: the node closed it
                    break
                ctx.stats["bytes_received"] += len(chunk)
        except BlockingIOError:
            pass  # still open
        except OSError:
            closed += 1  # reset by the node
    ctx.count("closed_by_node", closed)
    for sock in opened:
        sock.close()
    return {"opened": len(opened), "opened_in_seconds": round(opened_in, 3), "closed_by_node_count": closed,
            "still_open": len(opened) - closed}


def s_junk_flood(ctx: Context) -> dict[str, Any]:
    """Maximal lines, on connection after connection: 64 KiB of junk before READY, 4 MiB
    JSON lines (reserved type 0, read and dropped) after it, and 1 MiB of blank lines."""
    pre = b"x" * (HANDSHAKE_LINE - 1) + b"\n"
    head = b'{"type":0,"payload":{"pad":"'
    tail = b'"}}'
    big = head + b"p" * (MAX_LINE - len(head) - len(tail)) + tail + b"\n"
    assert len(big) == MAX_LINE + 1
    blank = b"\n" * (1 << 20)  # not metered: empty lines are skipped before the rate limits
    counts = {"pre_ready_lines": 0, "max_lines": 0, "blank_mib": 0, "cycles": 0}
    while ctx.running() and counts["cycles"] < 40:
        counts["cycles"] += 1
        conn = fresh(ctx)
        if conn is not None:
            counts["pre_ready_lines"] += until_closed(ctx, conn, [pre], rounds=30)
            conn.close()
        conn = fresh(ctx)
        if conn is not None:
            seed_handshake(conn)
            counts["max_lines"] += until_closed(ctx, conn, [big], rounds=30)
            conn.close()
        conn = fresh(ctx)
        if conn is not None:
            for _ in range(2):
                if not ctx.running() or not conn.send_raw(blank, timeout=1.0):
                    break
                counts["blank_mib"] += 1
            conn.close()
    return counts


def s_sync_blocks_silent(ctx: Context) -> dict[str, Any]:
    """An Archivas peer (HELLO done) claiming the tip in --data "claim": it answers GET_HASHES
    from --data "hashes" but never REQUEST_BLOCKS (nor GET_BLOCK)."""
    conn = fresh(ctx)
    assert conn is not None
    archivas_handshake(conn, ctx.data["claim"])
    hashes = ctx.data["hashes"]
    counts = {"request_blocks": 0, "get_hashes": 0, "get_block": 0}
    while ctx.running() and not conn.closed:
        for message in conn.read(0.05):
            kind, payload = message.get("type"), message.get("payload") or {}
            if kind == 13:
                counts["request_blocks"] += 1  # swallowed
            elif kind == 4:
                counts["get_block"] += 1
            elif kind == 103:
                counts["get_hashes"] += 1
                start, n = payload["start"], payload["count"]
                conn.send(104, {"start": start, "hashes": hashes[start:start + n]})
    conn.close()
    return counts


def s_sync_block_silent(ctx: Context) -> dict[str, Any]:
    """A seed peer claiming the tip in --data "claim" that never answers GET_BLOCK."""
    conn = fresh(ctx)
    assert conn is not None
    seed_handshake(conn, ctx.data["claim"])
    asked = 0
    while ctx.running() and not conn.closed:
        asked += sum(1 for m in conn.read(0.05) if m.get("type") == 4)
    conn.close()
    return {"get_block": asked}


def s_amplification(ctx: Context) -> dict[str, Any]:
    """GET_BLOCK for existing heights as fast as the limits allow (60,000 a minute, a
    minute's budget at once), from small-window sockets that never read: two READY seed
    peers and one that never handshakes."""
    heights = int(ctx.data.get("height", 1))
    budget = int(ctx.data.get("budget", 50_000))  # per connection, under the 60,000/min limit
    conns = []
    for ready in (True, True, False):
        c = fresh(ctx, rcvbuf=4096)
        if c is None:
            continue
        if ready:
            seed_handshake(c)
        c.answer_pings = False
        conns.append(c)
    requests = b"".join(line(4, {"height": 1 + i % heights}) for i in range(budget))
    offsets = [0] * len(conns)
    while ctx.running():
        progressed = False
        for i, c in enumerate(conns):
            if offsets[i] < len(requests) and not c.closed:
                n = c.send_some(requests[offsets[i]:offsets[i] + 65536], 0.01)
                offsets[i] += n
                progressed = progressed or n > 0
        if not progressed:
            time.sleep(0.02)
    sizes = [len(line(4, {"height": 1 + i % heights})) for i in range(budget)]
    sent_requests = []
    for off in offsets:
        total = n = 0
        for size in sizes:
            if total + size > off:
                break
            total += size
            n += 1
        sent_requests.append(n)
    # What the node managed to write meanwhile, waiting unread in our receive queues (FIONREAD:
    # reading it would let the node go on).
    readable = []
    for c in conns:
        try:
            readable.append(struct.unpack("i", fcntl.ioctl(c.sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])
        except OSError:
            readable.append(0)
    closed = [c.closed for c in conns]
    for c in conns:
        c.close()
    return {"request_bytes": offsets, "requests_sent": sent_requests, "unread_at_end": readable,
            "closed": closed}


def s_stray_pong(ctx: Context) -> dict[str, Any]:
    """PONGs that answer no PING: from a READY seed peer and from one that never handshakes."""
    ready = fresh(ctx)
    bare = fresh(ctx)
    assert ready is not None and bare is not None
    seed_handshake(ready)
    rng = random.Random(3)
    sent = 0
    while ctx.running() and sent < 1000:
        for c in (ready, bare):
            c.send(2, {"timestamp": rng.choice([0, 1, int(time.time()), rng.randint(0, 2**40)])})
            c.read(0)
        sent += 2
        time.sleep(0.005)
    closed = [ready.closed, bare.closed]
    ready.close()
    bare.close()
    return {"pongs_sent": sent, "closed": closed}


def s_silent_peer(ctx: Context) -> dict[str, Any]:
    """READY seed peers (and one that never handshakes) that then say nothing, PINGs
    included: how long until the node drops each."""
    conns = [c for c in (fresh(ctx) for _ in range(5)) if c is not None]
    last_word = []
    for c in conns[:4]:
        seed_handshake(c)
    for c in conns:
        c.answer_pings = False
        last_word.append(time.monotonic())
    pings = [0] * len(conns)
    while ctx.running() and not all(c.closed for c in conns):
        for i, c in enumerate(conns):
            pings[i] += sum(1 for m in c.read(0.02) if m.get("type") == 1)
    lasted = [round(c.closed_at - t, 3) if c.closed_at is not None else None for c, t in zip(conns, last_word)]
    for c in conns:
        c.close()
    return {"pings_unanswered": pings, "dropped_after": lasted}


def s_peer_exchange(ctx: Context) -> dict[str, Any]:
    """GOSSIP_PEERS floods: from a seed peer (never acted on) and from an Archivas peer that
    announced "peers" (stored, rate-limited, never dialed on arrival); another network's
    lists too."""
    seed = fresh(ctx)
    arch = fresh(ctx)
    assert seed is not None and arch is not None
    seed_handshake(seed)
    status = archivas_handshake(arch)
    counter = 0

    def addrs() -> list[str]:
        nonlocal counter
        out = []
        for _ in range(64):
            counter += 1
            out.append(f"{('192.0.2', '198.51.100', '203.0.113')[counter % 3]}.{counter % 250 + 1}:{9000 + counter}")
        return out

    sent = {"seed": 0, "archivas": 0, "other_network": 0}
    while ctx.running() and sent["archivas"] < 45:
        seed.send(8, {"addrs": addrs(), "seenAt": 0, "netId": status["network"]})
        sent["seed"] += 1
        arch.send(8, {"addrs": addrs(), "seenAt": int(time.time()), "netId": status["network"]})
        sent["archivas"] += 1
        if sent["archivas"] % 5 == 0:
            arch.send(8, {"addrs": addrs(), "seenAt": 0, "netId": "othernet"})
            sent["other_network"] += 1
        seed.read(0)
        arch.read(0)
        time.sleep(0.03)
    while ctx.running():
        seed.read(0.05)
        arch.read(0.05)
    closed = [seed.closed, arch.closed]
    seed.close()
    arch.close()
    return {"messages": sent, "addresses_offered": counter, "closed": closed}


def s_idle_sockets(ctx: Context) -> dict[str, Any]:
    """30 sockets that answer every PING and never send STATUS: how long until each is closed."""
    conns = [c for c in (fresh(ctx) for _ in range(30)) if c is not None]
    pongs = [0] * len(conns)
    while ctx.running() and not all(c.closed for c in conns):
        for i, c in enumerate(conns):
            pongs[i] += sum(1 for m in c.read(0.005) if m.get("type") == 1)  # read() answers each
    lasted = [round(c.closed_at - c.opened_at, 3) if c.closed_at is not None else None for c in conns]
    for c in conns:
        c.close()
    return {"sockets": len(conns), "pings_answered": sum(pongs), "closed_after": lasted}


SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "long_line": s_long_line,
    "bad_json": s_bad_json,
    "unknown_type": s_unknown_type,
    "wrong_types": s_wrong_types,
    "fragmented": s_fragmented,
    "unsolicited_block_data": s_unsolicited_block_data,
    "invalid_block": s_invalid_block,
    "hash_mismatch": s_hash_mismatch,
    "huge_status": s_huge_status,
    "slowloris": s_slowloris,
    "conn_flood": s_conn_flood,
    "junk_flood": s_junk_flood,
    "sync_blocks_silent": s_sync_blocks_silent,
    "sync_block_silent": s_sync_block_silent,
    "amplification": s_amplification,
    "stray_pong": s_stray_pong,
    "silent_peer": s_silent_peer,
    "peer_exchange": s_peer_exchange,
    "idle_sockets": s_idle_sockets,
}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", default="127.0.0.66")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--data", default=None)
    parser.add_argument("--stdin-stop", action="store_true", help="stop early when stdin closes")
    args = parser.parse_args(argv)
    if not args.source.startswith("127."):
        parser.error("--source must be a loopback address")
    ctx = Context(args)
    report: dict[str, Any] = {"scenario": args.scenario}

    def hard_timeout(signum: int, frame: object) -> None:
        report.update(ctx.stats, error="hard timeout")
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()
        os._exit(3)

    signal.signal(signal.SIGALRM, hard_timeout)
    signal.alarm(int(args.duration) + HARD_TIMEOUT_MARGIN)

    def watch_stdin() -> None:
        try:
            while os.read(0, 4096):  # unbuffered: no lock for the interpreter's shutdown to wait on
                pass
        except OSError:
            pass
        ctx.stop.set()  # the test closed our stdin: stop now

    if args.stdin_stop:
        threading.Thread(target=watch_stdin, daemon=True).start()
    code = 0
    try:
        report.update(SCENARIOS[args.scenario](ctx))
    except Exception as e:  # reported, not raised: the test reads the line
        report["error"] = f"{type(e).__name__}: {e}"
        code = 1
    report.update(ctx.stats)
    report["elapsed"] = round(time.monotonic() - ctx.started, 3)
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    os._exit(status)  # without waiting for the stdin watcher
