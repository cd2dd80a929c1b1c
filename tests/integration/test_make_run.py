"""`make run` on a fresh clone: creates .venv, installs, makes a key and plots, and starts
a node that farms its own blocks (fastnet here, to be quick)."""

import json
import time
import urllib.request
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor, task, threads

DEADLINE = 480.0  # a fresh .venv installs everything first


def height(url):
    try:
        with urllib.request.urlopen(url + "/chainTip", timeout=2) as response:
            return json.load(response)["height"]
    except OSError:
        return None


@pytest_twisted.ensureDeferred
async def test_fresh_clone_reaches_height_one(make_run):
    start = time.monotonic()
    while True:
        h = await threads.deferToThread(height, make_run.url)
        if h is not None and h >= 1:
            break
        if make_run.proc.poll() is not None:
            raise AssertionError(f"make run exited with {make_run.proc.returncode}: "
                                 + make_run.log.read_text()[-2000:])
        if time.monotonic() - start > DEADLINE:
            raise AssertionError("no block within the deadline: " + make_run.log.read_text()[-2000:])
        await task.deferLater(reactor, 1, lambda: None)
    assert Path(make_run.clone, "run", "farmer.key").exists()
    assert len(list(Path(make_run.clone, "run", "plots").glob("*.plot"))) == 2
