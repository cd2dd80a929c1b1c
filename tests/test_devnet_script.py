"""conf/devnet.sh (make devnet): each node must answer /healthz before the next starts;
one that does not is named with its cause, and B and C are never started against a
stranger. Ports come from DEVNET_RPC_A.. / DEVNET_P2P_A.., so the test takes free ones.
Also the other things in conf/ and the Makefile an operator runs: the systemd unit, and
make run's database per network."""

import configparser
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from twisted.internet import defer, threads
from twisted.trial import unittest

from archivas.testing.chainbuilder import farmer_key, shared_plots
from tests.test_processes import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRIPT_DEADLINE = 120.0  # seconds for one run of the script (three nodes start in ~3 s each)


def healthz(port: int):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return json.load(response)
    except OSError:
        return None


class DevnetScript(unittest.TestCase):
    timeout = 3 * SCRIPT_DEADLINE

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.dir, "plots"))
        # A farmer key and its plot already there: the script does not plot.
        farmer_key(0).save(os.path.join(self.dir, "farmer.key"))
        plot = shared_plots(2)[0][1]
        os.symlink(plot.path, os.path.join(self.dir, "plots", plot.path.name))
        self.ports = {f"DEVNET_{kind}_{name}": free_port() for kind in ("RPC", "P2P") for name in "ABC"}
        # As the Makefile runs it (make devnet), on fastnet and the ports above.
        self.env = {**os.environ, "NETWORK": "fastnet", "BIN": str(BIN),
                    **{k: str(v) for k, v in self.ports.items()}}
        self.addCleanup(self.script, "stop")

    def script(self, action: str) -> defer.Deferred:
        return threads.deferToThread(
            subprocess.run, ["sh", "conf/devnet.sh", action, self.dir], cwd=ROOT, env=self.env,
            capture_output=True, text=True, timeout=SCRIPT_DEADLINE,
        )

    def occupy(self, port: int) -> socket.socket:
        """A stranger listening on `port` (it accepts connections and never answers)."""
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        self.addCleanup(s.close)
        return s

    def assert_nothing_started(self):
        names = os.listdir(self.dir)
        self.assertFalse([n for n in names if n.endswith(".pid")], names)
        self.assertNotIn("B.log", names)
        self.assertNotIn("C.log", names)

    @defer.inlineCallbacks
    def test_busy_rpc_port_of_a_is_named_and_b_c_not_started(self):
        port = self.ports["DEVNET_RPC_A"]
        self.occupy(port)
        result = yield self.script("start")
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn(f"devnet: node A cannot start: its RPC port 127.0.0.1:{port} is in use "
                      "(Address already in use)", result.stderr)
        self.assertIn("DEVNET_RPC_A=", result.stderr)
        self.assertNotIn("node B", result.stdout + result.stderr)
        self.assert_nothing_started()

    @defer.inlineCallbacks
    def test_busy_p2p_port_of_a_is_named(self):
        port = self.ports["DEVNET_P2P_A"]
        self.occupy(port)
        result = yield self.script("start")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(f"node A cannot start: its P2P port 127.0.0.1:{port} is in use", result.stderr)
        self.assert_nothing_started()

    @defer.inlineCallbacks
    def test_node_that_exits_is_named_with_its_log(self):
        # A's database path is a file: the node starts, says why in its log and exits 1.
        os.makedirs(os.path.join(self.dir, "fastnet"))
        Path(self.dir, "fastnet", "A-data").write_text("not a database directory")
        result = yield self.script("start")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("devnet: node A exited before its RPC answered; the last lines of", result.stderr)
        self.assertIn("archivas-node: error:", result.stderr)  # the node's own line, from its log
        self.assertIn("A-data", result.stderr)
        self.assert_nothing_started()

    @defer.inlineCallbacks
    def test_three_nodes_come_up_and_stop(self):
        result = yield self.script("start")
        self.assertEqual(result.returncode, 0, result.stderr)
        for name in "ABC":
            self.assertIn(f"node {name}: pid ", result.stdout)
            health = yield threads.deferToThread(healthz, self.ports[f"DEVNET_RPC_{name}"])
            self.assertEqual((health or {}).get("network"), "fastnet", name)
        # One database folder per network.
        self.assertEqual(sorted(os.listdir(os.path.join(self.dir, "fastnet"))), ["A-data", "B-data", "C-data"])
        pids = [int(Path(self.dir, f"{name}.pid").read_text()) for name in "ABC"]
        result = yield self.script("stop")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.split("\n")[:3], ["stopped node A", "stopped node B", "stopped node C"])
        for pid in pids:  # stop waits until each has exited (a zombie counts as exited)
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            self.assertEqual(state, "Z", pid)


def ensure_program(program: str, package: str) -> str:
    """The program's path, installing its Debian package if need be (CI runs as root)."""
    path = shutil.which(program)
    if path is None:
        subprocess.run(["apt-get", "install", "-y", package], capture_output=True, timeout=600)
        path = shutil.which(program)
    if path is None:
        raise AssertionError(f"{program} is needed and `apt-get install -y {package}` did not provide it")
    return path


class ConfAndMake(unittest.TestCase):
    """The systemd unit is sane and make run keeps one database per network."""

    def unit(self) -> configparser.RawConfigParser:
        parser = configparser.RawConfigParser(strict=True, interpolation=None, empty_lines_in_values=False)
        parser.optionxform = str  # systemd's keys are case-sensitive
        parser.read(ROOT / "conf" / "archivas-node.service")
        return parser

    def test_unit_runs_as_its_user_restarts_and_is_hardened(self):
        service = self.unit()["Service"]
        self.assertEqual(service["User"], "archivas")
        self.assertEqual(service["Restart"], "on-failure")
        for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                           ("ProtectHome", "yes"), ("CapabilityBoundingSet", "")]:
            self.assertEqual(service[key], value, key)
        writable = service["ReadWritePaths"].split()
        self.assertIn("/var/lib/" + service["StateDirectory"], writable)  # the data directory
        self.assertIn("/var/log/" + service["LogsDirectory"], writable)
        self.assertIn(service["WorkingDirectory"], writable)
        self.assertIn("--config /etc/archivas/node.toml", service["ExecStart"])

    def test_unit_verifies(self):
        analyze = ensure_program("systemd-analyze", "systemd")
        result = subprocess.run([analyze, "verify", "--man=no", str(ROOT / "conf" / "archivas-node.service")],
                                capture_output=True, text=True, timeout=60)
        # Outside a real install the one complaint is the program not being in /opt yet.
        problems = [line for line in (result.stdout + result.stderr).splitlines()
                    if line.strip() and "/opt/archivas/.venv/bin/archivas-node is not executable" not in line]
        self.assertEqual(problems, [])

    def test_make_run_has_a_database_per_network(self):
        make = ensure_program("make", "make")
        for network in ("devnet", "fastnet"):
            result = subprocess.run([make, "-n", "run", f"NETWORK={network}"], cwd=ROOT,
                                    capture_output=True, text=True, timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn(f"--db run/{network}/node-data", result.stdout)
            self.assertIn("--farm run/plots --farmer-key run/farmer.key", result.stdout)  # shared
