"""Where assume-valid's skip is decided (chain/assumed.py says what is skipped and what is
still checked).

A header's proofs are skipped only when it is an ancestor of the assumed block on the
header chain being synced, which the round must see before it checks the header. So,
when the node has an assumed hash it does not store, a headers-first round first walks
the target's headers from the fork point (`scout`), checking only that they link (each
one's parent is the header before), until the assumed hash appears, the headers end, or
SCOUT_BUDGET bytes of headers were read. Each header walked leaves a 16-byte commitment
to its hash (salted with a secret, as presync's records in chain/headerchain.py).

Then the round proper fetches the headers again from the fork point and checks them as
always (context rules on the reactor, the weight the run must prove before anything is
stored), but a header at or below the assumed height that matches its commitment is one
that leads to the assumed hash: its proofs are not checked (Node.assume_header). One at
those heights that does not match fails the round (its sender changed its story). Above
the assumed height, and in a round whose walk did not reach the assumed hash, every
header's proofs are checked.

The walk costs one more download of the headers up to the assumed block (their proofs are
what makes a devnet header large); a peer whose chain does not hold the assumed hash
costs at most SCOUT_BUDGET before the round goes on fully verified.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional, Sequence

from twisted.logger import Logger

from archivas.chain.block import Header
from archivas.chain.encoding import sha256
from archivas.chain.headerchain import HeaderMismatch, header_size
from archivas.protocols import wire

if TYPE_CHECKING:
    from archivas.protocols.headersfirst import HeadersFirstRound

log = Logger()

SCOUT_BUDGET = 1024 * 1024 * 1024  # header bytes (header_size) a walk reads at most
COMMITMENT = 16  # bytes kept per header walked


class AssumedChain:
    """The target's headers from the fork point as the walk saw them: linkage only, one
    commitment per height. Pure and synchronous."""

    def __init__(self, assumed: bytes, fork_hash: bytes, fork_height: int, budget: int = SCOUT_BUDGET) -> None:
        self.assumed = assumed
        self.fork_height = fork_height
        self.last_hash = fork_hash
        self.last_height = fork_height
        self.found: Optional[int] = None  # the assumed block's height, once walked
        self.broken = False  # the headers stopped linking: the walk is of no use
        self.read = 0  # header bytes walked
        self.budget = budget
        self._salt = os.urandom(16)
        self._records = bytearray()  # heights fork+1 .. last_height

    @property
    def exhausted(self) -> bool:
        return self.read >= self.budget

    def take(self, headers: Sequence[Header]) -> bool:
        """Walk on; True when the walk is over (found, broken or out of budget)."""
        for header in headers:
            if header.parent_hash != self.last_hash or header.height != self.last_height + 1:
                self.broken = True
                return True
            self._records += self._commitment(header)
            self.last_hash, self.last_height = header.hash, header.height
            self.read += header_size(header)
            if header.hash == self.assumed:
                self.found = header.height
                return True
            if self.exhausted:
                return True
        return False

    def covers(self, header: Header) -> bool:
        """Whether `header` is one the walk saw below (or at) the assumed block: its proofs
        need no check. HeaderMismatch when at those heights it is another header."""
        if self.found is None or not self.fork_height < header.height <= self.found:
            return False
        i = (header.height - self.fork_height - 1) * COMMITMENT
        if self._records[i:i + COMMITMENT] != self._commitment(header):
            raise HeaderMismatch(f"header at height {header.height} is not the one that led to the assumed block")
        return True

    def _commitment(self, header: Header) -> bytes:
        return sha256(self._salt, header.hash)[:COMMITMENT]

    @property
    def record_bytes(self) -> int:
        return len(self._records)


async def scout(round_: "HeadersFirstRound", first: wire.Headers, assumed: bytes, fork_hash: bytes,
                fork_height: int) -> Optional[AssumedChain]:
    """Walk the target's headers from the fork point (`first` is its first reply, whose
    headers follow the fork); the walk when it reached the assumed hash, else None."""
    chain = AssumedChain(assumed, fork_hash, fork_height)
    peer = round_._name(round_.target)
    log.info("[sync] looking for the assumed block {h} on {peer}'s headers", h=assumed.hex()[:16], peer=peer)
    reply = first
    while not chain.take(reply.headers):
        if not reply.headers or chain.last_height >= reply.tip_height:
            break
        reply = await round_._get_headers((chain.last_hash,) + round_.view.locator())
        if reply.headers and reply.headers[0].parent_hash != chain.last_hash:
            chain.broken = True
            break
    if chain.found is None:
        why = ("its headers stopped linking" if chain.broken else
               f"not within {chain.read} bytes of headers" if chain.exhausted else "not on its headers")
        log.info("[sync] assumed block {h} {why} (walked to height {n}): every header's proofs are checked",
                 h=assumed.hex()[:16], why=why, n=chain.last_height)
        return None
    log.info("[sync] assumed block {h} is at height {n} on {peer}'s headers: the proofs below it are not checked",
             h=assumed.hex()[:16], n=chain.found, peer=peer)
    return chain
