"""VDF iterations per segment, retargeted from block timestamps (Unix ms), as Chia
retargets its sub-slot iterations: the number of segments per block stays near the
network's `targetVdfSegments` whatever the timelords' speed.

The chain records how much sequential work its VDFs did (each block's segments times its
iterations per segment) and when (the timestamps), so it measures the timelords' speed:

    rate = sum(segments * iterations) / timespan              iterations per ms
    next = rate * target_block_time / target_segments

over the same window as the difficulty (up to `window + 1` blocks, genesis excluded: the
work of the blocks after the first, over the time from the first to the last). A block's
time is its VDF's time plus a little propagation, so the ratio needs no correction for
randomness: it is exact when block times are proportional to the work.

The iterations change once per epoch of EPOCH_BLOCKS blocks, never inside one, and an
epoch's value is measured on a window that ends two epochs back (`anchor_height`). That is
against grinding: a child's signage challenges depend on its iterations (y_1 = x^(2^T)),
and when T came from a window ending at the parent, the parent's farmer could pick his
timestamp, and with it one of tens of thousands of T values, until one of his own plots
won the child's first signage point, block after block. Now whoever dates a block that
the rule reads cannot know the seeds of the blocks whose T it sets (those depend on proofs
of space found at least EPOCH_BLOCKS blocks later). docs/consensus.md has the argument.

The result is rounded, moves by at most a factor EPOCH_FACTOR from the previous epoch's
iterations, and stays within [floor, ceiling] of the network's initial iterations.
Integer arithmetic only: every node computes the same value.
"""

from __future__ import annotations

from typing import Sequence

EPOCH_BLOCKS = 4  # blocks 1-4, 5-8, ...: one iteration count (and difficulty) each
EPOCH_FACTOR = 4  # an epoch's iterations are within [previous / 4, previous * 4]
FLOOR_DIVISOR = 64  # never below initial / 64 (at least 1)
CEILING_FACTOR = 4096  # never above initial * 4096


def bounds(initial: int) -> tuple[int, int]:
    """(floor, ceiling) of the iterations per segment for a network that starts at `initial`."""
    return max(1, initial // FLOOR_DIVISOR), initial * CEILING_FACTOR


def epoch(height: int) -> int:
    """The iteration epoch of the block at `height` (blocks 1..EPOCH_BLOCKS are epoch 0)."""
    return (height - 1) // EPOCH_BLOCKS


def anchor_height(height: int) -> int:
    """Where the window that sets the iterations of the block at `height` ends: the last
    block of the epoch before the previous one (<= 0: none yet, the initial iterations)."""
    return (epoch(height) - 1) * EPOCH_BLOCKS


def next_iterations(window: Sequence[tuple[int, int, int]], target_ms: int, target_segments: int,
                    initial: int, previous: int) -> int:
    """`window`: (timestamp, segments, iterations) of up to window+1 blocks ending at the
    anchor (anchor_height), oldest first, genesis excluded (its timestamp is fixed long
    before any block); `previous`: the iterations of the epoch before."""
    n = len(window) - 1
    if n < 1:
        return initial
    work = sum(segments * iterations for _, segments, iterations in window[1:])
    timespan = max(1, window[-1][0] - window[0][0])
    num = work * target_ms
    den = timespan * target_segments
    value = (2 * num + den) // (2 * den)
    value = max(previous // EPOCH_FACTOR, min(previous * EPOCH_FACTOR, value))
    floor, ceiling = bounds(initial)
    return max(floor, min(ceiling, value))
