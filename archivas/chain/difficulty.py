"""Difficulty retargeting and the median-time rule, from block timestamps (Unix ms).

The next difficulty estimates the network's rate from the last `window` blocks (work done
over the time it took) and asks for `target` ms per block:

    next = work * target * (n - 1) / (n * timespan)        n = intervals in the window

The (n-1)/n factor removes the bias of averaging over random block times. The result is
rounded, kept within 4x of the previous value in either direction, and at least 1. As the
VDF iterations do (chain/iterations.py), the difficulty changes once per iteration epoch of
4 blocks, measured on the window ending two epochs back (consensus.expected_difficulty):
a farmer cannot date his block to make his own child's difficulty lower.
Integer arithmetic only: every node computes the same value.
"""

from __future__ import annotations

from typing import Sequence

MAX_STEP = 4


def next_difficulty(
    window: Sequence[tuple[int, int]], target_ms: int, initial: int, parent_difficulty: int
) -> int:
    """`window`: (timestamp, difficulty) of up to window+1 blocks ending at the anchor,
    oldest first, genesis excluded (its timestamp is fixed long before any block);
    `parent_difficulty`: the previous epoch's value, which bounds the step."""
    n = len(window) - 1
    if n < 1:
        return initial
    work = sum(d for _, d in window[1:])
    timespan = max(1, window[-1][0] - window[0][0])
    num = work * target_ms * max(1, n - 1)
    den = timespan * n
    value = (2 * num + den) // (2 * den)
    low = max(1, parent_difficulty // MAX_STEP)
    return max(low, min(parent_difficulty * MAX_STEP, value))


def median_time(timestamps: Sequence[int]) -> int:
    """The median of the last (up to 11) timestamps; a new block must exceed it."""
    ordered = sorted(timestamps)
    return ordered[len(ordered) // 2]
