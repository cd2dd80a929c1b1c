"""The integration suite: real processes on loopback, in the manner of Tahoe-LAFS's
`integration/`. Session-scoped fixtures build what the tests need once (a farmer key and
its plot, a three-node fastnet network of real `archivas-node` processes, a transfer
through it, a fresh clone running `make run`) and tear the processes down at the end of
the session; the tests drive them over RPC and the console scripts.

It runs in its own pytest invocation with pytest-twisted on (the unit suite's trial
TestCases and pytest-twisted's reactor greenlet don't mix: see pytest.ini):

    .venv/bin/python -m pytest -q -p twisted --reactor=default tests/integration

`make test` runs it after the unit suite. Fixtures are plain session fixtures that wait on
Deferreds with `pytest_twisted.blockon` (pytest-twisted's async fixtures support only
function and module scope); tests are `pytest_twisted.ensureDeferred` coroutines. Nothing
sleeps to synchronise: every wait polls with a deadline (tests/processes.py, wait_for).

The explorer's headless-Chromium test (test_explorer_browser.py) keeps its farming node
in this process (it stops the farmer and reads the mempool) and its browser as module
fixtures in that file; it uses `farmer` and `block` from here.
"""

import os
import shutil
import signal
import subprocess
import types
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from archivas.testing.chainbuilder import farmer_key, shared_plots
from tests.processes import NodeProcess, free_port, run, wait_for

ROOT = Path(__file__).resolve().parent.parent.parent
TRANSFER = 150_000_000  # 1.5 RCHV in base units


def pytest_configure(config):
    if not config.pluginmanager.has_plugin("twisted"):
        raise pytest.UsageError("tests/integration needs pytest-twisted, off in pytest.ini: "
                                "pytest -p twisted --reactor=default tests/integration (or make test)")


def block(coroutine_function, *args):
    """Run an async function in the reactor (pytest-twisted's greenlet) and wait for it."""
    d = defer.Deferred()
    reactor.callLater(0, lambda: defer.ensureDeferred(coroutine_function(*args)).chainDeferred(d))
    return pytest_twisted.blockon(d)


def cleanups(request):
    """What NodeProcess wants for its clean-up (a TestCase's addCleanup): the fixture's finalizer."""
    return types.SimpleNamespace(addCleanup=request.addfinalizer)


@pytest.fixture(scope="session")
def farmer(tmp_path_factory):
    """Test farmer 0's key in a file, and a directory holding its plot (made once a process)."""
    directory = tmp_path_factory.mktemp("farmer")
    key_file = directory / "farmer.key"
    farmer_key(0).save(str(key_file))
    plots = directory / "plots"
    plots.mkdir()
    plot = shared_plots(2)[0][1]
    os.symlink(plot.path, plots / plot.path.name)
    return types.SimpleNamespace(key=farmer_key(0), key_file=str(key_file), plots=str(plots),
                                 address=farmer_key(0).address)


@pytest.fixture(scope="session")
def three_nodes(request, tmp_path_factory, farmer):
    """The three-node walk-through: A (`twistd -n archivas-node`, timelord and farmer),
    B peered with A, C peered with A and B; returned once all three are at height 3."""
    directory = str(tmp_path_factory.mktemp("three-nodes"))
    a = NodeProcess(cleanups(request), "A", directory, twistd=True,
                    extra=["--timelord", "--farm", farmer.plots, "--farmer-key", farmer.key_file])
    b = NodeProcess(cleanups(request), "B", directory, peers=[a])
    c = NodeProcess(cleanups(request), "C", directory, peers=[a, b])
    for node in (a, b, c):
        node.start()

    async def all_at(height):
        tips = [await n.tip() for n in (a, b, c)]
        return all(t and t["height"] >= height for t in tips)

    block(wait_for, lambda: all_at(3), "three nodes at height 3")
    return types.SimpleNamespace(a=a, b=b, c=c, all=(a, b, c), dir=directory)


@pytest.fixture(scope="session")
def transfer(three_nodes, farmer):
    """A new wallet (bob) and 1.5 RCHV sent to it from the farmer (rewards on A) through
    node B; returns bob's address once the transfer is mined and seen on A, B and C."""
    nodes = three_nodes

    async def send():
        out, err, code = await run("archivas-wallet", "new", "--out", os.path.join(nodes.dir, "bob.key"))
        assert code == 0, err
        bob = out.strip().splitlines()[-1]
        assert bob.startswith("arcv1")
        out, err, code = await run("archivas-wallet", "send", "--key", farmer.key_file, "--to", bob,
                                   "--amount", "1.5", "--fee", "0.001", "--node", nodes.b.url)
        assert code == 0, err
        assert len(out.strip().splitlines()[-1]) == 64  # the transfer's hash

        async def mined_everywhere():
            balances = [await n.get(f"/balance/{bob}") for n in nodes.all]
            return all(x["balance"] == TRANSFER for x in balances)

        await wait_for(mined_everywhere, "the transfer mined and seen on A, B and C")
        return bob

    return block(send)


@pytest.fixture(scope="session")
def fresh_clone(tmp_path_factory):
    """A git clone of this checkout's HEAD, nothing installed in it."""
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.fail("make and git are needed (CI has both: a skip here would hide a missing install)")
    clone = tmp_path_factory.mktemp("make-run") / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    return clone


@pytest.fixture(scope="session")
def make_run(request, fresh_clone):
    """`make run NETWORK=fastnet` started in the fresh clone (it makes .venv, installs, makes
    a key and plots, and starts a farming node); stopped, with its process group, at the end."""
    rpc = free_port()
    log_path = fresh_clone / "make-run.log"
    log = open(log_path, "wb")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    proc = subprocess.Popen(
        ["make", "run", "NETWORK=fastnet", f"RPC_PORT=127.0.0.1:{rpc}", f"P2P_PORT=127.0.0.1:{free_port()}"],
        cwd=fresh_clone, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )

    def stop():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        log.close()

    request.addfinalizer(stop)
    return types.SimpleNamespace(clone=fresh_clone, proc=proc, url=f"http://127.0.0.1:{rpc}", log=log_path)
