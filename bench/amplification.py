"""Measure the bytes a node sends per byte an amplification peer sends it, and an honest peer's ping meanwhile.

One job: print a markdown table, one column per attacker, of what a peer asking GET_BLOCK
for existing heights as fast as it can (about 36 bytes a request, a whole block a reply)
sent, what the node wrote to it, the ratio, the node's RSS and reactor lag, and the round
trips of an honest peer's PINGs (one each 0.2 s) before, during and after.

The node runs in a child process (`--serve PORT --db DIR`: a copy of a fastnet chain of
--blocks blocks, from the validation bench's cached chain; the node harness of
bench/peer_memory.py, which answers "report" lines on stdin with JSON: RSS, lag, and here
each peer's bytes in and out as its PeerInfo counts them, with what is still queued in
Twisted and in the kernel). The attacker is another child (`--attack`, plain sockets): a
seed peer (its STATUS is all its handshake) from 127.0.66.1 that, for --seconds, writes
GET_BLOCK lines for existing heights, as fast as its socket takes them or at 900 a second
(under GET_BLOCK's rate limit), and either never reads (SO_RCVBUF 4 KiB) or reads
everything; a connection the node closes is replaced at once. Then it is told to drain
(read until the node goes quiet, with a deadline). The honest peer is a seed peer from
127.0.77.1 in this process. Each attacker gets a fresh node.

    .venv/bin/python bench/amplification.py            # 200 blocks, 15 s attacks
    .venv/bin/python bench/amplification.py --quick    # 50 blocks, 5 s attacks
"""

from __future__ import annotations

import argparse
import fcntl
import json
import select
import shutil
import socket
import struct
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import peer_memory as pm  # the node child, its commands, the child-process driver, tables
import validation_throughput as vt  # cached chains, machine(), notes
from twisted.internet import defer, endpoints, protocol, task
from twisted.protocols.basic import LineReceiver

from archivas.chain.block import genesis_block
from archivas.protocols import wire

SCRIPT = Path(__file__).resolve()
NETWORK = "fastnet"
ATTACKER_HOST = "127.0.66.1"
HONEST_HOST = "127.0.77.1"
PING_EVERY = 0.2
SMALL_RCVBUF = 4096
ATTACK_DEADLINE = 60.0  # beyond --seconds: the attacker's window line must come by then
DRAIN_QUIET = 2.0  # the drain ends when nothing came for this long


# The node: --serve


def peer_stats(proto: Any) -> dict[str, Any]:
    """One connection as the node sees it: PeerInfo's counters, and what is still queued."""
    info = proto.info
    out: dict[str, Any] = {
        "host": info.host, "port": info.port, "state": info.state.value, "ready": info.ready_at is not None,
        "bytes_in": sum(info.bytes_in.values()), "bytes_out": sum(info.bytes_out.values()),
        "bytes_out_by_type": dict(info.bytes_out), "messages_in": dict(info.messages_in),
        "messages_out": dict(info.messages_out), "writes_paused": proto.writes_paused,
        "misbehaviour": info.misbehaviour,
        "read_buffer": len(getattr(proto, "_partial", b"")),  # read, not yet framed (PeerProtocol's)
    }
    t = proto.transport
    if t is not None:
        # Twisted's write buffer (FileDescriptor: dataBuffer from offset, then _tempDataBuffer).
        out["twisted_queued"] = (len(getattr(t, "dataBuffer", b"")) - getattr(t, "offset", 0)
                                 + getattr(t, "_tempDataLen", 0))
        try:
            fd = t.fileno()
            out["kernel_unsent"] = struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            out["kernel_unread"] = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except (OSError, ValueError, AttributeError):
            pass
    return out


def serve(port: int, db: str) -> None:
    """--serve: a copy of the chain in `db`, a node on it, until told to quit."""
    from archivas.chain.blockchain import Chain

    pm.raise_nofile()
    vt.warnings_to_stderr()
    params = vt.bench_params(NETWORK)
    closed: dict[str, dict[str, Any]] = {}  # host -> its closed connections' counters, summed

    def setup(node: Any) -> None:
        peer_lost = node.peer_lost

        def record(proto: Any) -> None:  # a closed peer leaves node.peers.peers: keep its counts
            stats = peer_stats(proto)
            total = closed.setdefault(stats["host"], {"host": stats["host"], "connections": 0, "bytes_in": 0,
                                                      "bytes_out": 0, "get_blocks": 0})
            total["connections"] += 1
            total["bytes_in"] += stats["bytes_in"]
            total["bytes_out"] += stats["bytes_out"]
            total["get_blocks"] += stats["messages_in"].get("GET_BLOCK", 0)
            peer_lost(proto)

        node.peer_lost = record  # the manager calls its events' (the node's) peer_lost

    def peers(node: Any, lag: pm.LagMeter) -> dict[str, Any]:
        return {"rss": pm.rss_bytes(), "hwm": pm._status_field("VmHWM"), "lag": pm.summary_ms(lag.samples),
                "open": [peer_stats(p) for p in node.peers.peers if p.info is not None],
                "closed": list(closed.values()),
                "misbehaviour": dict(node.peers.misbehaviour_counts), "time": node.reactor.seconds()}

    async def main(reactor: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="archivas-bench-amp-") as directory:
            copy = Path(directory) / "chain"
            shutil.copytree(db, copy)
            chain = Chain.open(str(copy), params)
            try:
                await pm.serve_node(reactor, chain, port, extra={"peers": peers}, setup=setup)
            finally:
                chain.close()

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))


def make_db(directory: Path, blocks: Sequence[Any]) -> None:
    """The chain the nodes copy: genesis and `blocks`, added once here."""
    from archivas.chain.blockchain import ADDED_TIP, Chain

    chain = Chain.open(str(directory), vt.bench_params(NETWORK))
    try:
        now = vt.now_ms()
        for block in blocks:
            if chain.add_block(block, now).status != ADDED_TIP:
                raise RuntimeError(f"block {block.height} did not become the tip")
    finally:
        chain.close()


# The attacker: --attack (plain sockets, no reactor)


def request_heights(tip: int) -> range:
    """Existing heights whose GET_BLOCK lines all have one length: the widest such range."""
    for low in (100, 10, 1):
        if tip >= low:
            return range(low, min(tip, low * 10 - 1) + 1)
    raise ValueError("the chain has no block above genesis")


class Attacker:
    """The attacker's connection(s): one at a time, each a seed peer; a closed one is
    replaced at once (a loopback peer is never discouraged) until the window ends."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        heights = request_heights(args.tip)
        self.heights = (heights[0], heights[-1])
        lines = [wire.encode(wire.GetBlock(h)) + b"\n" for h in heights]
        self.line_len = len(lines[0])
        assert all(len(x) == self.line_len for x in lines)
        self.cycle = self.line_len * len(lines)
        self.stream = b"".join(lines) * (2 + 65536 // self.cycle)  # any 64 KiB from any offset < cycle
        status = {"type": wire.Status.TYPE, "payload": {"height": 0, "difficulty": 1, "tipHash": args.genesis}}
        self.status = json.dumps(status, separators=(",", ":")).encode() + b"\n"
        self.sent = self.received = self.requests = 0
        self.connections = 0
        self.closes: list[tuple[float, str]] = []  # (seconds into the window, why)
        self.refused = 0
        self.sock: Optional[socket.socket] = None

    def connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if not self.args.read:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)  # before connect: the window
        sock.bind((self.args.src, 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.args.port))
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.connections += 1
        self.pending = self.status
        self.conn_sent = 0
        self.offset = 0  # into the cyclic request stream

    def closed(self, start: float, reason: str) -> None:
        assert self.sock is not None
        self.closes.append((time.monotonic() - start, reason))
        self.requests += max(0, self.conn_sent - len(self.status)) // self.line_len
        self.sock.close()
        self.sock = None

    def window(self, seconds: float) -> float:
        """Write GET_BLOCKs (and read, if told) for `seconds`; returns when it ended."""
        args = self.args
        start = time.monotonic()
        end = start + seconds
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if self.sock is None:
                try:
                    self.connect()
                except OSError:
                    self.refused += 1
                    time.sleep(0.01)
                    continue
            sock = self.sock
            assert sock is not None
            size = 65536
            if args.rate > 0:  # whole requests only, at most rate a second since the start
                done = self.requests + max(0, self.conn_sent - len(self.status)) // self.line_len
                size = min(size, int((now - start) * args.rate - done) * self.line_len) if not self.pending else 65536
            timeout = min(0.005 if args.rate > 0 else 0.05, end - now)
            readable, writable, _ = select.select([sock] if args.read else [], [sock] if size > 0 else [], [],
                                                  timeout)
            try:
                if writable:
                    if self.pending:
                        n = sock.send(self.pending)
                        self.pending = self.pending[n:]
                    else:
                        n = sock.send(self.stream[self.offset:self.offset + size])
                        self.offset = (self.offset + n) % self.cycle
                    self.sent += n
                    self.conn_sent += n
                if readable:
                    data = sock.recv(1 << 20)
                    if not data:
                        self.closed(start, "node closed the connection")
                    self.received += len(data)
            except BlockingIOError:
                pass
            except OSError as e:
                self.closed(start, f"{type(e).__name__}: {e}")
        if self.sock is not None:
            self.requests += max(0, self.conn_sent - len(self.status)) // self.line_len
        return time.monotonic() - start

    def drain(self) -> dict[str, Any]:
        """Read the open connection until the node is quiet, closes it, or --drain passes."""
        start = last_data = time.monotonic()
        drained, end, closed = 0, "no connection open", False
        sock = self.sock
        while sock is not None:
            now = time.monotonic()
            if now - last_data > DRAIN_QUIET:
                end = "quiet"
                break
            if now - start > self.args.drain:
                end = "drain deadline"
                break
            readable, _, _ = select.select([sock], [], [], 0.1)
            if not readable:
                continue
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError as e:
                end, closed = f"{type(e).__name__}: {e}", True
                break
            if not data:
                end, closed = "node closed the connection", True
                break
            drained += len(data)
            last_data = time.monotonic()
        if sock is not None:
            sock.close()
        return {"bytes": drained, "seconds": time.monotonic() - start, "end": end, "closed": closed}


def attack(args: argparse.Namespace) -> None:
    """--attack: connect, then write GET_BLOCKs for --seconds (reading or not), report; on a
    line on stdin, drain the last connection, report, exit."""
    attacker = Attacker(args)
    attacker.connect()
    assert attacker.sock is not None
    print(json.dumps({"connected": True, "rcvbuf": attacker.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                      "line_bytes": attacker.line_len, "heights": attacker.heights}), flush=True)
    seconds = attacker.window(args.seconds)
    print(json.dumps({"window": {"seconds": seconds, "sent": attacker.sent, "requests": attacker.requests,
                                 "received": attacker.received, "connections": attacker.connections,
                                 "closes": attacker.closes, "refused": attacker.refused}}), flush=True)
    sys.stdin.readline()  # "drain"
    print(json.dumps({"drained": attacker.drain()}), flush=True)


# The honest peer (in this process)


class Honest(LineReceiver):
    """A seed peer that PINGs each PING_EVERY s (the timestamp field carries a sequence
    number, which the PONG echoes) and keeps each round trip under the phase it began in."""

    delimiter = b"\n"
    MAX_LENGTH = 8 * 1024 * 1024

    def __init__(self, reactor: Any, status: bytes) -> None:
        self.reactor = reactor
        self.status_line = status
        self.phase = "before"
        self.sent: dict[int, tuple[float, str]] = {}
        self.rtts: dict[str, list[float]] = {}
        self.seq = 0
        self.ready: defer.Deferred = defer.Deferred()
        self._loop: Any = None
        self.closed = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.setTcpNoDelay(True)
        self.transport.write(self.status_line)

    def lineReceived(self, line: bytes) -> None:
        envelope = wire.decode_envelope(line)
        if envelope.type == wire.GetStatus.TYPE:
            self.transport.write(self.status_line)
        elif envelope.type == wire.Ping.TYPE:
            self.transport.write(wire.encode(wire.Pong(envelope.payload.get("timestamp", 0))) + b"\n")
        elif envelope.type == wire.Pong.TYPE:
            entry = self.sent.pop(envelope.payload.get("timestamp"), None)
            if entry is not None:
                self.rtts.setdefault(entry[1], []).append(self.reactor.seconds() - entry[0])
                if not self.ready.called:
                    self.ready.callback(self)

    def start(self) -> None:
        self._loop = task.LoopingCall(self.ping)
        self._loop.clock = self.reactor
        self._loop.start(PING_EVERY)

    def ping(self) -> None:
        if self.closed:
            return
        self.seq += 1
        self.sent[self.seq] = (self.reactor.seconds(), self.phase)
        self.transport.write(wire.encode(wire.Ping(self.seq)) + b"\n")

    def unanswered(self, phase: str) -> int:
        return sum(1 for _, p in self.sent.values() if p == phase)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True


# One attacker against one fresh node


VARIANTS = {
    "no-read": ("never reads, full speed", {"read": False, "rate": 0}),
    "read": ("reads, full speed", {"read": True, "rate": 0}),
    "read-paced": ("reads, 900 req/s", {"read": True, "rate": 900}),
    "no-read-paced": ("never reads, 900 req/s", {"read": False, "rate": 900}),
}


async def sample_until(reactor: Any, node: pm.ChildProcess, waiting: defer.Deferred) -> list[dict[str, Any]]:
    """The node's `peers` report once a second until `waiting` fires."""
    samples = []
    while not waiting.called:
        await pm.sleep(reactor, 1.0)
        if not waiting.called:
            samples.append(await node.command("peers"))
    return samples


def phase_max(samples: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The largest RSS and attacker queues among a phase's samples."""
    views = [attacker_view(x) for x in samples]
    out = {key: max(v.get(key, 0) for v in views) for key in ("twisted_queued", "kernel_unsent", "read_buffer")}
    out["rss"] = max(x["rss"] for x in samples)
    return out


async def run_variant(reactor: Any, args: argparse.Namespace, db: Path, tip: int, key: str) -> dict[str, Any]:
    genesis = genesis_block(vt.bench_params(NETWORK)).hash.hex()
    status = json.dumps({"type": wire.Status.TYPE, "payload": {"height": 0, "difficulty": 1, "tipHash": genesis}},
                        separators=(",", ":")).encode() + b"\n"
    node = pm.ChildProcess(reactor, ["--serve", "0", "--db", str(db)], "node", script=SCRIPT).spawn()
    attacker: Optional[pm.ChildProcess] = None
    honest: Optional[Honest] = None
    out: dict[str, Any] = {"key": key}
    try:
        port = (await node.started())["listening"]
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10, bindAddress=(HONEST_HOST, 0))
        honest = await endpoint.connect(protocol.Factory.forProtocol(lambda: Honest(reactor, status)))
        honest.start()
        await honest.ready.addTimeout(pm.START_DEADLINE, reactor)
        await pm.sleep(reactor, args.before)
        out["before"] = await node.command("rss")
        await node.command("reset")

        options = VARIANTS[key][1]
        attack_args = ["--attack", "--port", str(port), "--src", ATTACKER_HOST, "--seconds", str(args.seconds),
                       "--tip", str(tip), "--genesis", genesis, "--drain", str(args.drain),
                       "--rate", str(options["rate"])] + (["--read"] if options["read"] else [])
        attacker = pm.ChildProcess(reactor, attack_args, "attacker", script=SCRIPT).spawn()
        out["attacker"] = await attacker.started()
        honest.phase = "attack"
        window_line = attacker.next_line(args.seconds + ATTACK_DEADLINE)
        samples = await sample_until(reactor, node, window_line)
        out["window"] = (await window_line)["window"]
        out["at_window"] = await node.command("peers")
        out["attack_max"] = phase_max(samples + [out["at_window"]])

        honest.phase = "drain"
        await node.command("reset")
        drained = defer.ensureDeferred(attacker.command("drain", args.drain + ATTACK_DEADLINE))
        samples = await sample_until(reactor, node, drained)
        out["drained"] = (await drained)["drained"]
        out["drain_max"] = phase_max(samples + [await node.command("peers")])
        honest.phase = "after"
        await node.command("reset")
        await pm.sleep(reactor, args.after)
        out["after"] = await node.command("peers")
        out["pings"] = {phase: pm.summary_ms(rtts) for phase, rtts in honest.rtts.items()}
        out["unanswered"] = {phase: honest.unanswered(phase) for phase in ("before", "attack", "drain", "after")}
        return out
    finally:
        if honest is not None:
            honest.stop()
        if attacker is not None:
            await attacker.stop()
        await node.stop()


# Printing


def attacker_view(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The attacker's connections in a `peers` report, open and closed, summed; the queues
    are the open one's."""
    out: dict[str, Any] = {"connections": 0, "bytes_in": 0, "bytes_out": 0, "get_blocks": 0}
    for p in snapshot["closed"]:
        if p["host"] == ATTACKER_HOST:
            for key in ("connections", "bytes_in", "bytes_out", "get_blocks"):
                out[key] += p[key]
    for p in snapshot["open"]:
        if p["host"] == ATTACKER_HOST:
            out["connections"] += 1
            out["bytes_in"] += p["bytes_in"]
            out["bytes_out"] += p["bytes_out"]
            out["get_blocks"] += p["messages_in"].get("GET_BLOCK", 0)
            for key in ("twisted_queued", "kernel_unsent", "kernel_unread", "writes_paused", "read_buffer"):
                out[key] = p.get(key, 0)
    return out


def ratio(a: float, b: float) -> str:
    return f"{a / b:,.1f}" if b else "-"


def print_results(results: Sequence[dict[str, Any]], args: argparse.Namespace, block_bytes: float) -> None:
    labels = [VARIANTS[r["key"]][0] for r in results]
    rows: list[list[str]] = []

    def row(name: str, values: Sequence[str]) -> None:
        rows.append([name, *values])

    def mib(n: float) -> str:
        return f"{n / 2**20:,.2f}"

    at = [attacker_view(r["at_window"]) for r in results]
    after = [attacker_view(r["after"]) for r in results]
    row("attacker: bytes sent (taken by its socket), MiB", [mib(r["window"]["sent"]) for r in results])
    row("attacker: GET_BLOCK requests sent", [f"{r['window']['requests']:,}" for r in results])
    row("attacker: bytes it read, MiB", [mib(r["window"]["received"]) for r in results])
    row("attacker: connections (a closed one is replaced)", [str(r["window"]["connections"]) for r in results])
    row("  closed by the node: count, first at s (why)", [_closes(r["window"]) for r in results])
    row("node: bytes it read from the attacker, MiB", [mib(a.get("bytes_in", 0)) for a in at])
    row("node: GET_BLOCKs handled", [f"{a['get_blocks']:,}" for a in at])
    row("node: bytes it wrote to the attacker, MiB", [mib(a.get("bytes_out", 0)) for a in at])
    row("  of which still in Twisted's buffer, KiB", [f"{a.get('twisted_queued', 0) / 1024:,.0f}" for a in at])
    row("  of which in the kernel, unsent, KiB", [f"{a.get('kernel_unsent', 0) / 1024:,.0f}" for a in at])
    row("node: attacker's bytes in its kernel, unread, KiB", [f"{a.get('kernel_unread', 0) / 1024:,.0f}" for a in at])
    row("RATIO node wrote / node read", [ratio(a.get("bytes_out", 0), a.get("bytes_in", 0)) for a in at])
    row("RATIO node wrote / attacker sent", [ratio(a.get("bytes_out", 0), r["window"]["sent"])
                                             for a, r in zip(at, results)])
    row("node: writes paused (backpressure) at the end", [str(a.get("writes_paused", "-")) for a in at])
    row("then drained by the attacker, MiB", [mib(r["drained"]["bytes"]) for r in results])
    row("  drain ended", [_drain_end(r["drained"]) for r in results])
    row("after the drain: node wrote in all, MiB", [mib(a.get("bytes_out", 0)) for a in after])
    row("after the drain: node read in all, MiB", [mib(a.get("bytes_in", 0)) for a in after])
    row("RATIO in all: node wrote / node read", [ratio(a.get("bytes_out", 0), a.get("bytes_in", 0)) for a in after])
    row("RATIO in all: attacker read / attacker sent",
        [ratio(r["window"]["received"] + r["drained"]["bytes"], r["window"]["sent"]) for r in results])
    row("node RSS before, MiB", [mib(r["before"]["rss"]) for r in results])
    for phase, name in (("attack_max", "attack"), ("drain_max", "drain")):
        row(f"node RSS during the {name} (max of 1 s samples), MiB", [mib(r[phase]["rss"]) for r in results])
        row("  max: attacker's unframed input in the node, MiB", [mib(r[phase]["read_buffer"]) for r in results])
        row("  max: Twisted write buffer to the attacker, MiB", [mib(r[phase]["twisted_queued"]) for r in results])
    row("node RSS after the drain, MiB", [mib(r["after"]["rss"]) for r in results])
    row("node reactor lag during the attack p99 / max, ms",
        [f"{pm.ms(r['at_window']['lag']['p99'])} / {pm.ms(r['at_window']['lag']['max'])}" for r in results])
    for phase, name in (("before", "honest ping before"), ("attack", "honest ping during the attack"),
                        ("drain", "honest ping during the drain"), ("after", "honest ping after")):
        row(f"{name}: p50 / p99 / max, ms", [_pings(r, phase) for r in results])
    row("honest pings unanswered during the attack / drain",
        [f"{r['unanswered']['attack']} / {r['unanswered']['drain']}" for r in results])
    row("node misbehaviour counts", [", ".join(f"{k} {v}" for k, v in r["after"]["misbehaviour"].items()) or "none"
                                     for r in results])
    print(f"Amplification by GET_BLOCK: {args.seconds:.0f} s attacks on a node with {args.blocks} {NETWORK} "
          f"blocks ({args.tx} transfers each; BLOCK_DATA lines of ~{block_bytes / 1024:,.1f} KiB, a request "
          f"{results[0]['attacker']['line_bytes']} B); honest PING every {PING_EVERY} s")
    print(pm.md_table(["measure", *labels], rows))


def _closes(window: dict[str, Any]) -> str:
    closes = window["closes"]
    if not closes:
        return "0"
    first, why = closes[0]
    return f"{len(closes)}, {first:.2f} ({why.split(':')[0]})"


def _drain_end(drained: dict[str, Any]) -> str:
    return f"{drained['end']} after {drained['seconds']:.1f} s"


def _pings(r: dict[str, Any], phase: str) -> str:
    s = r["pings"].get(phase)
    if not s:
        return "-"
    return f"{pm.ms(s['p50'])} / {pm.ms(s['p99'])} / {pm.ms(s['max'])} (n={s['n']})"


def print_notes(args: argparse.Namespace, results: Sequence[dict[str, Any]]) -> None:
    from archivas.protocols import peer, ratelimit

    get_block, total = ratelimit.LIMITS["GET_BLOCK"], ratelimit.TOTAL
    notes = [
        "Node read / wrote: the attacker's PeerInfo counters in the node (bytes_in: every line it "
        "took in, STATUS included; bytes_out: every line it sent: BLOCK_DATA, GET_STATUS, PING), "
        "summed over the attacker's connections, at the end of the attack window and again after "
        "the drain. A line counts as written when the node hands it to Twisted, so it includes "
        "what is still queued in Twisted's buffer and in the node's kernel send queue (shown). "
        "Attacker sent = bytes its kernel accepted; when the node closes a connection, what was "
        "still in the two sockets' buffers (a few MB on loopback) was sent but never read.",
        "Backpressure: the node registers each connection as a Twisted producer; when what it "
        "wrote is not being read, it stops serving that peer (and, past a line's worth of unread "
        "input, stops reading it): the 'writes paused' row, and the queues beside it."
        + (f" It also holds each peer to a send budget of {peer.SEND_BYTES_PER_SECOND / 2**20:g} MiB/s "
           f"({peer.SEND_BURST_BYTES / 2**20:g} MiB at once)." if hasattr(peer, "SEND_BYTES_PER_SECOND") else ""),
        f"Rate limits per peer: GET_BLOCK {get_block.per_minute:,} a minute, all messages "
        f"{total.per_minute:,} a minute (a full bucket at once, then refilled over the minute); "
        "one message over counts BAN_SCORE and closes the connection; a loopback peer is not "
        "discouraged, so the attacker reconnects at once. The paced attackers (900/s) stay under them.",
        "The honest peer is a seed peer from another loopback address, in the driver process; its "
        "round trips are timed there. The drain is when the attacker reads what the node still has "
        "for it (and the node, resumed, serves the requests still waiting).",
        f"Each attacker gets a fresh node: a copy of the same chain of {args.blocks} blocks, imported once.",
    ]
    if any("bad_json" in r["after"]["misbehaviour"] for r in results):
        notes.append(
            "bad_json: every line the attacker writes is one of the same few hundred valid GET_BLOCK "
            "lines, whole and in order, so a bad_json count means the node mis-framed what it read.")
    vt.print_note_list(notes)


async def run(reactor: Any, args: argparse.Namespace) -> None:
    params = vt.bench_params(NETWORK)
    blocks = vt.build_chain(params, args.tx, args.blocks)
    heights = request_heights(len(blocks))
    block_bytes = sum(len(wire.encode(wire.BlockData(h, blocks[h - 1]))) + 1 for h in heights) / len(heights)
    results = []
    code = pm.code_state()
    with tempfile.TemporaryDirectory(prefix="archivas-bench-amp-db-") as base:
        db = Path(base) / "chain"
        make_db(db, blocks)
        with vt.OtherLoad() as other:
            for key in args.variants:
                results.append(await run_variant(reactor, args, db, len(blocks), key))

    pm.print_header(f"Archivas amplification peer: {NETWORK}, node and attacker in their own processes, loopback TCP",
                    code, other, "the attacker and the driver")
    print()
    print_results(results, args, block_bytes)
    print()
    print_notes(args, results)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=200, help="blocks in the node's chain (default 200)")
    ap.add_argument("--tx", type=int, default=0, choices=vt.TX_PER_BLOCK, help="transfers per block (default 0)")
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds of each attack (default 15)")
    ap.add_argument("--drain", type=float, default=20.0, help="at most this long to drain after (default 20)")
    ap.add_argument("--before", type=float, default=3.0, help="seconds of pings before the attack (default 3)")
    ap.add_argument("--after", type=float, default=3.0, help="seconds of pings after the drain (default 3)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="attackers, side by side (default: all)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 50 blocks, 5 s attacks, 5 s drains")
    # the children
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--attack", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--src", default=ATTACKER_HOST, help=argparse.SUPPRESS)
    ap.add_argument("--read", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--tip", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--genesis", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.db)
        return
    if args.attack:
        attack(args)
        return
    if args.quick:
        args.blocks, args.seconds, args.drain, args.before, args.after = 50, 5.0, 5.0, 2.0, 2.0
    if args.blocks < 10 or args.seconds <= 0:
        ap.error("--blocks must be 10 or more and --seconds positive")
    vt.warnings_to_stderr()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
