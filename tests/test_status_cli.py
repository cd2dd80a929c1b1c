"""`archivas-node status` and `archivas-node peers` (docs/metrics.md) as an operator runs
them: the console script in a child process against a node serving its RPC on loopback
(in this process, so the reactor serves while the child asks)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from archivas.nodeapi import LocalNodeAPI
from archivas.rpc import NodeRPC, site
from archivas.scripts import status as status_cli
from tests.common import builder
from tests.netutil import connected, start_node, wait_until

BIN = Path(sys.executable).parent
SPEC_STATUS_FIELDS = ("height", "tipHash", "difficulty", "weight", "peers", "syncing", "genesisHash",
                      "network", "version", "mempool", "peersIn", "peersOut")


async def run(*args: str) -> tuple[int, str, str]:
    """The console script with `args`: (exit code, stdout, stderr)."""
    started = time.monotonic()
    out, err, code = await utils.getProcessOutputAndValue(str(BIN / "archivas-node"), args, env=dict(os.environ))
    run.seconds.append(time.monotonic() - started)  # type: ignore[attr-defined]
    return code, out.decode(), err.decode()


run.seconds = []  # type: ignore[attr-defined]


class StatusCliTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        b = builder()
        self.blocks = b.extend(b.genesis, 4)
        self.handle = start_node(self, blocks=self.blocks)
        self.api = LocalNodeAPI(self.handle.node)
        port = reactor.listenTCP(0, site(NodeRPC(self.api).resource()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"

    async def test_status_json_matches_the_rpc(self):
        code, out, err = await run("status", "--node", self.url, "--json")
        self.assertEqual((code, err), (0, ""), out)
        doc = json.loads(out)
        expected = self.api.status()
        for field in SPEC_STATUS_FIELDS:
            self.assertEqual(doc[field], expected[field], field)
        self.assertEqual(doc["height"], 4)
        self.assertEqual([b["height"] for b in doc["recentBlocks"]], [4, 3, 2, 1])
        self.assertEqual([b["hash"] for b in doc["recentBlocks"]], [b.hash.hex() for b in reversed(self.blocks)])
        self.assertEqual(doc["recentBlocks"][0]["segments"], len(self.blocks[-1].header.vdf))
        self.assertEqual(doc["tipTimestamp"], self.blocks[-1].header.timestamp)
        self.assertFalse(doc["ready"])  # the builder's timestamps are months old
        self.assertIn("stale tip", doc["notReadyReason"])
        space = doc["netspace"]
        self.assertEqual(space["fromBlocks"], 4)
        self.assertEqual(space["kMin"], 18)
        segments = sum(len(b.header.vdf) for b in self.blocks) / 4
        self.assertEqual(space, status_cli.netspace(doc["recentBlocks"], 18, 0))
        self.assertAlmostEqual(space["meanSegments"], segments, places=3)
        self.assertGreater(space["bytes"], 0)

    async def test_status_text_has_every_field(self):
        code, out, err = await run("status", "--node", self.url, "--blocks", "3")
        self.assertEqual((code, err), (0, ""), out)
        for label in ("Network:", "Sync state:", "Height:", "Tip:", "Tip time:", "Weight:", "Difficulty:",
                      "Netspace:", "Peers:", "Mempool:", "Recent blocks:"):
            self.assertIn(label, out)
        self.assertIn("fastnet", out)
        self.assertIn(self.blocks[-1].hash.hex(), out)
        self.assertIn("not synced (stale tip", out)
        table = out.split("Recent blocks:")[1].strip().splitlines()
        self.assertEqual(len(table), 1 + 3)  # heading and three blocks
        self.assertEqual(table[1].split()[:2], ["4", self.blocks[-1].hash.hex()[:16]])

    async def test_peers_json_and_text(self):
        other = start_node(self)
        other.node.peers.dial(self.handle.address)
        await wait_until(lambda: connected(self.handle, other), "the other node to connect")
        code, out, err = await run("peers", "--node", self.url, "--json")
        self.assertEqual((code, err), (0, ""), out)
        doc = json.loads(out)
        self.assertEqual([p["address"] for p in doc], [p["address"] for p in self.api.peers()])
        self.assertEqual(doc[0]["direction"], "inbound")
        self.assertEqual(doc[0]["nodeId"], other.node.node_id.hex())
        code, out, err = await run("peers", "--node", self.url)
        self.assertEqual((code, err), (0, ""), out)
        self.assertIn("1 peer(s):", out)
        self.assertIn(doc[0]["address"], out)
        self.assertIn(other.node.node_id.hex()[:12], out)

    async def test_operator_mistakes_are_one_line(self):
        port = reactor.listenTCP(0, site(NodeRPC(self.api).resource()), interface="127.0.0.1")
        closed = f"http://127.0.0.1:{port.getHost().port}"
        await defer.maybeDeferred(port.stopListening)  # nothing listens there now
        cases = [
            (("status", "--node", closed), 1, "archivas-node status: error: cannot reach the node at " + closed),
            (("peers", "--node", closed, "--json"), 1, "archivas-node peers: error: cannot reach the node"),
            (("status", "--node", "ftp://example"), 2, "is not an http:// or https:// URL"),
            (("status", "--blocks", "101", "--node", self.url), 2, "--blocks must be from 0 to 100"),
            (("status", "--node", self.url + "/nothing"), 1, "answered 404"),
        ]
        answers = await defer.gatherResults([defer.ensureDeferred(run(*args)) for args, _, _ in cases])
        for (args, want_code, fragment), (code, out, err) in zip(cases, answers):
            self.assertEqual(code, want_code, (args, out, err))
            self.assertEqual(out, "", args)
            self.assertEqual(len(err.strip().splitlines()), 1, (args, err))
            self.assertIn(fragment, err, args)
            self.assertNotIn("Traceback", err)
        print(f"\nSTATUS CLI runs: {len(run.seconds)}, median {sorted(run.seconds)[len(run.seconds) // 2]:.2f} s "
              f"each (a child process)")


class NetspaceTests(unittest.TestCase):
    def test_the_estimate(self):
        import math

        from archivas.chain.pos import PLOT_BYTES_PER_ENTRY, space

        blocks = [{"segments": 4, "difficulty": 100}, {"segments": 2, "difficulty": 100},
                  {"segments": 0, "difficulty": 0}]
        est = status_cli.netspace(blocks, 18, 2)
        # λ = -ln(1 - 1/m) winning proofs a signage point, m = 3 segments a block on average
        entries = -math.log(1 - 1 / 3) * 100 * space(18) * 4
        self.assertLessEqual(abs(est["bytes"] - entries * PLOT_BYTES_PER_ENTRY), 1)
        self.assertEqual(est["plotsOfKMin"], round(entries / space(18), 2))
        self.assertEqual(est["fromBlocks"], 2)
        self.assertFalse(est["lowerBound"])
        self.assertTrue(status_cli.netspace([{"segments": 1, "difficulty": 1}], 18, 0)["lowerBound"])
        self.assertIsNone(status_cli.netspace([], 18, 0))
