"""The simulator (archivas/sim/): real nodes on one simulated clock.

Each scenario is one `archivas-sim --json` process, run once per test process, two at a
time (a run is single-threaded; the machine has two cores); the tests read its figures.
The determinism test runs one seed in two processes with different PYTHONHASHSEED."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from twisted.trial import unittest

from archivas.sim import cli
from archivas.sim.run import Result

SMALL = ["--nodes", "12", "--blocks", "2", "--warmup", "30", "--no-newcomer"]
SCENARIOS = {
    # 200 real nodes, 8 outbound each, links 50-150 ms at 20 Mbit/s, 50 transfers a block
    "clean200": ["--nodes", "200", "--blocks", "6", "--seed", "11", "--warmup", "45"],
    # half and half for a simulated minute, both halves farming, then healed
    "partition": ["--nodes", "40", "--blocks", "8", "--seed", "3", "--warmup", "45", "--no-newcomer",
                  "--block-time", "10", "--transfers-per-block", "20", "--partition", "10:70:0.5"],
    "clean60": ["--nodes", "60", "--blocks", "4", "--seed", "21", "--warmup", "45", "--no-newcomer"],
    "bad60": ["--nodes", "60", "--blocks", "4", "--seed", "21", "--warmup", "45", "--no-newcomer",
              "--silent", "0.1", "--hostile", "0.05"],
    "seed5-hash1": SMALL + ["--seed", "5"],
    "seed5-hash2": SMALL + ["--seed", "5"],
    "seed6-hash1": SMALL + ["--seed", "6"],
}
_results: dict = {}


def _run(name):
    env = {**os.environ, "PYTHONHASHSEED": "2" if name.endswith("hash2") else "1"}
    out = subprocess.run([sys.executable, "-m", "archivas.sim.cli", "--json", *SCENARIOS[name]],
                         env=env, capture_output=True, text=True, timeout=900)
    if not out.stdout.strip():
        raise AssertionError(f"archivas-sim {name} failed ({out.returncode}): {out.stderr[-3000:]}")
    return name, json.loads(out.stdout)


def result(name):
    """A scenario's figures (every scenario runs at the first call, two at a time)."""
    if not _results:
        with ThreadPoolExecutor(max_workers=2) as pool:
            order = sorted(SCENARIOS, key=lambda n: n != "clean200")  # the longest first
            _results.update(dict(pool.map(_run, order)))
    return _results[name]


def as_result(doc):
    return Result(**doc)


class DeterminismTests(unittest.TestCase):
    def test_same_seed_same_digest_across_processes_and_hash_seeds(self):
        a, b, c = result("seed5-hash1"), result("seed5-hash2"), result("seed6-hash1")
        self.assertEqual(a["digest"], b["digest"])
        self.assertEqual(a["arrival_ms"], b["arrival_ms"])
        self.assertNotEqual(a["digest"], c["digest"])

    def test_json_fields(self):
        a = result("seed5-hash1")
        for field in ("digest", "nodes", "blocks", "arrival_ms", "stale_rate", "block_bytes",
                      "relay_bytes_per_node_per_block", "messages_per_node_per_block", "heal_ms", "wall_s"):
            self.assertIn(field, a)
        self.assertEqual(set(a["arrival_ms"]), {"p50", "p90", "p99", "p100"})
        self.assertEqual(len(bytes.fromhex(a["digest"])), 32)


class ScaleTests(unittest.TestCase):
    def test_every_node_reaches_the_final_tip(self):
        r = result("clean200")
        self.assertTrue(r["agreed"])
        self.assertEqual(r["honest_nodes"], 200)
        self.assertGreaterEqual(r["blocks"], 6)
        self.assertIsNotNone(r["arrival_ms"]["p100"])  # every node had every block
        self.assertIsNotNone(r["newcomer_sync_ms"])

    def test_figures_within_the_goals(self):
        r = result("clean200")
        self.assertLess(r["arrival_ms"]["p90"], 1000)
        self.assertLess(r["arrival_ms"]["p99"], 2000)
        self.assertLess(r["stale_rate"], 0.005)
        self.assertLess(r["relay_bytes_per_node_per_block"], 3 * r["block_bytes"])
        self.assertGreater(r["block_bytes"], 10_000)  # blocks carry their transfers
        self.assertEqual(r["lost_transfers"], 0)

    def test_compact_blocks_rebuild_from_the_mempool(self):
        r = result("clean200")
        rebuilt, asked = r["compact"].get("rebuilt", 0), r["compact"].get("asked_missing", 0)
        self.assertGreater(rebuilt, 0)
        self.assertLess(asked, rebuilt / 10)
        # every proof verified once in the whole network: one check per block and kind
        self.assertLessEqual(r["proofs_verified"]["blocks"], 3 * r["blocks_made"])


class PartitionTests(unittest.TestCase):
    def test_halves_farm_apart_then_one_tip_within_ten_seconds(self):
        r = result("partition")
        self.assertTrue(r["agreed"])
        self.assertIsNotNone(r["heal_ms"])
        self.assertLessEqual(r["heal_ms"], 10_000)
        self.assertGreater(r["stale_rate"], 0)  # the lighter half's blocks were left behind
        self.assertEqual(r["lost_transfers"], 0)  # its transfers went back to mempools
        self.assertGreater(r["returned_transfers"], 0)  # ... and were mined again


class AdversaryTests(unittest.TestCase):
    def test_silent_and_hostile_nodes_slow_the_network_little(self):
        clean, bad = result("clean60"), result("bad60")
        self.assertTrue(bad["agreed"])
        self.assertEqual(bad["honest_nodes"], 60 - 6 - 3)
        self.assertIsNotNone(bad["arrival_ms"]["p100"])  # every honest node got every block
        self.assertLessEqual(bad["arrival_ms"]["p90"], 1.5 * clean["arrival_ms"]["p90"])


class CliTests(unittest.TestCase):
    def test_bad_arguments_are_refused_plainly(self):
        for argv in (["--nodes", "2"], ["--loss", "1.5"], ["--silent", "0.4", "--hostile", "0.2"],
                     ["--warmup", "-1"]):
            with self.assertRaises(SystemExit):
                cli.config_from(cli.parser().parse_args(argv))
        for argv in (["--partition", "9:3:0.5"], ["--latency-ms", "x"], ["--silent", "2"]):
            with self.assertRaises(SystemExit):
                cli.parser().parse_args(argv)

    def test_the_table_names_every_figure(self):
        text = cli.table(as_result(result("clean200")))
        for label in ("block at 50% / 90% / 99% / 100% of nodes", "stale block rate", "bytes sent per node per block",
                      "newcomer synced in", "digest"):
            self.assertIn(label, text)
