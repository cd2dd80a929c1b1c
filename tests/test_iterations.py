"""VDF iterations per segment: the retarget rule's edges, convergence of the segments per
block from timelords 1x, 5x and 20x the speed a network's initial iterations assume, and
the weight a private fork can (not) gain by lowering the iterations through its timestamps.

Simulated as the difficulty tests are (tests/test_difficulty.py): at each signage point
whether any of `plots` plots wins is drawn with the winning rule's probability at the
block's difficulty; a block takes its segments times its iterations per segment over the
timelord's speed (plus a little propagation) and its timestamp says so; the next
difficulty and iterations come from the real consensus functions over the simulated
chain. The speed a network assumes is v0 = vdfIterations * targetVdfSegments /
targetBlockTimeMs: the speed at which its initial iterations are already right.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics

from twisted.trial import unittest

from archivas.chain import params as network_params
from archivas.chain.consensus import expected_difficulty, expected_iterations
from archivas.chain.forkchoice import block_weight
from archivas.chain.iterations import CEILING_FACTOR, FLOOR_DIVISOR, STEP_DIVISOR, bounds, next_iterations

# network: (plots, propagation in ms: each block's timestamp comes up to this late)
CASES = {"devnet": (20, 500), "fastnet": (4, 20)}


@dataclasses.dataclass(frozen=True)
class Sim:
    """A simulated block: what the context rules read of an ancestor."""

    height: int
    timestamp: int
    difficulty: int
    segments: int
    vdf_iterations: int


def assumed_speed(params) -> float:
    """Iterations per ms at which the network's initial iterations give its target segments."""
    return params.vdf_iterations * params.target_vdf_segments / params.target_block_time_ms


def depth(params) -> int:
    return max(params.difficulty_window + 1, params.median_time_blocks) + 1


def win_probability(difficulty: int, plots: int) -> float:
    return 1 - (1 - min(1.0, 1 / difficulty)) ** plots


def draw_segments(rng: random.Random, p_win: float, params) -> int:
    segments = 1
    while rng.random() >= p_win and segments < params.max_vdf_segments:
        segments += 1
    return segments


def simulate(params, plots, speed, blocks, seed, latency_ms):
    """`blocks` blocks after genesis from a timelord of `speed` iterations per ms."""
    rng = random.Random(seed)
    chain = [Sim(0, 0, params.initial_difficulty, 0, params.vdf_iterations)]
    for height in range(1, blocks + 1):
        ancestors = chain[-depth(params):]
        difficulty = expected_difficulty(ancestors, params)
        iterations = expected_iterations(ancestors, params)
        segments = draw_segments(rng, win_probability(difficulty, plots), params)
        took = segments * iterations / speed + rng.uniform(0, latency_ms)
        chain.append(Sim(height, chain[-1].timestamp + max(1, round(took)), difficulty, segments, iterations))
    return chain[1:]


class ConvergenceTests(unittest.TestCase):
    def test_segments_per_block_settle_within_15_percent_at_any_timelord_speed(self):
        for name, (plots, latency) in CASES.items():
            params = network_params.load(name)
            target = params.target_vdf_segments
            for factor in (1, 5, 20):
                speed = assumed_speed(params) * factor
                for seed in range(3):
                    with self.subTest(network=name, speed=f"{factor}x", seed=seed):
                        chain = simulate(params, plots, speed, 200, seed, latency)
                        # The last 150 of 200 blocks: at 20x the iterations climb 20x first
                        # (at most 1/8 a block: ~26 blocks), the difficulty following them.
                        settled = chain[50:]
                        mean = statistics.mean(b.segments for b in settled)
                        self.assertLess(abs(mean - target) / target, 0.15,
                                        f"{mean:.2f} segments per block vs {target}")
                        # and the iterations are the speed's: a target block time holds
                        # `target` segments (less the propagation the timestamps include)
                        ideal = speed * params.target_block_time_ms / target
                        self.assertLess(abs(settled[-1].vdf_iterations - ideal) / ideal, 0.15)

    def test_the_starts_really_are_off(self):
        # Before the iterations have moved, a 5x or 20x timelord makes blocks of 5x or 20x
        # the segments (once the difficulty holds the block time): the convergence above
        # is the retarget's work. Without it (iterations fixed) they stay there.
        params = network_params.load("devnet")
        for factor in (5, 20):
            speed = assumed_speed(params) * factor
            fixed = [b.segments for seed in range(3) for b in simulate_fixed(params, 20, speed, 200, seed)[100:]]
            self.assertGreater(statistics.mean(fixed), params.target_vdf_segments * factor * 0.7)

    def test_a_slower_timelord_too(self):
        # A timelord at a quarter of the assumed speed: the iterations fall (above the floor).
        params = network_params.load("devnet")
        chain = simulate(params, 20, assumed_speed(params) / 4, 200, 0, 500)
        mean = statistics.mean(b.segments for b in chain[50:])
        self.assertLess(abs(mean - params.target_vdf_segments) / params.target_vdf_segments, 0.15)
        self.assertLess(chain[-1].vdf_iterations, params.vdf_iterations // 3)


def simulate_fixed(params, plots, speed, blocks, seed):
    """As simulate, but every block keeps the initial iterations (the rule before version 2)."""
    rng = random.Random(seed)
    chain = [Sim(0, 0, params.initial_difficulty, 0, params.vdf_iterations)]
    for height in range(1, blocks + 1):
        difficulty = expected_difficulty(chain[-depth(params):], params)
        segments = draw_segments(rng, win_probability(difficulty, plots), params)
        took = segments * params.vdf_iterations / speed
        chain.append(Sim(height, chain[-1].timestamp + max(1, round(took)), difficulty, segments,
                         params.vdf_iterations))
    return chain[1:]


class RuleTests(unittest.TestCase):
    def test_initial_until_two_blocks(self):
        self.assertEqual(next_iterations([], 1000, 4, 5000, 5000), 5000)
        self.assertEqual(next_iterations([(5, 3, 5000)], 1000, 4, 5000, 5000), 5000)

    def test_on_target_keeps_iterations(self):
        # 4 segments of 5000 every 1000 ms is 20 it/ms: 1000 ms hold 4 segments of 5000.
        window = [(i * 1000, 4, 5000) for i in range(33)]
        self.assertEqual(next_iterations(window, 1000, 4, 5000, 5000), 5000)
        # No (n-1)/n correction: the rate is a ratio of sums, exact when block times follow the work.
        window = [(i * 1000, 1 + i % 7, 5000) for i in range(33)]
        times = [0]
        for _, segments, iterations in window[1:]:
            times.append(times[-1] + segments * iterations // 20)  # 20 it/ms
        window = [(t, s, it) for t, (_, s, it) in zip(times, window)]
        self.assertEqual(next_iterations(window, 1000, 4, 5000, 5000), 5000)

    def test_each_block_moves_at_most_an_eighth(self):
        fast = [(i, 4, 8000) for i in range(33)]  # 1 ms blocks: a very fast timelord
        self.assertEqual(next_iterations(fast, 1000, 4, 5000, 8000), 8000 + 8000 // STEP_DIVISOR)
        slow = [(i * 10**9, 4, 8000) for i in range(33)]
        self.assertEqual(next_iterations(slow, 1000, 4, 5000, 8000), 8000 - 8000 // STEP_DIVISOR)
        # at least one iteration either way, even from a small parent value
        self.assertEqual(next_iterations([(i, 4, 7) for i in range(33)], 1000, 4, 7, 7), 8)

    def test_floor_and_ceiling(self):
        floor, ceiling = bounds(5000)
        self.assertEqual((floor, ceiling), (5000 // FLOOR_DIVISOR, 5000 * CEILING_FACTOR))
        self.assertEqual(bounds(10), (1, 10 * CEILING_FACTOR))
        slow = [(i * 10**9, 1, floor) for i in range(33)]
        self.assertEqual(next_iterations(slow, 1000, 4, 5000, floor), floor)
        fast = [(i, 1000, ceiling) for i in range(33)]
        self.assertEqual(next_iterations(fast, 1000, 4, 5000, ceiling), ceiling)

    def test_genesis_and_integers(self):
        params = network_params.load("fastnet")
        chain = [Sim(0, 0, 1, 0, params.vdf_iterations), Sim(1, 10**12, 1, 1, params.vdf_iterations),
                 Sim(2, 10**12 + 500, 1, params.target_vdf_segments, params.vdf_iterations)]
        # genesis's timestamp (long before block 1) is not in the window: 8 segments in 500 ms is on target
        self.assertEqual(expected_iterations(chain, params), params.vdf_iterations)
        huge = [(i * 3, 1024, 2**50) for i in range(33)]
        self.assertIsInstance(next_iterations(huge, 1000, 4, 2**40, 2**50), int)


class WeightTests(unittest.TestCase):
    """Weight = difficulty x iterations per segment (forkchoice.block_weight)."""

    def test_the_weight_rate_is_bounded_by_space_times_speed_whatever_difficulty_and_iterations(self):
        # Expected weight per ms = P(win a signage point) * (signage points per ms) * weight of a
        # block = p(d) * (v / T) * d * T = p(d) * d * v <= plots * v, as p(d) <= plots / d:
        # nothing in it depends on T, and no d beats space x speed.
        plots, speed = 20, 40.0
        for difficulty in (1, 2, 5, 20, 80, 1000, 10**6):
            for iterations in (1, 78, 5000, 10**6, 10**9):
                rate = win_probability(difficulty, plots) * speed / iterations * block_weight(difficulty, iterations)
                self.assertLessEqual(rate, plots * speed * (1 + 1e-9))
                self.assertAlmostEqual(rate, win_probability(difficulty, plots) * difficulty * speed, delta=1e-6 * rate)

    def test_a_private_fork_that_lowers_its_iterations_gains_no_weight(self):
        """From one fork point, for the same real time: the honest chain's timestamps tell the
        truth; the attacker, with the same space and the same timelord, dates each block as
        if it had taken 4x as long (a fork from far enough back has the room). Its
        iterations settle at a quarter, its blocks come 4x as often, each a quarter as
        heavy: no weight gained. With version 1's weight (the sum of difficulties) the
        same fork would have won by far."""
        params = network_params.load("devnet")
        honest, forked, counts, difficulties = [], [], [], []
        for seed in range(3):
            mine = self._extend(params, seed, stretch=1, cycle=False)
            theirs = self._extend(params, seed + 100, stretch=4, cycle=False)
            honest.append(sum(block_weight(b.difficulty, b.vdf_iterations) for b in mine))
            forked.append(sum(block_weight(b.difficulty, b.vdf_iterations) for b in theirs))
            counts.append(len(theirs) / len(mine))
            difficulties.append(sum(b.difficulty for b in theirs) / sum(b.difficulty for b in mine))
            self.assertLess(theirs[-1].vdf_iterations, mine[-1].vdf_iterations / 3)
        self.assertLess(sum(forked) / sum(honest), 1.05)
        self.assertGreater(min(counts), 3)
        self.assertGreater(min(difficulties), 3)

    def test_what_the_bound_leaves_colliding_winners(self):
        """Several plots winning at one signage point make one block, so the honest chain
        gains about (1/N) / -ln(1 - 1/N) of space x speed (0.87 at N = 4, a little less with
        propagation). A fork that keeps its iterations below the equilibrium (dating blocks
        64x late until they hit the floor, then truthfully while they climb back, again and
        again) has more signage points a block and fewer collisions: it comes near space x
        speed, the bound, and no further (docs/consensus.md)."""
        params = network_params.load("devnet")
        plots, speed, real = 20, assumed_speed(params), 600 * params.target_block_time_ms
        n = params.target_vdf_segments
        efficiency = (1 / n) / -math.log(1 - 1 / n)
        honest = [sum(block_weight(b.difficulty, b.vdf_iterations)
                      for b in self._extend(params, seed, stretch=1, cycle=False)) / (plots * speed * real)
                  for seed in range(3)]
        cycled = [sum(block_weight(b.difficulty, b.vdf_iterations)
                      for b in self._extend(params, seed + 100, stretch=64, cycle=True)) / (plots * speed * real)
                  for seed in range(3)]
        self.assertLess(abs(statistics.mean(honest) - efficiency), 0.05)
        self.assertLess(statistics.mean(cycled), 1.05)  # the bound, within the noise

    def _extend(self, params, seed, stretch, cycle, plots=20, blocks=600):
        """Blocks after block 100 of an honest chain until `blocks` target block times of
        real time have passed, each dated `stretch` times as late as it took (with `cycle`:
        until the iterations reach their floor, then truthfully until they are back at 90%
        of the initial value, and so on)."""
        speed = assumed_speed(params)
        floor = bounds(params.vdf_iterations)[0]
        rng = random.Random(seed)
        fork = simulate(params, plots, speed, 100, 1, 500)
        chain, real, out, lying = list(fork), fork[-1].timestamp, [], True
        end = real + blocks * params.target_block_time_ms
        while True:
            ancestors = chain[-depth(params):]
            difficulty = expected_difficulty(ancestors, params)
            iterations = expected_iterations(ancestors, params)
            segments = draw_segments(rng, win_probability(difficulty, plots), params)
            took = max(1, round(segments * iterations / speed))
            real += took
            if real > end:
                return out
            if cycle and lying and iterations <= floor * 1.1:
                lying = False
            elif cycle and not lying and iterations >= 0.9 * params.vdf_iterations:
                lying = True
            block = Sim(chain[-1].height + 1, chain[-1].timestamp + took * (stretch if lying else 1), difficulty,
                        segments, iterations)
            chain.append(block)
            out.append(block)
