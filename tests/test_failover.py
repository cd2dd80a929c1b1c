"""Several nodes per client (archivas.client.HttpNodeAPI): failover order, timeouts and
the return to the first node on a task.Clock with a fake HTTP layer; the `--node`
options of the three programs; and real processes: a farmer and a timelord given two
nodes keep blocks coming when the first node is killed, and go back to it when it returns."""

import json
import os
import signal
import subprocess
import time
from urllib.parse import urlsplit

from twisted.internet import defer, task
from twisted.python import usage
from twisted.trial import unittest

from archivas import client
from archivas.client import FAILOVER_TIMEOUT, MAX_NODES, RETRY_SECONDS, TIMEOUT, HttpNodeAPI, node_urls
from archivas.nodeapi import ApiError
from archivas.testing.chainbuilder import farmer_key, shared_plots
from tests.test_processes import BIN, NodeProcess, wait_for

A, B, C = "http://a:8080", "http://b:8080", "http://c:8080"


class FakeResponse:
    def __init__(self, code, body):
        self.code = code
        self.body = body


class FakeHttp:
    """treq's request/content over a table of hosts: "up" (answers its name; `/status`
    and `/vdf/job` from `progress`: weight, tip, segments), "refuse" (connection refused
    at once), "hang" (never answers), or (code, body). Requests for a (host, path) in
    `hold` wait in `held` for the test to answer them."""

    def __init__(self):
        self.mode = {}
        self.progress = {}
        self.hold = set()
        self.held = []
        self.calls = []

    def answer(self, host, path):
        weight, tip, segments = self.progress.get(host, (10, "t9", 3))
        if path == "/status":
            return {"height": 9, "tipHash": tip, "weight": weight}
        if path == "/vdf/job":
            return {"parentHash": tip, "segments": segments}
        return {"node": host}

    def request(self, method, url, **kwargs):
        parts = urlsplit(url)
        host, path = parts.netloc.split(":")[0], parts.path
        self.calls.append((host, method, path))
        mode = self.mode.get(host, "up")
        if mode == "refuse":
            return defer.fail(ConnectionRefusedError("Connection refused"))
        if mode == "hang":
            return defer.Deferred()  # cancelled by the client's timeout
        if mode == "up":
            response = FakeResponse(200, json.dumps(self.answer(host, path)).encode())
            if (host, path) in self.hold:
                d = defer.Deferred()
                self.held.append((d, response))
                return d
            return defer.succeed(response)
        code, body = mode
        return defer.succeed(FakeResponse(code, body))

    def content(self, response):
        return defer.succeed(response.body)

    def hosts(self, path=None):
        return [host for host, _, p in self.calls if path is None or p == path]


class FailoverTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.http = FakeHttp()
        self.api = HttpNodeAPI([A, B, C], http=self.http, reactor=self.clock)

    def ask(self, call=None):
        return self.successResultOf(call or self.api.chain_tip())

    def test_first_node_that_answers_is_used(self):
        self.assertEqual(self.ask(), {"node": "a"})
        self.http.mode["a"] = "refuse"
        self.assertEqual(self.ask(), {"node": "b"})  # moved on within the same call
        self.assertEqual(self.api.url, B)
        self.http.calls.clear()
        self.assertEqual(self.ask(), {"node": "b"})
        self.assertEqual(self.http.hosts(), ["b"])  # the dead node is not asked first every time
        self.assertEqual(self.clock.getDelayedCalls(), [])  # every timeout timer cancelled

    def test_order_wraps_around_and_a_refusal_is_an_answer(self):
        self.http.mode.update(a="refuse", b="refuse")
        self.assertEqual(self.ask(), {"node": "c"})
        self.http.mode.update(c="refuse", a="up")
        self.assertEqual(self.ask(), {"node": "a"})  # after c: a, then b
        self.http.mode["a"] = (400, b'{"error": "malformed address: nope"}')
        failure = self.failureResultOf(self.api.balance("nope"), ApiError)
        self.assertEqual((failure.value.status, failure.value.message), (400, "malformed address: nope"))
        self.assertEqual(self.api.url, A)  # a node that refuses a request is still up

    def test_proxy_errors_and_non_json_move_on(self):
        self.http.mode["a"] = (502, b"<html>Bad Gateway</html>")
        self.assertEqual(self.ask(), {"node": "b"})
        self.http.mode["b"] = (200, b"<html>login</html>")
        self.assertEqual(self.ask(), {"node": "c"})

    def test_a_node_that_does_not_answer_times_out_on_the_clock(self):
        self.http.mode["a"] = "hang"
        d = self.api.chain_tip()
        self.assertNoResult(d)
        self.clock.advance(FAILOVER_TIMEOUT - 0.1)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), {"node": "b"})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_node_is_one_503_naming_each(self):
        self.http.mode.update(a="refuse", b="refuse", c="hang")
        d = self.api.chain_tip()
        self.clock.advance(FAILOVER_TIMEOUT)
        e = self.failureResultOf(d, ApiError).value
        self.assertEqual(e.status, 503)
        self.assertTrue(e.message.startswith("cannot reach any node: http://a:8080: Connection refused"), e.message)
        self.assertIn(f"http://c:8080: no answer within {FAILOVER_TIMEOUT:g} s", e.message)

    def test_first_node_preferred_again_when_it_answers(self):
        self.http.mode["a"] = "refuse"
        self.ask()
        self.assertEqual(self.api.url, B)
        # Still down: asked at most once per RETRY_SECONDS, in the background.
        for _ in range(10):
            self.clock.advance(RETRY_SECONDS / 4)
            self.ask()
        self.assertEqual(len([h for h in self.http.hosts("/status") if h == "a"]), 2)  # at 5 s and 10 s
        self.assertEqual(self.api.url, B)
        self.http.mode["a"] = "up"
        self.clock.advance(RETRY_SECONDS)
        self.ask()  # starts the retry (here the fake answers at once)
        self.assertEqual(self.api.url, A)
        self.http.calls.clear()
        self.assertEqual(self.ask(), {"node": "a"})
        self.assertEqual(self.http.hosts(), ["a"])

    def test_a_node_back_but_behind_waits_until_it_catches_up(self):
        self.http.mode["a"] = "refuse"
        self.ask()
        self.http.mode["a"] = "up"
        for a, b, preferred in (
            ((4, "t3", 0), (10, "t9", 7), B),  # restarted, still syncing
            ((10, "t9", 0), (10, "t9", 7), B),  # synced, but without the tip's signage points
            ((10, "t9", 7 - client.CATCH_UP_SEGMENTS), (10, "t9", 7), A),
        ):
            self.api.current = 1
            self.http.progress.update(a=a, b=b)
            self.clock.advance(RETRY_SECONDS)
            self.ask()
            self.assertEqual(self.api.url, preferred, (a, b))
        self.api.current = 1
        self.http.progress.update(a=(11, "t10", 0), b=(10, "t9", 7))  # heavier: at once
        self.clock.advance(RETRY_SECONDS)
        self.ask()
        self.assertEqual(self.api.url, A)

    def test_an_answer_from_the_old_node_does_not_switch_back(self):
        self.http.mode["a"] = "refuse"
        self.ask()
        self.api.timeout = 4 * RETRY_SECONDS  # the held request is answered late, not timed out
        self.http.hold.add(("b", "/chainTip"))
        late = self.api.chain_tip()  # in flight on b
        self.http.mode["a"] = "up"
        self.clock.advance(RETRY_SECONDS)
        self.assertEqual(self.ask(), {"node": "a"})
        (d, response), = self.http.held
        d.callback(response)
        self.assertEqual(self.successResultOf(late), {"node": "b"})
        self.assertEqual(self.api.url, A)

    def test_retry_of_a_hanging_node_does_not_hold_requests(self):
        self.http.mode["a"] = "refuse"
        self.ask()
        self.http.mode["a"] = "hang"
        self.clock.advance(RETRY_SECONDS)
        self.assertEqual(self.ask(), {"node": "b"})  # answered while the retry waits
        self.clock.advance(FAILOVER_TIMEOUT)
        self.assertEqual(self.api.url, B)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_block_goes_to_every_node(self):
        self.http.mode["a"] = "refuse"
        self.http.mode["c"] = (409, b'{"error": "parent unknown: block held until its parent arrives"}')
        self.assertEqual(self.successResultOf(self.api.submit_block({"header": {}})), {"node": "b"})
        self.assertEqual(sorted(self.http.hosts("/submitBlock")), ["a", "b", "c"])
        self.assertEqual(self.api.url, A)  # broadcasting does not choose the node

    def test_a_block_refused_everywhere_says_why(self):
        self.http.mode.update(a="refuse", b=(400, b'{"error": "block rejected: bad_farmer_signature: x"}'), c="hang")
        d = self.api.submit_block({"header": {}})
        self.assertNoResult(d)  # waits for c's answer or timeout
        self.clock.advance(FAILOVER_TIMEOUT)
        e = self.failureResultOf(d, ApiError).value
        self.assertEqual((e.status, e.message), (400, "block rejected: bad_farmer_signature: x"))
        self.http.mode.update(b="refuse", c="refuse")
        e = self.failureResultOf(self.api.submit_block({}), ApiError).value
        self.assertEqual(e.status, 503)
        self.assertIn("cannot reach any node", e.message)

    def test_one_node_keeps_the_long_timeout_and_its_message(self):
        api = HttpNodeAPI(A, http=self.http, reactor=self.clock)
        self.assertEqual(api.timeout, TIMEOUT)
        self.http.mode["a"] = "refuse"
        e = self.failureResultOf(api.status(), ApiError).value
        self.assertEqual(e.message, "cannot reach the node at http://a:8080: Connection refused")
        self.assertEqual(self.api.timeout, FAILOVER_TIMEOUT)


class NodeUrlTests(unittest.TestCase):
    def test_lists_commas_slashes_and_repeats(self):
        self.assertEqual(node_urls("http://a:1/"), ["http://a:1"])
        self.assertEqual(node_urls(["http://a:1,http://b:2", " http://a:1/ ", "https://c/rpc"]),
                         ["http://a:1", "http://b:2", "https://c/rpc"])

    def test_bad_lists(self):
        for value, words in ((["", ","], "no node URL"), ("localhost:8080", "must look like"),
                             ("ftp://a", "must look like"), ("http://", "must look like"),
                             ("http://a/?x=1", "must look like"),
                             (",".join(f"http://n{i}" for i in range(MAX_NODES + 1)), f"at most {MAX_NODES}")):
            with self.assertRaises(ValueError) as cm:
                node_urls(value)
            self.assertIn(words, str(cm.exception))
        self.assertEqual(len(node_urls([f"http://n{i}" for i in range(MAX_NODES)])), MAX_NODES)

    def test_every_program_takes_node_more_than_once(self):
        from archivas.scripts import farmer, timelord, wallet

        address = farmer_key(0).address
        cases = (
            (timelord.Options(), [], None),
            (farmer.Options(), ["farm", "--farmer-key", "k"], "subOptions"),
            (wallet.Options(), ["balance", address], "subOptions"),
            (wallet.Options(), ["send", "--key", "k", "--to", address, "--amount", "1"], "subOptions"),
        )
        for options, argv, sub in cases:
            options.parseOptions(argv + ["--node", "http://a:1,http://b:2", "--node", "http://c:3"])
            values = getattr(options, sub) if sub else options
            self.assertEqual(values["node"], ["http://a:1", "http://b:2", "http://c:3"], argv)
        defaults = wallet.Options()
        defaults.parseOptions(["balance", address])
        self.assertEqual(defaults.subOptions["node"], ["http://localhost:8080"])
        with self.assertRaisesRegex(usage.UsageError, "--node: node URL 'a:1' must look like"):
            timelord.Options().parseOptions(["--node", "a:1"])


class FarmerFailoverProcesses(unittest.TestCase):
    """Two fastnet nodes (A dials B); a standalone timelord and farmer (its key file
    encrypted), each given `--node A --node B`. A is killed with SIGKILL: B goes on getting
    that farmer's blocks; A is restarted: both programs go back to it once it has caught up."""

    timeout = 180

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.key = farmer_key(1)
        self.key_file = os.path.join(self.dir, "farmer.key")  # encrypted: farm opens it with --passphrase-file
        self.key.save(self.key_file, "farmer passphrase", "interactive")
        self.passphrase_file = os.path.join(self.dir, "passphrase")
        with open(self.passphrase_file, "w") as f:
            f.write("farmer passphrase\n")
        self.plots = os.path.join(self.dir, "plots")
        os.makedirs(self.plots)
        plot = shared_plots(2)[1][1]
        os.symlink(plot.path, os.path.join(self.plots, plot.path.name))

    def program(self, *argv):
        log = os.path.join(self.dir, argv[0] + ".log")
        proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        self.addCleanup(lambda: (proc.poll() is None and proc.kill(), proc.wait()))
        return log

    @defer.inlineCallbacks
    def test_farmer_keeps_getting_blocks_in_when_its_first_node_is_killed(self):
        yield defer.ensureDeferred(self._scenario())

    async def _scenario(self):
        b = NodeProcess(self, "B", self.dir)
        a = NodeProcess(self, "A", self.dir, peers=[b])
        b.start()
        a.start()
        await wait_for(lambda: both_up(a, b), "A and B up")
        nodes = ["--node", a.url, "--node", b.url]
        self.program("archivas-timelord", *nodes)
        farmer_log = self.program("archivas-farmer", "farm", "--plots", self.plots, "--farmer-key", self.key_file,
                                  "--passphrase-file", self.passphrase_file, *nodes)

        async def b_at(height):
            tip = await b.tip()
            return tip is not None and tip["height"] >= height

        await wait_for(lambda: b_at(3), "three blocks through A, on B")
        a.kill(signal.SIGKILL)
        killed = time.monotonic()
        before = (await b.tip())["height"]
        await wait_for(lambda: b_at(before + 3), "three more blocks on B after A was killed", deadline=60)
        after = (await b.tip())["height"]
        for height in range(before + 1, after + 1):
            block = await b.get(f"/block/{height}")
            self.assertEqual(block["header"]["rewardAddress"], self.key.address, height)
        print(f"\nB from height {before} to {after} in {time.monotonic() - killed:.1f} s after A was killed")
        log = read(farmer_log)
        self.assertIn(f"[client] node {a.url} unavailable", log)
        self.assertIn(f"using {b.url}", log)

        # A back on its database: it dials B, syncs, and the farmer uses it again.
        a.start()
        restarted = time.monotonic()

        async def farmer_back_on_a():
            return f"[client] node {a.url} answers again: using it instead of {b.url}" in read(farmer_log)

        await wait_for(farmer_back_on_a, "the farmer back on A", deadline=60)
        back = (await b.tip())["height"]
        print(f"the farmer back on A {time.monotonic() - restarted:.1f} s after A was restarted")

        async def a_leads_again():
            tip = await a.tip()
            return tip is not None and tip["height"] >= back + 2

        await wait_for(a_leads_again, "blocks on A again", deadline=60)
        self.assertNotIn("Traceback", log + read(farmer_log))


async def both_up(a, b):
    return await a.tip() is not None and await b.tip() is not None


def read(path):
    with open(path, errors="replace") as f:
        return f.read()

