"""Fork choice: the heaviest chain (sum of difficulties) wins.

Ties go to the tip with fewer VDF segments, then the lower proof-of-space score (both fixed
by the proofs), then the tip seen first: a candidate replaces the current tip only when it
is strictly better. Never the lower hash, which a farmer who won once could grind by
re-making its block (other timestamps or transfers) and releasing the versions in falling
hash order, reorganising every node once per version.
"""

from __future__ import annotations

from typing import Protocol


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
