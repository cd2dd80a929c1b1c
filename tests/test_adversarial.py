"""The adversarial suite: a real node on loopback and an attacker in another process
(archivas/testing/attacker.py, plain sockets from 127.0.0.66), one scenario a test.

Every scenario asserts that, while the attack runs, an honest seed peer from another
address group (127.0.0.2; `group=lambda host: host.encode()` makes every loopback address
its own group) gets each PONG within 2 s (probed every 0.25 s); that afterwards the node
answers GET_STATUS to a newcomer, its tip and mempool are as before (except in the sync
scenarios), nothing from the attacker is left connected, and no loopback address was
discouraged (loopback peers are dropped on misbehaviour, never discouraged); and the
reaction the protocol defines (a counted misbehaviour, a closed connection, a bound).

Measurements (round trips, the node process's VmRSS growth, the amplification ratio) go
to stderr as `ADVERSARIAL ...` lines: run with `pytest -s` to see them.

Two tests are regressions for bugs this suite found (comments marked `REGRESSION`): both
failed at commit 8694816 and pass since 70c6b4b.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional

from twisted.internet import defer, task, threads
from twisted.trial import unittest

from archivas.chain.block import Block
from archivas.protocols import sync
from archivas.protocols.peer import PeerState
from tests.common import BOB, builder
from tests.netutil import NodeHandle, start_node, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTACKER = "127.0.0.66"
HONEST = "127.0.0.2"
NEWCOMER = "127.0.0.3"
PONG_WITHIN = 2.0  # seconds: the honest peer's bound, during every attack
PROBE_EVERY = 0.25
PROBE_GIVE_UP = 5.0  # a PING unanswered this long counts as lost (inf)
# The node process (this one) may grow by at most this much during an attack. What a
# connection can make the node hold: its 64 KiB read chunk, its line (64 KiB before READY,
# 4 MiB after), and the transport's write buffer, which pauses reading at 64 KiB plus one
# reply; the rest waits in the kernel's socket buffers, outside the process.
RSS_BOUND = 64 * 1024 * 1024
DURATION = 2.0  # seconds of attack in most scenarios


def group(host: str) -> bytes:
    return host.encode()


_chain: list[Block] = []


def main_chain() -> list[Block]:
    """20 blocks on the builder's genesis, made once (victims hold the first few)."""
    if not _chain:
        b = builder()
        _chain.extend(b.extend(b.genesis, 20))
    return _chain


def rss() -> int:
    with open("/proc/self/status") as f:
        for text in f:
            if text.startswith("VmRSS:"):
                return int(text.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def say(**fields: Any) -> None:
    sys.stderr.write("ADVERSARIAL " + " ".join(f"{k}={v}" for k, v in fields.items()) + "\n")


def in_thread(f: Callable[..., Any], *args: Any) -> defer.Deferred:
    return threads.deferToThread(f, *args)


class Honest:
    """A well-behaved seed peer on a blocking socket (its calls run in a thread)."""

    def __init__(self, port: int, source: str = HONEST, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.stamp = int(time.time())

    def send(self, kind: int, payload: Optional[dict] = None) -> None:
        self.sock.sendall(json.dumps({"type": kind, "payload": payload or {}}).encode() + b"\n")

    def receive(self, match: Callable[[dict], bool], timeout: float) -> Optional[dict]:
        """The next message `match` accepts (others skipped), or None after `timeout`."""
        end = time.monotonic() + timeout
        while True:
            while b"\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n", 1)
                message = json.loads(raw)
                if match(message):
                    return message
            left = end - time.monotonic()
            if left <= 0:
                return None
            readable, _, _ = select.select([self.sock], [], [], left)
            if readable:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("closed by the node")
                self.buffer += chunk

    def status(self, timeout: float = 5.0) -> dict:
        self.send(6)
        message = self.receive(lambda m: m["type"] == 7, timeout)
        if message is None:
            raise AssertionError(f"no STATUS within {timeout} s")
        return message["payload"]

    def become_ready(self) -> dict:
        """Answer with the node's own tip: a READY seed peer (not closed by the handshake timer)."""
        status = self.status()
        self.send(7, {k: status[k] for k in ("height", "difficulty", "tipHash", "weight", "genesisHash", "network")})
        return status

    def ping(self, timeout: float = PROBE_GIVE_UP) -> float:
        """Seconds until the PONG with our timestamp; inf if none within `timeout`."""
        self.stamp += 1
        stamp = self.stamp
        start = time.monotonic()
        self.send(1, {"timestamp": stamp})
        message = self.receive(lambda m: m["type"] == 2 and m["payload"].get("timestamp") == stamp, timeout)
        return time.monotonic() - start if message is not None else math.inf

    def close(self) -> None:
        self.sock.close()


def probe(honest: Honest, port: int, stop: threading.Event, newcomers: bool) -> dict:
    """Ping every PROBE_EVERY seconds until `stop`: round trips (and, with `newcomers`,
    connect-and-ping times of fresh connections)."""
    rtts: list[float] = []
    fresh: list[float] = []
    errors: list[str] = []
    while not stop.is_set():
        tick = time.monotonic()
        try:
            rtts.append(honest.ping())
        except OSError as e:
            errors.append(f"honest peer: {e!r}")
            break
        if newcomers:
            start = time.monotonic()
            try:
                peer = Honest(port, NEWCOMER, timeout=PROBE_GIVE_UP)
                try:
                    fresh.append(time.monotonic() - start + peer.ping())
                finally:
                    peer.close()
            except OSError as e:
                fresh.append(math.inf)
                errors.append(f"newcomer: {e!r}")
        stop.wait(max(0.0, PROBE_EVERY - (time.monotonic() - tick)))
    return {"rtts": rtts, "fresh": fresh, "errors": errors}


def run_attacker(scenario: str, port: int, duration: float, data_path: Optional[str], procs: list,
                 workdir: str) -> dict:
    """The attacker child, to its end; its report (the last stdout line) with its exit code."""
    cmd = [sys.executable, "-m", "archivas.testing.attacker", scenario, "--port", str(port), "--source", ATTACKER,
           "--duration", str(duration), "--stdin-stop"]
    if data_path is not None:
        cmd += ["--data", data_path]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out_path, err_path = os.path.join(workdir, "attacker.out"), os.path.join(workdir, "attacker.err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err)
        procs.append(proc)
        try:
            proc.wait(timeout=duration + 40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"attacker {scenario} did not exit by itself") from None
    with open(out_path) as f:
        lines = f.read().strip().splitlines()
    with open(err_path) as f:
        stderr = f.read()
    if not lines:
        raise AssertionError(f"attacker {scenario} printed nothing (exit {proc.returncode}): {stderr[-2000:]}")
    report = json.loads(lines[-1])
    report["returncode"] = proc.returncode
    if report.get("error") or proc.returncode:
        raise AssertionError(f"attacker {scenario} failed: {report} {stderr[-2000:]}")
    return report


@dataclasses.dataclass
class Outcome:
    report: dict
    rtts: list[float]
    fresh: list[float]
    errors: list[str]
    rss_growth: int
    seconds: float
    attacker_protos: dict = dataclasses.field(default_factory=dict)


def attacker_peers(node: NodeHandle) -> list:
    return [p for p in node.node.peers.peers if p.info is not None and p.info.host == ATTACKER]


class Adversarial(unittest.TestCase):
    timeout = 60

    def start(self, height: int = 5, **options: Any) -> NodeHandle:
        return start_node(self, blocks=main_chain()[:height], group=group, **options)

    def data_file(self, data: dict) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            json.dump(data, f)
        return path

    def snapshot(self, node: NodeHandle) -> tuple:
        return node.chain.tip.hash, node.chain.height, len(node.node.mempool)

    async def attack(self, node: Optional[NodeHandle], scenario: str, duration: float = DURATION,
                     data: Optional[dict] = None, newcomers: bool = False, during: Optional[Callable[[], None]] = None,
                     stop_when: Optional[Callable[[], bool]] = None, port: Optional[int] = None) -> Outcome:
        """Run the attacker child against the node while the honest peer probes it; `during`
        runs on the reactor every 50 ms meanwhile; `stop_when` true ends the attack early."""
        if port is None:
            assert node is not None
            port = node.port.getHost().port
        honest = await in_thread(Honest, port)
        self.addCleanup(honest.close)
        await in_thread(honest.become_ready)
        self.honest = honest
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        data_path = self.data_file(data) if data is not None else None
        procs: list = []
        self.addCleanup(lambda: [p.kill() for p in procs if p.poll() is None])
        stop = threading.Event()
        seen: dict = {}
        rss_before = rss()
        started = time.monotonic()

        def watch() -> None:
            for proto in attacker_peers(node) if node is not None else []:
                seen[id(proto)] = proto
            if during is not None:
                during()
            if stop_when is not None and stop_when() and procs and procs[0].stdin and not procs[0].stdin.closed:
                procs[0].stdin.close()

        watcher = task.LoopingCall(watch)
        watcher.start(0.05)
        attacker = in_thread(run_attacker, scenario, port, duration, data_path, procs, workdir)
        attacker.addBoth(lambda result: (stop.set(), result)[1])
        probes = in_thread(probe, honest, port, stop, newcomers)
        try:
            report = await attacker
        finally:
            stop.set()
            probed = await probes
            watcher.stop()
        outcome = Outcome(report, probed["rtts"], probed["fresh"], probed["errors"], rss() - rss_before,
                          time.monotonic() - started, seen)
        finite = [r for r in outcome.rtts if r < math.inf]
        say(scenario=scenario, seconds=f"{outcome.seconds:.2f}", probes=len(outcome.rtts),
            rtt_max=f"{max(outcome.rtts, default=0):.3f}", rtt_mean=f"{sum(finite) / max(len(finite), 1):.4f}",
            fresh_max=f"{max(outcome.fresh, default=0):.3f}", rss_growth_mib=f"{outcome.rss_growth / 2**20:.1f}",
            attacker=json.dumps({k: v for k, v in report.items() if k != "stderr"}, separators=(",", ":")))
        return outcome

    async def assert_survived(self, node: NodeHandle, outcome: Outcome, before: Optional[tuple] = None) -> None:
        """The honest peer was served in time throughout, the node still answers a
        newcomer, its chain and mempool are as before, and the attacker left nothing."""
        self.assertEqual(outcome.errors, [])
        self.assertGreaterEqual(len(outcome.rtts), 3, "the honest peer was probed during the attack")
        slow = [round(r, 3) for r in outcome.rtts if r >= PONG_WITHIN]
        self.assertEqual(slow, [], f"honest PINGs answered in {PONG_WITHIN} s or more (of {len(outcome.rtts)})")
        slow = [round(r, 3) for r in outcome.fresh if r >= PONG_WITHIN]
        self.assertEqual(slow, [], "newcomers not served within the bound")
        newcomer = await in_thread(Honest, node.port.getHost().port, NEWCOMER)
        try:
            status = await in_thread(newcomer.status)
        finally:
            newcomer.close()
        self.assertEqual(status["height"], node.chain.height)
        if before is not None:
            self.assertEqual(self.snapshot(node), before, "tip and mempool unchanged")
        await wait_until(lambda: not attacker_peers(node), "the attacker's connections gone", 10)
        self.assertLess(await in_thread(self.honest.ping), PONG_WITHIN, "the honest peer is still served")
        self.assertEqual(len(node.node.peers.discouraged), 0, "loopback peers are never discouraged")


class MalformedInput(Adversarial):
    @defer.inlineCallbacks
    def test_over_long_line_without_newline(self):
        """Past 64 KiB before READY and past 4 MiB after: line_too_long, closed."""
        node = self.start()
        before = self.snapshot(node)
        held = []

        def during():
            for proto in attacker_peers(node):
                held.append((len(proto._partial), proto.line_cap))

        outcome = yield defer.ensureDeferred(self.attack(node, "long_line", during=during))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        report = outcome.report
        self.assertTrue(report["before_ready"]["closed"] and report["after_ready"]["closed"], report)
        self.assertGreaterEqual(node.node.peers.misbehaviour_counts["line_too_long"],
                                report["before_ready"]["connections"] + report["after_ready"]["connections"])
        # The node never held more of a line than its cap (the excess is dropped with the connection).
        self.assertTrue(held)
        self.assertEqual([(n, cap) for n, cap in held if n > cap], [])

    @defer.inlineCallbacks
    def test_invalid_and_non_object_json(self):
        """Broken JSON, NaN/Infinity, duplicate keys, deep nesting, a 5,000-digit number,
        arrays and scalars: bad_json and bad_shape, each connection closed at 100 points."""
        node = self.start()
        before = self.snapshot(node)
        outcome = yield defer.ensureDeferred(self.attack(node, "bad_json"))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        counts = node.node.peers.misbehaviour_counts
        self.assertGreater(counts["bad_json"], 0)
        self.assertGreater(counts["bad_shape"], 0)
        self.assertGreaterEqual(outcome.report["connections"], 2)
        self.assertEqual(outcome.report["closed_by_node"], outcome.report["connections"])
        self.assertEqual(set(counts) - {"bad_json", "bad_shape", "rate_limit"}, set())

    @defer.inlineCallbacks
    def test_unknown_type(self):
        """Undefined types cost 5 points (closed at 20 of them); the original project's
        reserved numbers (0, 9, 10, 11) are dropped without penalty."""
        node = self.start()
        before = self.snapshot(node)
        outcome = yield defer.ensureDeferred(self.attack(node, "unknown_type"))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        peers = node.node.peers
        self.assertGreaterEqual(peers.misbehaviour_counts["unknown_type"], 20)
        for name in ("HANDSHAKE", "INV", "REQ", "RES"):
            self.assertGreater(peers.dropped_counts[name], 0, name)
        self.assertEqual(outcome.report["closed_by_node"], outcome.report["connections"])
        for proto in outcome.attacker_protos.values():
            self.assertGreaterEqual(proto.info.misbehaviour, 100)
            self.assertEqual(proto.info.misbehaviour % 5, 0)

    @defer.inlineCallbacks
    def test_wrong_field_types(self):
        """Strings for integers, floats, booleans, out-of-range integers, bad hex and
        hash arrays, payloads that are not objects: bad_payload / bad_shape, closed."""
        node = self.start()
        before = self.snapshot(node)
        outcome = yield defer.ensureDeferred(self.attack(node, "wrong_types"))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        counts = node.node.peers.misbehaviour_counts
        self.assertGreater(counts["bad_payload"], 0)
        self.assertGreater(counts["bad_shape"], 0)
        self.assertEqual(outcome.report["closed_by_node"], outcome.report["connections"])

    @defer.inlineCallbacks
    def test_split_writes_and_many_messages_a_write(self):
        """PINGs a byte a write, 300 in one write, 150 cut at random places, then a split
        GET_STATUS: every one answered once, in order, and nothing counted against it."""
        node = self.start()
        before = self.snapshot(node)
        outcome = yield defer.ensureDeferred(self.attack(node, "fragmented"))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        report = outcome.report
        self.assertEqual((report["pongs"], report["in_order"], report["status"]), (report["pings"], True, True))
        self.assertEqual(report["closed_by_node"], 0)
        self.assertEqual(dict(node.node.peers.misbehaviour_counts), {})
        self.assertEqual({p.info.misbehaviour for p in outcome.attacker_protos.values()}, {0})


class BlockAttacks(Adversarial):
    @defer.inlineCallbacks
    def test_unsolicited_block_data(self):
        """The node's own blocks sent back to it and blocks whose parent it lacks, none asked
        for: known blocks are ignored, orphans held (their parent asked of the sender, a
        request for each); no penalty, the chain as it was."""
        b = builder()
        chain = main_chain()
        fork = b.extend(chain[2], 3, reward_address=BOB.address)  # heights 4, 5, 6 on block 3
        node = self.start(5)
        before = self.snapshot(node)
        orphans = [fork[1], fork[2]]
        outcome = yield defer.ensureDeferred(self.attack(
            node, "unsolicited_block_data", data={"orphans": [o.to_json() for o in orphans]}))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        report = outcome.report
        self.assertEqual((report["own_blocks"], report["closed_by_node"]), (5, 0))
        self.assertGreater(report["block_data_sent"], 50)
        for orphan in orphans:
            self.assertIn(orphan.hash, node.node.orphans)
        self.assertFalse(node.chain.has_block(fork[0].hash))
        self.assertEqual(dict(node.node.peers.misbehaviour_counts), {})
        # One parent request at most per BLOCK_DATA received, only for heights below the orphans.
        self.assertLessEqual(report["get_block_requests"], report["block_data_sent"])
        self.assertTrue(set(report["requested_heights"]) <= {3, 4, 5}, report["requested_heights"])

    @defer.inlineCallbacks
    def test_invalid_block(self):
        """A copy of the real next block with a forged farmer signature (the same id) and a
        block with a wrong reward: 50 points each, closed; only the wrong reward is
        remembered as invalid, so the real block is still taken afterwards."""
        import dataclasses as dc

        b = builder()
        chain = main_chain()
        node = self.start(5)
        before = self.snapshot(node)
        real = chain[5]
        sig = real.header.farmer_signature.hex()
        forged = dc.replace(real, header=dc.replace(real.header, farmer_signature=bytes.fromhex(
            ("1" if sig[0] != "1" else "2") + sig[1:])))
        wrong_reward = b.make_block(chain[4], tamper=lambda h: dc.replace(h, reward=h.reward + 1))
        outcome = yield defer.ensureDeferred(self.attack(
            node, "invalid_block", data={"invalid": [forged.to_json(), wrong_reward.to_json()]}))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        report = outcome.report
        self.assertEqual(report["closed_by_node"], report["connections"])
        self.assertGreaterEqual(node.node.peers.misbehaviour_counts["invalid_block"], 2 * report["connections"])
        self.assertGreaterEqual(node.node.rejected_blocks, 2)
        # The forged copy did not poison the real block's id.
        yield in_thread(self.honest.send, 5, {"height": real.height, "blockData": real.to_json()})
        yield defer.ensureDeferred(wait_until(lambda: node.chain.tip.hash == real.hash, "the real block", 10))

    @defer.inlineCallbacks
    def test_block_data_differs_from_announcement(self):
        """NEW_BLOCK announces one hash at the next height; the GET_BLOCK it draws is
        answered with another block (one whose parent the node lacks). The announced hash
        never appears, the reply is only held as an orphan, and the requests stay bounded."""
        b = builder()
        chain = main_chain()
        fork = b.extend(chain[2], 3, reward_address=BOB.address)
        node = self.start(5)
        before = self.snapshot(node)
        announced = os.urandom(32)
        outcome = yield defer.ensureDeferred(self.attack(
            node, "hash_mismatch", data={"reply": fork[2].to_json(), "announce": announced.hex()}))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        report = outcome.report
        self.assertGreater(report["replies"], 0)
        self.assertFalse(node.chain.has_block(announced))
        self.assertNotIn(announced, node.node.orphans)
        self.assertIn(fork[2].hash, node.node.orphans)
        self.assertLessEqual(report["get_block_requests"], 2 * report["announcements"] + 2)
        self.assertEqual(dict(node.node.peers.misbehaviour_counts), {})


# The victim for the 10^18 scenario runs in its own process under an address-space limit:
# the bug it guards against made a node allocate without bound, which must not take the
# test runner (or the machine) with it.
VICTIM_AS_LIMIT = 2 << 30


def victim_main(argv: list[str]) -> None:
    """A node on the blocks in argv[0] (one JSON block a line), reporting its state to
    argv[1] every 0.2 s (the file stops changing if its reactor stops turning)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (VICTIM_AS_LIMIT, VICTIM_AS_LIMIT))
    from twisted.internet import reactor
    from twisted.python import log

    from archivas.chain.blockchain import Chain
    from archivas.node import Node
    from tests.common import PARAMS

    log.startLogging(sys.stderr)
    blocks_path, state_path, directory = argv
    chain = Chain.open(directory, PARAMS)
    with open(blocks_path) as f:
        for text in f:
            chain.add_block(Block.from_json(json.loads(text)), int(time.time() * 1000))
    node = Node(chain, reactor, group=group)
    port = reactor.listenTCP(0, node.peers.inbound_factory, interface="127.0.0.1")
    node.peers.listen_port = port.getHost().port
    node.start()

    def report() -> None:
        state = {"port": port.getHost().port, "height": chain.height, "tip": chain.tip.hash.hex(),
                 "mempool": len(node.mempool), "rss": rss(), "time": time.time(),
                 "misbehaviour": dict(node.peers.misbehaviour_counts),
                 "sync_active": node.sync.active}
        with open(state_path + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(state_path + ".tmp", state_path)

    task.LoopingCall(report).start(0.2)

    def watch_stdin() -> None:
        sys.stdin.buffer.read()
        reactor.callFromThread(reactor.stop)

    threading.Thread(target=watch_stdin, daemon=True).start()
    reactor.callLater(60, reactor.stop)
    reactor.run()


class HugeClaims(Adversarial):
    # REGRESSION (found by this test at 8694816, fixed in 70c6b4b): archivas/protocols/
    # sync.py, Syncer._fetch (from Syncer._round) built its queue of batches up front,
    # `collections.deque(... for s in range(first, last + 1, BATCH))`, with `last` the
    # height a peer claimed. A seed peer (no handshake needed) whose STATUS claims height
    # and weight 10^18 and which answers the fork-point GET_BLOCK with the node's own block
    # (fetched from the node itself) made the reactor thread build ~3*10^16 tuples: it
    # served no one and allocated until memory ran out (under this test's 2 GiB limit:
    # SystemError "deque returned NULL" after some seconds, "[sync] round failed", then
    # the same again). A NEW_BLOCK at height 10^18 from a seed peer whose STATUS has no
    # weight (as the Go node's) reached the same code.
    @defer.inlineCallbacks
    def test_status_claiming_height_10_18(self):
        """STATUS with height and weight 10^18 from a seed peer that serves the node its
        own blocks back. The node (in a child process, address space capped) must go on
        serving the honest peer and keep its chain."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        blocks_path = os.path.join(directory, "blocks.jsonl")
        with open(blocks_path, "w") as f:
            for block in main_chain()[:5]:
                f.write(json.dumps(block.to_json()) + "\n")
        state_path = os.path.join(directory, "state.json")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(os.path.join(directory, "victim.err"), "wb") as err:
            victim = subprocess.Popen(
                [sys.executable, "-c", "import sys; from tests.test_adversarial import victim_main; "
                 "victim_main(sys.argv[1:])", blocks_path, state_path, os.path.join(directory, "db")],
                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        self.addCleanup(victim.wait)  # cleanups run last-in first: killed, then reaped
        self.addCleanup(lambda: victim.kill() if victim.poll() is None else None)

        def state() -> Optional[dict]:
            try:
                with open(state_path) as f:
                    return json.load(f)
            except (OSError, ValueError):
                return None

        yield defer.ensureDeferred(wait_until(lambda: state() is not None, "the victim node", 30))
        first = state()
        assert first is not None
        outcome = yield defer.ensureDeferred(self.attack(None, "huge_status", duration=4.0, port=first["port"]))
        last = state()
        assert last is not None
        with open(os.path.join(directory, "victim.err")) as f:
            log_text = f.read()
        stuck = time.time() - last["time"]  # seconds since the victim's reactor last turned
        failed = "[sync] round failed" in log_text
        say(scenario="huge_status_victim", alive=victim.poll() is None, rss_mib=f"{last['rss'] / 2**20:.0f}",
            reactor_stuck_for=f"{stuck:.1f}", round_failed=failed)
        self.assertIsNone(victim.poll(), "the victim node is still running")
        self.assertEqual((last["height"], last["tip"]), (first["height"], first["tip"]))
        slow = [round(r, 3) for r in outcome.rtts if r >= PONG_WITHIN]
        self.assertEqual(slow, [], f"REGRESSION: honest PINGs answered in {PONG_WITHIN} s or more "
                                   f"(of {len(outcome.rtts)}); the victim's reactor has not turned for "
                                   f"{stuck:.1f} s; it logged '[sync] round failed': {failed}")
        self.assertLess(stuck, PONG_WITHIN, "REGRESSION: the victim's reactor is blocked")
        self.assertFalse(failed, "REGRESSION: the victim's sync round failed")


class Floods(Adversarial):
    @defer.inlineCallbacks
    def test_slowloris(self):
        """20 connections trickling PINGs a byte every 20 ms and one trickling an endless
        line: each completed PING is answered, nothing is closed, nothing counted."""
        node = self.start()
        before = self.snapshot(node)
        most = []
        outcome = yield defer.ensureDeferred(self.attack(
            node, "slowloris", duration=3.0, during=lambda: most.append(len(attacker_peers(node)))))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        report = outcome.report
        self.assertEqual(report["pongs"], report["pings_completed"])
        self.assertGreater(report["pings_completed"], 20)
        self.assertEqual(report["closed_by_node"], 0)
        self.assertEqual(max(most), 21)
        self.assertEqual(dict(node.node.peers.misbehaviour_counts), {})
        for proto in outcome.attacker_protos.values():
            self.assertLess(len(proto._partial), 4096)  # only the line in progress is held

    @defer.inlineCallbacks
    def test_connection_flood_past_the_limit(self):
        """200 connections at once against max_inbound=20: inbound never above 20 (each
        newcomer evicts the youngest of the biggest group), the honest peer keeps its slot,
        and a newcomer from a third group gets in and gets PONG within 2 s throughout."""
        node = self.start(max_inbound=20)
        before = self.snapshot(node)
        inbound = []
        outcome = yield defer.ensureDeferred(self.attack(
            node, "conn_flood", duration=3.0, data={"count": 200}, newcomers=True,
            during=lambda: inbound.append(node.node.peers.count("inbound"))))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        report = outcome.report
        say(scenario="conn_flood_node", evicted=node.node.peers.evicted, max_inbound_seen=max(inbound),
            attacker_protos_seen=len(outcome.attacker_protos))
        self.assertEqual(report["opened"], 200)  # on the attacker's side: some wait in the kernel's backlog
        self.assertLessEqual(max(inbound), 20)
        # Every attacker connection the node accepted past the limit evicted another one
        # (at least the listen backlog's worth arrive within the attack).
        self.assertGreaterEqual(node.node.peers.evicted, 50)
        self.assertGreaterEqual(report["closed_by_node_count"], 50)
        self.assertGreater(len(outcome.fresh), 3)

    @defer.inlineCallbacks
    def test_junk_flood_of_maximal_lines(self):
        """Connection after connection: 64 KiB junk lines before READY (bad_json, closed at
        10), exactly-4-MiB JSON lines after it (reserved type 0: dropped until the 64 MiB a
        minute of OTHER is spent, then rate_limit), and megabytes of blank lines."""
        node = self.start()
        before = self.snapshot(node)
        outcome = yield defer.ensureDeferred(self.attack(node, "junk_flood", duration=3.0))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        counts = node.node.peers.misbehaviour_counts
        self.assertGreaterEqual(counts["bad_json"], 10)
        self.assertGreaterEqual(counts["rate_limit"], 1)
        self.assertGreaterEqual(node.node.peers.dropped_counts["HANDSHAKE"], 16)
        self.assertLess(outcome.rss_growth, RSS_BOUND)

    @defer.inlineCallbacks
    def test_request_amplification(self):
        """GET_BLOCK as fast as the limits allow (a minute's 60,000 budget at once) from
        sockets with a 4 KiB receive buffer that never read: the node stops reading each
        once 64 KiB of replies wait (backpressure), its memory grows by less than
        RSS_BOUND, and it serves others meanwhile. Bytes out / bytes in is measured."""
        node = self.start(20)
        before = self.snapshot(node)
        paused = set()

        def during():
            for proto in attacker_peers(node):
                if proto.writes_paused:
                    paused.add(id(proto))

        outcome = yield defer.ensureDeferred(self.attack(
            node, "amplification", duration=3.0, data={"height": 20, "budget": 50_000}, during=during))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        report = outcome.report
        protos = list(outcome.attacker_protos.values())
        self.assertEqual(len(protos), 3)
        sent_by_attacker = sum(report["request_bytes"])
        out = sum(sum(p.info.bytes_out.values()) for p in protos)
        read_in = sum(sum(p.info.bytes_in.values()) for p in protos)
        block_data_out = sum(p.info.bytes_out["BLOCK_DATA"] for p in protos)
        say(scenario="amplification_ratio", attacker_sent=sent_by_attacker, node_read=read_in, node_wrote=out,
            block_data=block_data_out, ratio_vs_sent=f"{out / max(sent_by_attacker, 1):.2f}",
            ratio_vs_read=f"{out / max(read_in, 1):.1f}", attacker_unread=sum(report["unread_at_end"]),
            rss_growth_mib=f"{outcome.rss_growth / 2**20:.1f}")
        self.assertEqual(paused, {id(p) for p in protos}, "every attacker connection was paused")
        self.assertLess(outcome.rss_growth, RSS_BOUND)
        counts = node.node.peers.misbehaviour_counts
        self.assertEqual((counts["rate_limit"], counts["line_too_long"]), (0, 0), dict(counts))
        # What the node wrote to them is bounded by the buffers, not by what they asked.
        self.assertLess(out, 3 * 16 * 1024 * 1024)


class SyncAgainstSilentPeers(Adversarial):
    """The victim starts at genesis; an honest in-process node holds 20 blocks. The
    attacker connects first and claims the honest tip; only then does the victim dial the
    honest node. A sync request times out after 2 s here, whatever the block count, to
    keep this short."""

    timeout = 40

    def setUp(self):
        for name, value in (("REQUEST_TIMEOUT", 2.0), ("BYTES_ALLOWANCE", 0.0)):
            if hasattr(sync, name):
                self.patch(sync, name, value)

    async def silent_sync(self, scenario: str, duration: float) -> tuple:
        source = start_node(self, blocks=main_chain()[:20], group=group)
        victim = start_node(self, group=group, discover=False)
        tip = source.chain.tip
        hashes = [victim.node.genesis_hash.hex()] + [b.hash.hex() for b in main_chain()[:20]]
        claim = {"height": tip.height, "weight": tip.weight, "difficulty": tip.difficulty, "tipHash": tip.hash.hex()}
        mempool = len(victim.node.mempool)
        dialed = []
        synced = []
        heights = [0]  # the victim's height while the silent peer is connected
        started = time.monotonic()

        def during():
            ready = [p for p in attacker_peers(victim) if p.info.state is PeerState.READY]
            if ready and not dialed:
                victim.node.peers.dial(source.address)
                dialed.append(time.monotonic())
            if attacker_peers(victim):
                heights[0] = victim.chain.height
                if victim.chain.tip.hash == tip.hash and not synced:
                    synced.append(time.monotonic() - started)

        outcome = await self.attack(victim, scenario, duration=duration, data={"claim": claim, "hashes": hashes},
                                    during=during, stop_when=lambda: bool(synced))
        say(scenario=scenario, synced_after=synced[0] if synced else None, height_while_attacked=heights[0])
        return victim, source, outcome, synced, mempool, heights[0]

    @defer.inlineCallbacks
    def test_request_blocks_never_answered(self):
        """An Archivas peer (HELLO done) that answers GET_HASHES but swallows REQUEST_BLOCKS:
        its batch times out and goes to the honest node, and the victim reaches the honest
        tip while the silent peer is still connected."""
        victim, source, outcome, synced, mempool, _ = yield defer.ensureDeferred(
            self.silent_sync("sync_blocks_silent", 12.0))
        self.assertTrue(synced, "the victim reached the honest tip while the attacker was connected")
        self.assertEqual(victim.chain.tip.hash, source.chain.tip.hash)
        self.assertEqual(len(victim.node.mempool), mempool)
        yield defer.ensureDeferred(self.assert_survived(victim, outcome))
        self.assertGreaterEqual(outcome.report["request_blocks"], 1)  # it was asked, and never answered
        served = [p for p in victim.node.peers.peers if p.info is not None and p.info.direction == "outbound"
                  and p.info.node_id == source.node.node_id]
        self.assertEqual(len(served), 1)
        self.assertGreaterEqual(served[0].info.messages_in["BLOCKS_BATCH"], 1)  # the honest node served it

    # REGRESSION (found by this test at 8694816, fixed in 70c6b4b): archivas/protocols/
    # sync.py, Syncer._round / _find_fork: a seed peer that claims more weight and never
    # answers GET_BLOCK stalled sync for as long as it stayed connected. The fork-point
    # walk's timeout ended the round (defer.TimeoutError caught in _round) without leaving
    # the peer out of the next one, and the next round's target was the first ahead peer
    # in connection order: the same silent peer, so the honest node that connected later
    # was never asked. (An Archivas peer that never answers GET_HASHES did the same.)
    @defer.inlineCallbacks
    def test_get_block_never_answered(self):
        """A seed peer claiming the honest tip that never answers GET_BLOCK: the victim must
        still reach the honest tip from the honest node while it is connected (within
        8 s, four of the shortened request timeouts)."""
        victim, source, outcome, synced, mempool, height = yield defer.ensureDeferred(
            self.silent_sync("sync_block_silent", 8.0))
        self.assertTrue(synced, f"REGRESSION: the victim did not sync from the honest node while a silent seed peer "
                                f"was connected: still at height {height} of {source.chain.height} after 8 s, in "
                                f"which it asked the silent peer {outcome.report['get_block']} times for a block")
        self.assertEqual(len(victim.node.mempool), mempool)
        yield defer.ensureDeferred(self.assert_survived(victim, outcome))


class Liveness(Adversarial):
    @defer.inlineCallbacks
    def test_pong_that_answers_no_ping(self):
        """PONGs with no PING outstanding (no heartbeat during the test), from a READY seed
        peer and a bare socket: ignored, no round trip recorded, no penalty, not closed."""
        node = self.start(ping_interval=60.0)
        before = self.snapshot(node)
        outcome = yield defer.ensureDeferred(self.attack(node, "stray_pong"))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        self.assertEqual(outcome.report["closed"], [False, False])
        self.assertGreater(outcome.report["pongs_sent"], 100)
        protos = list(outcome.attacker_protos.values())
        self.assertEqual(len(protos), 2)
        for proto in protos:
            info = proto.info
            self.assertEqual((info.last_ping, info.min_ping, info.misbehaviour), (None, math.inf, 0))
            self.assertGreater(info.messages_in["PONG"], 50)

    @defer.inlineCallbacks
    def test_peer_that_never_answers_ping(self):
        """Peers that go silent (PINGs unanswered; four READY, one never handshaking), with
        ping_interval 0.5 s and peer_timeout 2 s: each dropped about 2 s after its last word."""
        node = self.start(ping_interval=0.5, peer_timeout=2.0)
        before = self.snapshot(node)
        outcome = yield defer.ensureDeferred(self.attack(node, "silent_peer", duration=5.0))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        lasted = outcome.report["dropped_after"]
        self.assertEqual(len(lasted), 5)
        for seconds in lasted:
            self.assertIsNotNone(seconds)
            self.assertTrue(1.9 <= seconds <= 3.5, lasted)
        self.assertTrue(all(n >= 2 for n in outcome.report["pings_unanswered"]), outcome.report)

    @defer.inlineCallbacks
    def test_idle_sockets_answer_pings_and_never_handshake(self):
        """30 sockets that answer every PING and never send STATUS, with ready_timeout 2 s:
        each closed about 2 s after it connected; the honest (READY) peer stays."""
        node = self.start(ready_timeout=2.0, ping_interval=0.5)
        before = self.snapshot(node)
        outcome = yield defer.ensureDeferred(self.attack(node, "idle_sockets", duration=5.0))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        report = outcome.report
        self.assertEqual(report["sockets"], 30)
        self.assertGreater(report["pings_answered"], 30)
        for seconds in report["closed_after"]:
            self.assertIsNotNone(seconds)
            self.assertTrue(1.9 <= seconds <= 3.5, report["closed_after"])
        self.assertEqual(dict(node.node.peers.misbehaviour_counts), {})

    @defer.inlineCallbacks
    def test_peer_exchange_flood_dials_nothing(self):
        """GOSSIP_PEERS floods (64 addresses a message) from a seed peer (dropped by the
        gate) and from an Archivas peer that announced "peers" (rate-limited into the book),
        with another network's lists too: nothing dialed, during or after (discover off,
        so only a dial on arrival could show)."""
        node = self.start(discover=False)
        before = self.snapshot(node)
        peers = node.node.peers
        dialers = dict(peers.dialers)
        dialing = []
        outcome = yield defer.ensureDeferred(self.attack(
            node, "peer_exchange", duration=DURATION,
            during=lambda: dialing.append((dict(peers._dialing), dict(peers.dialers)))))
        yield defer.ensureDeferred(self.assert_survived(node, outcome, before))
        self.assertTrue(dialing)
        self.assertEqual([d for d in dialing if d != ({}, dialers)], [])
        self.assertEqual((peers._dialing, peers.dialers), ({}, dialers))
        messages = outcome.report["messages"]
        self.assertEqual(outcome.report["closed"], [False, False])
        self.assertGreaterEqual(peers.dropped_counts["GOSSIP_PEERS"], messages["seed"] + messages["other_network"])
        self.assertGreater(peers.dropped_counts["address over rate"], 0)
        offered = 64 * messages["archivas"]
        self.assertLess(len(peers.book), offered / 2, "most of the flood was refused by the rate limit")
        self.assertEqual(dict(peers.misbehaviour_counts), {})
