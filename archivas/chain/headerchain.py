"""A run of headers above a stored block, as headers-first sync checks them: each in order
against the context rules (height, timestamps, difficulty, VDF iterations) of the headers
before it, the weight the run proves, the window of headers kept whole for their bodies,
and, while the run has not yet proved enough weight to be worth storing (presync), a
compact record of the headers it had to let go.

Pure and synchronous: the proofs are checked elsewhere (consensus.check_header, in
threads) and handed in with `add_checked`.

Presync, in the manner of Bitcoin Core's headers presync: nothing of a chain is stored
until its headers prove `threshold` weight. Headers are kept whole while the window has
room; past that, a header that passed its checks leaves only a 48-byte record (a salted
16-byte commitment to its hash and signature, and its 32-byte score) and the last few
headers the context rules need. Once the threshold is reached, the headers after the
window are fetched again; one that matches its record is taken without its proofs being
checked again, one that does not fails the run (its sender changed its story).
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Optional, Sequence

from archivas.chain.block import Header
from archivas.chain.consensus import Ancestor, BlockRejected, check_context, context_depth
from archivas.chain.encoding import sha256
from archivas.chain.forkchoice import block_weight
from archivas.chain.params import NetworkParams

MAX_WINDOW_HEADERS = 4096  # headers kept whole ahead of the stored chain
MAX_WINDOW_BYTES = 16 * 1024 * 1024  # and their size (header_size)
RECORD = 48  # bytes a presync record takes: 16 of commitment, 32 of score


def header_size(header: Header) -> int:
    """About the bytes a header takes in JSON (and so in memory, within a factor of two)."""
    return 900 + 420 * len(header.vdf)


class HeaderMismatch(ValueError):
    """A header fetched again is not the one its sender sent before."""


@dataclasses.dataclass(frozen=True)
class Entry:
    header: Header
    weight: int
    score: int


@dataclasses.dataclass(frozen=True)
class Point:
    """A header (or the stored fork point) that a run has reached."""

    hash: bytes
    height: int
    weight: int
    header: Header


class HeaderRun:
    def __init__(self, params: NetworkParams, fork: Point, context: Sequence[Ancestor], threshold: int,
                 window_headers: int = MAX_WINDOW_HEADERS, window_bytes: int = MAX_WINDOW_BYTES) -> None:
        """`context`: the fork point's ancestors, oldest first, ending with it."""
        self.params = params
        self.fork = fork
        self.threshold = threshold
        self.depth = context_depth(params)
        self.window: collections.deque[Entry] = collections.deque()  # kept whole, oldest first
        self.window_bytes = 0
        self.max_window_headers = window_headers
        self.max_window_bytes = window_bytes
        self.end = fork  # the last header kept whole (its body is the last to fetch)
        self.last = fork  # the last header checked
        self.context: collections.deque[Ancestor] = collections.deque(context, maxlen=self.depth)
        self._salt = os.urandom(16)
        self._records = bytearray()  # heights end.height+1 .. last.height, RECORD bytes each

    # what the run proves

    @property
    def proven(self) -> bool:
        return self.last.weight >= self.threshold

    @property
    def compact(self) -> bool:
        """Headers were let go (kept only as records) and are to be fetched again."""
        return self.end.height < self.last.height

    def fetch_after(self) -> Point:
        """Where the next header request starts: after the last header checked while the
        run must still prove its weight, else after the last one kept whole."""
        return self.last if self.compact and not self.proven else self.end

    def has_room(self) -> bool:
        return len(self.window) < self.max_window_headers and self.window_bytes < self.max_window_bytes

    def room(self) -> int:
        """How many more headers the window takes (about: the bytes are estimated)."""
        if not self.has_room():
            return 0
        by_bytes = (self.max_window_bytes - self.window_bytes) // header_size(self.end.header) + 1
        return max(0, min(self.max_window_headers - len(self.window), by_bytes))

    def wants_headers(self) -> bool:
        return (self.compact and not self.proven) or self.has_room()

    # taking headers

    def is_known(self, header: Header) -> bool:
        """A header at a height already checked (one being fetched again after presync):
        it must match its record (HeaderMismatch if not)."""
        if header.height > self.last.height:
            return False
        if header.height != self.end.height + 1 or header.parent_hash != self.end.hash:
            raise HeaderMismatch(f"header at height {header.height} does not follow {self.end.height}")
        record = self._records[:RECORD]
        if record[:16] != self._commitment(header):
            raise HeaderMismatch(f"header at height {header.height} differs from the one sent before")
        return True

    def add_known(self, header: Header) -> Entry:
        assert self.is_known(header)
        score = int.from_bytes(self._records[16:RECORD], "big")
        del self._records[:RECORD]
        entry = Entry(header, self.end.weight + block_weight(header.difficulty, header.vdf_iterations), score)
        self._keep(entry)
        return entry

    def check_context(self, headers: Sequence[Header], now_ms: int) -> int:
        """How many of `headers` (consecutive, after the last checked) pass the context
        rules; the first that does not raises BlockRejected, unless some passed (then the
        count is returned and the caller checks the rest again later)."""
        context = collections.deque(self.context, maxlen=self.depth)
        parent_hash = self.last.hash
        for i, header in enumerate(headers):
            try:
                if header.parent_hash != parent_hash:
                    raise BlockRejected("invalid_ancestor", f"header at height {header.height} is not on the run")
                check_context(header, list(context), self.params, now_ms)
            except BlockRejected:
                if i:
                    return i
                raise
            context.append(header)
            parent_hash = header.hash
        return len(headers)

    def add_checked(self, header: Header, score: int) -> Entry:
        """A header after the last checked, its context and proofs passed."""
        assert header.parent_hash == self.last.hash
        entry = Entry(header, self.last.weight + block_weight(header.difficulty, header.vdf_iterations), score)
        keep = not self.compact and self.has_room()
        self.context.append(header)
        self.last = Point(header.hash, header.height, entry.weight, header)
        if keep:
            self._keep(entry)
        else:  # presync past the window: keep a record only
            self._records += self._commitment(header) + score.to_bytes(32, "big")
        return entry

    def _keep(self, entry: Entry) -> None:
        self.window.append(entry)
        self.window_bytes += header_size(entry.header)
        self.end = Point(entry.header.hash, entry.header.height, entry.weight, entry.header)

    def _commitment(self, header: Header) -> bytes:
        return sha256(self._salt, header.hash, header.farmer_signature)[:16]

    # bodies

    def entry(self, height: int) -> Optional[Entry]:
        if not self.window:
            return None
        i = height - self.window[0].header.height
        return self.window[i] if 0 <= i < len(self.window) else None

    def stored(self, count: int) -> None:
        """The first `count` headers of the window are stored blocks now."""
        for _ in range(count):
            entry = self.window.popleft()
            self.window_bytes -= header_size(entry.header)

    @property
    def record_bytes(self) -> int:
        return len(self._records)
