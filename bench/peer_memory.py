"""Measure a node's memory per connected, handshaked peer at 1,000 peers, and its reactor lag while they ping.

One job: print markdown tables of the node's resident memory (VmRSS) before any peer and with
N peers that completed the full Archivas handshake (STATUS, HELLO, HELLO_ACK), per peer; of
the reactor's lag (how late a 10 ms timer fires) with no peer and while every peer sends a
PING a second; and of one RollingKnownSet's memory, empty and full. Goal: under 100 KB a
peer at 1,000 peers, its known-id caches full.

The node runs alone in a child process (`--serve PORT`: a fastnet chain in a temporary
directory, listening on 127.0.0.1), so its RSS is its own; it answers "report" lines on
stdin with a JSON line (VmRSS, peers by state, lag percentiles). This process drives the
peers: one Twisted protocol per connection, each from its own loopback address
(127.a.b.c), with its own ephemeral node key. N = 100 and N = 1,000 run side by side, each
on a fresh node.

Known-id caches: each peer's two RollingKnownSets (known_blocks, known_txs) allocate their
bit arrays in full when the peer connects, so they are counted in the per-peer RSS from the
start. A second child (`--knownset-child`) checks that: it creates a few hundred sets, then
fills each to its capacity and past a rotation, and reports RSS after each step.

    .venv/bin/python bench/peer_memory.py            # 100 and 1,000 peers, 20 s of pings each
    .venv/bin/python bench/peer_memory.py --quick    # 100 peers, 5 s of pings
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import validation_throughput as vt  # the bench beside this file: params, machine(), notes
from twisted.internet import defer, endpoints, protocol, task
from twisted.protocols.basic import LineReceiver

from archivas.chain.block import genesis_block
from archivas.protocols import identity, wire
from archivas.protocols.knownset import KNOWN_CAPACITY, RollingKnownSet

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
NETWORK = "fastnet"

LAG_INTERVAL = 0.010  # the node's probe timer, seconds
START_DEADLINE = 60.0  # a child to print that it is listening
REPORT_DEADLINE = 30.0  # a child to answer one command
CONNECT_DEADLINE = 240.0  # every peer connected and handshaked
HANDSHAKE_DEADLINE = 90.0  # one peer, connected to handshaked
CHILD_LIFETIME = 1800.0  # a child stops itself after this, whatever happens to this process
CONCURRENT_HANDSHAKES = 200
STDERR_LINES = 30  # a child's stderr lines shown (a misbehaving peer makes a node warn a lot)
KNOWNSET_SETS = 400  # sets made by the known-set child


# Both sides


def rss_bytes() -> int:
    """This process's VmRSS (and nothing else: the node is alone in its process)."""
    return _status_field("VmRSS")


def _status_field(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {name} in /proc/self/status")


def raise_nofile() -> int:
    """Raise the soft open-file limit to the hard one; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (nan for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50": percentile(ms, 50), "p99": percentile(ms, 99), "max": max(ms, default=math.nan)}


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table, padded to line up as plain text: first column left, the rest right."""
    widths = [max(3, *(len(str(r[i])) for r in [headers, *rows])) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else (":" + "-" * (w + 1)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def code_state() -> str:
    """A digest of the node's sources (archivas/node.py, chain/, protocols/) and the newest of
    them: others edit the tree, and every child imports it afresh."""
    import hashlib

    digest = hashlib.sha256()
    newest = (0.0, "")
    sources = [ROOT / "archivas" / "node.py", *(ROOT / "archivas" / "chain").rglob("*.py"),
               *(ROOT / "archivas" / "protocols").rglob("*.py")]
    for path in sorted(sources):
        data = path.read_bytes()
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + data)
        newest = max(newest, (path.stat().st_mtime, str(path.relative_to(ROOT))))
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(newest[0]))
    return f"sha256 {digest.hexdigest()[:12]} of node.py, chain/, protocols/; newest {newest[1]} ({when})"


def print_header(title: str, code_before: str, other: Any, others: str) -> None:
    """Title, machine, node code, other load: the first lines of both benches."""
    print(title)
    print(vt.machine())
    code_after = code_state()
    print(f"node code: {code_after}")
    if code_after != code_before:
        print(f"WARNING: the node's code changed during the run (at the start: {code_before}); "
              "the rows may come from different code")
    if other.cpus is not None:
        print(f"other processes kept {other.cpus:.2f} CPUs busy on average while this measured "
              f"(0 = the machine to itself; {others} count as others)")


def sleep(reactor: Any, seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


# The node's side: --serve


class LagMeter:
    """A timer every `interval` s; each firing records how late it ran (reactor.seconds())."""

    def __init__(self, reactor: Any, interval: float = LAG_INTERVAL) -> None:
        self.reactor = reactor
        self.interval = interval
        self.samples: list[float] = []
        self._call: Any = None

    def start(self) -> None:
        self._call = self.reactor.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        late = self.reactor.seconds() - self._call.getTime()
        self.samples.append(max(0.0, late))
        self._call = self.reactor.callLater(self.interval, self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()

    def reset(self) -> None:
        self.samples = []


class Commands(LineReceiver):
    """The child's stdin: one command a line, one JSON line back on stdout for each."""

    delimiter = b"\n"

    def __init__(self, handlers: dict[str, Any], on_eof: Any) -> None:
        self.handlers = handlers
        self.on_eof = on_eof

    def lineReceived(self, line: bytes) -> None:
        command = line.decode().strip()
        handler = self.handlers.get(command)
        out = handler() if handler is not None else {"error": f"unknown command {command!r}"}
        if out is not None:
            self.emit(out)

    def emit(self, doc: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(json.dumps(doc).encode() + b"\n")

    def connectionLost(self, reason: Any = None) -> None:
        self.on_eof()  # the parent is gone or done: stop


def node_report(node: Any, lag: LagMeter) -> dict[str, Any]:
    """What `report` prints: lag first (a full collection would show in it), then RSS."""
    lag_ms = summary_ms(lag.samples)
    gc.collect()
    peers = node.peers.peers
    ready = node.peers.ready_peers()
    return {
        "rss": rss_bytes(),
        "hwm": _status_field("VmHWM"),
        "peers": len(peers),
        "ready": len(ready),
        "handshaked": sum(1 for p in ready if p.info is not None and p.info.node_id is not None),
        "known_ids": sum(len(p.info.known_blocks) + len(p.info.known_txs) for p in peers if p.info is not None),
        "lag": lag_ms,
        "misbehaviour": dict(node.peers.misbehaviour_counts),
        "dropped": dict(node.peers.dropped_counts),
        "evicted": node.peers.evicted,
    }


def time_heartbeat(node: Any) -> list[float]:
    """Wrap the peer manager's heartbeat (a PING to every peer each 10 s) to time it: it
    runs on the reactor thread, so it shows in the lag. Before node.start(), which takes
    the bound method. The list gets each beat's seconds."""
    beats: list[float] = []
    heartbeat = node.peers.heartbeat

    def timed() -> None:
        start = time.perf_counter()
        heartbeat()
        beats.append(time.perf_counter() - start)

    node.peers.heartbeat = timed
    return beats


def serve_node(reactor: Any, chain: Any, port: int, extra: Optional[dict[str, Any]] = None,
               setup: Optional[Any] = None, **node_options: Any) -> defer.Deferred:
    """Run a Node on `chain`, listening on 127.0.0.1:`port`, commanded on stdin (`extra`:
    more commands, each `f(node, lag)` returning the JSON to print); fires once the node has
    stopped, when told to quit (or stdin closes, or CHILD_LIFETIME passes). `setup(node)`
    runs before the node starts. Shared with amplification.py."""
    from twisted.internet import stdio

    from archivas.node import Node

    options = {"max_inbound": 2000, "discover": False, "ready_timeout": 600.0, **node_options}
    node = Node(chain, reactor, **options)
    listening = reactor.listenTCP(port, node.peers.inbound_factory, interface="127.0.0.1", backlog=1024)
    node.peers.listen_port = listening.getHost().port
    beats = time_heartbeat(node)
    if setup is not None:
        setup(node)
    node.start()
    lag = LagMeter(reactor)
    lag.start()
    done: defer.Deferred = defer.Deferred()
    quitting = []

    def quit_() -> None:
        if quitting:
            return
        quitting.append(True)
        lag.stop()
        d = defer.maybeDeferred(listening.stopListening)
        d.addBoth(lambda _: node.stop())
        d.addBoth(lambda _: done.callback(None))

    def reset() -> dict[str, Any]:
        lag.reset()
        beats.clear()
        return {"reset": True}

    def quit_command() -> None:
        quit_()  # prints nothing: the parent waits for the exit

    def report() -> dict[str, Any]:
        out = node_report(node, lag)
        out["heartbeat_ms"] = summary_ms(beats)
        return out

    def rss() -> dict[str, Any]:  # no collection: cheap enough to poll
        return {"rss": rss_bytes(), "hwm": _status_field("VmHWM"), "lag": summary_ms(lag.samples),
                "heartbeat_ms": summary_ms(beats)}

    handlers = {"report": report, "rss": rss, "reset": reset, "quit": quit_command}
    for name, handler in (extra or {}).items():
        handlers[name] = lambda handler=handler: handler(node, lag)
    commands = Commands(handlers, quit_)
    stdio.StandardIO(commands, reactor=reactor)
    commands.emit({"listening": listening.getHost().port, "pid": os.getpid(), "nofile": raise_nofile(),
                   "rss": rss_bytes()})
    reactor.callLater(CHILD_LIFETIME, quit_)
    return done


def serve(port: int) -> None:
    """--serve: a fresh fastnet chain (genesis only), a node on it, until told to quit."""
    from archivas.chain.blockchain import Chain

    raise_nofile()
    vt.warnings_to_stderr()  # also: no buffering of the node's info events (that would be memory)
    params = vt.bench_params(NETWORK)

    async def main(reactor: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="archivas-bench-peers-") as directory:
            chain = Chain.open(directory, params)
            try:
                await serve_node(reactor, chain, port)
            finally:
                chain.close()

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))


def knownset_child(count: int) -> None:
    """--knownset-child: RSS per RollingKnownSet when made, filled to capacity, and past a
    rotation (all three generations used), as one JSON line."""
    rng = random.Random(1)
    # A first batch, kept, takes up the heap's free but resident memory (left by the
    # imports), which would otherwise hold the first sets without growing RSS.
    warm = [RollingKnownSet() for _ in range(count)]
    gc.collect()
    base = rss_bytes()
    sets = [RollingKnownSet() for _ in range(count)]
    made = rss_bytes()
    for s in sets:
        for _ in range(KNOWN_CAPACITY):
            s.add(rng.randbytes(32))
    full = rss_bytes()
    for s in sets:
        for _ in range(KNOWN_CAPACITY // 2 + 1):
            s.add(rng.randbytes(32))
    rotated = rss_bytes()
    print(json.dumps({"sets": count, "warm": len(warm), "base": base, "made": made, "full": full, "rotated": rotated,
                      "len_rotated": len(sets[0]), "bits_bytes": sets[0].memory_bytes()}))


# The driver's side


class ChildProcess(protocol.ProcessProtocol):
    """A child of this script (or of `script`), commanded over stdin; it answers with JSON
    lines, taken in order by `next_line` (its first: `started`)."""

    def __init__(self, reactor: Any, args: Sequence[str], name: str, script: Path = SCRIPT) -> None:
        self.reactor = reactor
        self.name = name
        self.args = [sys.executable, str(script), *args]
        self._buffer = b""
        self._lines: list[dict[str, Any]] = []
        self._waiting: list[defer.Deferred] = []
        self.ended: defer.Deferred = defer.Deferred()
        self.exited = False
        self._err = b""
        self.err_lines = 0

    def spawn(self) -> "ChildProcess":
        self.reactor.spawnProcess(self, sys.executable, self.args, env=os.environ.copy(), path=str(ROOT))
        return self

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line.strip():
                self._lines.append(json.loads(line))
        while self._lines and self._waiting:
            self._waiting.pop(0).callback(self._lines.pop(0))

    def errReceived(self, data: bytes) -> None:
        """Its stderr (the node's warnings) goes to ours, the first STDERR_LINES lines of it."""
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            self.err_lines += 1
            if self.err_lines <= STDERR_LINES:
                sys.stderr.write(f"[{self.name}] {line.decode(errors='replace')}\n")

    def processEnded(self, reason: Any) -> None:
        self.exited = True
        if self.err_lines > STDERR_LINES:
            sys.stderr.write(f"[{self.name}] ... and {self.err_lines - STDERR_LINES} more lines on stderr\n")
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(RuntimeError(f"{self.name} exited: {reason.getErrorMessage()}"))
        self.ended.callback(None)

    def next_line(self, deadline: float = REPORT_DEADLINE) -> defer.Deferred:
        """The child's next JSON line (one already printed, or the next to come)."""
        if self._lines:
            return defer.succeed(self._lines.pop(0))
        if self.exited:
            return defer.fail(RuntimeError(f"{self.name} has exited"))
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d.addTimeout(deadline, self.reactor)

    async def started(self) -> dict[str, Any]:
        return await self.next_line(START_DEADLINE)

    async def command(self, name: str, deadline: float = REPORT_DEADLINE) -> dict[str, Any]:
        if self.exited:
            raise RuntimeError(f"{self.name} has exited")
        self.transport.write(name.encode() + b"\n")
        return await self.next_line(deadline)

    async def stop(self, deadline: float = 15.0) -> None:
        """Ask it to quit; kill it if it has not exited by the deadline."""
        if self.exited:
            return
        try:
            self.transport.write(b"quit\n")
            self.transport.closeStdin()
        except Exception:
            pass
        killer = self.reactor.callLater(deadline, self._kill)
        await self.ended
        if killer.active():
            killer.cancel()

    def _kill(self) -> None:
        if not self.exited:
            try:
                self.transport.signalProcess("KILL")
            except Exception:
                pass


def source_address(i: int) -> str:
    """A loopback source address per peer: 127.a.b.c, never 127.0.0.1 (the node's)."""
    return f"127.{1 + i % 250}.{1 + (i // 250) % 250}.{1 + i // 62_500}"


class Peer(LineReceiver):
    """One peer connection: completes the Archivas handshake, answers the node's PING and
    GET_STATUS, and (when told) sends a PING every second, timing the PONG."""

    delimiter = b"\n"
    MAX_LENGTH = 8 * 1024 * 1024

    def __init__(self, driver: "Driver") -> None:
        self.driver = driver
        self.identity = identity.NodeIdentity.ephemeral()
        self.nonce = identity.fresh_nonce()
        self.handshaked: defer.Deferred = defer.Deferred()
        self.closed = False
        self.ping_sent_at: Optional[float] = None
        self.rtts: list[float] = []
        self._pinger: Any = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.setTcpNoDelay(True)

    def send(self, message: wire.Message) -> None:
        assert self.transport is not None
        self.transport.write(wire.encode(message) + b"\n")

    def lineReceived(self, line: bytes) -> None:
        envelope = wire.decode_envelope(line)
        kind = envelope.type
        if kind == wire.GetStatus.TYPE:
            self.send(self.driver.status)
        elif kind == wire.Hello.TYPE:
            theirs = wire.parse(envelope)
            assert isinstance(theirs, wire.Hello)
            d = self.driver
            self.send(wire.Hello(NETWORK, d.genesis_hash, wire.PROTOCOL_VERSION, self.identity.public_key,
                                 self.nonce, 0, wire.CAPABILITIES, block_relay_only=False))
            self.send(wire.HelloAck(self.identity.prove(d.genesis_hash, theirs.nonce, self.nonce)))
        elif kind == wire.GetPeers.TYPE:  # sent once the node made us READY
            if not self.handshaked.called:
                self.handshaked.callback(self)
        elif kind == wire.Ping.TYPE:
            self.send(wire.Pong(envelope.payload.get("timestamp", 0)))
        elif kind == wire.Pong.TYPE and self.ping_sent_at is not None:
            self.rtts.append(self.driver.reactor.seconds() - self.ping_sent_at)
            self.ping_sent_at = None

    def start_pinging(self, interval: float) -> None:
        reactor = self.driver.reactor

        def ping() -> None:
            if self.closed:
                return
            if self.ping_sent_at is None:  # one outstanding at a time; a late one is not timed
                self.ping_sent_at = reactor.seconds()
            self.send(wire.Ping(int(time.time())))
            self._pinger = reactor.callLater(interval, ping)

        self._pinger = reactor.callLater(random.random() * interval, ping)  # spread over the second

    def stop_pinging(self) -> None:
        if self._pinger is not None and self._pinger.active():
            self._pinger.cancel()
        self.ping_sent_at = None

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self.driver.lost += 1
        self.stop_pinging()
        if not self.handshaked.called:
            self.handshaked.errback(RuntimeError(f"closed before the handshake: {reason.getErrorMessage()}"))


class PeerFactory(protocol.Factory):
    noisy = False

    def __init__(self, driver: "Driver") -> None:
        self.driver = driver

    def buildProtocol(self, addr: Any) -> Peer:
        return Peer(self.driver)


class Driver:
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        params = vt.bench_params(NETWORK)
        self.genesis_hash = genesis_block(params).hash
        self.status = wire.Status(height=0, difficulty=params.initial_difficulty, tip_hash=self.genesis_hash,
                                  genesis_hash=self.genesis_hash, network=NETWORK, version=wire.PROTOCOL_VERSION,
                                  capabilities=wire.CAPABILITIES)
        self.factory = PeerFactory(self)
        self.lost = 0

    async def connect(self, port: int, count: int) -> tuple[list[Peer], list[str]]:
        """`count` peers, CONCURRENT_HANDSHAKES at a time; (handshaked peers, failures)."""
        sem = defer.DeferredSemaphore(CONCURRENT_HANDSHAKES)
        peers: list[Peer] = []
        failures: list[str] = []

        async def one(i: int) -> None:
            await sem.acquire()
            try:
                endpoint = endpoints.TCP4ClientEndpoint(self.reactor, "127.0.0.1", port, timeout=30,
                                                        bindAddress=(source_address(i), 0))
                peer = await endpoint.connect(self.factory)
                await peer.handshaked.addTimeout(HANDSHAKE_DEADLINE, self.reactor)
                peers.append(peer)
            except Exception as e:
                failures.append(f"{source_address(i)}: {e}")
            finally:
                sem.release()

        waits = [defer.ensureDeferred(one(i)) for i in range(count)]
        await defer.DeferredList(waits).addTimeout(CONNECT_DEADLINE, self.reactor)
        return peers, failures


def close_all(peers: Sequence[Peer]) -> None:
    for peer in peers:
        peer.stop_pinging()
        if peer.transport is not None:
            peer.transport.abortConnection()


async def measure(reactor: Any, driver: Driver, count: int, idle_s: float, ping_s: float) -> dict[str, Any]:
    """One fresh node: before any peer, with `count` handshaked peers, while they ping."""
    child = ChildProcess(reactor, ["--serve", "0"], "node").spawn()
    peers: list[Peer] = []
    try:
        port = (await child.started())["listening"]
        await sleep(reactor, 1.0)
        await child.command("reset")
        await sleep(reactor, idle_s)
        before = await child.command("report")
        start = time.monotonic()
        peers, failures = await driver.connect(port, count)
        connect_s = time.monotonic() - start
        await sleep(reactor, 2.0)  # let the last handshakes' GET_PEERS and replies settle
        connected = await child.command("report")
        for peer in peers:
            peer.start_pinging(1.0)
        await sleep(reactor, 1.5)  # every peer has pinged at least once
        await child.command("reset")
        for peer in peers:
            peer.rtts.clear()
        await sleep(reactor, ping_s)
        pinging = await child.command("report")
        rtts = [r for peer in peers for r in peer.rtts]
        for peer in peers:
            peer.stop_pinging()
        return {"count": count, "before": before, "connected": connected, "pinging": pinging,
                "failures": failures, "connect_s": connect_s, "rtt": summary_ms(rtts),
                "lost": driver.lost}
    finally:
        close_all(peers)
        await child.stop()


async def knownset_costs(reactor: Any, sets: int) -> dict[str, Any]:
    child = ChildProcess(reactor, ["--knownset-child", str(sets)], "known-set child").spawn()
    try:
        return await child.started()
    finally:
        await child.stop(deadline=120.0)


# Printing


def kb(n: float) -> str:
    return f"{n / 1024:,.1f}"


def mb(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def print_knownset(k: dict[str, Any]) -> None:
    n = k["sets"]
    print(f"One RollingKnownSet (capacity {KNOWN_CAPACITY:,}, its defaults): RSS growth per set over {n} sets "
          f"in a child process (after {k['warm']} others)")
    rows = [
        ["made (empty)", kb((k["made"] - k["base"]) / n)],
        [f"then filled to capacity ({KNOWN_CAPACITY:,} random ids)", kb((k["full"] - k["made"]) / n)],
        [f"then {KNOWN_CAPACITY // 2 + 1:,} more (a rotation: all 3 generations used)",
         kb((k["rotated"] - k["full"]) / n)],
        ["total, full", kb((k["rotated"] - k["base"]) / n)],
        ["its bit arrays (memory_bytes())", kb(k["bits_bytes"])],
    ]
    print(md_table(["step", "KB per set (RSS growth)"], rows))


def print_memory(results: Sequence[dict[str, Any]], k: dict[str, Any]) -> None:
    per_set = (k["rotated"] - k["base"]) / k["sets"]
    print("RSS of the node process (VmRSS), before any peer and with N handshaked peers")
    rows = []
    for r in results:
        n, before = r["count"], r["before"]["rss"]
        ready = r["connected"]["handshaked"]
        per_peer = (r["connected"]["rss"] - before) / max(1, ready)
        per_peer_pinging = (r["pinging"]["rss"] - before) / max(1, r["pinging"]["handshaked"])
        rows.append([str(n), str(ready), mb(before), mb(r["connected"]["rss"]), kb(per_peer),
                     mb(r["pinging"]["rss"]), kb(per_peer_pinging),
                     "yes" if max(per_peer, per_peer_pinging) < 100 * 1024 else "NO"])
    print(md_table(["peers N", "handshaked", "RSS before MB", "RSS with N MB", "per peer KB",
                    "RSS after pings MB", "per peer KB, after pings", "< 100 KB"], rows))
    large = max(results, key=lambda r: r["count"])
    marginal = None
    if len(results) >= 2:
        small = min(results, key=lambda r: r["count"])
        grown = [(r["connected"]["rss"] - r["before"]["rss"], r["connected"]["handshaked"]) for r in (small, large)]
        if grown[1][1] > grown[0][1]:
            marginal = (grown[1][0] - grown[0][0]) / (grown[1][1] - grown[0][1])
            print(f"marginal: {kb(marginal)} KB per peer from {grown[0][1]} to {grown[1][1]} peers (each node's "
                  "growth from its own baseline; the free heap memory the first peers reuse does not count)")
    if marginal is not None:
        print(f"of which the two known-id sets (RollingKnownSet, full): {kb(2 * per_set)} KB; everything else: "
              f"{kb(marginal - 2 * per_set)} KB")
    else:
        print(f"the two known-id sets of a peer take {kb(2 * per_set)} KB (table above); with one N only, the "
              "per-peer figure is a lower bound: the first peers partly reuse free heap memory already resident")


def print_lag(results: Sequence[dict[str, Any]], ping_s: float) -> None:
    print(f"Reactor lag of the node (how late its {LAG_INTERVAL * 1000:.0f} ms timer fired), ms; "
          f"its heartbeat (PING to every peer, each 10 s), ms; PING round trip seen by the peers, ms")
    rows = []
    for r in results:
        n, pinging = r["count"], r["pinging"]
        for what, lag in (("lag, no peer (idle)", r["before"]["lag"]),
                          (f"lag, {pinging['handshaked']} peers each a PING/s, {ping_s:.0f} s", pinging["lag"]),
                          ("  node heartbeat, duration", pinging["heartbeat_ms"]),
                          ("PING round trip (driver side)", r["rtt"])):
            rows.append([str(n), what, str(lag["n"]), ms(lag["p50"]), ms(lag["p99"]), ms(lag["max"])])
    print(md_table(["peers N", "measure", "samples", "p50", "p99", "max"], rows))


def print_problems(results: Sequence[dict[str, Any]]) -> None:
    for r in results:
        failures, node = r["failures"], r["pinging"]
        if failures or node["handshaked"] < r["count"] or node["misbehaviour"]:
            print(f"N={r['count']}: {len(failures)} peers failed to handshake, "
                  f"{node['handshaked']} handshaked at the end, lost by the driver {r['lost']}; "
                  f"node misbehaviour counts {node['misbehaviour']}, dropped {node['dropped']}, "
                  f"evicted {node['evicted']}")
            for line in failures[:5]:
                print(f"  {line}")


def print_notes(results: Sequence[dict[str, Any]], k: dict[str, Any]) -> None:
    filled = (k["rotated"] - k["made"]) / k["sets"]
    notes = [
        "Per peer = (RSS with N handshaked peers - RSS before any peer) / handshaked peers, in "
        "the node's own process (a child of the driver): everything a peer costs in Python "
        "(PeerProtocol, PeerInfo, its rate limiter's buckets, its two known-id sets, the Twisted "
        "transport and its buffers); kernel socket buffers are not in RSS.",
        f"Known-id caches: a RollingKnownSet allocates its three bit arrays when made (every peer's "
        f"two are made at connection), and filling one to capacity and past a rotation grew RSS by "
        f"{kb(filled)} KB a set over {k['sets']} sets: filling does not change memory, so the "
        "per-peer figures above are those of full caches, and the peers were not made to "
        "announce ids (4,096 NEW_BLOCKs a peer would also take minutes under NEW_BLOCK's "
        "1,200/min limit, and each unknown id at height <= the tip makes the node send a "
        "REQUEST_BLOCKS back).",
        "Peers: each from its own loopback address 127.a.b.c (all loopback addresses are one "
        "eviction group, 'local'; eviction does not run below max_inbound=2000), each with its own "
        "ephemeral Ed25519 key; the node sends GET_STATUS, the peer answers STATUS with every "
        "capability, the node sends HELLO, the peer HELLO and HELLO_ACK; a peer counts as "
        "handshaked when the node asks it GET_PEERS (sent on READY), and the node's own count of "
        "READY peers with a node id is what the table shows.",
        "Pings: each peer sends a PING a second, the peers' phases spread at random over the "
        "second; the node answers PONG. The lag and round trips are sampled after every peer has "
        "pinged once. Round trips are timed by the driver, whose own reactor serves all N "
        "connections on the same 2 cores, so they include its queueing.",
        "RSS is read after a gc.collect() in the node (the lag figures are taken first). The node "
        "logs at warning level (to stderr), so its per-connection info events are not buffered.",
    ]
    vt.print_note_list(notes)


async def run(reactor: Any, args: argparse.Namespace) -> None:
    nofile = raise_nofile()
    if nofile < max(args.peers) + 64:
        raise SystemExit(f"the open-file limit ({nofile}) is too low for {max(args.peers)} peers")
    driver = Driver(reactor)
    code = code_state()
    with vt.OtherLoad() as other:
        k = await knownset_costs(reactor, args.sets)
        results = []
        for count in args.peers:
            driver.lost = 0
            results.append(await measure(reactor, driver, count, args.idle, args.seconds))

    print_header(f"Archivas node memory per peer and reactor lag: {NETWORK}, node in its own process, loopback TCP",
                 code, other, "the driver and the known-set child")
    print()
    print_problems(results)
    print_knownset(k)
    print()
    print_memory(results, k)
    print()
    print_lag(results, args.seconds)
    print()
    print_notes(results, k)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=int, nargs="+", default=[100, 1000],
                    help="peer counts, one fresh node each (default: 100 1000)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of pings measured (default 20)")
    ap.add_argument("--idle", type=float, default=3.0, help="seconds of idle lag before any peer (default 3)")
    ap.add_argument("--sets", type=int, default=KNOWNSET_SETS, help=f"known sets made (default {KNOWNSET_SETS})")
    ap.add_argument("--quick", action="store_true", help="smoke run: 100 peers, 5 s of pings, 200 sets")
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--knownset-child", type=int, metavar="SETS", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return
    if args.knownset_child is not None:
        knownset_child(args.knownset_child)
        return
    if args.quick:
        args.peers, args.seconds, args.idle, args.sets = [100], 5.0, 2.0, 200
    if min(args.peers) < 1 or args.seconds <= 0:
        ap.error("peer counts and seconds must be positive")
    vt.warnings_to_stderr()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
