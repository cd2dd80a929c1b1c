"""What the logs show and where they go (docs/logging.md): levels, Twisted's chatter at
debug, JSON lines, rotation, the options under `archivas-node` and `twistd`, the timelord's
progress line, a sync's progress instead of a line per block, and `--version` everywhere.
The last tests run real processes on loopback (fastnet) and measure lines per second."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.application import service
from twisted.internet import defer, reactor, task, utils
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial import unittest

from archivas import __version__, logs
from archivas.chain import vdf
from archivas.chain.blockchain import Chain
from archivas.nodeapi import ApiError
from archivas.service import OperatorNodeService
from archivas.tap import Options, makeService
from archivas.testing.chainbuilder import farmer_key, shared_plots
from archivas.timelord import Timelord
from tests.common import PARAMS, fixture_blocks
from tests.netutil import start_node, wait_until
from tests.test_processes import free_port

BIN = Path(sys.executable).parent
DEADLINE = 30.0
MEASURE_SECONDS = 20.0
MAX_LINES_PER_SECOND = 10.0  # at info, node + timelord + farmer together (47 before this work)


def parse(argv, environ=None):
    options = Options(environ=environ or {}, exit_on_error=False)
    options.parseOptions(argv)
    return options


def event(text, level=LogLevel.info, namespace="archivas.test", **fields):
    return {"log_format": text, "log_level": level, "log_namespace": namespace, "log_time": time.time(), **fields}


def collect(level="info"):
    seen: list = []
    return seen, logs.filtered(seen.append, logs.parse_level(level))


class FilterTests(unittest.TestCase):
    CHATTER = [
        event("{log_io}", namespace="twisted.python.log", log_io='"127.0.0.1" - - "GET /vdf/job HTTP/1.1" 200 436'),
        event("Starting factory {factory!r}", namespace="twisted.web.client._HTTP11ClientFactory", factory=1),
        event("Stopping factory {factory!r}", namespace="archivas.protocols.peer.PeerFactory", factory=1),
        event("{log_text}", namespace="log_legacy", log_text="Site starting on 8080"),
        event("{log_text}", namespace="log_legacy", log_text="(TCP Port 8080 Closed)"),
        event("Scheduling retry {attempt} to connect {endpoint} in {delay} seconds.",
              namespace="twisted.application._client_service._Core", attempt=1, endpoint="e", delay=1),
    ]

    def test_chatter_is_debug(self):
        seen, observer = collect("info")
        for e in self.CHATTER:
            observer(e)
        self.assertEqual(seen, [])
        seen, observer = collect("debug")
        for e in self.CHATTER:
            observer(e)
        self.assertEqual(len(seen), len(self.CHATTER))
        self.assertEqual({e["log_level"] for e in seen}, {LogLevel.debug})  # and labelled so

    def test_levels(self):
        ours = [event("[p2p] x", LogLevel.debug), event("[chain] new tip", LogLevel.info),
                event("[p2p] misbehaved", LogLevel.warn), event("boom", LogLevel.error),
                event("refused", LogLevel.warn, namespace="twisted.python.log"),  # a warning is never chatter
                event("gone", LogLevel.critical, namespace="log_legacy")]
        for level, count in (("debug", 6), ("info", 5), ("warn", 4), ("warning", 4), ("error", 2),
                             ("critical", 1)):
            seen, observer = collect(level)
            for e in ours:
                observer(e)
            self.assertEqual(len(seen), count, level)

    def test_json_lines(self):
        out = io.StringIO()
        setup = logs.setup("debug", "json", stdout=out)
        setup.observer(event("[rpc] listening on {port}", port=8080))
        from twisted.python.failure import Failure

        setup.observer(event("[node] failed", LogLevel.critical, log_failure=Failure(ZeroDivisionError("x"))))
        setup.observer(event('{log_io}', namespace="twisted.python.log", log_io='"GET /x" 200'))
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual([(x["level"], x["namespace"], x["text"]) for x in lines], [
            ("info", "archivas.test", "[rpc] listening on 8080"),
            ("critical", "archivas.test", "[node] failed"),
            ("debug", "twisted.python.log", '"GET /x" 200'),
        ])
        self.assertIn("ZeroDivisionError", lines[1]["failure"])
        self.assertRegex(lines[0]["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(set(lines[0]), {"time", "level", "namespace", "text"})

    def test_rotation_at_the_size_keeps_that_many_files(self):
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "node.log")
        setup = logs.setup("info", "text", path, max_bytes=1024, keep=2)
        self.addCleanup(setup.file.close)
        line = "[chain] new tip height={h} " + "x" * 60
        for h in range(200):  # about 100 bytes a line: 20 KB in all
            setup.observer(event(line, h=h))
        names = sorted(os.listdir(directory))
        self.assertEqual(names, ["node.log", "node.log.1", "node.log.2"])
        for name in names:
            self.assertLessEqual(os.path.getsize(os.path.join(directory, name)), 1024 + 200)
        with open(path + ".1") as f:
            older = f.read()
        with open(path) as f:
            newest = f.read()
        self.assertIn("height=199 ", newest)
        self.assertNotIn("height=199 ", older)
        self.assertEqual(setup.destination, os.path.abspath(path))

    def test_where_under_twistd(self):
        directory = self.mktemp()
        os.makedirs(directory)
        ours, theirs = os.path.join(directory, "ours.log"), os.path.join(directory, "twistd.log")
        # our --log-file over twistd's --logfile
        setup = logs.setup(path=ours, twistd={"logfile": theirs, "nodaemon": True})
        setup.file.close()
        self.assertEqual(setup.destination, os.path.abspath(ours))
        # twistd's --logfile when ours is not given: with our rotation, level and format
        setup = logs.setup(twistd={"logfile": theirs, "nodaemon": True}, max_bytes=2048, keep=3)
        setup.file.close()
        self.assertEqual((setup.destination, setup.file.rotateLength, setup.file.maxRotatedFiles),
                         (os.path.abspath(theirs), 2048, 3))
        out = io.StringIO()
        for twistd in ({"nodaemon": True}, {"logfile": "-", "nodaemon": True}, None):
            setup = logs.setup(twistd=twistd, stdout=out)
            self.assertEqual((setup.destination, setup.file), ("stdout", None))
        self.assertEqual(logs.setup(twistd={"syslog": True, "prefix": "archivas"}).destination, "syslog")


class OptionTests(unittest.TestCase):
    def test_defaults_flags_and_config_file(self):
        o = parse([])
        self.assertEqual([o[k] for k in ("log-level", "log-format", "log-file", "log-max-bytes", "log-keep")],
                         ["info", "text", None, 10 * 1024 * 1024, 5])
        o = parse(["--log-level", "debug", "--log-format", "json", "--log-file", "x.log", "--log-max-bytes", "512K",
                   "--log-keep", "9"])
        self.assertEqual([o[k] for k in ("log-level", "log-format", "log-file", "log-max-bytes", "log-keep")],
                         ["debug", "json", "x.log", 512 * 1024, 9])
        config = self.mktemp()
        with open(config, "w") as f:
            f.write('log-level = "warn"\nlog-max-bytes = 4096\nlog-keep = 2\n')
        o = parse(["--config", config, "--log-keep", "3"])
        self.assertEqual((o["log-level"], o["log-max-bytes"], o["log-keep"]), ("warn", 4096, 3))

    def test_bad_values(self):
        config = self.mktemp()
        with open(config, "w") as f:
            f.write("log-keep = true\n")
        cases = {
            ("--log-level", "loud"): "not one of debug, info, warn, error, critical",
            ("--log-format", "xml"): "must be one of text, json",
            ("--log-max-bytes", "1023"): "between 1024 bytes and 1 TiB",
            ("--log-max-bytes", "2T"): "not a size",
            ("--log-max-bytes", "ten"): "not a size",
            ("--log-keep", "0"): "from 1 to 100",
            ("--log-keep", "101"): "from 1 to 100",
            ("--log-file", "/nonexistent/node.log"): "does not exist",
            ("--log-file", "."): "is a directory",
            ("--config", config): "log-keep has the wrong type",
        }
        for argv, words in cases.items():
            with self.assertRaises(usage.UsageError, msg=argv) as cm:
                parse(list(argv))
            self.assertIn(words, str(cm.exception), argv)

    def test_make_service_hands_the_observer_to_twistd(self):
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "node.log")
        config = parse(["--network", "fastnet", "--db", os.path.join(directory, "db"), "--log-file", path,
                        "--log-format", "json"])
        top = makeService(config, MemoryReactorClock())
        self.addCleanup(top.node.chain.close)
        self.assertIsInstance(top, OperatorNodeService)
        self.assertEqual(top.log_setup.destination, os.path.abspath(path))
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        application = service.Application("archivas-node")  # as twistd makes it
        top.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), top.log_setup.observer)
        self.assertIsNot(signal.getsignal(signal.SIGUSR1), signal.SIG_DFL)  # SIGUSR1 rotates, as twistd's
        top.log_setup.file.close()


class FakeTimelordAPI:
    def __init__(self):
        self.outputs: list = []
        self.down = False

    def vdf_job(self):
        if self.down:
            raise ApiError(503, "cannot reach the node")
        return {"parentHash": "00" * 32, "seed": "11" * 32, "discriminantSeed": "22" * 32,
                "lastOutput": vdf.GENERATOR.hex(), "discriminantBits": 256, "iterations": 1000,
                "segments": len(self.outputs)}

    def vdf_output(self, doc):
        self.outputs.append(doc)
        return {"accepted": True}


class TimelordReportTests(unittest.TestCase):
    def test_progress_line_every_ten_seconds_and_attributes(self):
        clock = task.Clock()
        api = FakeTimelordAPI()
        segment = vdf.Segment(b"\x01" * vdf.FORM_SIZE, b"\x02" * vdf.FORM_SIZE)

        def prove(seed, start, bits, iterations):  # 1,000 iterations in 30 ms of the clock: 33,333 it/s
            return task.deferLater(clock, 0.03, lambda: segment)

        lines: list = []

        def observe(e):
            if e.get("log_namespace") == "archivas.timelord":
                lines.append((e["log_level"], formatEvent(e)))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        timelord = Timelord(api, clock, prove=prove)
        timelord.startService()
        clock.pump([0.03] * 333)  # 9.99 s: not yet a report
        self.assertEqual([text for _, text in lines], ["[timelord] started"])
        self.assertEqual(timelord.segments_made, 333)
        self.assertLess(abs(timelord.iterations_per_second - 33_333.3), 1)
        clock.advance(0.02)
        self.assertEqual(lines[-1], (LogLevel.info, "[timelord] 333 segments in 10 s (333 accepted), 33,333 it/s"))
        self.assertIsInstance(timelord.segments_made, int)
        self.assertIsInstance(timelord.iterations_per_second, float)
        # The node goes away: one warning, not one per poll; a window without segments is 0 it/s.
        api.down = True
        clock.pump([0.2] * 110)  # 22 s of polls: the window under way when it went, and a whole idle one
        warnings = [text for level, text in lines if level == LogLevel.warn]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("node unavailable", warnings[0])
        self.assertEqual(timelord.iterations_per_second, 0.0)
        self.assertIn("[timelord] 0 segments in 10 s (0 accepted), 0 it/s", [text for _, text in lines])
        api.down = False
        clock.pump([0.03] * 10)
        self.assertIn("[timelord] node reachable again", [text for _, text in lines])
        self.assertGreater(timelord.iterations_per_second, 0.0)
        d = timelord.stopService()
        clock.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(len(api.outputs), timelord.published)


class SyncLogTests(unittest.TestCase):
    """A node syncing 300 blocks logs progress lines, not one '[chain] new tip' a block."""

    timeout = 60
    BLOCKS = 300

    @defer.inlineCallbacks
    def test_sync_logs_progress_not_every_block(self):
        directory = self.mktemp()
        chain = Chain.open(directory, PARAMS)
        for block in fixture_blocks(self.BLOCKS):  # trusted: the source's own proofs are not tested here
            chain.add_block(block, 2**62, score=0)
        chain.close()
        source = start_node(self, directory)
        info: list = []

        def observe(e):
            if e.get("log_level") == LogLevel.info and str(e.get("log_namespace", "")).startswith("archivas"):
                info.append(formatEvent(e))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        started = time.monotonic()
        joining = start_node(self)
        joining.node.peers.dial(source.address)
        yield defer.ensureDeferred(wait_until(lambda: joining.chain.height >= self.BLOCKS, "the sync"))
        seconds = time.monotonic() - started
        tips = [line for line in info if line.startswith("[chain] new tip")]
        progress = [line for line in info if line.startswith("[sync]")]
        print(f"\nLOGS sync blocks={self.BLOCKS} s={seconds:.1f} info_lines={len(info)} new_tip_lines={len(tips)} "
              f"sync_lines={len(progress)}")
        self.assertLessEqual(len(tips), 10, tips)
        self.assertLess(len(info), 20 + seconds, info)


async def run(program, *args):
    out, err, code = await utils.getProcessOutputAndValue(str(BIN / program), args, env=os.environ)
    return out.decode(), err.decode(), code


class VersionTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_every_program_prints_archivas_version(self):
        programs = [("archivas-node",), ("archivas-timelord",), ("archivas-farmer",), ("archivas-wallet",),
                    ("twistd", "archivas-node")]
        results = yield defer.gatherResults([defer.ensureDeferred(run(*p, "--version")) for p in programs])
        for program, (out, err, code) in zip(programs, results):
            self.assertEqual(code, 0, (program, err))
            self.assertEqual(out.strip().split()[:2], ["archivas-node" if program[0] == "twistd" else program[0],
                                                       __version__], out)


class Process:
    """A program run in the background with its stdout and stderr in one file."""

    def __init__(self, case, argv, out):
        self.out = out
        self.proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], stdout=open(out, "wb"),
                                     stderr=subprocess.STDOUT)
        case.addCleanup(self.stop, signal.SIGKILL)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def lines(self, path=None):
        with open(path or self.out, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()


async def until(check, what, deadline=DEADLINE):
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > deadline:
            raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what}")
        await task.deferLater(reactor, 0.1, lambda: None)


async def answers(url, path="/healthz"):
    import treq
    from twisted.web.client import HTTPConnectionPool

    try:
        response = await treq.get(url + path, timeout=2, pool=HTTPConnectionPool(reactor, persistent=False))
        await treq.content(response)
        return response.code == 200
    except Exception:
        return False


def node_args(directory, name):
    rpc = free_port()
    return [
        "--network", "fastnet", "--db", os.path.join(directory, name + "-data"),
        "--rpc-port", f"127.0.0.1:{rpc}", "--p2p-port", f"127.0.0.1:{free_port()}",
    ], f"http://127.0.0.1:{rpc}"


class ProcessTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    @defer.inlineCallbacks
    def test_warn_level_writes_no_info_line(self):
        args, url = node_args(self.dir, "warn")
        node = Process(self, ["archivas-node", *args, "--log-level", "warn"], os.path.join(self.dir, "warn.out"))
        yield defer.ensureDeferred(until(lambda: answers(url), "the node up"))
        for path in ("/status", "/chainTip", "/nope"):
            yield defer.ensureDeferred(answers(url, path))
        node.stop()
        lines = node.lines()
        self.assertEqual([line for line in lines if "#info]" in line or "#debug]" in line], [])
        self.assertFalse([line for line in lines if "Traceback" in line], lines)  # (twistd ends by its signal: -15)

    @defer.inlineCallbacks
    def test_twistd_json_file_rotated_with_access_lines_at_debug(self):
        """Under twistd: our --log-file wins over twistd's --logfile, rotates at the size,
        keeps --log-keep files, writes JSON lines; HTTP access lines are there at debug."""
        args, url = node_args(self.dir, "json")
        path, theirs = os.path.join(self.dir, "node.log"), os.path.join(self.dir, "twistd.log")
        node = Process(self, ["twistd", "-n", "--pidfile=", "--logfile", theirs, "archivas-node", *args,
                              "--log-level", "debug", "--log-format", "json", "--log-file", path,
                              "--log-max-bytes", "2K", "--log-keep", "2"], os.path.join(self.dir, "json.out"))
        yield defer.ensureDeferred(until(lambda: answers(url), "the node up"))
        marker = "/block/777777"  # a 404, logged as an access line like any request

        async def logged():
            await answers(url, marker)
            return any(marker in line for line in node.lines(path))

        yield defer.ensureDeferred(until(logged, "the access line in the log file"))
        for _ in range(30):  # enough lines to rotate 2 KiB files a few times
            yield defer.ensureDeferred(answers(url, "/status"))
        node.stop()
        names = sorted(n for n in os.listdir(self.dir) if n.startswith("node.log"))
        self.assertEqual(names, ["node.log", "node.log.1", "node.log.2"])
        self.assertFalse(os.path.exists(theirs))
        records = []
        for name in names:
            self.assertLessEqual(os.path.getsize(os.path.join(self.dir, name)), 2048 + 1024)
            records += [json.loads(line) for line in node.lines(os.path.join(self.dir, name))]
        self.assertTrue(records)
        for record in records:
            self.assertIn(record["level"], {"debug", "info", "warn", "error", "critical"})
            self.assertEqual(set(record) - {"failure"}, {"time", "level", "namespace", "text"})
        access = [r for r in records if '"GET /status HTTP/1.1" 200' in r["text"]]
        self.assertTrue(access)
        self.assertEqual({r["level"] for r in access}, {"debug"})
        self.assertEqual(node.lines(), [])  # nothing on stdout

    @defer.inlineCallbacks
    def test_info_lines_per_second_with_standalone_timelord_and_farmer(self):
        """twistd --logfile (ours not given): the node's log at info, with a standalone
        timelord and farmer each polling its RPC, for MEASURE_SECONDS."""
        key_file = os.path.join(self.dir, "farmer.key")
        farmer_key(1).save(key_file)
        plots = os.path.join(self.dir, "plots")
        os.makedirs(plots)
        plot = shared_plots(2)[1][1]
        os.symlink(plot.path, os.path.join(plots, plot.path.name))
        args, url = node_args(self.dir, "node")
        node_log = os.path.join(self.dir, "node.log")
        started = time.monotonic()
        node = Process(self, ["twistd", "-n", "--pidfile=", "--logfile", node_log, "archivas-node", *args],
                       os.path.join(self.dir, "node.out"))
        yield defer.ensureDeferred(until(lambda: answers(url), "the node up"))
        timelord = Process(self, ["archivas-timelord", "--node", url], os.path.join(self.dir, "timelord.log"))
        farmer = Process(self, ["archivas-farmer", "farm", "--plots", plots, "--farmer-key", key_file,
                                "--node", url], os.path.join(self.dir, "farmer.log"))
        yield task.deferLater(reactor, MEASURE_SECONDS, lambda: None)  # the measured interval itself
        for p in (farmer, timelord, node):
            p.stop()
        seconds = time.monotonic() - started
        counts = {name: len(p.lines(path)) for name, p, path in (
            ("node", node, node_log), ("timelord", timelord, None), ("farmer", farmer, None))}
        total = sum(counts.values())
        node_lines = node.lines(node_log)
        print(f"\nLOGS lines_per_s={total / seconds:.2f} seconds={seconds:.1f} " +
              " ".join(f"{k}={v}" for k, v in counts.items()))
        self.assertTrue(any("[chain] new tip height=3 " in line for line in node_lines), node_lines[:20])
        for chatter in ("HTTP/1.1", "Starting factory", "Stopping factory", "starting on", "Port", "#debug]"):
            self.assertEqual([line for p, path in ((node, node_log), (timelord, None), (farmer, None))
                              for line in p.lines(path) if chatter in line], [], chatter)
        report = [line for line in timelord.lines() if "[timelord]" in line and "segments in 10 s" in line]
        self.assertTrue(report, timelord.lines())
        self.assertRegex(report[0], r"\[timelord\] [1-9][\d,]* segments in 10 s \(\d+ accepted\), [1-9][\d,]* it/s")
        self.assertLess(total / seconds, MAX_LINES_PER_SECOND)
        self.assertEqual(node.lines(), [])  # all of it in the log file


class StandaloneLogOptionTests(unittest.TestCase):
    def test_timelord_and_farmer_take_the_log_options(self):
        from twisted.python import usage

        from archivas.scripts import farmer, timelord

        options = timelord.Options()
        options.parseOptions(["--node", "http://127.0.0.1:1", "--log-level", "warn", "--log-format", "json"])
        self.assertEqual((options["log-level"], options["log-format"]), ("warn", "json"))
        farm = farmer.Options()
        farm.parseOptions(["farm", "--farmer-key", "k", "--log-level", "debug"])
        self.assertEqual(farm.subOptions["log-level"], "debug")
        for argv in (["--log-level", "loud"], ["--log-format", "xml"]):
            with self.subTest(argv=argv):
                self.assertRaises(usage.UsageError, timelord.Options().parseOptions, argv)
