"""`make run` on a fresh clone: creates .venv, installs, makes a key and plots, and
starts a node that farms its own blocks (fastnet here, to be quick)."""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from tests.test_processes import free_port

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 480.0  # a fresh .venv installs everything first


def height(url):
    try:
        with urllib.request.urlopen(url + "/chainTip", timeout=2) as response:
            return json.load(response)["height"]
    except OSError:
        return None


class MakeRun(unittest.TestCase):
    timeout = DEADLINE + 60

    @defer.inlineCallbacks
    def test_fresh_clone_reaches_height_one(self):
        if shutil.which("make") is None or shutil.which("git") is None:
            self.fail("make and git are needed (CI has both: a skip here would hide a missing install)")
        clone = os.path.abspath(self.mktemp())
        subprocess.run(["git", "clone", "--quiet", str(ROOT), clone], check=True)
        rpc = free_port()
        log = open(os.path.join(clone, "make-run.log"), "wb")
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        proc = subprocess.Popen(
            ["make", "run", "NETWORK=fastnet", f"RPC_PORT=127.0.0.1:{rpc}", f"P2P_PORT=127.0.0.1:{free_port()}"],
            cwd=clone, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )

        def stop():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            log.close()

        self.addCleanup(stop)
        url = f"http://127.0.0.1:{rpc}"
        start = time.monotonic()
        while True:
            h = yield threads.deferToThread(height, url)
            if h is not None and h >= 1:
                break
            if proc.poll() is not None:
                self.fail(f"make run exited with {proc.returncode}: "
                          + Path(clone, "make-run.log").read_text()[-2000:])
            if time.monotonic() - start > DEADLINE:
                self.fail("no block within the deadline: " + Path(clone, "make-run.log").read_text()[-2000:])
            yield task.deferLater(reactor, 1, lambda: None)
        self.assertTrue(Path(clone, "run", "farmer.key").exists())
        self.assertEqual(len(list(Path(clone, "run", "plots").glob("*.plot"))), 2)
