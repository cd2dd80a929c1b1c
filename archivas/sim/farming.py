"""Farmers and timelords in the simulator: who wins each block, when, and on which tip.

The model (docs/simulator.md):
- Block events are a Poisson process with the network's target block time as its mean.
  Each event's winner is drawn among the farming nodes that are up, in proportion to the
  space assigned to each.
- Timelords run at a few nodes; the first one on the winner's side of any partition
  paces that side (the fastest timelord: Chia's others only stand by). It runs the VDF on
  its peak: the heavier of its node's tip and the block it infused last, which it knows
  at once (as Chia's timelord infuses a farmer's block). With none on its side, the event
  is lost.
- VDF_LEAD seconds before the event that timelord's node publishes the segments (real
  chiavdf proofs on the parent's seed, as many as it takes for one of the shared plots to
  win at the required difficulty) through its node, as a timelord would feed it.
- At the event the winner's node makes a real block on that parent (the transfers its
  mempool held TEMPLATE_AGE seconds before, its reward address, a real proof of space from the shared plots, signed by
  the plot's farmer key) and takes it as a local block, which it relays. A winner that
  lacks the parent waits for it (up to one block time), as a farmer's full node would.

So on one side of the network blocks follow one another; blocks go stale when two
timelords paced two sides (a partition) and one side's chain loses. Only the choice of winner and times is drawn; every
block, proof and signature is real.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from archivas.chain.block import Block, Header, child_discriminant_seed, sign_header, tx_root
from archivas.chain.consensus import context_depth, expected_difficulty, expected_iterations
from archivas.chain.forkchoice import block_weight
from archivas.chain.params import NetworkParams
from archivas.farmer.plots import Plot
from archivas.farmer.plotter import create_plot
from archivas.testing.chainbuilder import ChainBuilder, farmer_key

VDF_LEAD = 1.0  # seconds before a block that its VDF segments are published
# A farmer's block carries the transfers its node held this long before (its template is
# made at the signage point, as in Chia, and refreshed only so often, as a miner's
# getblocktemplate): transfers newer than that are mostly not everywhere yet.
TEMPLATE_AGE = 10.0
PLOTS = 2  # shared k=18 plots that every simulated farmer's proofs come from
PLOT_K = 18


def plot_directory() -> Path:
    """Where the simulator keeps its plots between runs ($ARCHIVAS_SIM_PLOTS, else the
    user's cache directory): made once (a few seconds each), then reused."""
    configured = os.environ.get("ARCHIVAS_SIM_PLOTS")
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "archivas" / "sim-plots"


def sim_plots(count: int = PLOTS) -> list[tuple[Any, Plot]]:
    """The test farmers' keys and plots (the same plot ids as tests use), on disk."""
    directory = plot_directory()
    out = []
    for i in range(count):
        key = farmer_key(i)
        out.append((key, Plot(create_plot(directory, key.public_key, PLOT_K, plot_nonce=b"%032d" % i))))
    return out


class BlockMaker:
    """Real blocks for any node's tip, from a few shared plots (ChainBuilder's search)."""

    def __init__(self, params: NetworkParams, plots: Sequence[Any]) -> None:
        self.params = params
        self._builder = ChainBuilder(params, plots)
        self.plots = [plot for _, plot in plots]

    def segments_for(self, chain: Any, parent_hash: bytes) -> tuple[list[Any], Any, tuple[int, int]]:
        """The VDF on `parent_hash` up to a winning signage point: (segments, win, (difficulty,
        iterations per segment))."""
        params = self.params
        parent = chain.header(parent_hash)
        depth = context_depth(params)
        ancestors = chain.ancestors(parent_hash, depth)
        difficulty, iterations = expected_difficulty(ancestors, params), expected_iterations(ancestors, params)
        segments, win = self._builder.find_win(parent, difficulty, self.plots, iterations)
        return segments, win, (difficulty, iterations)

    def make(self, node: Any, parent: Header, segments: list[Any], win: Any, rules: tuple[int, int],
             timestamp: int, reward_address: str, since: Optional[dict[bytes, float]] = None) -> Block:
        """`since` (transfer id -> when the node admitted it), when given, leaves out what
        the node took in after timestamp - TEMPLATE_AGE (see the module doc)."""
        params = self.params
        txs = tuple(node.mempool.select(params.max_block_transactions))
        if since is not None:
            cutoff = timestamp / 1000 - TEMPLATE_AGE
            txs = _prefix_of_nonces(txs, lambda tx: since.get(tx.hash, 0.0) <= cutoff)
        key = self._builder.keys_by_pk[win.proof.farmer_public_key]
        header = Header(
            height=parent.height + 1, parent_hash=parent.hash, timestamp=timestamp, difficulty=rules[0],
            vdf_iterations=rules[1], discriminant_seed=child_discriminant_seed(parent, params),
            vdf=tuple(segments), proof_of_space=win.proof, reward_address=reward_address,
            reward=params.block_reward + sum(tx.fee for tx in txs), tx_root=tx_root(txs),
        )
        return Block(sign_header(header, key), txs)


class Farming:
    """The event process above, driving `nodes` (SimNode-likes with .node, .up, .side)."""

    def __init__(self, clock: Any, rng: random.Random, maker: BlockMaker, farmers: Sequence[Any],
                 space: Sequence[float], timelords: Sequence[Any], block_time: float,
                 reachable: Callable[[Any, Any], bool], on_block: Callable[[Any, Block], None]) -> None:
        self.clock = clock
        self.rng = rng
        self.maker = maker
        self.farmers = list(farmers)
        self.space = list(space)
        self.timelords = list(timelords)
        self.block_time = block_time
        self.reachable = reachable
        self.on_block = on_block
        self.running = False
        self.made = 0
        self.lost = 0  # events with no timelord reachable, or a winner that never got the parent
        self.limit: Optional[int] = None
        self.infused: dict[int, tuple[bytes, int]] = {}  # timelord -> (block, weight) it infused last

    def start(self, limit: Optional[int] = None) -> None:
        self.running, self.limit = True, limit
        self._schedule()

    def stop(self) -> None:
        self.running = False

    def _schedule(self) -> None:
        if not self.running or (self.limit is not None and self.made >= self.limit):
            return
        gap = self.rng.expovariate(1.0 / self.block_time)
        winner = self._draw()
        lead = min(VDF_LEAD, gap)
        self.clock.callLater(gap - lead, self._publish, winner, lead)
        self.clock.callLater(gap, self._schedule)

    def _draw(self) -> Any:
        total = sum(s for f, s in zip(self.farmers, self.space) if f.up)
        pick = self.rng.random() * total
        for farmer, share in zip(self.farmers, self.space):
            if not farmer.up:
                continue
            pick -= share
            if pick <= 0:
                return farmer
        return self.farmers[-1]

    def _peak(self, timelord: Any) -> tuple[bytes, int]:
        """What a timelord runs its VDF on: the heaviest of its node's tip and the block it
        infused last (it knows that one at once, before it reaches its node)."""
        tip = timelord.node.chain.tip
        infused = self.infused.get(timelord.index)
        if infused is not None and infused[1] >= tip.weight:
            return infused
        return tip.hash, tip.weight

    def _publish(self, winner: Any, lead: float) -> None:
        """The timelord's segments go out; the block follows `lead` seconds later."""
        if not self.running or (self.limit is not None and self.made >= self.limit):
            return
        timelords = [t for t in self.timelords if t.up and self.reachable(t, winner)]
        if not timelords:
            self.lost += 1
            return
        timelord = timelords[0]  # the fastest timelord on this side paces its chain
        parent_hash, _ = self._peak(timelord)
        node = timelord.node
        segments = win = rules = None
        if node.chain.header(parent_hash) is not None:
            segments, win, rules = self.maker.segments_for(node.chain, parent_hash)
            if node.vdf_parent == parent_hash and not node.vdf_segments:
                for i, segment in enumerate(segments, start=1):
                    node.add_vdf_output(parent_hash, i, segment).addErrback(lambda f: None)
        self.made += 1
        self.clock.callLater(lead, self._when_parent, timelord, winner, parent_hash, segments, win, rules,
                             self.clock.seconds() + lead + self.block_time)

    def _when_parent(self, timelord: Any, winner: Any, parent_hash: bytes, segments: Any, win: Any,
                     rules: Any, deadline: float) -> None:
        parent = winner.node.chain.header(parent_hash)
        if parent is None:
            if self.clock.seconds() < deadline and winner.up:
                self.clock.callLater(0.05, self._when_parent, timelord, winner, parent_hash, segments, win,
                                     rules, deadline)
            else:
                self.lost += 1
            return
        if segments is None:
            segments, win, rules = self.maker.segments_for(winner.node.chain, parent_hash)
        block = self.maker.make(winner.node, parent, segments, win, rules,
                                int(self.clock.seconds() * 1000), winner.address_for_rewards, winner.admitted)
        weight = winner.node.chain.storage.block_meta(parent_hash).weight + block_weight(*rules)
        self.infused[timelord.index] = (block.hash, weight)
        self.on_block(winner, block)


def _prefix_of_nonces(txs: Sequence[Any], keep: Callable[[Any], bool]) -> tuple[Any, ...]:
    """The transfers `keep` accepts, but for each sender only up to its first refused
    nonce (a later nonce without the earlier one would make the block invalid)."""
    blocked: set[str] = set()
    out = []
    for tx in sorted(txs, key=lambda t: (t.sender, t.nonce)):
        if tx.sender in blocked or not keep(tx):
            blocked.add(tx.sender)
            continue
        out.append(tx)
    order = {tx.hash: i for i, tx in enumerate(txs)}
    return tuple(sorted(out, key=lambda t: order[t.hash]))
