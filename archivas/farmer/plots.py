"""Plot files on disk: loading, quality look-ups, and finding a winning proof."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Optional

from chiapos import DiskProver
from twisted.logger import Logger

from archivas.chain import pos
from archivas.chain.block import ProofOfSpace

log = Logger()


class Plot:
    """A chiapos plot whose memo holds (farmer public key, plot nonce)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.prover = DiskProver(str(self.path))
        memo = bytes(self.prover.get_memo())
        if len(memo) != 64:
            raise ValueError(f"{self.path} is not an Archivas plot (memo of {len(memo)} bytes)")
        self.farmer_public_key, self.nonce = memo[:32], memo[32:]
        self.k = self.prover.get_size()
        self.id = bytes(self.prover.get_id())
        if self.id != pos.plot_id(self.farmer_public_key, self.nonce):
            raise ValueError(f"{self.path}: plot id is not bound to the farmer key in its memo")

    def qualities(self, challenge: bytes) -> list[bytes]:
        return [bytes(q) for q in self.prover.get_qualities_for_challenge(challenge)]

    def proof(self, challenge: bytes, index: int) -> ProofOfSpace:
        full = bytes(self.prover.get_full_proof(challenge, index))
        return ProofOfSpace(self.k, self.nonce, self.farmer_public_key, full)


def load_plots(directory: str | Path) -> list[Plot]:
    plots = []
    for path in sorted(Path(directory).glob("*.plot")):
        try:
            plots.append(Plot(path))
        except (ValueError, RuntimeError) as e:
            log.warn("[farmer] skipping {path}: {error}", path=str(path), error=str(e))
    return plots


@dataclasses.dataclass(frozen=True)
class Win:
    plot: Plot
    proof: ProofOfSpace
    score: int


def best_win(
    plots: Iterable[Plot], challenge: bytes, difficulty: int, k_min: int, filter_bits: int
) -> Optional[Win]:
    """The lowest-scoring winning proof among `plots` for `challenge`, if any wins."""
    best: Optional[Win] = None
    for plot in plots:
        if not pos.passes_filter(plot.id, challenge, filter_bits):
            continue
        for index, quality in enumerate(plot.qualities(challenge)):
            if not pos.wins(quality, challenge, plot.k, difficulty, k_min):
                continue
            score = pos.score(quality, challenge)
            if best is None or score < best.score:
                best = Win(plot, plot.proof(challenge, index), score)
    return best
