"""Fork choice: the heaviest chain (sum of difficulties) wins.

Ties go to the tip with fewer VDF segments, then the lower proof-of-space score, then the
lower block hash: a total order, so every node picks the same tip from the same blocks.
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
    @property
    def hash(self) -> bytes: ...


def key(tip: Tip) -> tuple[int, int, int, int]:
    """Larger is better."""
    return (tip.weight, -tip.segments, -tip.score, -int.from_bytes(tip.hash, "big"))


def is_better(candidate: Tip, current: Tip) -> bool:
    return key(candidate) > key(current)
