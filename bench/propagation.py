"""Measure block propagation along a line of 10 nodes: per-hop latency, p50 and max.

One job: print a plain-text table of how long a new block takes to cross each hop of a
line of nodes (node i dials node i-1 only), and to go from end to end.

Every node runs in this process on the global Twisted reactor, as tests/netutil.py starts
them, with an empty database. Blocks (a chain from `archivas.testing.chainbuilder`: the
validation bench's cached fastnet chain) are fed one at a time to node 0 with
`receive_block`; each node's arrival time is when the block becomes its tip (its `on_tip`
callback). The next block goes in only once the previous one reached the last node.
Per-hop latency = arrival at node i - arrival at node i-1: receiving the relayed block,
checking it (proofs in the node's thread pool), storing it, relaying it on.

    .venv/bin/python bench/propagation.py            # 10 nodes, 30 blocks, 0 and 50 transfers
    .venv/bin/python bench/propagation.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import validation_throughput as vt  # the validation bench beside this file: chains, cache, tables
from twisted.internet import defer, task

from archivas.chain import vdf
from archivas.chain.block import Block
from archivas.chain.blockchain import Chain
from archivas.chain.params import NetworkParams
from archivas.node import Node

DEADLINE = 60.0  # seconds for the line to form, or for one block to cross it


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
        self.node.start()

    def _on_tip(self, block: Block) -> None:
        self.arrived[block.hash] = time.perf_counter()
        # The discriminant cache is process-wide: without this, node i+1 would find the one
        # node i computed for the same block, which a node in its own process would not.
        vdf.discriminant.cache_clear()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"

    def neighbours(self) -> set[bytes]:
        return {p.info.node_id for p in self.node.peers.ready_peers() if p.info is not None and p.info.node_id}

    async def stop(self) -> None:
        await defer.maybeDeferred(self.port.stopListening)
        await self.node.stop()
        self.chain.close()


async def wait_until(reactor: Any, predicate: Any, what: str) -> None:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > DEADLINE:
            raise TimeoutError(f"timed out after {DEADLINE:.0f} s waiting for {what}")
        await task.deferLater(reactor, 0.005, lambda: None)


async def form_line(reactor: Any, line: Sequence[LineNode]) -> None:
    for right, left in zip(line[1:], line):
        right.node.peers.dial(left.address)
        await wait_until(reactor, lambda left=left, right=right: left.node.node_id in right.neighbours()
                         and right.node.node_id in left.neighbours(), f"node {right.index} linked to {left.index}")
    expected = [{n.node.node_id for n in line[max(0, i - 1):i + 2] if n is not line[i]} for i in range(len(line))]
    try:
        await wait_until(reactor, lambda: all(n.neighbours() == e for n, e in zip(line, expected)),
                         "every node connected to exactly its neighbours")
    except TimeoutError as e:
        index = {n.node.node_id: n.index for n in line}
        state = "; ".join(f"node {n.index}: {sorted(index.get(p, -1) for p in n.neighbours())}" for n in line)
        raise TimeoutError(f"{e} (ready peers: {state})") from None


async def propagate(reactor: Any, line: Sequence[LineNode], blocks: Sequence[Block]) -> list[list[float]]:
    """Feed the blocks to node 0 one at a time; per block, each node's arrival time."""
    last = line[-1]
    out = []
    for block in blocks:
        await line[0].node.receive_block(block)
        await wait_until(reactor, lambda block=block: block.hash in last.arrived,
                         f"block {block.height} at the last node")
        missing = [n.index for n in line if block.hash not in n.arrived]
        if missing:
            raise RuntimeError(f"block {block.height} reached the last node but never became tip at {missing}")
        out.append([n.arrived[block.hash] for n in line])
    return out


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def measure(reactor: Any, params: NetworkParams, blocks: Sequence[Block], nodes: int) -> list[list[float]]:
    with tempfile.TemporaryDirectory(prefix="archivas-bench-line-") as base:
        line: list[LineNode] = []
        try:
            for i in range(nodes):
                line.append(LineNode(reactor, i, str(Path(base) / f"node{i}"), params))
            await form_line(reactor, line)
            return await propagate(reactor, line, blocks)
        finally:
            for n in line:
                await n.stop()


def print_results(results: Sequence[tuple[int, list[list[float]]]], nodes: int, warmup: int) -> None:
    rows, by_hop = [], []
    for n_tx, arrivals in results:
        counted = arrivals[warmup:]
        hops = [(a[i] - a[i - 1]) * 1000 for a in counted for i in range(1, nodes)]
        ends = [(a[-1] - a[0]) * 1000 for a in counted]
        for what, values in ((f"per hop ({nodes - 1} hops)", hops), (f"end to end (node 0 to {nodes - 1})", ends)):
            rows.append([str(n_tx), what, str(len(values)), f"{percentile(values, 50):.2f}",
                         f"{percentile(values, 90):.2f}", f"{max(values):.2f}"])
        by_hop.append([str(n_tx), *(f"{percentile([(a[i] - a[i - 1]) * 1000 for a in counted], 50):.2f}"
                                    for i in range(1, nodes))])
        if warmup:
            first = ", ".join(f"{(a[-1] - a[0]) * 1000:.1f}" for a in arrivals[:warmup])
            rows.append([str(n_tx), "  warm-up block(s), end to end", str(warmup), "", "", first])
    blocks = len(results[0][1]) - warmup
    print(f"Per-hop latency: arrival (tip) at node i - arrival at node i-1, ms; {blocks} blocks"
          + (f" after {warmup} warm-up block(s), not counted" if warmup else ""))
    print(vt.table(["tx/block", "measure", "samples", "p50 ms", "p90 ms", "max ms"], rows))
    print()
    print("p50 by hop, ms")
    print(vt.table(["tx/block", *(f"{i - 1}->{i}" for i in range(1, nodes))], by_hop))


def print_notes(nodes: int) -> None:
    notes = [
        f"All {nodes} nodes share one process, one reactor thread and one GIL on "
        f"{len(os.sched_getaffinity(0))} cores, so a hop's figure includes queueing behind the other "
        "nodes' work (and the loopback TCP stack), not only the receiving node's own.",
        "Each hop: the relayed block (PUSH_BLOCK, since every node announces 'push') is "
        "decoded, its proofs and signatures checked in the receiving node's 2-thread pool, "
        "then its context and state checked and committed to SQLite (WAL, synchronous=FULL: an "
        "fsync on this disk) on the reactor thread, then relayed on; arrival = on_tip.",
        "Line: node i dials node i-1 and nothing else (formed left to right, with max_outbound "
        "0 for node 0 and 1 for the others, so that peer exchange adds no links); checked before "
        "any block is sent.",
        "The process-wide VDF discriminant cache is cleared at every arrival, so every node "
        "computes each block's discriminant itself, as separate processes would.",
    ]
    vt.print_note_list(notes)


async def run(reactor: Any, args: argparse.Namespace) -> None:
    params = vt.bench_params("fastnet")
    chains = [(n_tx, vt.build_chain(params, n_tx, args.blocks + args.warmup)) for n_tx in args.tx]
    results = []
    with vt.OtherLoad() as other:
        for n_tx, blocks in chains:
            results.append((n_tx, await measure(reactor, params, blocks, args.nodes)))

    print(f"Archivas block propagation: a line of {args.nodes} nodes, fastnet, one process, loopback TCP")
    print(vt.machine())
    if other.cpus is not None:
        print(f"other processes kept {other.cpus:.2f} CPUs busy on average while this measured "
              "(0 = the machine to itself)")
    print()
    print_results(results, args.nodes, args.warmup)
    print()
    print_notes(args.nodes)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=10, help="nodes in the line (default 10)")
    ap.add_argument("--blocks", type=int, default=30, help="blocks measured (default 30)")
    ap.add_argument("--warmup", type=int, default=1, help="blocks sent first and not counted (default 1)")
    ap.add_argument("--tx", type=int, nargs="+", default=[0, 50], choices=vt.TX_PER_BLOCK,
                    help="transfers per block, one line of fresh nodes each (default: 0 50)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 5 blocks, 0 transfers")
    args = ap.parse_args(argv)
    if args.quick:
        args.blocks, args.tx = 5, [0]
    if args.nodes < 2 or args.blocks < 1:
        ap.error("a line needs 2 nodes or more and 1 block or more")
    vt.warnings_to_stderr()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
