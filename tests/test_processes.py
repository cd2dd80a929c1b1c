"""End to end with real processes on loopback (fastnet): the console scripts, as an
operator would run them. The three-node walk-through is in the integration suite
(tests/integration/test_three_nodes.py); the helpers are in tests/processes.py and are
re-exported here for the tests that import them from this module."""

import os
import subprocess

from twisted.internet import defer
from twisted.trial import unittest

from archivas.testing.chainbuilder import farmer_key, shared_plots
from tests.processes import BIN, DEADLINE, NodeProcess, free_port, run, wait_for

__all__ = ["BIN", "DEADLINE", "NodeProcess", "free_port", "run", "wait_for"]


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
