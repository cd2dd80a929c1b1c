"""The explorer in headless Chromium against a real fastnet node that farms: the live
height and a new block without a reload, then the block, transfer, address, mempool and
peers pages checked against the RPC, a screenshot of each (in a temporary directory) and
no console errors. Chromium and chromedriver are installed with apt-get when missing;
a failure there fails the test (it must run, not skip).

The farming node (A, in this process: the test stops its farmer and reads its mempool)
with a peer (B), and the browser, are module fixtures."""

import json
import os
import subprocess
import time
import types

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor, task, threads
from twisted.web.client import HTTPConnectionPool

from archivas.chain import params as network_params
from archivas.chain.block import Header
from archivas.chain.params import COIN
from archivas.chain.transactions import sign_transfer
from archivas.explorer import summary
from archivas.explorer.app import STRIP_BLOCKS
from tests.common import BOB, CAROL
from tests.integration.conftest import block
from tests.netutil import wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENS = ("overview", "block", "block-by-hash", "transfer", "address", "mempool", "peers")


def ensure_browser() -> None:
    """Debian's chromium and chromium-driver, installed when missing (CI runs as root).
    Any failure here fails the test: it must run, not skip."""
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return
    if os.geteuid() != 0:
        raise AssertionError(f"{CHROMIUM} or {CHROMEDRIVER} is missing and this is not root: "
                             "apt-get install chromium chromium-driver")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        raise AssertionError(f"apt-get installed chromium but {CHROMIUM} or {CHROMEDRIVER} is still missing")


def launch_browser(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1100", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


class Browser:
    """Selenium's blocking calls, each in a thread so the reactor (and the node) go on."""

    def __init__(self, driver, base: str, shots: str) -> None:
        self.driver = driver
        self.base = base
        self.shots = shots
        self.errors: list[dict] = []
        self.timings: dict[str, float] = {}

    def run(self, f, *args):
        return threads.deferToThread(f, *args)

    async def open(self, path: str, name: str) -> None:
        def load():
            started = time.monotonic()
            self.driver.get(self.base + path)
            self.timings[name] = time.monotonic() - started

        await self.run(load)

    async def js(self, script: str, *args):
        return await self.run(self.driver.execute_script, script, *args)

    async def text(self, css: str) -> str:
        return await self.js("var e = document.querySelector(arguments[0]); return e ? e.textContent : null;", css)

    async def attr(self, css: str, name: str):
        return await self.js("var e = document.querySelector(arguments[0]);"
                             "return e ? e.getAttribute(arguments[1]) : null;", css, name)

    async def wait_for(self, script: str, what: str, deadline: float = 30.0, *args):
        """Poll a JS predicate in the page (no reload) until true."""
        start = time.monotonic()
        while not await self.js(script, *args):
            if time.monotonic() - start > deadline:
                raise AssertionError(f"timed out after {deadline:.0f} s in the browser waiting for {what}")
            await task.deferLater(reactor, 0.1, lambda: None)

    async def screenshot(self, name: str) -> str:
        path = os.path.join(self.shots, f"{name}.png")
        await self.run(self.driver.save_screenshot, path)
        logs = await self.run(self.driver.get_log, "browser")
        self.errors.extend(dict(entry, page=name) for entry in logs if entry.get("level") == "SEVERE")
        return path


async def in_thread(f, *args):
    return await threads.deferToThread(f, *args)


@pytest.fixture(scope="module")
def chromium():
    """Chromium and chromedriver present (installed with apt-get if missing, or a failure)."""
    started = time.monotonic()
    block(in_thread, ensure_browser)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def explorer_node(request, tmp_path_factory, farmer):
    """A (timelord, farming test farmer 0's plot) and B peered with it, in-process fastnet
    node services; returned once A is at height 3 with B connected."""
    from archivas.service import node_service

    directory = str(tmp_path_factory.mktemp("explorer-node"))

    def start(name, **options):
        top = node_service(db=os.path.join(directory, name), network="fastnet", rpc="tcp:0:interface=127.0.0.1",
                           p2p="tcp:0:interface=127.0.0.1", **options)
        top.startService()

        async def stop():
            await defer.maybeDeferred(top.stopService)

        request.addfinalizer(lambda: block(stop))
        return top

    started = time.monotonic()
    a = start("a", timelord=True, farm=farmer.plots, farmer_key=farmer.key_file)
    b = start("b", peers=[f"127.0.0.1:{a.getServiceNamed('p2p').port.getHost().port}"])
    block(wait_until, lambda: a.node.chain.height >= 3 and len(a.node.peers.ready_peers()) == 1,
          "the node farming and its peer connected")
    url = f"http://127.0.0.1:{a.getServiceNamed('rpc').port.getHost().port}"
    return types.SimpleNamespace(a=a, b=b, url=url, dir=directory, took=time.monotonic() - started)


@pytest.fixture(scope="module")
def browser(request, chromium, explorer_node, tmp_path_factory):
    """Headless Chromium on the explorer of A; screenshots in a temporary directory.
    Quit at the end, its keep-alive connections to A closed before A stops."""
    shots = tmp_path_factory.mktemp("explorer-screenshots")
    profile = tmp_path_factory.mktemp("chromium-profile")
    driver = block(in_thread, launch_browser, str(profile))
    rpc_factory = explorer_node.a.getServiceNamed("rpc").factory

    async def quit_browser():
        await threads.deferToThread(driver.quit)
        if hasattr(rpc_factory, "open_connections"):
            await wait_until(lambda: rpc_factory.open_connections == 0, "the browser's connections to close", 10)

    request.addfinalizer(lambda: block(quit_browser))
    return Browser(driver, explorer_node.url, str(shots))


async def rpc(url: str, path: str):
    response = await treq.get(url + path, timeout=10, pool=HTTPConnectionPool(reactor, persistent=False))
    return json.loads(await treq.content(response))


@pytest_twisted.ensureDeferred
async def test_explorer_in_chromium_against_a_farming_node(chromium, explorer_node, browser, farmer):
    started = time.monotonic()
    a, b, url, shots = explorer_node.a, explorer_node.b, explorer_node.url, browser.shots
    fastnet = network_params.load("fastnet")

    # A transfer from the farmer's rewards to Bob, mined.
    tx = sign_transfer(farmer.key, fastnet, BOB.address, 3 * COIN // 2, fastnet.min_fee, 0)
    assert a.api.submit_tx(tx.to_json())["txHash"] == tx.hash.hex()
    await wait_until(lambda: a.node.mempool.get(tx.hash) is None, "the transfer mined")
    rpc_tx = await rpc(url, f"/tx/{tx.hash.hex()}")
    assert rpc_tx.get("status") == "confirmed"

    # The overview: the live height, and a new block without a reload.
    before = (await rpc(url, "/status"))["height"]
    await browser.open("/", "overview")
    shown = int(await browser.text("#height"))
    # Read after the page's height: its live stream may have moved it on since the load.
    after = (await rpc(url, "/status"))["height"]
    assert before <= shown <= after, (before, shown, after)
    await browser.js("window.__sameDocument = 'yes';")
    await browser.wait_for(
        "return window.archivasExplorer && archivasExplorer.inserted > 0 &&"
        "Number(document.getElementById('height').textContent) > arguments[0] &&"
        "!!document.querySelector('#recent-blocks tr[data-height=\"' +"
        " document.getElementById('height').textContent + '\"]');",
        "a new block in the strip and the height", 30, shown)
    assert await browser.js("return window.__sameDocument;") == "yes"  # no reload
    live_height = int(await browser.text("#height"))
    assert live_height > shown
    status = await rpc(url, "/status")
    assert live_height <= status["height"]
    top_row = await browser.attr("#recent-blocks tbody tr", "data-hash")
    block_json = await rpc(url, f"/block/{await browser.attr('#recent-blocks tbody tr', 'data-height')}")
    assert top_row == Header.from_json(block_json["header"]).hash.hex()
    assert farmer.address[:12] in await browser.text("#recent-blocks tbody tr")
    assert await browser.js("return document.querySelectorAll('#recent-blocks tbody tr').length;") <= STRIP_BLOCKS
    assert await browser.js("return document.getElementById('live').className;") == "live on"
    await browser.screenshot("overview")

    # The block that holds the transfer, by height and by hash.
    block_json = await rpc(url, f"/block/{rpc_tx['blockHeight']}")
    for ref, name in ((rpc_tx["blockHeight"], "block"), (rpc_tx["blockHash"], "block-by-hash")):
        await browser.open(f"/explorer/block/{ref}", name)
        assert await browser.text("#block-hash") == rpc_tx["blockHash"]
        assert await browser.text("#block-height") == str(rpc_tx["blockHeight"])
        assert await browser.text("#block-farmer") == block_json["header"]["rewardAddress"]
        assert await browser.text("#block-difficulty") == str(block_json["header"]["difficulty"])
        assert await browser.text(f'tr[data-tx="{tx.hash.hex()}"]') is not None
        await browser.screenshot(name)

    # The transfer.
    await browser.open(f"/explorer/tx/{tx.hash.hex()}", "transfer")
    assert await browser.text("#tx-hash") == rpc_tx["hash"]
    assert await browser.text("#tx-amount") == summary.rchv(rpc_tx["amount"])
    assert await browser.text("#tx-amount") == "1.50000000 RCHV"
    assert await browser.text("#tx-fee") == summary.rchv(rpc_tx["fee"])
    assert await browser.attr("#tx-from a", "title") == rpc_tx["from"]
    assert await browser.attr("#tx-to a", "title") == rpc_tx["to"]
    assert (await browser.text("#tx-status")).startswith("confirmed")
    assert await browser.text("#tx-block a") == str(rpc_tx["blockHeight"])
    await browser.screenshot("transfer")

    # Bob's address.
    balance = await rpc(url, f"/balance/{BOB.address}")
    history = await rpc(url, f"/address/{BOB.address}")
    await browser.open(f"/explorer/address/{BOB.address}", "address")
    assert await browser.text("#address-balance") == summary.rchv(balance["balance"])
    assert await browser.text("#address-nonce") == str(balance["nonce"])
    rows = await browser.js("return Array.from(document.querySelectorAll('#history tr[data-tx]'),"
                            " r => r.getAttribute('data-tx'));")
    assert rows == [t["hash"] for t in history["transactions"]]
    await browser.screenshot("address")

    # The mempool, with the farmer stopped so that a pending transfer stays pending.
    await a.getServiceNamed("farmer").stopService()
    pending = sign_transfer(farmer.key, fastnet, CAROL.address, COIN, fastnet.min_fee * 3, 1)
    a.api.submit_tx(pending.to_json())
    mempool = await rpc(url, "/mempool")
    assert mempool["count"] == 1
    await browser.open("/explorer/mempool", "mempool")
    assert await browser.text("#mempool-count") == str(mempool["count"])
    rows = await browser.js("return Array.from(document.querySelectorAll('tr[data-tx]'),"
                            " r => r.getAttribute('data-tx'));")
    assert rows == [t["hash"] for t in mempool["transactions"]]
    assert rows == [pending.hash.hex()]
    await browser.screenshot("mempool")

    # The peers table.
    peers = await rpc(url, "/peers")
    await browser.open("/explorer/peers", "peers")
    shown_peers = await browser.js("return Array.from(document.querySelectorAll('#peers tbody tr'),"
                                   " r => [r.getAttribute('data-address'),"
                                   "       r.querySelector('.peer-height').textContent]);")
    assert len(peers) == 1
    assert sorted(tuple(p) for p in shown_peers) == sorted((p["address"], str(p["height"])) for p in peers)
    assert peers[0]["nodeId"] == b.node.node_id.hex()
    assert peers[0]["nodeId"][:8] in await browser.text("#peers tbody tr")
    await browser.screenshot("peers")

    # An error page: a 404 with its reason, and the browser's console clean throughout.
    await browser.open("/explorer/block/999999999", "error")
    assert "no block at height 999999999" in await browser.text("#error-message")
    logs = await browser.run(browser.driver.get_log, "browser")
    # The 404 itself is the one console error expected (Chromium logs every failed load).
    browser.errors.extend(dict(e, page="error") for e in logs
                          if e.get("level") == "SEVERE" and "404" not in e.get("message", ""))
    assert browser.errors == []
    for name in SCREENS:
        assert os.path.getsize(os.path.join(shots, f"{name}.png")) > 5000, name
    print(f"\n  screenshots in {shots}; page loads (s): "
          + ", ".join(f"{k} {v:.3f}" for k, v in browser.timings.items())
          + f"; chromium check {chromium:.1f} s, node to height 3 {explorer_node.took:.1f} s,"
          f" test {time.monotonic() - started:.1f} s")
