"""Makes valid chains fast: real plots, real VDF segments, synthetic timestamps.

Blocks are spaced exactly one target block time apart. On fastnet (initial difficulty 1)
the difficulty then stays 1: the first signage point with a quality wins, about one VDF
segment per block. Elsewhere the retarget's (n-1)/n correction lets it drift somewhat
below the initial value. About one segment per block time reads as a slow timelord, so
the VDF iterations per segment fall (4x an epoch of 4 blocks) to the network's floor: long test
chains are cheap to make. Competing forks come from building on any earlier block; a
branch differs from its sibling by its timestamp, farmer or transactions.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from archivas.chain import vdf
from archivas.chain.block import Block, Header, child_discriminant_seed, child_seed, genesis_block, sign_header, tx_root
from archivas.chain.consensus import context_depth, expected_difficulty, expected_iterations
from archivas.chain.keys import PrivateKey
from archivas.chain.params import NetworkParams
from archivas.chain.transactions import Transaction, sign_transfer
from archivas.farmer.plots import Plot, Win, best_win
from archivas.farmer.plotter import create_plot

_plot_cache: dict[tuple[int, int], list[tuple[PrivateKey, Plot]]] = {}
_plot_dir: Optional[Path] = None


def farmer_key(i: int) -> PrivateKey:
    return PrivateKey.from_secret(b"archivas-test-farmer-%d" % i)


def shared_plots(count: int = 2, k: int = 18) -> list[tuple[PrivateKey, Plot]]:
    """`count` plots of size k, one per test farmer, made once per process."""
    global _plot_dir
    if (count, k) in _plot_cache:
        return _plot_cache[(count, k)]
    if _plot_dir is None:
        _plot_dir = Path(tempfile.mkdtemp(prefix="archivas-test-plots-"))
        atexit.register(shutil.rmtree, _plot_dir, True)
    out = []
    for i in range(count):
        key = farmer_key(i)
        path = create_plot(_plot_dir, key.public_key, k, plot_nonce=b"%032d" % i)
        out.append((key, Plot(path)))
    _plot_cache[(count, k)] = out
    return out


class ChainBuilder:
    def __init__(
        self,
        params: NetworkParams,
        farmers: Optional[Sequence[tuple[PrivateKey, Plot]]] = None,
    ) -> None:
        self.params = params
        self.farmers = list(farmers if farmers is not None else shared_plots())
        self.keys_by_pk = {key.public_key: key for key, _ in self.farmers}
        self.genesis = genesis_block(params)
        self.blocks: dict[bytes, Block] = {self.genesis.hash: self.genesis}
        self._vdf_cache: dict[tuple[bytes, bytes, int], vdf.Segment] = {}

    def ancestors(self, block_hash: bytes, count: int) -> list[Header]:
        out: list[Header] = []
        block: Optional[Block] = self.blocks[block_hash]
        while block is not None and len(out) < count:
            out.append(block.header)
            block = None if block.height == 0 else self.blocks.get(block.header.parent_hash)
        out.reverse()
        return out

    def _segment(self, seed: bytes, start: bytes, iterations: int) -> vdf.Segment:
        key = (seed, start, iterations)
        if key not in self._vdf_cache:
            self._vdf_cache[key] = vdf.prove_segment(seed, start, self.params.discriminant_bits, iterations)
        return self._vdf_cache[key]

    def iterations_for(self, parent: Block) -> int:
        """The VDF iterations per segment a child of `parent` must use."""
        params = self.params
        return expected_iterations(
            self.ancestors(parent.hash, context_depth(params)), params)

    def find_win(
        self, parent: Header, difficulty: int, plots: Sequence[Plot], iterations: int
    ) -> tuple[list[vdf.Segment], Win]:
        """Run the VDF (`iterations` per segment) from the parent's seed until a signage
        point one of `plots` wins."""
        seed = child_seed(parent, self.params)
        discriminant_seed = child_discriminant_seed(parent, self.params)
        segments: list[vdf.Segment] = []
        start = vdf.origin(discriminant_seed, seed, self.params.discriminant_bits)
        while len(segments) < self.params.max_vdf_segments:
            segment = self._segment(discriminant_seed, start, iterations)
            segments.append(segment)
            start = segment.output
            challenge = vdf.signage_challenge(seed, segment.output)
            win = best_win(plots, challenge, difficulty, self.params.k_min, self.params.plot_filter_bits)
            if win is not None:
                return segments, win
        raise RuntimeError("no plot won within max_vdf_segments")

    def make_block(
        self,
        parent: Block,
        transactions: Iterable[Transaction] = (),
        timestamp: Optional[int] = None,
        farmer: Optional[int] = None,
        reward_address: Optional[str] = None,
        tamper: Optional[Callable[[Header], Header]] = None,
    ) -> Block:
        """A valid child of `parent` (and remembered as a possible parent).

        `farmer` limits the search to that test farmer's plot; `tamper` edits the header
        before signing (tests of rejections)."""
        params = self.params
        txs = tuple(transactions)
        ancestors = self.ancestors(parent.hash, context_depth(params))
        difficulty = expected_difficulty(ancestors, params)
        iterations = expected_iterations(ancestors, params)
        plots = [p for _, p in self.farmers] if farmer is None else [self.farmers[farmer][1]]
        segments, win = self.find_win(parent.header, difficulty, plots, iterations)
        key = self.keys_by_pk[win.proof.farmer_public_key]
        header = Header(
            height=parent.height + 1,
            parent_hash=parent.hash,
            timestamp=timestamp if timestamp is not None else parent.header.timestamp + params.target_block_time_ms,
            difficulty=difficulty,
            vdf_iterations=iterations,
            discriminant_seed=child_discriminant_seed(parent.header, params),
            vdf=tuple(segments),
            proof_of_space=win.proof,
            reward_address=reward_address or key.address,
            reward=params.block_reward + sum(tx.fee for tx in txs),
            tx_root=tx_root(txs),
        )
        if tamper is not None:
            header = tamper(header)
        block = Block(sign_header(header, key), txs)
        self.blocks[block.hash] = block
        return block

    def extend(self, parent: Block, count: int, **kwargs) -> list[Block]:
        """`count` blocks on top of `parent`, each on the previous one."""
        out = []
        for _ in range(count):
            parent = self.make_block(parent, **kwargs)
            out.append(parent)
        return out

    def transfer(self, key: PrivateKey, to: str, amount: int, nonce: int, fee: Optional[int] = None) -> Transaction:
        return sign_transfer(key, self.params, to, amount, self.params.min_fee if fee is None else fee, nonce)


