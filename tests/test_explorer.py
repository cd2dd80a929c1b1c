"""The explorer (archivas/explorer, docs/explorer.md): its pages through the RPC's Klein
resource with StubTreq, the event stream's bounds on a task.Clock and on real sockets, the
netspace estimate against the shipped chain, and the whole thing in headless Chromium
against a real fastnet node that farms."""

from __future__ import annotations

import ast
import fnmatch
import json
import math
import random
import re
import socket
import time
from pathlib import Path
from types import SimpleNamespace

from treq.testing import StubTreq
from twisted.internet import defer, protocol, reactor
from twisted.python.failure import Failure
from twisted.trial import unittest

from archivas.chain.params import COIN
from archivas.chain.pos import space
from archivas.explorer import Explorer, summary
from archivas.explorer.app import STRIP_BLOCKS
from archivas.explorer.events import MAX_CLIENTS, TooManyClients
from archivas.nodeapi import LocalNodeAPI
from archivas.rpc import NodeRPC, site
from tests.common import ALICE, BOB, CAROL, PARAMS, builder, fixture_blocks
from tests.netutil import start_node, wait_until
from tests.test_protocol import Harness, handshake

HTML = {b"accept": [b"text/html,application/xhtml+xml"]}
ROOT = Path(__file__).resolve().parent.parent


def parse_events(data: bytes) -> list[tuple[str, dict]]:
    """(event, data) of every complete SSE message in `data`."""
    out = []
    for message in data.decode().split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in message.split("\n") if ": " in line)
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


class ExplorerCase(unittest.TestCase):
    """A node on a task.Clock with `preload` builder blocks (a transfer from Alice to Bob
    in block 2), its RPC resource behind StubTreq."""

    preload = 4

    def setUp(self):
        b = builder()
        self.tx = b.transfer(ALICE, BOB.address, 3 * COIN, 0)
        first = b.make_block(b.genesis)
        second = b.make_block(first, transactions=[self.tx])
        self.blocks = [first, second] + b.extend(second, self.preload - 2)
        self.h = Harness(self, self.blocks)
        self.node = self.h.node
        self.clock = self.h.clock
        self.api = LocalNodeAPI(self.node)
        self.rpc = NodeRPC(self.api)
        self.http = StubTreq(self.rpc.resource())

    def fetch(self, path, headers=HTML):
        d = self.http.get("http://node" + path, headers=headers, allow_redirects=False)
        d.addCallback(lambda r: self.http.content(r).addCallback(lambda c: (r, c.decode())))
        self.http.flush()
        return self.successResultOf(d)

    def page(self, path, status=200):
        response, text = self.fetch(path)
        self.assertEqual(response.code, status, text[-600:])
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        return response, text

    def rpc_json(self, path):
        response, text = self.fetch(path, headers={b"accept": [b"application/json"]})
        self.assertEqual(response.code, 200, text)
        return json.loads(text)

    def explorer(self) -> Explorer:
        return self.rpc._explorer


class PageTests(ExplorerCase):
    def test_overview_shows_the_tip_and_the_recent_blocks(self):
        response, text = self.page("/")
        status = self.rpc_json("/status")
        self.assertIn(f'id="height" data-live="height" href="/explorer/block/{status["height"]}">'
                      f'{status["height"]}</a>', text)
        self.assertIn(status["tipHash"], text)
        self.assertIn("fastnet", text)
        for height in range(status["height"] + 1):  # fewer blocks than the strip: all of them
            block_hash = self.node.main_hash(height).hex()
            self.assertIn(f'<tr data-height="{height}" data-hash="{block_hash}">', text)
        self.assertIn(">20.00000000 RCHV<", text)  # the reward, in RCHV
        csp = response.headers.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"script-src 'self'", csp)
        self.assertNotIn(b"unsafe-inline", csp)
        timing = response.headers.getRawHeaders(b"server-timing")[0].decode()
        self.assertLess(float(timing.split("dur=")[1]), 50)
        self.assertNotIn("http://", text.replace('xmlns="http://www.w3.org', ""))  # nothing from elsewhere
        self.assertNotIn("https://", text)
        # /explorer and /explorer/ are the overview too
        self.assertEqual(self.page("/explorer")[1].count("<tr data-height="), status["height"] + 1)
        self.assertEqual(self.page("/explorer/")[1].count("<tr data-height="), status["height"] + 1)

    def test_strip_holds_the_last_20_blocks(self):
        b = builder()
        for block in b.extend(self.blocks[-1], STRIP_BLOCKS + 3):
            self.successResultOf(self.node.receive_block(block))
        _, text = self.page("/")
        tip = self.node.chain.height
        self.assertEqual(text.count("<tr data-height="), STRIP_BLOCKS)
        self.assertIn(f'<tr data-height="{tip}"', text)
        self.assertIn(f'<tr data-height="{tip - STRIP_BLOCKS + 1}"', text)
        self.assertNotIn(f'<tr data-height="{tip - STRIP_BLOCKS}"', text)

    def test_block_page_by_height_and_by_hash(self):
        block = self.blocks[1]
        rpc = self.rpc_json("/block/2")
        for ref in ("2", block.hash.hex(), block.hash.hex().upper()):
            _, text = self.page(f"/explorer/block/{ref}")
            self.assertIn(f'<td class="mono" id="block-hash">{block.hash.hex()}</td>', text)
            self.assertIn(rpc["header"]["rewardAddress"], text)
            self.assertIn(f'data-tx="{self.tx.hash.hex()}"', text)
            self.assertIn("3.00000000 RCHV", text)
            self.assertIn("20.00100000 RCHV (fees 0.00100000 RCHV)", text)  # reward and fee
            self.assertIn(f"main chain · {len(self.blocks) - 1} confirmations", text)
        _, genesis = self.page("/explorer/block/0")
        self.assertIn("Genesis allocation", genesis)
        self.assertIn("1000.00000000 RCHV", genesis)

    def test_a_block_lists_100_transfers_a_page(self):
        b = builder()
        transfers = [b.transfer(ALICE, CAROL.address, COIN, n) for n in range(1, 102)]
        block = b.make_block(self.blocks[-1], transactions=transfers)
        self.successResultOf(self.node.receive_block(block))
        _, first = self.page(f"/explorer/block/{block.height}")
        _, second = self.page(f"/explorer/block/{block.height}?page=1")
        self.assertEqual(re.findall(r'<tr data-tx="([0-9a-f]{64})">', first), [t.hash.hex() for t in transfers[:100]])
        self.assertEqual(re.findall(r'<tr data-tx="([0-9a-f]{64})">', second), [transfers[100].hash.hex()])
        self.assertIn("page 1 of 2", first)
        self.assertIn('<span class="sub" id="block-transfers">101</span>', second)
        self.page(f"/explorer/block/{block.height}?page=2", 404)

    def test_caches_are_bounded(self):
        from archivas.explorer import app

        self.patch(app, "ROW_CACHE", 3)
        self.patch(app, "BLOCK_CACHE", 2)
        self.page("/")
        self.assertEqual(len(self.explorer()._rows), 3)
        for height in (1, 2, 3, 2):
            self.page(f"/explorer/block/{height}")
        self.assertEqual(list(self.explorer()._blocks), [self.blocks[2].hash, self.blocks[1].hash])

    def test_side_branch_block_says_so(self):
        b = builder()
        side = b.make_block(self.blocks[0], timestamp=self.blocks[0].header.timestamp + 777)
        self.successResultOf(self.node.receive_block(side))
        _, text = self.page(f"/explorer/block/{side.hash.hex()}")
        self.assertIn("side branch (not on the main chain)", text)

    def test_bad_and_unknown_blocks(self):
        _, text = self.page("/explorer/block/99", 404)
        self.assertIn(f"no block at height 99 (tip is {len(self.blocks)})", text)
        _, text = self.page("/explorer/block/" + "ab" * 32, 404)
        self.assertIn("no block " + "ab" * 32, text)
        for ref in ("zz", "-1", "1.5", "ab" * 31, "٣"):
            _, text = self.page(f"/explorer/block/{ref}", 400)
            self.assertIn("a block is named by its height (digits) or its hash (64 hex digits)", text)
        self.page("/explorer/block/1?page=1", 404)
        self.page("/explorer/block/1?page=x", 400)

    def test_transfer_page_pending_then_confirmed(self):
        _, text = self.page(f"/explorer/tx/{self.tx.hash.hex()}")
        self.assertIn(f'<td class="mono" id="tx-hash">{self.tx.hash.hex()}</td>', text)
        self.assertIn("confirmed", text)
        self.assertIn('<a href="/explorer/block/', text)
        self.assertIn(f">{self.blocks[1].height}</a>", text)
        self.assertIn('<td id="tx-amount">3.00000000 RCHV</td>', text)
        self.assertIn(f'href="/explorer/address/{ALICE.address}"', text)
        self.assertIn(f'href="/explorer/address/{BOB.address}"', text)
        pending = builder().transfer(BOB, CAROL.address, COIN, 0)
        self.node.submit_transaction(pending)
        _, text = self.page(f"/explorer/tx/{pending.hash.hex()}")
        self.assertIn("in the mempool, not in a block yet", text)
        self.assertIn('<td id="tx-status">pending', text)
        _, text = self.page("/explorer/tx/" + "cd" * 32, 404)
        self.assertIn("cd" * 32, text)
        _, text = self.page("/explorer/tx/xyz", 400)
        self.assertIn("a transfer hash is 64 hex digits", text)

    def test_address_page(self):
        _, text = self.page(f"/explorer/address/{BOB.address}")
        balance = self.rpc_json(f"/balance/{BOB.address}")
        self.assertEqual(balance["balance"], 503 * COIN)
        self.assertIn('<td id="address-balance">503.00000000 RCHV</td>', text)
        self.assertIn('<td id="address-nonce">0', text)
        self.assertIn(f'data-tx="{self.tx.hash.hex()}"', text)  # its history
        pending = builder().transfer(BOB, CAROL.address, COIN, 0)
        self.node.submit_transaction(pending)
        _, text = self.page(f"/explorer/address/{BOB.address}")
        self.assertIn("1 in the mempool", text)
        self.assertIn(f'data-tx="{pending.hash.hex()}"', text)
        self.assertIn("next with pending transfers: 1", text)
        _, text = self.page("/explorer/address/arcv1xyz", 400)
        self.assertIn("malformed address", text)
        self.page(f"/explorer/address/{BOB.address}?before=abc", 400)
        self.page(f"/explorer/address/{CAROL.address}?before=1")

    def test_address_history_pages(self):
        """Two blocks of 30 more of Alice's transfers: the page and its older page hold
        what address_history's first page and the one at its `next` hold."""
        b = builder()
        parent = self.blocks[-1]
        for first in (1, 31):
            parent = b.make_block(parent, transactions=[b.transfer(ALICE, CAROL.address, COIN, n)
                                                        for n in range(first, first + 30)])
            self.successResultOf(self.node.receive_block(parent))
        seen = []
        path = f"/address/{ALICE.address}"
        while path:
            history = self.rpc_json(path)
            _, text = self.page("/explorer" + path)
            rows = re.findall(r'<tr data-tx="([0-9a-f]{64})">', text)
            self.assertEqual(rows, [t["hash"] for t in history["transactions"]])
            seen += rows
            if history["next"] is None:
                self.assertNotIn('href="?before=', text)
                path = None
            else:
                self.assertIn(f'href="?before={history["next"]}"', text)
                path = f"/address/{ALICE.address}?before={history['next']}"
        self.assertEqual(len(seen), 61)
        self.assertEqual(len(set(seen)), 61)
        self.assertEqual(seen[-1], self.tx.hash.hex())

    def test_address_page_bounds(self):
        """A history page ends with all of its last block: 250 of Alice's transfers in one
        block show 200 and say how many more; 128 pending to Carol show 100."""
        b = builder()
        block = b.make_block(self.blocks[-1], transactions=[b.transfer(ALICE, CAROL.address, 1000, n)
                                                            for n in range(1, 251)])
        self.successResultOf(self.node.receive_block(block))
        history = self.rpc_json(f"/address/{ALICE.address}")
        _, text = self.page(f"/explorer/address/{ALICE.address}")
        shown = re.findall(r'<tr data-tx="([0-9a-f]{64})">', text)
        self.assertEqual(shown, [t["hash"] for t in history["transactions"]][:200])
        self.assertIn(f"… and {len(history['transactions']) - 200} more of this address's transfers in block "
                      f'<a href="/explorer/block/{block.hash.hex()}">{block.height}</a>', text)
        for key, first in ((ALICE, 251), (BOB, 0)):
            for n in range(64):
                self.node.submit_transaction(b.transfer(key, CAROL.address, 1000, first + n))
        _, text = self.page(f"/explorer/address/{CAROL.address}")
        self.assertIn("128 in the mempool, the first 100 shown", text)

    def test_mempool_page(self):
        _, text = self.page("/explorer/mempool")
        self.assertIn('<span id="mempool-count">0</span>', text)
        self.assertIn("The mempool is empty.", text)
        txs = [builder().transfer(BOB, CAROL.address, COIN, n, fee=100000 + n) for n in range(3)]
        for tx in txs:
            self.node.submit_transaction(tx)
        _, text = self.page("/explorer/mempool")
        mempool = self.rpc_json("/mempool")
        self.assertIn(f'<span id="mempool-count">{mempool["count"]}</span>', text)
        self.assertEqual(mempool["count"], 3)
        self.assertIn(summary.size(mempool["bytes"]), text)
        for entry in mempool["transactions"]:
            self.assertIn(f'data-tx="{entry["hash"]}"', text)

    def test_mempool_pages(self):
        for key in (ALICE, BOB):
            for n in range(64):  # MAX_PER_SENDER each
                self.node.submit_transaction(builder().transfer(key, CAROL.address, COIN, 1 + n if key is ALICE else n))
        mempool = self.rpc_json("/mempool")
        self.assertEqual(mempool["count"], 128)
        listed = [t["hash"] for t in mempool["transactions"]]
        _, first = self.page("/explorer/mempool")
        _, second = self.page("/explorer/mempool?page=1")
        self.assertEqual(re.findall(r'<tr data-tx="([0-9a-f]{64})">', first), listed[:100])
        self.assertEqual(re.findall(r'<tr data-tx="([0-9a-f]{64})">', second), listed[100:])
        self.assertIn("page 1 of 2", first)
        self.page("/explorer/mempool?page=2", 404)
        self.page("/explorer/mempool?page=-1", 400)

    def test_peers_page(self):
        _, text = self.page("/explorer/peers")
        self.assertIn("No peers connected.", text)
        proto, _ = self.h.connect(host="10.0.0.7")
        handshake(proto, node_id=b"\x05" * 16, genesis=self.node.genesis_hash)
        _, text = self.page("/explorer/peers")
        (peer,) = self.rpc_json("/peers")
        self.assertIn(f'<tr data-address="{peer["address"]}">', text)
        self.assertIn(peer["nodeId"], text)
        self.assertIn(peer["listenAddress"], text)
        self.assertIn("inbound", text)

    def test_search_redirects(self):
        def where(q):
            response, _ = self.fetch(f"/explorer/search?q={q}")
            self.assertEqual(response.code, 303, q)
            return response.headers.getRawHeaders(b"location")[0].decode()

        self.assertEqual(where("3"), "/explorer/block/3")
        self.assertEqual(where(self.blocks[0].hash.hex()), f"/explorer/block/{self.blocks[0].hash.hex()}")
        self.assertEqual(where(self.tx.hash.hex()), f"/explorer/tx/{self.tx.hash.hex()}")
        self.assertEqual(where(BOB.address), f"/explorer/address/{BOB.address}")
        self.assertEqual(where(BOB.address.upper()), f"/explorer/address/{BOB.address}")
        self.assertEqual(where("1" * 300), "/explorer/block/" + "1" * 200)  # a query is read to 200 characters
        self.page("/explorer/search?q=", 400)
        self.page("/explorer/search?q=nonsense", 400)
        self.page("/explorer/search?q=%ff%fe", 400)

    def test_everything_is_escaped(self):
        hostile = '<script>alert("x")</script>'
        _, text = self.page("/explorer/search?q=" + hostile.replace(" ", "%20"), 400)
        self.assertNotIn(hostile, text)
        self.assertIn("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;", text)
        real_peers = self.api.peers
        self.api.peers = lambda: [{**p, "address": hostile, "listenAddress": hostile, "nodeId": hostile}
                                  for p in real_peers()] or [{"address": hostile, "direction": "inbound",
                                                             "listenAddress": hostile, "nodeId": hostile,
                                                             "bytesIn": {}, "bytesOut": {}}]
        _, text = self.page("/explorer/peers")
        self.assertNotIn("<script>alert", text)
        self.assertIn("&lt;script&gt;", text)

    def test_errors_are_json_for_other_clients(self):
        response, text = self.fetch("/explorer/block/zz", headers={b"accept": [b"*/*"]})
        self.assertEqual((response.code, response.headers.getRawHeaders(b"content-type")),
                         (400, [b"application/json"]))
        self.assertEqual(list(json.loads(text)), ["error"])
        response, text = self.fetch("/explorer/no-such-page", headers={})
        self.assertEqual((response.code, json.loads(text)), (404, {"error": "no such page"}))
        _, text = self.page("/explorer/no-such-page", 404)
        self.assertIn("no such page", text)
        d = self.http.post("http://node/", data=b"x")
        self.http.flush()
        self.assertEqual(self.successResultOf(d).code, 405)
        self.assertEqual(self.rpc_json("/status")["height"], len(self.blocks))  # the RPC is unchanged

    def test_static_files(self):
        for name, kind in (("explorer.js", b"text/javascript; charset=utf-8"),
                           ("explorer.css", b"text/css; charset=utf-8"), ("favicon.svg", b"image/svg+xml")):
            response, text = self.fetch(f"/explorer/static/{name}")
            self.assertEqual((response.code, response.headers.getRawHeaders(b"content-type")), (200, [kind]))
            self.assertEqual(text.encode(), (ROOT / "archivas" / "explorer" / "static" / name).read_bytes())
        _, page = self.page("/")
        self.assertIn('src="/explorer/static/explorer.js?v=', page)
        self.fetch("/explorer/static/../app.py")
        for name in ("nope.js", "..%2Fapp.py", "app.py"):
            response, _ = self.fetch(f"/explorer/static/{name}")
            self.assertEqual(response.code, 404, name)

    def test_templates_and_static_files_ship_with_the_package(self):
        """setup.py's package_data covers every file the explorer reads (a wheel or sdist
        without them would serve 500s)."""
        tree = ast.parse((ROOT / "setup.py").read_text())
        call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
        package_data = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "package_data"))
        patterns = package_data["archivas.explorer"]
        base = ROOT / "archivas" / "explorer"
        files = [p.relative_to(base).as_posix() for d in ("templates", "static") for p in (base / d).iterdir()]
        self.assertGreaterEqual(len(files), 10)
        for name in files:
            self.assertTrue(any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name)


class NetspaceWindow(unittest.TestCase):
    def test_the_overview_estimates_over_the_last_64_blocks(self):
        h = Harness(self, fixture_blocks(70))
        explorer = Explorer(LocalNodeAPI(h.node))
        overview = explorer.overview()
        self.assertEqual(summary.NETSPACE_WINDOW, 64)
        self.assertEqual(overview["netspace"].blocks, 64)
        self.assertAlmostEqual(overview["blockSeconds"], PARAMS.target_block_time_ms / 1000)


class Recorder:
    """An HTTP request as the event hub sees one (write, producer, notifyFinish)."""

    def __init__(self):
        self.headers = {}
        self.written = []
        self.producer = None
        self.watchers = []
        self.finished = False
        self.aborted = False
        self.channel = SimpleNamespace(transport=SimpleNamespace(abortConnection=self._abort))

    def _abort(self):
        self.aborted = True

    def setHeader(self, name, value):
        self.headers[name.lower()] = value

    def registerProducer(self, producer, streaming):
        assert streaming and self.producer is None
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def notifyFinish(self):
        d = defer.Deferred()
        self.watchers.append(d)
        return d

    def write(self, data):
        self.written.append(data)

    def gone(self):
        for d in self.watchers:
            d.errback(Failure(ConnectionError("gone")))

    def events(self):
        return parse_events(b"".join(self.written))


class EventTests(ExplorerCase):
    def setUp(self):
        super().setUp()
        self.ex = Explorer(self.api)
        self.hub = self.ex.hub

    def add(self, count=1):
        blocks = builder().extend(self.node.chain.block_at(self.node.chain.height), count)
        for block in blocks:
            self.successResultOf(self.node.receive_block(block))
        return blocks

    def test_a_new_stream_gets_the_strip_then_each_new_tip(self):
        r = Recorder()
        d = self.hub.subscribe(r)
        self.assertEqual(r.headers[b"content-type"], b"text/event-stream; charset=utf-8")
        self.assertTrue(b"".join(r.written).startswith(b"retry: 3000\n\n"))
        ((kind, first),) = r.events()
        self.assertEqual(kind, "tip")
        self.assertEqual(first["status"]["height"], len(self.blocks))
        self.assertEqual([b["height"] for b in first["blocks"]], list(range(len(self.blocks), -1, -1)))
        (block,) = self.add()
        self.assertEqual(len(r.events()), 1)  # sent on the next reactor turn, not inside the node's handling
        self.clock.advance(0)
        kind, event = r.events()[-1]
        self.assertEqual(kind, "tip")
        self.assertEqual(event["status"]["height"], block.height)
        self.assertEqual(event["status"]["tipHash"], block.hash.hex())
        (row,) = event["blocks"]  # the strip's only change
        self.assertEqual((row["height"], row["hash"], row["farmer"], row["transfers"], row["timestamp"]),
                         (block.height, block.hash.hex(), block.header.reward_address, 0, block.header.timestamp))
        r.gone()
        self.assertEqual(self.hub.clients, [])
        self.assertFalse(d.called)  # Klein cancels it when the client goes; nothing left to fire
        self.assertNoTimers()

    def assertNoTimers(self):
        """With no stream open the hub leaves nothing on the clock."""
        self.assertEqual((self.hub._pending, self.hub._status_loop), (None, None))
        self.assertEqual([c for c in self.clock.getDelayedCalls() if "EventHub" in repr(c)], [])

    def test_tips_are_sent_at_most_every_quarter_second(self):
        r = Recorder()
        self.hub.subscribe(r)
        self.add()
        self.clock.advance(0)
        self.assertEqual(len(r.events()), 2)
        blocks = self.add(3)  # a burst (as a sync connects them): one event, 0.25 s after the last
        self.clock.advance(0.2)
        self.assertEqual(len(r.events()), 2)
        self.clock.advance(0.05)
        self.assertEqual(len(r.events()), 3)
        _, event = r.events()[-1]
        self.assertEqual(event["status"]["height"], blocks[-1].height)
        self.assertEqual([b["height"] for b in event["blocks"]], [b.height for b in reversed(blocks)])
        r.gone()

    def test_status_every_five_seconds_while_a_stream_is_open(self):
        r = Recorder()
        self.hub.subscribe(r)
        self.clock.advance(4.9)
        self.assertEqual(len(r.events()), 1)
        self.clock.advance(0.1)
        kind, status = r.events()[-1]
        self.assertEqual((kind, status["height"], status["mempool"]), ("status", len(self.blocks), 0))
        self.clock.advance(5)
        self.assertEqual([k for k, _ in r.events()], ["tip", "status", "status"])
        r.gone()
        self.assertNoTimers()

    def test_at_most_64_streams(self):
        self.assertEqual(MAX_CLIENTS, 64)
        streams = [Recorder() for _ in range(MAX_CLIENTS)]
        for r in streams:
            self.hub.subscribe(r)
        with self.assertRaises(TooManyClients):
            self.hub.subscribe(Recorder())
        self.assertEqual(self.hub.refused, 1)
        streams[0].gone()
        self.hub.subscribe(Recorder())  # room again
        self.assertEqual(len(self.hub.clients), MAX_CLIENTS)
        self.hub.close_all()
        self.clock.advance(0)
        self.assertTrue(all(r.aborted for r in streams[1:]))

    def test_the_65th_stream_is_answered_503_over_http(self):
        ex = Explorer(self.api, max_clients=1)
        http = StubTreq(ex.resource())
        first = http.get("http://node/events")
        http.flush()
        self.assertEqual(self.successResultOf(first).code, 200)
        second = http.get("http://node/events")
        http.flush()
        response = self.successResultOf(second)
        self.assertEqual(response.code, 503)
        body = self.successResultOf(http.content(response))
        self.assertEqual(json.loads(body), {"error": "at most 1 event streams at once: close another explorer "
                                                     "page and retry"})
        ex.hub.close_all()
        self.clock.advance(0)

    def test_a_client_whose_writes_back_up_is_dropped(self):
        slow, fine = Recorder(), Recorder()
        d = self.hub.subscribe(slow)
        self.hub.subscribe(fine)
        slow.producer.pauseProducing()  # what the connection does when its buffer fills
        self.assertEqual(self.hub.clients, [self.hub.clients[0]])
        self.assertIs(self.hub.clients[0].request, fine)
        self.assertFalse(slow.aborted)  # not from inside the write that paused it
        self.clock.advance(0)
        self.assertTrue(slow.aborted)
        self.assertEqual(self.successResultOf(d), b"")
        self.assertEqual(self.hub.dropped, 1)
        written = len(slow.written)
        self.add()
        self.clock.advance(0)
        self.assertEqual(len(slow.written), written)  # nothing more for it
        self.assertEqual(len(fine.events()), 2)
        fine.gone()


class RealSocketEvents(unittest.TestCase):
    """/events on a loopback listener of a real node: a new block reaches a reading client
    at once; a client that stops reading is dropped once its connection backs up."""

    timeout = 60

    @defer.inlineCallbacks
    def test_stream_over_tcp(self):
        yield defer.ensureDeferred(self._scenario())

    async def _scenario(self):
        blocks = builder().extend(builder().genesis, 3)
        handle = start_node(self, blocks=blocks[:2])
        api = LocalNodeAPI(handle.node)
        rpc = NodeRPC(api)
        port = reactor.listenTCP(0, site(rpc.resource()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        received = bytearray()
        done = defer.Deferred()

        class Reader(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(b"GET /events HTTP/1.1\r\nHost: node\r\nAccept: text/event-stream\r\n\r\n")

            def dataReceived(self, data):
                received.extend(data)

            def connectionLost(self, reason):
                done.callback(None)

        reader = await protocol.ClientCreator(reactor, Reader).connectTCP("127.0.0.1", port.getHost().port)
        await wait_until(lambda: b"event: tip" in received, "the first event")
        await handle.node.receive_block(blocks[2])  # fires once the node took it (after its on_tip)
        started = time.monotonic()
        await wait_until(lambda: f'"tipHash":"{blocks[2].hash.hex()}"'.encode() in received, "the new tip's event")
        print(f"\n  new tip to the event on a loopback stream: {(time.monotonic() - started) * 1000:.1f} ms")

        # A client that never reads, with a small receive buffer.
        hub = rpc._explorer.hub
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", port.getHost().port))
        self.addCleanup(stuck.close)
        stuck.sendall(b"GET /events HTTP/1.1\r\nHost: node\r\n\r\n")
        await wait_until(lambda: len(hub.clients) == 2, "the second stream")
        first = hub.clients[0]
        payload = b": " + b"x" * 16384 + b"\n\n"  # an SSE comment: 16 KiB every 20 ms
        sent = 0

        def flood():
            nonlocal sent
            if not hub.dropped:
                hub.broadcast(payload)
                sent += len(payload)
            return hub.dropped > 0

        await wait_until(flood, "the client that does not read to be dropped", deadline=30)
        print(f"  a client that stopped reading was dropped after {sent / 2**20:.2f} MiB")
        self.assertEqual((hub.dropped, hub.clients), (1, [first]))  # the reader is still there
        await wait_until(lambda: len(received) >= sent, "the reader to get everything")
        reader.transport.loseConnection()
        await done
        await wait_until(lambda: not hub.clients, "the reader's stream to close")


class NetspaceTests(unittest.TestCase):
    def test_formula_recovers_the_expected_wins(self):
        """Blocks whose signage points are each won with probability 1 - exp(-λ)."""
        rng = random.Random(1616)
        for wins in (0.05, 0.5, 2.0):
            window = []
            for height in range(1, 4001):
                segments = 1
                while rng.random() >= 1 - math.exp(-wins):
                    segments += 1
                window.append(SimpleNamespace(height=height, segments=segments, difficulty=1000, timestamp=height))
            estimate = summary.netspace(window, PARAMS)
            self.assertLess(abs(estimate.entries / (1000 * space(PARAMS.k_min)) / wins - 1), 0.06, wins)
            self.assertFalse(estimate.lower_bound)

    def test_every_block_at_its_first_signage_point_is_a_lower_bound(self):
        window = [SimpleNamespace(height=h, segments=1, difficulty=4, timestamp=h) for h in range(1, 65)]
        estimate = summary.netspace(window, PARAMS)
        self.assertTrue(estimate.lower_bound)
        self.assertTrue(estimate.text.startswith("≥ "))
        self.assertAlmostEqual(estimate.entries, -math.log(1 / 128) * 4 * space(18))
        self.assertIsNone(summary.netspace([SimpleNamespace(height=0, segments=0, difficulty=1)], PARAMS))

    def test_the_shipped_chain_was_farmed_by_two_k18_plots(self):
        """The fixture chain's two k=18 plots: 2 · space(18) entries (about 7.4 MiB)."""
        headers = [b.header for b in fixture_blocks()]
        estimate = summary.netspace(headers, PARAMS)
        self.assertEqual(estimate.blocks, 3200)
        self.assertLess(abs(estimate.entries / (2 * space(18)) - 1), 0.15)
        print(f"\n  fixture chain: {estimate.mean_segments:.3f} signage points a block -> "
              f"{estimate.entries / space(18):.2f} k=18 plots ({estimate.text})")
        self.assertAlmostEqual(summary.mean_block_seconds(headers), PARAMS.target_block_time_ms / 1000)

    def test_amounts_times_and_sizes(self):
        self.assertEqual(summary.rchv(150_000_000), "1.50000000 RCHV")
        self.assertEqual(summary.rchv(0), "0.00000000 RCHV")
        self.assertEqual(summary.rchv(2**62), "46116860184.27387904 RCHV")
        self.assertEqual(summary.utc(1767225600500), "2026-01-01 00:00:00 UTC")
        self.assertEqual([summary.age(s) for s in (4.9, 61, 3 * 3600 + 300, 3 * 86400, -1)],
                         ["4 s", "1 min", "3 h 5 min", "3 d", "in the future"])
        self.assertEqual(summary.size(4_849_664 * 0.8), "3.7 MiB")
        self.assertEqual(summary.short("a" * 64), "aaaaaaaaaa…aaaaaa")
        self.assertEqual(summary.sync_progress({"height": 50, "sync": {"active": True, "targetHeight": 200,
                                                                        "blocksPerSecond": 10.0,
                                                                        "etaSeconds": 15.0}}, []),
                         {"active": True, "height": 50, "targetHeight": 200, "percent": 25.0,
                          "blocksPerSecond": 10.0, "etaSeconds": 15.0, "eta": "15 s"})
        self.assertEqual(summary.sync_progress({"height": 5, "syncing": False}, [{"height": 9}])["targetHeight"], 9)
