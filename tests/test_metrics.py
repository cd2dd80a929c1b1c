"""/metrics and /readyz (docs/metrics.md): the series exist and move as blocks, peers,
transfers, reorganisations, VDF segments and plot look-ups happen; readiness on a
simulated clock, and on a real node syncing from another on loopback; the Grafana
dashboard asks only for series the node exports; the scrape's cost is measured."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import reactor, task
from twisted.trial import unittest

from archivas import metrics as node_metrics
from archivas.chain import vdf
from archivas.chain.params import COIN
from archivas.chain.transactions import sign_transfer
from archivas.nodeapi import LocalNodeAPI
from archivas.protocols import wire
from archivas.rpc import NodeRPC
from tests.common import ALICE, BOB, PARAMS, builder, fixture_blocks, now_ms
from tests.netutil import connected, start_node, wait_until
from tests.test_protocol import Harness, feed, handshake

DASHBOARD = Path(__file__).resolve().parent.parent / "conf" / "grafana-dashboard.json"

# Every series group of the issue, as exported (families as the parser names them).
EXPECTED = {
    "archivas_height", "archivas_weight", "archivas_difficulty", "archivas_tip_timestamp_seconds",
    "archivas_peers", "archivas_connections", "archivas_p2p_messages", "archivas_p2p_bytes",
    "archivas_p2p_dropped", "archivas_p2p_misbehaviour", "archivas_p2p_evictions",
    "archivas_validation_seconds", "archivas_sync_rate_blocks_per_second", "archivas_sync_blocks",
    "archivas_sync_rounds", "archivas_syncing", "archivas_ready", "archivas_mempool_transactions",
    "archivas_mempool_bytes", "archivas_reorg_depth_blocks", "archivas_bans", "archivas_discouraged_addresses",
    "archivas_farmer_proofs_found", "archivas_farmer_lookup_seconds", "archivas_farmer_plots",
    "archivas_farmer_blocks_submitted", "archivas_timelord_iterations_per_second", "archivas_timelord_segments",
    "archivas_vdf_segments_accepted", "archivas_blocks_added", "archivas_blocks_rejected", "archivas_orphans",
    "archivas_node_info",
}


class Scrape:
    """One parsed scrape: value(name, **labels) for any sample."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {}
        for family in self.families.values():
            for s in family.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(self, name: str, **labels) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)


def rpc(node) -> StubTreq:
    return StubTreq(NodeRPC(LocalNodeAPI(node)).resource())


def get(case, http, path, headers=None):
    d = http.get("http://node" + path, headers=headers)
    d.addCallback(lambda r: http.content(r).addCallback(lambda body: (r, body)))
    http.flush()
    return case.successResultOf(d)


def scrape(case, node) -> Scrape:
    response, body = get(case, rpc(node), "/metrics")
    case.assertEqual(response.code, 200)
    case.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
    return Scrape(body.decode())


def readyz(case, node):
    response, body = get(case, rpc(node), "/readyz")
    return response.code, json.loads(body)


def fork_from(parent, count):
    """`count` blocks on `parent` that differ from the builder's default children (their
    timestamps are 1 ms later)."""
    b = builder()
    out = []
    for _ in range(count):
        parent = b.make_block(parent, timestamp=parent.header.timestamp + PARAMS.target_block_time_ms + 1)
        out.append(parent)
    return out


class MetricsTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.node = self.h.node

    def test_every_series_group_is_exported(self):
        s = scrape(self, self.node)
        self.assertEqual(EXPECTED - set(s.families), set())
        self.assertTrue(all(name.startswith("archivas_") for name in s.families), sorted(s.families))
        self.assertEqual(s.value("archivas_height"), 0)
        self.assertEqual(s.value("archivas_node_info", network="fastnet", genesis=self.node.genesis_hash.hex(),
                                 version=__import__("archivas").__version__), 1)
        for component in ("block", "header", "body", "vdf_segment", "storage"):
            self.assertEqual(s.value("archivas_validation_seconds_count", component=component), 0)

    def test_height_weight_validation_and_storage_move_as_blocks_arrive(self):
        b = builder()
        blocks = b.extend(b.genesis, 3)
        before = scrape(self, self.node)
        for block in blocks:
            self.successResultOf(self.node.receive_block(block))
        after = scrape(self, self.node)
        self.assertEqual(after.value("archivas_height"), 3)
        self.assertEqual(after.value("archivas_weight"), self.node.chain.tip.weight)
        self.assertGreater(after.value("archivas_weight"), before.value("archivas_weight"))
        self.assertEqual(after.value("archivas_difficulty"), blocks[-1].header.difficulty)
        self.assertEqual(after.value("archivas_tip_timestamp_seconds"), blocks[-1].header.timestamp / 1000)
        self.assertEqual(after.value("archivas_validation_seconds_count", component="block"), 3)
        self.assertEqual(after.value("archivas_validation_seconds_count", component="storage"), 3)
        self.assertGreater(after.value("archivas_validation_seconds_sum", component="block"), 0)
        self.assertEqual(after.value("archivas_validation_seconds_bucket", component="block", le="+Inf"), 3)
        for part in ("farmer_signature", "proof_of_space", "vdf", "signatures"):  # the checks' own split
            self.assertEqual(after.value("archivas_validation_seconds_count", component=part), 3, part)
            self.assertGreater(after.value("archivas_validation_seconds_sum", component=part), 0, part)
        self.assertEqual(after.value("archivas_blocks_added_total", result="tip"), 3)
        self.assertEqual(after.value("archivas_reorg_depth_blocks_count"), 0)

    def test_a_reorganisation_is_counted_by_its_depth(self):
        b = builder()
        main = b.extend(b.genesis, 2)
        fork = fork_from(b.genesis, 3)
        for block in main + fork:
            self.successResultOf(self.node.receive_block(block))
        self.assertEqual(self.node.chain.tip.hash, fork[-1].hash)
        s = scrape(self, self.node)
        self.assertEqual(s.value("archivas_reorg_depth_blocks_count"), 1)
        self.assertEqual(s.value("archivas_reorg_depth_blocks_sum"), 2)  # the two main blocks left
        self.assertEqual(s.value("archivas_reorg_depth_blocks_bucket", le="1.0"), 0)
        self.assertEqual(s.value("archivas_reorg_depth_blocks_bucket", le="2.0"), 1)
        self.assertEqual(s.value("archivas_blocks_added_total", result="side"), 2)  # fork 1 and 2 waited
        self.assertEqual(s.value("archivas_blocks_added_total", result="tip"), 3)

    def test_mempool_count_and_bytes(self):
        tx = sign_transfer(ALICE, PARAMS, BOB.address, 1 * COIN, PARAMS.min_fee, 0)
        self.node.submit_transaction(tx)
        s = scrape(self, self.node)
        self.assertEqual(s.value("archivas_mempool_transactions"), 1)
        from archivas.chain.encoding import canonical_json

        self.assertEqual(s.value("archivas_mempool_bytes"), len(canonical_json(tx.to_json())))

    def test_peers_traffic_misbehaviour_and_bans(self):
        proto, transport = self.h.connect(host="10.0.0.7")
        handshake(proto, node_id=b"\x07" * 16, genesis=self.node.genesis_hash)
        feed(proto, wire.Ping(5))
        proto.dataReceived(b'{"type": 4242, "payload": {}}\n')  # an unknown type: counted as "other"
        proto.dataReceived(b"not json\n")
        s = scrape(self, self.node)
        self.assertEqual(s.value("archivas_peers", direction="inbound"), 1)
        self.assertEqual(s.value("archivas_peers", direction="outbound"), 0)
        self.assertEqual(s.value("archivas_connections", slot="inbound"), 1)
        self.assertEqual(s.value("archivas_p2p_messages_total", direction="in", type="PING"), 1)
        self.assertEqual(s.value("archivas_p2p_messages_total", direction="in", type="other"), 1)
        self.assertEqual(s.value("archivas_p2p_bytes_total", direction="in", type="PING"),
                         len(wire.encode(wire.Ping(5))) + 1)
        self.assertEqual(s.value("archivas_p2p_messages_total", direction="out", type="PONG"), 1)
        self.assertGreaterEqual(s.value("archivas_p2p_messages_total", direction="out", type="GET_STATUS"), 1)
        self.assertEqual(s.value("archivas_p2p_misbehaviour_total", reason="bad_json"), 1)
        self.assertEqual(s.value("archivas_p2p_misbehaviour_total", reason="unknown_type"), 1)
        self.assertFalse(any("4242" in line for line in s.text.splitlines()))
        # The peer leaves: what it sent and got stays in the totals.
        proto.connectionLost()
        after = scrape(self, self.node)
        self.assertEqual(after.value("archivas_peers", direction="inbound"), 0)
        self.assertEqual(after.value("archivas_p2p_messages_total", direction="in", type="PING"), 1)
        self.assertEqual(after.value("archivas_p2p_messages_total", direction="out", type="PONG"), 1)
        LocalNodeAPI(self.node).ban({"address": "203.0.113.0/24", "seconds": 60})
        self.assertEqual(scrape(self, self.node).value("archivas_bans"), 1)

    def test_vdf_segments_and_the_timelord_rate(self):
        seed = self.node.chain.discriminant_seed_for_child(self.node.vdf_parent)
        origin = self.successResultOf(self.node.vdf_origin(self.node.vdf_parent))
        segment = vdf.prove_segment(seed, origin, PARAMS.discriminant_bits, self.node.vdf_iterations)
        self.assertTrue(self.successResultOf(self.node.add_vdf_output(self.node.vdf_parent, 1, segment)))
        s = scrape(self, self.node)
        self.assertEqual(s.value("archivas_vdf_segments_accepted_total", source="local"), 1)
        self.assertEqual(s.value("archivas_validation_seconds_count", component="vdf_segment"), 1)
        # No timelord in this process: estimated from local segments over VDF_RATE_WINDOW.
        self.assertEqual(s.value("archivas_timelord_iterations_per_second"),
                         self.node.vdf_iterations / node_metrics.VDF_RATE_WINDOW)
        self.assertEqual(s.value("archivas_timelord_segments_total"), 1)
        self.h.clock.advance(node_metrics.VDF_RATE_WINDOW)
        self.assertEqual(scrape(self, self.node).value("archivas_timelord_iterations_per_second"), 0)

        class Timelord:
            iterations_per_second = 151234.5
            segments_made = 7

        self.node.metrics.attach_timelord(Timelord())
        s = scrape(self, self.node)
        self.assertEqual(s.value("archivas_timelord_iterations_per_second"), 151234.5)
        self.assertEqual(s.value("archivas_timelord_segments_total"), 7)
        self.node.metrics.attach_timelord(object())  # a timelord without the attributes: 0
        self.assertEqual(scrape(self, self.node).value("archivas_timelord_iterations_per_second"), 0)

    def test_an_embedded_timelord_reports_its_speed(self):
        from archivas.timelord import Timelord

        clock = self.h.clock

        def prove(seed, start, bits, iterations):  # each segment takes 0.5 simulated seconds
            return task.deferLater(clock, 0.5, vdf.prove_segment, seed, start, bits, iterations)

        timelord = Timelord(LocalNodeAPI(self.node), clock, prove=prove)
        self.assertIs(self.node.metrics.timelord, timelord)
        timelord.startService()

        def stop():
            d = timelord.stopService()  # fires when the segment in progress is done
            clock.advance(1)
            return d

        self.addCleanup(stop)
        clock.advance(0.5)
        s = scrape(self, self.node)
        self.assertEqual(s.value("archivas_timelord_segments_total"), 1)
        self.assertEqual(s.value("archivas_timelord_iterations_per_second"), self.node.vdf_iterations / 0.5)
        self.assertEqual(s.value("archivas_vdf_segments_accepted_total", source="local"), 1)

    async def test_an_embedded_farmer_reports_look_ups_and_proofs(self):
        from archivas.farmer.farming import Farmer

        b = builder()
        key, plot = b.farmers[0]
        api = LocalNodeAPI(self.node)
        farmer = Farmer(api, [plot], key, self.h.clock)
        farmer.running = True  # farm_once by hand (no polling loop)
        seed = self.node.chain.discriminant_seed_for_child(self.node.vdf_parent)
        start = self.successResultOf(self.node.vdf_origin(self.node.vdf_parent))
        answer = None
        for index in range(1, 40):
            segment = vdf.prove_segment(seed, start, PARAMS.discriminant_bits, self.node.vdf_iterations)
            start = segment.output
            self.assertTrue(self.successResultOf(self.node.add_vdf_output(self.node.vdf_parent, index, segment)))
            answer = await farmer.farm_once()
            if answer is not None:
                break
        self.assertIsNotNone(answer, "the plot never won")
        s = scrape(self, self.node)
        self.assertEqual(s.value("archivas_farmer_plots"), 1)
        self.assertEqual(s.value("archivas_farmer_proofs_found_total"), 1)
        self.assertEqual(s.value("archivas_farmer_blocks_submitted_total"), 1)
        self.assertGreaterEqual(s.value("archivas_farmer_lookup_seconds_count"), 1)
        self.assertEqual(s.value("archivas_height"), 1)

    def test_the_exposition_formats_and_bad_requests(self):
        http = rpc(self.node)
        # (treq asks for gzip and decodes it itself, so the encoding is checked here.)
        body, headers = self.node.metrics.render(accept_encoding="gzip, deflate")
        self.assertEqual(headers["content-encoding"], "gzip")
        self.assertIn(b"archivas_height", gzip.decompress(body))
        response, body = get(self, http, "/metrics", headers={"Accept": "application/openmetrics-text"})
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"application/openmetrics-text"))
        self.assertTrue(body.rstrip().endswith(b"# EOF"))
        response, body = get(self, http, "/metrics?name[]=archivas_height&name[]=archivas_weight")
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        self.assertEqual(names, {"archivas_height", "archivas_weight"})
        many = "&".join(["name[]=archivas_height"] * (node_metrics.MAX_NAME_FILTERS + 1))
        response, body = get(self, http, "/metrics?" + many)
        self.assertEqual(response.code, 400)
        self.assertIn("at most 64", json.loads(body)["error"])
        response, body = get(self, http, "/metrics?name[]=%ff")
        self.assertEqual(response.code, 400)
        d = http.post("http://node/metrics", data=b"")
        d.addCallback(lambda r: r.code)
        http.flush()
        self.assertEqual(self.successResultOf(d), 405)
        self.assertEqual(scrape(self, self.node).value("archivas_height"), 0)  # nothing changed

    def test_scrape_time(self):
        """A node with 3 blocks, 40 peers that sent a few messages each, 200 pending
        transfers: the scrape's cost, printed."""
        b = builder()
        for block in b.extend(b.genesis, 3):
            self.successResultOf(self.node.receive_block(block))
        for i in range(40):
            proto, _ = self.h.connect(host=f"10.1.0.{i + 1}")
            handshake(proto, node_id=bytes([i + 1]) * 16, genesis=self.node.genesis_hash)
            for n in range(5):
                feed(proto, wire.Ping(n))
        for nonce in range(64):
            self.node.submit_transaction(sign_transfer(ALICE, PARAMS, BOB.address, COIN, PARAMS.min_fee, nonce))
        http = rpc(self.node)
        get(self, http, "/metrics")  # the first scrape sizes the mempool
        runs = []
        for _ in range(20):
            started = time.perf_counter()
            response, body = get(self, http, "/metrics")
            runs.append((time.perf_counter() - started) * 1000)
        runs.sort()
        renders = []
        for _ in range(20):
            started = time.perf_counter()
            text, _ = self.node.metrics.render()
            renders.append((time.perf_counter() - started) * 1000)
        renders.sort()
        print(f"\nMETRICS scrape_ms={runs[len(runs) // 2]:.2f} (GET /metrics through StubTreq, gzip; median of 20, "
              f"max {runs[-1]:.2f}) render_ms={renders[len(renders) // 2]:.2f} (collect and encode only); "
              f"{len(text)} bytes; 40 peers, 64 pending transfers")
        self.assertLess(runs[len(runs) // 2], 100)
        self.assertEqual(Scrape(body.decode()).value("archivas_peers", direction="inbound"), 40)


class DashboardTests(unittest.TestCase):
    def test_the_dashboard_asks_only_for_exported_series(self):
        import re

        h = Harness(self)
        exported = set()
        for family in text_string_to_metric_families(scrape(self, h.node).text):
            exported.update(s.name for s in family.samples)
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
            exported.update(family.name + suffix for suffix in suffixes)  # (a labelled family may have no sample yet)
        doc = json.loads(DASHBOARD.read_text())
        panels = [p for p in doc["panels"] if p.get("type") != "row"]
        self.assertGreaterEqual(len(panels), 12)
        asked = set()
        for panel in panels:
            self.assertTrue(panel.get("title"))
            for target in panel.get("targets", []):
                asked.update(re.findall(r"\barchivas_[a-z0-9_]+", target["expr"]))
        self.assertEqual(asked - exported, set())
        for group in ("archivas_height", "archivas_peers", "archivas_p2p_messages_total", "archivas_p2p_bytes_total",
                      "archivas_validation_seconds_bucket", "archivas_sync_rate_blocks_per_second",
                      "archivas_mempool_transactions", "archivas_mempool_bytes", "archivas_reorg_depth_blocks_bucket",
                      "archivas_bans", "archivas_farmer_proofs_found_total", "archivas_farmer_lookup_seconds_bucket",
                      "archivas_timelord_iterations_per_second"):
            self.assertIn(group, asked)


class ReadyzTests(unittest.TestCase):
    """The rule of metrics.readiness on a simulated clock."""

    def setUp(self):
        self.h = Harness(self)
        self.node = self.h.node

    def test_a_fresh_network_with_no_peers_is_ready_at_genesis(self):
        code, doc = readyz(self, self.node)
        self.assertEqual((code, doc["ready"]), (200, True), doc)
        self.assertEqual(doc["height"], 0)

    def test_a_stale_tip_is_not_ready_and_a_young_one_is(self):
        b = builder()
        block = b.make_block(b.genesis)
        self.successResultOf(self.node.receive_block(block))
        # The harness clock is far past the builder's timestamps: the tip is stale.
        code, doc = readyz(self, self.node)
        self.assertEqual(code, 503)
        self.assertFalse(doc["ready"])
        self.assertIn("stale tip", doc["error"])
        limit = node_metrics.READY_TIP_AGE_BLOCKS * PARAMS.target_block_time_ms / 1000
        self.assertEqual(doc["maxTipAgeSeconds"], limit)
        clock = self.h.clock
        clock.advance(block.header.timestamp / 1000 + limit - clock.seconds())  # exactly at the limit
        self.assertEqual(readyz(self, self.node)[0], 200)
        clock.advance(0.01)
        self.assertEqual(readyz(self, self.node)[0], 503)
        self.assertEqual(scrape(self, self.node).value("archivas_ready"), 0)

    def test_a_peer_showing_more_weight_makes_it_not_ready_until_refuted(self):
        proto, _ = self.h.connect(host="10.0.0.9")
        handshake(proto, node_id=b"\x09" * 16, genesis=self.node.genesis_hash)
        self.node.sync.stop()  # no round: only the claim is judged here
        more = self.node.chain.tip.weight + 1
        feed(proto, wire.Status(50, 1, b"\x42" * 32, weight=more, genesis_hash=self.node.genesis_hash,
                                network="fastnet", capabilities=("hello",)))
        code, doc = readyz(self, self.node)
        self.assertEqual(code, 503, doc)
        self.assertIn("behind", doc["error"])
        self.assertIn(f"weight {more}", doc["error"])
        agent = self.node.sync.agent(proto)
        agent.refuted = agent.claim()  # a round showed the claim false
        code, doc = readyz(self, self.node)
        self.assertEqual(code, 503, doc)  # a peer: the genesis waiver is gone, and genesis is old
        self.assertIn("stale tip", doc["error"])
        self.node.sync.active = True
        code, doc = readyz(self, self.node)
        self.assertIn("syncing", doc["error"])
        self.node.sync.active = False


class ReadyzRealSyncTests(unittest.TestCase):
    """A real node syncing from another on loopback: 503 while it syncs (behind, then
    syncing), 503 on the synced but stale fixture tip, 200 once a fresh block arrives."""

    timeout = 120

    async def test_readyz_while_syncing_and_after(self):
        count = 300
        source = start_node(self, blocks=fixture_blocks(count))
        joiner = start_node(self)
        code, doc = readyz(self, joiner.node)
        self.assertEqual(code, 200, doc)  # alone at genesis: a fresh network
        joiner.node.peers.dial(source.address)
        await wait_until(lambda: connected(joiner, source), "the joiner to connect")
        seen = []
        started = time.monotonic()
        while joiner.chain.height < count:
            behind = joiner.chain.height < count
            code, doc = readyz(self, joiner.node)
            if behind:  # (StubTreq answers in this reactor turn: the height did not move meanwhile)
                self.assertEqual(code, 503, doc)
                seen.append(doc["error"].split(":")[0])
            await task.deferLater(reactor, 0.05, lambda: None)
            if time.monotonic() - started > 90:
                self.fail(f"the joiner did not sync: height {joiner.chain.height}")
        await wait_until(lambda: not joiner.node.sync.active, "the sync round to end")
        print(f"\nREADYZ 503 reasons while syncing {count} blocks: {sorted(set(seen))} ({len(seen)} probes, "
              f"{time.monotonic() - started:.1f} s)")
        self.assertTrue(seen)
        code, doc = readyz(self, joiner.node)
        self.assertEqual(code, 503, doc)  # synced, but the fixture chain's tip is months old
        self.assertIn("stale tip", doc["error"])
        # The source farms a block now: the joiner follows it and is ready.
        b = builder()
        for block in fixture_blocks(count)[-40:]:
            b.blocks[block.hash] = block
        fresh = b.make_block(fixture_blocks(count)[-1], timestamp=now_ms())
        result = await source.node.receive_block(fresh)
        self.assertEqual(result.status, "tip")
        await wait_until(lambda: joiner.chain.height == count + 1, "the joiner to follow the fresh block")
        code, doc = readyz(self, joiner.node)
        self.assertEqual(code, 200, doc)
        self.assertTrue(doc["ready"])
        self.assertEqual(scrape(self, joiner.node).value("archivas_ready"), 1)
        s = scrape(self, joiner.node)
        self.assertGreaterEqual(s.value("archivas_sync_blocks_total"), count)
        self.assertGreaterEqual(s.value("archivas_sync_rounds_total"), 1)
        self.assertGreaterEqual(s.value("archivas_validation_seconds_count", component="header"), count)
        self.assertGreaterEqual(s.value("archivas_p2p_messages_total", direction="in", type="HEADERS"), 1)
