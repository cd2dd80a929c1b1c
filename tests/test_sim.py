"""The simulator (archivas/sim/): real nodes on one simulated clock. Each scenario runs
once per test process (a run is deterministic: the same seed, the same events), and the
tests read its figures."""

import json
import os
import subprocess
import sys

from twisted.trial import unittest

from archivas.sim import cli
from archivas.sim.run import SimConfig, Simulation

_runs: dict = {}


def run(name, **config):
    """One scenario's Result, simulated once per process."""
    if name not in _runs:
        _runs[name] = Simulation(SimConfig(**config)).run()
    return _runs[name]


def clean_200():
    return run("clean200", nodes=200, blocks=6, seed=11, warmup=45.0, newcomer=True)


def sim_json(seed, hashseed):
    env = {**os.environ, "PYTHONHASHSEED": str(hashseed)}
    out = subprocess.run([sys.executable, "-m", "archivas.sim.cli", "--nodes", "12", "--blocks", "2",
                          "--seed", str(seed), "--warmup", "30", "--no-newcomer", "--json"],
                         env=env, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise AssertionError(f"archivas-sim failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout)


class DeterminismTests(unittest.TestCase):
    def test_same_seed_same_digest_across_processes_and_hash_seeds(self):
        a = sim_json(5, 1)
        b = sim_json(5, 2)
        self.assertEqual(a["digest"], b["digest"])
        self.assertEqual(a["arrival_ms"], b["arrival_ms"])
        c = sim_json(6, 1)
        self.assertNotEqual(a["digest"], c["digest"])
        for field in ("digest", "nodes", "blocks", "arrival_ms", "stale_rate", "block_bytes",
                      "relay_bytes_per_node_per_block", "messages_per_node_per_block", "heal_ms", "wall_s"):
            self.assertIn(field, a)
        self.assertEqual(set(a["arrival_ms"]), {"p50", "p90", "p99", "p100"})


class ScaleTests(unittest.TestCase):
    """200 real nodes, 8 outbound each, links 50-150 ms at 20 Mbit/s, 50 transfers a block."""

    def test_every_node_reaches_the_final_tip(self):
        r = clean_200()
        self.assertTrue(r.agreed)
        self.assertEqual(r.honest_nodes, 200)
        self.assertGreaterEqual(r.blocks, 5)
        self.assertIsNotNone(r.newcomer_sync_ms)

    def test_figures_within_the_goals(self):
        r = clean_200()
        self.assertLess(r.arrival_ms["p90"], 1000)
        self.assertLess(r.arrival_ms["p99"], 2000)
        self.assertLess(r.stale_rate, 0.005)
        self.assertLess(r.relay_bytes_per_node_per_block, 3 * r.block_bytes)
        self.assertGreater(r.block_bytes, 5000)  # blocks carry transfers
        self.assertEqual(r.lost_transfers, 0)

    def test_compact_blocks_rebuild_from_the_mempool(self):
        r = clean_200()
        self.assertGreater(r.compact.get("rebuilt", 0), 0.9 * 200 * r.blocks_made / 2)
        self.assertEqual(r.proofs_verified["blocks"] <= 3 * r.blocks_made, True)  # once per block and check


class PartitionTests(unittest.TestCase):
    def test_halves_farm_apart_then_one_tip_within_ten_seconds(self):
        r = run("partition", nodes=40, blocks=8, seed=3, warmup=45.0, newcomer=False, block_time=10.0,
                transfers_per_block=20, partition=(10.0, 70.0, 0.5))
        self.assertTrue(r.agreed)
        self.assertIsNotNone(r.heal_ms)
        self.assertLessEqual(r.heal_ms, 10_000)
        self.assertGreater(r.stale_rate, 0)  # the lighter half's blocks were left behind
        self.assertEqual(r.lost_transfers, 0)  # its transfers went back to mempools
        self.assertGreater(r.returned_transfers, 0)  # ... and were mined again


class AdversaryTests(unittest.TestCase):
    def test_silent_and_hostile_nodes_slow_the_network_little(self):
        clean = run("clean60", nodes=60, blocks=4, seed=21, warmup=45.0, newcomer=False)
        bad = run("bad60", nodes=60, blocks=4, seed=21, warmup=45.0, newcomer=False, silent=0.1, hostile=0.05)
        self.assertTrue(bad.agreed)
        self.assertEqual(bad.honest_nodes, 60 - 6 - 3)
        self.assertIsNotNone(bad.arrival_ms["p100"])  # every honest node got every block
        self.assertLessEqual(bad.arrival_ms["p90"], 1.5 * clean.arrival_ms["p90"])


class CliTests(unittest.TestCase):
    def test_bad_arguments_are_refused_plainly(self):
        for argv in (["--nodes", "2"], ["--loss", "1.5"], ["--silent", "0.4", "--hostile", "0.2"]):
            with self.assertRaises(SystemExit):
                cli.config_from(cli.parser().parse_args(argv))
        with self.assertRaises(SystemExit):
            cli.parser().parse_args(["--partition", "9:3:0.5"])

    def test_the_table_names_every_figure(self):
        text = cli.table(clean_200())
        for label in ("block at 50% / 90% / 99% / 100% of nodes", "stale block rate", "bytes sent per node per block",
                      "newcomer synced in", "digest"):
            self.assertIn(label, text)
