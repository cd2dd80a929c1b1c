"""End to end with real processes on loopback (fastnet): `twistd -n archivas-node` and
the console scripts, as an operator would run them."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import treq
from twisted.internet import defer, reactor, task, utils
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from archivas.chain.params import COIN
from archivas.testing.chainbuilder import farmer_key, shared_plots

BIN = Path(sys.executable).parent
DEADLINE = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeProcess:
    def __init__(self, case, name, directory, peers=(), extra=(), twistd=False):
        self.name = name
        self.rpc, self.p2p = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.rpc}"
        self.db = os.path.join(directory, f"{name}-data")
        self.log = os.path.join(directory, f"{name}.log")
        self.args = ["--network", "fastnet", "--db", self.db, "--rpc-port", f"127.0.0.1:{self.rpc}",
                     "--p2p-port", f"127.0.0.1:{self.p2p}", *extra]
        if peers:
            self.args += ["--peers", ",".join(f"127.0.0.1:{p.p2p}" for p in peers)]
        self.twistd = twistd
        self.proc = None
        case.addCleanup(self.kill)

    def start(self):
        if self.twistd:
            argv = [str(BIN / "twistd"), "-n", "--pidfile=", "archivas-node", *self.args]
        else:
            argv = [str(BIN / "archivas-node"), *self.args]
        self.proc = subprocess.Popen(argv, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def kill(self, sig=signal.SIGKILL):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    async def get(self, path):
        # No persistent connections: trial wants a clean reactor after each test.
        response = await treq.get(self.url + path, timeout=5, pool=HTTPConnectionPool(reactor, persistent=False))
        return json.loads(await treq.content(response))

    async def tip(self):
        try:
            return await self.get("/chainTip")
        except Exception:
            return None


async def wait_for(check, what, deadline=DEADLINE):
    start = time.monotonic()
    while True:
        if await check():
            return
        if time.monotonic() - start > deadline:
            raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what}")
        await task.deferLater(reactor, 0.2, lambda: None)


async def run(*argv):
    out, err, code = await utils.getProcessOutputAndValue(str(BIN / argv[0]), argv[1:], env=os.environ)
    return out.decode(), err.decode(), code


class ThreeNodes(unittest.TestCase):
    timeout = 300

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        # The farmer: test farmer 0's key and its plot.
        self.key_file = os.path.join(self.dir, "farmer.key")
        farmer_key(0).save(self.key_file)
        self.plots = os.path.join(self.dir, "plots")
        os.makedirs(self.plots)
        plot = shared_plots(2)[0][1]
        os.symlink(plot.path, os.path.join(self.plots, plot.path.name))

    @defer.inlineCallbacks
    def test_transfer_through_b_and_b_killed_catches_up(self):
        yield defer.ensureDeferred(self._scenario())

    async def _scenario(self):
        a = NodeProcess(self, "A", self.dir, twistd=True,
                        extra=["--timelord", "--farm", self.plots, "--farmer-key", self.key_file])
        b = NodeProcess(self, "B", self.dir, peers=[a])
        c = NodeProcess(self, "C", self.dir, peers=[a, b])
        for node in (a, b, c):
            node.start()

        async def all_at(height):
            tips = [await n.tip() for n in (a, b, c)]
            return all(t and t["height"] >= height for t in tips)

        await wait_for(lambda: all_at(3), "three nodes at height 3")

        # A transfer from the farmer (rewards on A) sent through node B.
        out, err, code = await run("archivas-wallet", "new", "--out", os.path.join(self.dir, "bob.key"))
        self.assertEqual(code, 0, err)
        bob = out.strip().splitlines()[-1]
        self.assertTrue(bob.startswith("arcv1"))
        out, err, code = await run("archivas-wallet", "send", "--key", self.key_file, "--to", bob,
                                   "--amount", "1.5", "--fee", "0.001", "--node", b.url)
        self.assertEqual(code, 0, err)
        self.assertEqual(len(out.strip().splitlines()[-1]), 64)  # the transfer's hash

        async def mined_everywhere():
            balances = [await n.get(f"/balance/{bob}") for n in (a, b, c)]
            return all(x["balance"] == 150_000_000 for x in balances)

        await wait_for(mined_everywhere, "the transfer mined and seen on A, B and C")
        farmer = farmer_key(0).address

        async def same_state():
            tips = {(await n.tip() or {}).get("hash") for n in (a, b, c)}
            if len(tips) != 1:
                return False
            balances = {(await n.get(f"/balance/{farmer}"))["balance"] for n in (a, b, c)}
            return len(balances) == 1

        await wait_for(same_state, "one tip and the same balances on A, B and C")
        out, err, code = await run("archivas-wallet", "balance", bob, "--node", c.url)
        self.assertEqual((code, out.strip()), (0, f"{bob}: 1.50000000 RCHV (nonce 0)"))

        # B killed with SIGKILL while A adds 10 blocks; restarted on its database.
        b.kill(signal.SIGKILL)
        killed_at = (await a.tip())["height"]

        async def a_ten_more():
            return (await a.tip())["height"] >= killed_at + 10

        await wait_for(a_ten_more, "A ten blocks further")
        b.start()

        async def b_caught_up():
            tb, ta = await b.tip(), await a.tip()
            return tb is not None and tb["height"] >= ta["height"] - 1 and tb["height"] >= killed_at + 10

        await wait_for(b_caught_up, "B caught up after its restart")
        with open(b.log) as f:
            self.assertIn("Synced to tip", f.read())
        self.assertEqual((await b.get(f"/balance/{bob}"))["balance"], int(1.5 * COIN))


class OperatorMistakes(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_bad_flag_and_locked_database_and_port_in_use(self):
        out, err, code = yield defer.ensureDeferred(run("archivas-node", "--network", "mainnet"))
        self.assertEqual((code, err.count("\n")), (2, 1))
        self.assertIn("--network must be one of", err)

        directory = self.mktemp()
        first = NodeProcess(self, "first", directory)
        os.makedirs(directory)
        first.start()
        yield defer.ensureDeferred(wait_for(lambda: first.tip(), "the first node up"))
        # The same database again: one line, non-zero.
        out, err, code = yield defer.ensureDeferred(run(
            "archivas-node", "--network", "fastnet", "--db", first.db,
            "--rpc-port", f"127.0.0.1:{free_port()}", "--p2p-port", f"127.0.0.1:{free_port()}"))
        self.assertEqual(code, 1)
        self.assertIn("archivas-node: error: database", err)
        self.assertIn("in use by pid", err)
        self.assertNotIn("Traceback", out + err)
        # A port in use: one line, non-zero.
        out, err, code = yield defer.ensureDeferred(run(
            "archivas-node", "--network", "fastnet", "--db", os.path.join(directory, "other"),
            "--rpc-port", f"127.0.0.1:{first.rpc}", "--p2p-port", f"127.0.0.1:{free_port()}"))
        self.assertEqual(code, 1)
        self.assertIn("archivas-node: error: cannot listen for rpc", err + out)
        self.assertNotIn("Traceback", out + err)


class StandalonePrograms(unittest.TestCase):
    """archivas-timelord and archivas-farmer farm against a plain node over its RPC."""

    timeout = 180

    @defer.inlineCallbacks
    def test_timelord_and_farmer_processes_make_blocks(self):
        directory = self.mktemp()
        os.makedirs(directory)
        key_file = os.path.join(directory, "farmer.key")
        farmer_key(1).save(key_file)
        plots = os.path.join(directory, "plots")
        os.makedirs(plots)
        plot = shared_plots(2)[1][1]
        os.symlink(plot.path, os.path.join(plots, plot.path.name))
        node = NodeProcess(self, "node", directory)
        node.start()
        yield defer.ensureDeferred(wait_for(node.tip, "the node up"))
        helpers = []
        for argv in (["archivas-timelord", "--node", node.url],
                     ["archivas-farmer", "farm", "--plots", plots, "--farmer-key", key_file, "--node", node.url]):
            log = open(os.path.join(directory, argv[0] + ".log"), "wb")
            proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], stdout=log, stderr=subprocess.STDOUT)
            helpers.append(proc)
            self.addCleanup(lambda p=proc: (p.poll() is None and p.kill(), p.wait()))

        async def farmed():
            tip = await node.tip()
            return tip is not None and tip["height"] >= 3

        yield defer.ensureDeferred(wait_for(farmed, "blocks from the standalone timelord and farmer"))
        block = yield defer.ensureDeferred(node.get("/block/1"))
        self.assertEqual(block["header"]["rewardAddress"], farmer_key(1).address)

    @defer.inlineCallbacks
    def test_unreachable_node_is_one_line(self):
        for argv in (["archivas-timelord", "--node", f"http://127.0.0.1:{free_port()}"],
                     ["archivas-wallet", "balance", farmer_key(0).address, "--node", f"http://127.0.0.1:{free_port()}"]):
            out, err, code = yield defer.ensureDeferred(run(*argv))
            self.assertEqual(code, 1, argv)
            self.assertEqual(err.count("\n"), 1, err)
            self.assertIn("cannot reach the node", err)
