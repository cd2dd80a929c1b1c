"""Where the peer layer's nonces, keys and random choices come from.

From the operating system (os.urandom, secrets, a fresh random.Random), except inside a
seeded simulation (archivas/sim/), which installs one seeded source for the whole process
with `seeded(seed)` so that a run is the same event for event. Nothing else installs one.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
from typing import Iterator, Optional

_source: Optional[random.Random] = None


def token_bytes(n: int) -> bytes:
    return os.urandom(n) if _source is None else _source.randbytes(n)


def randbits(k: int) -> int:
    return secrets.randbits(k) if _source is None else _source.getrandbits(k)


def new_rng() -> random.Random:
    """A generator for choices that need not be secret (backoff jitter, address picks)."""
    return random.Random() if _source is None else random.Random(_source.getrandbits(64))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[random.Random]:
    """Every draw above from one generator seeded with `seed`, until the block ends."""
    global _source
    previous, _source = _source, random.Random(seed)
    try:
        yield _source
    finally:
        _source = previous
