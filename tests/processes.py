"""Helpers for tests that run real processes on loopback (fastnet): free ports, a node
process (`archivas-node`, or `twistd -n archivas-node`), the console scripts, and polling
with a deadline. Shared by the unit suite's process tests (tests/test_processes.py,
tests/test_failover.py, ...) and the integration suite (tests/integration/)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import treq
from twisted.internet import reactor, task, utils
from twisted.web.client import HTTPConnectionPool

BIN = Path(sys.executable).parent
DEADLINE = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeProcess:
    """One node. `case` is anything with addCleanup(f) (a trial TestCase, or an object whose
    addCleanup is a pytest request's addfinalizer): the process is killed at its clean-up."""

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
