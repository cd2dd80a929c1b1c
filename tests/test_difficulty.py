"""Difficulty: the retarget rule's edges, and convergence under simulated steady farming.

The simulation draws, at each signage point, whether any of `plots` plots wins: each
plot's quality wins with probability space(k)/(difficulty * space(k_min)) = 1/difficulty
at k = k_min, exactly the spec's winning rule for a uniform score. A block takes the
number of signage points until a win times the segment time; the next difficulty comes
from the real consensus function over the simulated headers.
"""

import dataclasses
import random

from twisted.trial import unittest

from archivas.chain import params as network_params
from archivas.chain.block import Header
from archivas.chain.consensus import context_depth, expected_difficulty
from archivas.chain.difficulty import MAX_STEP, median_time, next_difficulty


def header(height, timestamp, difficulty):
    return Header(height, b"", timestamp, difficulty, 1, b"", (), None, "", 0, b"")


def simulate(params, plots, segment_ms, start_difficulty, blocks, seed):
    """Block times (ms) of `blocks` simulated blocks after genesis."""
    rng = random.Random(seed)
    params = dataclasses.replace(params, initial_difficulty=start_difficulty)
    depth = context_depth(params)
    chain = [header(0, 0, start_difficulty)]
    times = []
    for height in range(1, blocks + 1):
        difficulty = expected_difficulty(chain[-depth:], params)
        p_win = 1 - (1 - min(1.0, 1 / difficulty)) ** plots
        segments = 1
        while rng.random() >= p_win and segments < params.max_vdf_segments:
            segments += 1
        times.append(segments * segment_ms)
        chain.append(header(height, chain[-1].timestamp + segments * segment_ms, difficulty))
    return times


class ConvergenceTests(unittest.TestCase):
    CASES = {
        # network: (plots, segment time in ms at its vdfIterations on this kind of machine)
        "devnet": (20, 1300),
        "fastnet": (4, 15),
    }

    def test_mean_block_time_within_15_percent(self):
        for name, (plots, segment_ms) in self.CASES.items():
            params = network_params.load(name)
            target = params.target_block_time_ms
            equilibrium = plots * target / segment_ms  # difficulty where p_win ~ segment/target
            for factor, label in ((0.1, "10x too easy"), (10, "10x too hard")):
                for seed in range(3):
                    with self.subTest(network=name, start=label, seed=seed):
                        start = max(1, round(equilibrium * factor))
                        times = simulate(params, plots, segment_ms, start, 300, seed)
                        # 200 blocks after the first 100, in which it climbs or falls 10x.
                        mean = sum(times[100:]) / len(times[100:])
                        self.assertLess(abs(mean - target) / target, 0.15,
                                        f"mean {mean:.0f} ms vs target {target} ms")

    def test_the_starts_really_are_off(self):
        # The first two blocks (before any retarget) come ~10x too fast or too slow: the convergence
        # above is the retarget's work, not the starting point's.
        params = network_params.load("devnet")
        easy = [t for seed in range(10) for t in simulate(params, 20, 1300, 31, 2, seed)]
        hard = [t for seed in range(10) for t in simulate(params, 20, 1300, 3077, 2, seed)]
        self.assertLess(sum(easy) / len(easy), 20000 / 3)
        self.assertGreater(sum(hard) / len(hard), 20000 * 3)


class RuleTests(unittest.TestCase):
    def test_initial_until_two_blocks(self):
        self.assertEqual(next_difficulty([], 1000, 7, 7), 7)
        self.assertEqual(next_difficulty([(5, 3)], 1000, 7, 3), 7)

    def test_on_target_keeps_difficulty(self):
        window = [(i * 1000, 50) for i in range(33)]
        # (n-1)/n correction: 32 intervals exactly on target give 50 * 31/32, rounded.
        self.assertEqual(next_difficulty(window, 1000, 1, 50), round(50 * 31 / 32))

    def test_step_is_clamped_and_at_least_one(self):
        fast = [(i, 100) for i in range(33)]  # 1 ms blocks
        self.assertEqual(next_difficulty(fast, 1000, 1, 100), 100 * MAX_STEP)
        slow = [(i * 10**9, 100) for i in range(33)]
        self.assertEqual(next_difficulty(slow, 1000, 1, 100), 100 // MAX_STEP)
        self.assertEqual(next_difficulty([(0, 1), (10**12, 1)], 1000, 1, 1), 1)

    def test_genesis_timestamp_is_not_in_the_window(self):
        params = network_params.load("fastnet")
        chain = [header(0, 0, 1), header(1, 10**12, 1), header(2, 10**12 + 500, 1)]
        self.assertEqual(expected_difficulty(chain, params), 1)

    def test_median(self):
        self.assertEqual(median_time([5, 1, 9]), 5)
        self.assertEqual(median_time(list(range(11))), 5)
        self.assertEqual(median_time([3]), 3)
