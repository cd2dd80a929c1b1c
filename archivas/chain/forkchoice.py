"""Fork choice: the heaviest chain wins. A block weighs its difficulty times its VDF
iterations per segment (`block_weight`), a chain the sum of its blocks' weights.

Ties go to the tip with fewer VDF segments, then the lower proof-of-space score (both fixed
by the proofs), then the tip seen first: a candidate replaces the current tip only when it
is strictly better. Never the lower hash, which a farmer who won once could grind by
re-making its block (other timestamps or transfers) and releasing the versions in falling
hash order, reorganising every node once per version.

Why difficulty times iterations (docs/consensus.md has the argument): a block on a chain
of difficulty d and T iterations per segment comes, for space S and timelord speed v, at a
rate of at most (S / d) * (v / T) per unit of time, so the weight a chain gains per unit
of time is at most S * v whatever d and T are. Lowering T (through one's own timestamps)
makes blocks come faster but weigh less, by the same factor.
"""

from __future__ import annotations

from typing import Protocol


def block_weight(difficulty: int, vdf_iterations: int) -> int:
    """What one block adds to its chain's weight (the one place it is computed)."""
    return difficulty * vdf_iterations


class Tip(Protocol):
    @property
    def weight(self) -> int: ...
    @property
    def segments(self) -> int: ...
    @property
    def score(self) -> int: ...


def key(tip: Tip) -> tuple[int, int, int]:
    """Larger is better; equal keys keep the tip seen first."""
    return (tip.weight, -tip.segments, -tip.score)


def is_better(candidate: Tip, current: Tip) -> bool:
    return key(candidate) > key(current)
