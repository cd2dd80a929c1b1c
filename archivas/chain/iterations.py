"""VDF iterations per segment, retargeted from block timestamps (Unix ms), as Chia
retargets its sub-slot iterations: the number of segments per block stays near the
network's `targetVdfSegments` whatever the timelords' speed.

The chain records how much sequential work its VDFs did (each block's segments times its
iterations per segment) and when (the timestamps), so it measures the timelords' speed:

    rate = sum(segments * iterations) / timespan              iterations per ms
    next = rate * target_block_time / target_segments

over the same window as the difficulty (up to `window + 1` blocks ending at the parent,
genesis excluded: the work of the blocks after the first, over the time from the first to
the last). A block's time is its VDF's time plus a little propagation, so the ratio needs
no correction for randomness: it is exact when block times are proportional to the work.
The result is rounded, moves at most 1/STEP_DIVISOR of the parent's iterations per block
(at least 1), and stays within [floor, ceiling] of the network's initial iterations.
Integer arithmetic only: every node computes the same value.
"""

from __future__ import annotations

from typing import Sequence

STEP_DIVISOR = 8  # one block moves the iterations by at most 1/8 of its parent's
FLOOR_DIVISOR = 64  # never below initial / 64 (at least 1)
CEILING_FACTOR = 4096  # never above initial * 4096


def bounds(initial: int) -> tuple[int, int]:
    """(floor, ceiling) of the iterations per segment for a network that starts at `initial`."""
    return max(1, initial // FLOOR_DIVISOR), initial * CEILING_FACTOR


def next_iterations(window: Sequence[tuple[int, int, int]], target_ms: int, target_segments: int,
                    initial: int, parent_iterations: int) -> int:
    """`window`: (timestamp, segments, iterations) of up to window+1 blocks ending at the
    parent, oldest first, genesis excluded (its timestamp is fixed long before any block)."""
    n = len(window) - 1
    if n < 1:
        return initial
    work = sum(segments * iterations for _, segments, iterations in window[1:])
    timespan = max(1, window[-1][0] - window[0][0])
    num = work * target_ms
    den = timespan * target_segments
    value = (2 * num + den) // (2 * den)
    step = max(1, parent_iterations // STEP_DIVISOR)
    value = max(parent_iterations - step, min(parent_iterations + step, value))
    floor, ceiling = bounds(initial)
    return max(floor, min(ceiling, value))
