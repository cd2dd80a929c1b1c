"""Measure block propagation along a line of 10 nodes: per-hop latency, p50 and max.

One job: print a plain-text table of how long a new block takes to cross each hop of a
line of nodes (node i dials node i-1 only), and to go from end to end, as on a live
network: the block's transfers and VDF segments were gossiped before it.

Every node runs in this process on the global Twisted reactor, as tests/netutil.py starts
them, with an empty database. Blocks (a chain from `archivas.testing.chainbuilder`: the
validation bench's cached fastnet chain) are fed one at a time to node 0 with
`receive_block`; each node's arrival time is when the block becomes its tip (its `on_tip`
callback). The next block goes in only once the previous one reached the last node.
Per-hop latency = arrival at node i - arrival at node i-1: receiving the relayed block
(CMPCT_BLOCK, rebuilt from the mempool), checking it (proofs in the node's thread pool,
through its verified caches), storing it, relaying it on.

Gossip first (the default): before each block goes to node 0, its transfers are submitted
to node 0 (`submit_transaction`, in nonce order) and the bench waits until every node has
them in its mempool (INV/REQ/RES along the line: seconds per hop, for the INV interval);
then its VDF segments are given to node 0 one at a time (`add_vdf_output`, as a timelord
paces them) and the bench waits until every node has each. That wait is not measured: a
live network's blocks carry transfers and segments its nodes have already checked (and
cached: `verified_transfers`, `verified_segments`). `--no-gossip-first` measures blocks
nobody has seen anything of (each CMPCT_BLOCK then carries every transfer prefilled, and
every node verifies every signature and segment itself). `--compare` runs both modes, one
line of fresh nodes per (transfers, mode), interleaved block by block (round k feeds block
k to every line) so that load from elsewhere on the machine falls on all of them alike.

    .venv/bin/python bench/propagation.py              # 10 nodes, 30 blocks, 0 and 50 transfers, gossip first
    .venv/bin/python bench/propagation.py --compare    # the same, and the blocks nobody saw, in one table
    .venv/bin/python bench/propagation.py --no-gossip-first
    .venv/bin/python bench/propagation.py --quick      # smoke run: 3 blocks
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import validation_throughput as vt  # the validation bench beside this file: chains, cache, tables
from twisted.internet import defer, task

from archivas.chain import vdf
from archivas.chain.block import Block
from archivas.chain.blockchain import Chain
from archivas.chain.params import NetworkParams
from archivas.chain.transactions import InvalidTransaction
from archivas.node import Node

DEADLINE = 60.0  # seconds for the line to form, or for one block to cross it
GOSSIP_DEADLINE = 120.0  # seconds for a block's transfers (or one segment) to reach every node
# Messages counted while a block crosses the line (received, summed over the nodes).
RELAY_MESSAGES = ("CMPCT_BLOCK", "NEW_BLOCK", "GET_CMPCT", "GET_BLOCK_TXN", "BLOCK_TXN", "PUSH_BLOCK",
                  "BLOCK_DATA", "BLOCKS_BATCH", "INV", "REQ", "RES", "VDF_OUTPUT")
TIMED = ("block", "storage")  # the node's validation timings shown per block


@dataclasses.dataclass(frozen=True)
class Variant:
    """One line of fresh nodes: transfers per block, and what is gossiped before each block."""

    n_tx: int
    transfers_first: bool
    segments_first: bool

    @property
    def gossiped(self) -> str:
        parts = [what for what, on in (("transfers", self.transfers_first and self.n_tx),
                                       ("segments", self.segments_first)) if on]
        return " + ".join(parts) if parts else "nothing"

    @property
    def label(self) -> str:
        return f"{self.n_tx} tx, {self.gossiped} first" if self.gossiped != "nothing" else f"{self.n_tx} tx, unseen"


@dataclasses.dataclass
class Result:
    variant: Variant
    arrivals: list[list[float]] = dataclasses.field(default_factory=list)  # per block, per node
    transfer_wait: list[float] = dataclasses.field(default_factory=list)  # s until every node had them
    segment_wait: list[float] = dataclasses.field(default_factory=list)  # s until every node had them
    counted: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


class LineNode:
    """Node `index` of the line, listening on 127.0.0.1, arrival times by block hash."""

    def __init__(self, reactor: Any, index: int, directory: str, params: NetworkParams) -> None:
        self.index = index
        self.chain = Chain.open(directory, params)
        # Peer exchange would add links and make the line a mesh. A node asks a new peer
        # for addresses only while it has fewer outbound connections than max_outbound:
        # node 0 (which dials no one) gets 0, the others 1, filled by their dial to the
        # left neighbour before the right neighbour connects (form_line).
        self.node = Node(self.chain, reactor, max_outbound=0 if index == 0 else 1, discover=False)
        self.port = reactor.listenTCP(0, self.node.peers.inbound_factory, interface="127.0.0.1")
        self.node.peers.listen_port = self.port.getHost().port
        self.arrived: dict[bytes, float] = {}
        self.node.on_tip.append(self._on_tip)
        # Which messages reach the node (the peer layer hands it every non-lifecycle
        # message through this attribute): how blocks travelled, read by the bench only.
        self.received: collections.Counter[str] = collections.Counter()
        handle = self.node.message_received

        def counting(proto: Any, message: Any) -> None:
            self.received[message.NAME] += 1
            handle(proto, message)

        self.node.message_received = counting  # type: ignore[method-assign]
        self.node.start()

    def _on_tip(self, block: Block) -> None:
        self.arrived[block.hash] = time.perf_counter()
        # The discriminant cache is process-wide: without this, node i+1 would find the one
        # node i computed for the same block, which a node in its own process would not.
        vdf.clear_caches()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"

    def neighbours(self) -> set[bytes]:
        return {p.info.node_id for p in self.node.peers.ready_peers() if p.info is not None and p.info.node_id}

    def counters(self) -> collections.Counter[str]:
        """Messages received, compact-relay outcomes and verified-cache look-ups so far."""
        out = collections.Counter({f"msg {k}": v for k, v in self.received.items()})
        out.update({f"cmpct {k}": v for k, v in self.node.compact_stats.items()})
        for name, cache in (("tx", self.node.verified_transfers), ("seg", self.node.verified_segments)):
            out[f"{name} hits"] += cache.hits
            out[f"{name} misses"] += cache.misses
        # Seconds in the node's own timings (archivas_validation_seconds): the block's check
        # in the thread pool ("block") and add_block on the reactor ("storage").
        for metric in self.node.metrics.validation.collect():
            for sample in metric.samples:
                if sample.name.endswith("_sum") and sample.labels.get("component") in TIMED:
                    out[f"s {sample.labels['component']}"] += sample.value
        return out

    async def stop(self) -> None:
        await defer.maybeDeferred(self.port.stopListening)
        await self.node.stop()
        self.chain.close()


async def wait_until(reactor: Any, predicate: Callable[[], bool], what: str, deadline: float = DEADLINE,
                     detail: Optional[Callable[[], str]] = None) -> float:
    """Poll every 5 ms until `predicate()`; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > deadline:
            raise TimeoutError(f"timed out after {deadline:.0f} s waiting for {what}"
                               + (f" ({detail()})" if detail is not None else ""))
        await task.deferLater(reactor, 0.005, lambda: None)
    return time.monotonic() - start


async def form_line(reactor: Any, line: Sequence[LineNode]) -> None:
    for right, left in zip(line[1:], line):
        right.node.peers.dial(left.address)
        await wait_until(reactor, lambda left=left, right=right: left.node.node_id in right.neighbours()
                         and right.node.node_id in left.neighbours(), f"node {right.index} linked to {left.index}")
    expected = [{n.node.node_id for n in line[max(0, i - 1):i + 2] if n is not line[i]} for i in range(len(line))]
    index = {n.node.node_id: n.index for n in line}
    await wait_until(reactor, lambda: all(n.neighbours() == e for n, e in zip(line, expected)),
                     "every node connected to exactly its neighbours",
                     detail=lambda: "ready peers: " + "; ".join(
                         f"node {n.index}: {sorted(index.get(p, -1) for p in n.neighbours())}" for n in line))


async def gossip_transfers(reactor: Any, line: Sequence[LineNode], block: Block) -> float:
    """Submit the block's transfers to node 0 (each sender's in nonce order); seconds until
    every node's mempool holds all of them."""
    first = line[0].node
    for tx in sorted(block.transactions, key=lambda t: (t.sender, t.nonce)):
        try:
            first.submit_transaction(tx)
        except InvalidTransaction as e:
            balance, nonce = first.chain.account(tx.sender)
            raise RuntimeError(f"node 0 refused a transfer of block {block.height} ({e}); sender "
                               f"{tx.sender} nonce {tx.nonce}, account nonce {nonce}, balance {balance}") from None
    hashes = [tx.hash for tx in block.transactions]

    def lacking() -> str:
        return "transfers held: " + ", ".join(
            f"node {n.index} {sum(h in n.node.mempool for h in hashes)}/{len(hashes)}"
            f" (tracked {n.node.txrelay.tracked()}, timeouts {n.node.txrelay.timeouts})" for n in line)

    return await wait_until(reactor, lambda: all(h in n.node.mempool for n in line for h in hashes),
                            f"block {block.height}'s transfers at every node", GOSSIP_DEADLINE, lacking)


async def gossip_segments(reactor: Any, line: Sequence[LineNode], block: Block) -> float:
    """Give node 0 the block's VDF segments one at a time, as a timelord would (the next
    once every node has this one); seconds until every node had all of them. Not all at
    once: a node takes segment n+1 only after segment n verified, and drops it (unasked
    for again) if it comes while n is still being checked."""
    first, parent = line[0].node, block.header.parent_hash
    if first.vdf_parent != parent or first.vdf_segments:
        raise RuntimeError(f"node 0 is not waiting for the segments of block {block.height}'s parent")
    start = time.monotonic()
    for index, segment in enumerate(block.header.vdf, 1):
        if not await first.add_vdf_output(parent, index, segment):
            raise RuntimeError(f"node 0 refused VDF segment {index} of block {block.height}")
        await wait_until(reactor, lambda index=index: all(n.node.vdf_parent == parent
                                                          and len(n.node.vdf_segments) >= index for n in line),
                         f"segment {index} of block {block.height} at every node", GOSSIP_DEADLINE,
                         lambda: "segments held: " + ", ".join(f"node {n.index} {len(n.node.vdf_segments)}"
                                                               for n in line))
    return time.monotonic() - start


def totals(line: Sequence[LineNode]) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for n in line:
        out.update(n.counters())
    return out


async def propagate(reactor: Any, line: Sequence[LineNode], block: Block, result: Result, counted: bool) -> None:
    """Gossip what the variant gossips first, feed the block to node 0 and wait until it is
    every node's tip; its arrivals (and, when `counted`, what crossed the line) go in `result`."""
    v = result.variant
    if v.transfers_first and block.transactions:
        result.transfer_wait.append(await gossip_transfers(reactor, line, block))
    if v.segments_first:
        result.segment_wait.append(await gossip_segments(reactor, line, block))
    before = totals(line)
    last = line[-1]
    await line[0].node.receive_block(block)
    await wait_until(reactor, lambda: block.hash in last.arrived, f"block {block.height} at the last node")
    missing = [n.index for n in line if block.hash not in n.arrived]
    if missing:
        raise RuntimeError(f"block {block.height} reached the last node but never became tip at {missing}")
    result.arrivals.append([n.arrived[block.hash] for n in line])
    if counted:
        after = totals(line)
        after.subtract(before)
        result.counted.update({k: c for k, c in after.items() if c})


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def measure(reactor: Any, params: NetworkParams, chains: dict[int, list[Block]], variants: Sequence[Variant],
                  nodes: int, warmup: int) -> list[Result]:
    """One line per variant, all formed first; round k feeds block k to each line in turn
    (starting one line further each round)."""
    results = [Result(v) for v in variants]
    with tempfile.TemporaryDirectory(prefix="archivas-bench-line-") as base:
        lines: list[list[LineNode]] = []
        try:
            for j, _ in enumerate(variants):
                line: list[LineNode] = []
                lines.append(line)
                for i in range(nodes):
                    line.append(LineNode(reactor, i, str(Path(base) / f"line{j}-node{i}"), params))
                await form_line(reactor, line)
            rounds = min(len(chains[v.n_tx]) for v in variants)
            for k in range(rounds):
                for j in [(k + s) % len(variants) for s in range(len(variants))]:
                    await propagate(reactor, lines[j], chains[variants[j].n_tx][k], results[j], k >= warmup)
            return results
        finally:
            for line in lines:
                for n in line:
                    await n.stop()


def hop_ms(arrivals: Sequence[Sequence[float]], nodes: int) -> list[float]:
    return [(a[i] - a[i - 1]) * 1000 for a in arrivals for i in range(1, nodes)]


def print_results(results: Sequence[Result], nodes: int, warmup: int) -> None:
    rows, by_hop = [], []
    for r in results:
        counted = r.arrivals[warmup:]
        ends = [(a[-1] - a[0]) * 1000 for a in counted]
        for what, values in ((f"per hop ({nodes - 1} hops)", hop_ms(counted, nodes)),
                             (f"end to end (node 0 to {nodes - 1})", ends)):
            rows.append([str(r.variant.n_tx), r.variant.gossiped, what, str(len(values)),
                         f"{percentile(values, 50):.2f}", f"{percentile(values, 90):.2f}", f"{max(values):.2f}"])
        by_hop.append([str(r.variant.n_tx), r.variant.gossiped,
                       *(f"{percentile([(a[i] - a[i - 1]) * 1000 for a in counted], 50):.2f}"
                         for i in range(1, nodes))])
        if warmup:
            first = ", ".join(f"{(a[-1] - a[0]) * 1000:.1f}" for a in r.arrivals[:warmup])
            rows.append([str(r.variant.n_tx), r.variant.gossiped, "  warm-up block(s), end to end", str(warmup),
                         "", "", first])
    blocks = len(results[0].arrivals) - warmup
    print(f"Per-hop latency: arrival (tip) at node i - arrival at node i-1, ms; {blocks} blocks"
          + (f" after {warmup} warm-up block(s), not counted" if warmup else ""))
    print(vt.table(["tx/block", "gossiped first", "measure", "samples", "p50 ms", "p90 ms", "max ms"], rows))
    print()
    print("p50 by hop, ms")
    print(vt.table(["tx/block", "gossiped first", *(f"{i - 1}->{i}" for i in range(1, nodes))], by_hop))


def print_goal(results: Sequence[Result], nodes: int, warmup: int) -> None:
    """Each variant with transfers against each without, p50 per hop: the difference."""
    p50 = {r.variant: percentile(hop_ms(r.arrivals[warmup:], nodes), 50) for r in results}
    base = [v for v in p50 if v.n_tx == 0]
    rows = [[v.label, b.label, f"{p50[v]:.2f}", f"{p50[b]:.2f}", f"{p50[v] - p50[b]:+.2f}", f"{p50[v] / p50[b]:.2f}",
             "yes" if p50[v] - p50[b] <= 2.0 else "no"]
            for v in p50 if v.n_tx for b in base]
    if not rows:
        return
    print("Transfers against none, per hop at p50 (goal: within 2 ms)")
    print(vt.table(["with transfers", "against", "p50 ms", "against ms", "difference ms", "ratio",
                    "within 2 ms"], rows))


def num(x: float) -> str:
    return f"{x:.1f}".removesuffix(".0")


def print_relay(results: Sequence[Result], nodes: int, warmup: int) -> None:
    """How the counted blocks crossed: messages received along the line, the compact-relay
    outcomes (node.compact_stats), the verified caches' look-ups and the nodes' own timings."""
    names = {k[len("msg "):] for r in results for k in r.counted if k.startswith("msg ")}
    shown = [m for m in RELAY_MESSAGES if m in names] + sorted(names - set(RELAY_MESSAGES))
    stats = sorted({k[len("cmpct "):] for r in results for k in r.counted if k.startswith("cmpct ")})
    print(f"How blocks crossed the line, per counted block: sums over the {nodes} nodes (node 0 got the "
          "block from the bench)\nfrom the moment node 0 got it until it was the last node's tip")
    rows, timing_rows = [], []
    for r in results:
        n = max(1, len(r.arrivals) - warmup)
        c = r.counted
        rows.append([str(r.variant.n_tx), r.variant.gossiped, *(num(c[f"msg {m}"] / n) for m in shown),
                     *(num(c[f"cmpct {s}"] / n) for s in stats),
                     *(f"{num(c[f'{k} hits'] / n)}/{num(c[f'{k} misses'] / n)}" for k in ("tx", "seg"))])
        per_node = [c[f"s {t}"] / (n * nodes) * 1000 for t in TIMED]
        hops = hop_ms(r.arrivals[warmup:], nodes)
        timing_rows.append([str(r.variant.n_tx), r.variant.gossiped, *(f"{ms:.2f}" for ms in per_node),
                            f"{sum(hops) / len(hops):.2f}", f"{sum(hops) / len(hops) - sum(per_node):.2f}"])
    print(vt.table(["tx/block", "gossiped first", *shown, *(f"cmpct {s}" for s in stats),
                    "tx sig hit/miss", "segment hit/miss"], rows))
    print()
    print("Where a hop's time goes: the nodes' own timings (archivas_validation_seconds), mean ms per node "
          "and block,\nagainst the mean hop; the rest is relaying, rebuilding, the wire and waiting for the "
          "reactor, GIL or CPU")
    print(vt.table(["tx/block", "gossiped first", "check (pool)", "add_block (reactor)",
                    "mean hop", "rest"], timing_rows))
    waits = [(r, what, values) for r in results
             for what, values in (("transfers", r.transfer_wait), ("segments", r.segment_wait)) if values]
    if waits:
        print()
        print("Gossip before each block (not measured above): seconds until every node had it")
        print(vt.table(["tx/block", "gossiped first", "what", "blocks", "p50 s", "max s"],
                       [[str(r.variant.n_tx), r.variant.gossiped, what, str(len(values)),
                         f"{percentile(values, 50):.2f}", f"{max(values):.2f}"] for r, what, values in waits]))


def print_notes(nodes: int, variants: Sequence[Variant]) -> None:
    notes = [
        f"All {nodes} nodes of a line (and the other lines, idle meanwhile) share one process, one "
        f"reactor thread and one GIL on {len(os.sched_getaffinity(0))} cores, so a hop's figure includes "
        "queueing behind the other nodes' work (and the loopback TCP stack), not only the receiving "
        "node's own.",
        "Each hop: node i asked node i-1 (its one outbound peer) for high-bandwidth compact relay, so "
        "the block comes unannounced as CMPCT_BLOCK (header, short ids, and in full the transfers the "
        "sender had not seen before the block), is rebuilt from the mempool (GET_BLOCK_TXN, one round "
        "trip, only for what is missing), its proofs and signatures checked in the node's 2-thread pool "
        "(through the verified caches), then its context and state checked and committed to SQLite "
        "(WAL, synchronous=NORMAL, the default: no fsync a block; its transfer-index rows a second later) "
        "on the reactor thread, then relayed on; "
        "arrival = on_tip. The relay table shows what really crossed.",
        "Gossip first: the block's transfers went to node 0 (submit_transaction) and reached every "
        "mempool by INV/REQ/RES (an INV every 2 s to outbound peers, 5 s to inbound ones: along the "
        "line each hop waits for the sender's next INV), and its VDF segments went to node 0 one at a "
        "time (add_vdf_output; the next once every node holds this one, as a timelord's pace would have it) "
        "and were relayed as VDF_OUTPUT; every node then holds them verified "
        "(tx sig and segment hits). Unseen: nobody had anything of the block, so every transfer goes "
        "prefilled and every signature and segment is verified at every hop.",
        "Line: node i dials node i-1 and nothing else (formed left to right, with max_outbound "
        "0 for node 0 and 1 for the others, so that peer exchange adds no links); checked before "
        "any block is sent. Each variant has its own line of fresh nodes; round k feeds block k to "
        "every line, one after the other, each round starting one line further.",
        "The process-wide VDF discriminant cache is cleared at every arrival, so every node "
        "computes each block's discriminant itself, as separate processes would (when its segments "
        "were gossiped first and hit the node's cache, the block check needs no discriminant).",
    ]
    if any(v.n_tx for v in variants):
        notes.append("Transfers: the validation bench's chain: 50 senders funded in the genesis, each "
                     "sending once per block with nonce = height - 1, so a block's transfers are valid "
                     "for the mempool once its parent is the tip.")
    vt.print_note_list(notes)


def variants_for(args: argparse.Namespace) -> list[Variant]:
    modes = [True, False] if args.compare else [not args.no_gossip_first]
    return [Variant(n_tx, gossip, gossip and not args.no_vdf_gossip) for gossip in modes for n_tx in args.tx]


async def run(reactor: Any, args: argparse.Namespace) -> None:
    params = vt.bench_params("fastnet")
    variants = variants_for(args)
    chains = {n_tx: vt.build_chain(params, n_tx, args.blocks + args.warmup) for n_tx in sorted(set(args.tx))}
    with vt.OtherLoad() as other:
        results = await measure(reactor, params, chains, variants, args.nodes, args.warmup)

    print(f"Archivas block propagation: a line of {args.nodes} nodes, fastnet, one process, loopback TCP")
    print(vt.machine())
    if other.cpus is not None:
        print(f"other processes kept {other.cpus:.2f} CPUs busy on average while this measured "
              "(0 = the machine to itself)")
    print()
    print_results(results, args.nodes, args.warmup)
    print()
    print_goal(results, args.nodes, args.warmup)
    print()
    print_relay(results, args.nodes, args.warmup)
    print()
    print_notes(args.nodes, variants)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=10, help="nodes in the line (default 10)")
    ap.add_argument("--blocks", type=int, default=30, help="blocks measured (default 30)")
    ap.add_argument("--warmup", type=int, default=1, help="blocks sent first and not counted (default 1)")
    ap.add_argument("--tx", type=int, nargs="+", default=[0, 50], choices=vt.TX_PER_BLOCK,
                    help="transfers per block, one line of fresh nodes each (default: 0 50)")
    ap.add_argument("--no-gossip-first", action="store_true",
                    help="feed blocks whose transfers and VDF segments no node has seen (the old measure)")
    ap.add_argument("--no-vdf-gossip", action="store_true",
                    help="gossip only the transfers first, not the VDF segments")
    ap.add_argument("--compare", action="store_true",
                    help="both: gossiped first and unseen, each with every --tx, in one table")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 blocks")
    args = ap.parse_args(argv)
    if args.quick:
        args.blocks = 3
    if args.nodes < 2 or args.blocks < 1:
        ap.error("a line needs 2 nodes or more and 1 block or more")
    if args.compare and args.no_gossip_first:
        ap.error("--compare runs both modes; leave out --no-gossip-first")
    vt.warnings_to_stderr()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
