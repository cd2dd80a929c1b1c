"""Measure initial sync: a fresh node catching up a fastnet chain from one and from three peers.

One job: print a plain-text table of blocks/s for a node with an empty database syncing a
2,000-block fastnet chain over loopback TCP from one source node and from three, beside the
validation-only figure (the same blocks fed straight into a fresh `Chain` with `add_block`,
on one thread and with the 2-thread `check_standalone` pipeline, as in
bench/validation_throughput.py) measured in the same run.

Every node runs in this process on the global Twisted reactor, as tests/netutil.py starts
them. The source nodes' databases are filled before any timing (one database filled with
`add_block`, then copied). A sync is timed from the dial until the fresh node's tip is the
last block. The chains are the validation bench's cached ones (bench/.cache/, built once with
`archivas.testing.chainbuilder`), so both benches measure the same blocks.

    .venv/bin/python bench/sync_throughput.py             # full run (a few minutes)
    .venv/bin/python bench/sync_throughput.py --quick     # smoke run
    .venv/bin/python bench/sync_throughput.py --profile   # also cProfile one 1-peer sync
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import os
import pstats
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence

import validation_throughput as vt  # the validation bench beside this file: chains, cache, tables
from twisted.internet import defer, task

from archivas.chain import vdf
from archivas.chain.blockchain import Chain
from archivas.chain.consensus import check_standalone
from archivas.node import Node
from archivas.protocols.peer import PeerProtocol

SYNC_DEADLINE = 900.0  # seconds before a sync counts as stuck
LAG_TICK = 0.005  # reactor lag: a call every 5 ms, each one's lateness recorded


@dataclasses.dataclass
class SyncRun:
    seconds: float  # dial to the last block as tip
    first_block: float  # dial to the first block as tip (handshake, fork search, first batch)
    received: list[int]  # blocks fetched from each source, in dial order
    cpu_process: float  # CPU seconds of the whole process (every node, every thread)
    cpu_reactor: float  # CPU seconds of the reactor thread alone
    add_block: float  # wall seconds the syncing node spent in Chain.add_block and its run commits
    lag: list[float]  # how late each 5 ms reactor tick ran during the sync, seconds


@dataclasses.dataclass
class Row:
    case: str
    tx_per_block: int
    peers: str
    blocks: int
    seconds: float
    sync: Optional[SyncRun] = None
    cpu: float = 0.0  # CPU seconds of the process in the fastest run (every thread)


# Source nodes: a filled database each, listening on loopback


def fill(w: vt.Workload, directory: str) -> None:
    """A database at `directory` holding all of the workload's blocks (proofs checked in 2
    threads ahead of add_block, as the validation bench does; not timed)."""
    chain = Chain.open(directory, w.params)
    try:
        now = vt.now_ms()
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(check_standalone, b, p, w.params) for b, p in zip(w.blocks, w.parents)]
            for block, future in zip(w.blocks, futures):
                vt.add(chain, block, now, score=future.result())
    finally:
        chain.close()


class Source:
    """A node with a filled database, listening on 127.0.0.1."""

    def __init__(self, reactor: Any, directory: str, w: vt.Workload) -> None:
        self.chain = Chain.open(directory, w.params)
        if self.chain.tip.hash != w.blocks[-1].hash:
            raise RuntimeError(f"source database {directory} does not end at the workload's last block")
        self.node = Node(self.chain, reactor)
        self.port = reactor.listenTCP(0, self.node.peers.inbound_factory, interface="127.0.0.1")
        self.node.peers.listen_port = self.port.getHost().port
        self.node.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"

    async def stop(self) -> None:
        await defer.maybeDeferred(self.port.stopListening)
        await self.node.stop()
        self.chain.close()


# One sync: a fresh node dials the sources and fetches everything


async def sync_once(reactor: Any, w: vt.Workload, sources: Sequence[Source],
                    profile: Optional[cProfile.Profile] = None) -> SyncRun:
    vdf.clear_caches()  # the sources' filling computed them in this process
    target = w.blocks[-1]
    with tempfile.TemporaryDirectory(prefix="archivas-bench-sync-") as directory:
        chain = Chain.open(directory, w.params)
        node = Node(chain, reactor)
        received = {s.node.node_id: 0 for s in sources}
        import_batch = node.import_batch

        def counted(blocks: list[Any], senders: Optional[Sequence[Optional[PeerProtocol]]] = None,
                    *a: Any, **kw: Any) -> Any:
            for sender in senders or ():  # the blocks handed to storage, by the source that sent each
                if sender is not None and sender.info is not None and sender.info.node_id in received:
                    received[sender.info.node_id] += 1
            return import_batch(blocks, senders, *a, **kw)

        node.import_batch = counted  # type: ignore[method-assign,assignment]
        add_block, in_add_block = chain.add_block, [0.0]

        def timed_add_block(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return add_block(*a, **kw)
            finally:
                in_add_block[0] += time.perf_counter() - t

        chain.add_block = timed_add_block  # type: ignore[method-assign]
        end_run = chain.end_run

        def timed_end_run() -> None:
            t = time.perf_counter()
            try:
                end_run()
            finally:
                in_add_block[0] += time.perf_counter() - t

        chain.end_run = timed_end_run  # type: ignore[method-assign]
        lag: list[float] = []
        ticking: list[Any] = [None]  # the next tick's DelayedCall (cancelled when the sync ends)

        def tick(due: float) -> None:
            now = time.perf_counter()
            lag.append(max(0.0, now - due))
            ticking[0] = reactor.callLater(LAG_TICK, tick, now + LAG_TICK)

        done: defer.Deferred = defer.Deferred()
        times: dict[str, float] = {}

        def on_tip(block: Any) -> None:
            now = time.perf_counter()
            times.setdefault("first", now)
            if block.hash == target.hash and "last" not in times:
                times["last"] = now
                reactor.callLater(0, lambda: done.called or done.callback(None))  # after the import returns

        def too_slow() -> None:
            if not done.called:
                done.errback(TimeoutError(f"sync stuck at height {chain.height} of {target.height} "
                                          f"after {SYNC_DEADLINE:.0f} s"))

        node.on_tip.append(on_tip)
        node.start()
        deadline = reactor.callLater(SYNC_DEADLINE, too_slow)
        if profile is not None:
            profile.enable()
        cpu, cpu_thread = time.process_time(), time.thread_time()
        start = time.perf_counter()
        ticking[0] = reactor.callLater(LAG_TICK, tick, start + LAG_TICK)
        try:
            for source in sources:
                node.peers.dial(source.address)
            await done
            cpu, cpu_thread = time.process_time() - cpu, time.thread_time() - cpu_thread
        finally:
            # (a tick left pending would run after the validation runs that follow, which
            # hold the reactor for seconds, and count their time as this sync's lag)
            if ticking[0] is not None and ticking[0].active():
                ticking[0].cancel()
            if profile is not None:
                profile.disable()
            if deadline.active():
                deadline.cancel()
            await node.stop()
            chain.close()
    return SyncRun(times["last"] - start, times["first"] - start, [received[s.node.node_id] for s in sources],
                   cpu, cpu_thread, in_add_block[0], lag)


# The run


async def measure(reactor: Any, w: vt.Workload, peer_counts: Sequence[int], repeats: int,
                  profile: Optional[cProfile.Profile]) -> list[Row]:
    """Validation-only (1 and 2 threads) and sync from each peer count, fastest of
    `repeats`; every round runs every case once, so a burst of other load spoils one run of
    a case, not all of them."""
    n = len(w.blocks)
    with tempfile.TemporaryDirectory(prefix="archivas-bench-sources-") as base:
        template = str(Path(base) / "template")
        fill(w, template)
        directories = []
        for i in range(max(peer_counts)):
            directories.append(str(Path(base) / f"source{i}"))
            shutil.copytree(template, directories[-1])
        sources = [Source(reactor, d, w) for d in directories]
        try:
            rows = [Row("validation-only, 1 thread", w.tx_per_block, "-", n, float("inf")),
                    Row("validation-only, 2 threads", w.tx_per_block, "-", n, float("inf"))]
            rows += [Row("sync over loopback TCP", w.tx_per_block, str(k), n, float("inf")) for k in peer_counts]
            for _ in range(repeats):
                # The validation runs block the reactor; the sources sit idle meanwhile.
                for row, validate in zip(rows, (vt.run_one_thread, vt.run_two_threads)):
                    cpu = time.process_time()
                    seconds = validate(w)
                    if seconds < row.seconds:
                        row.seconds, row.cpu = seconds, time.process_time() - cpu
                for row, k in zip(rows[2:], peer_counts):
                    run = await sync_once(reactor, w, sources[:k])
                    if run.seconds < row.seconds:
                        row.seconds, row.sync, row.cpu = run.seconds, run, run.cpu_process
            if profile is not None:  # an extra 1-peer run, not counted (profiling slows it)
                await sync_once(reactor, w, sources[:1], profile)
        finally:
            for source in sources:
                await source.stop()
    return rows


def print_results(rows: Sequence[Row], repeats: int) -> None:
    print("Sync beside validation-only: blocks/s" + (f" (fastest of {repeats} runs)" if repeats > 1 else ""))
    print(vt.table(["case", "tx/block", "peers", "blocks", "seconds", "blocks/s", "CPU s", "CPUs busy"],
                   [[r.case, str(r.tx_per_block), r.peers, str(r.blocks), f"{r.seconds:.2f}",
                     f"{r.blocks / r.seconds:.1f}", f"{r.cpu:.1f}", f"{r.cpu / r.seconds:.2f}"] for r in rows]))
    print()
    print("The sync runs above in detail")
    detail = []
    for r in rows:
        s = r.sync
        if s is None:
            continue
        detail.append([str(r.tx_per_block), r.peers, f"{s.first_block * 1000:.0f}",
                       "/".join(str(x) for x in s.received), f"{s.cpu_process:.1f}",
                       f"{s.cpu_process / s.seconds:.2f}", f"{s.cpu_reactor / s.seconds:.2f}",
                       f"{s.add_block / r.blocks * 1000:.2f}", f"{s.add_block / s.seconds:.2f}",
                       f"{_percentile(s.lag, 50) * 1000:.1f}", f"{_percentile(s.lag, 99) * 1000:.1f}",
                       f"{max(s.lag, default=0) * 1000:.1f}"])
    print(vt.table(["tx/block", "peers", "dial to 1st block ms", "blocks fetched per source", "CPU s",
                    "CPUs busy", "reactor CPU busy", "storage ms/block", "storage share",
                    "lag p50 ms", "lag p99 ms", "lag max ms"], detail))


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))] if ordered else 0.0


def print_notes() -> None:
    notes = [
        "All nodes share this process: one reactor thread (and one GIL) carries the sources' "
        "serving (SQLite reads, JSON encoding) as well as the syncing node's JSON decoding, "
        "context checks and SQLite commits; only the proofs and signatures (check_standalone) "
        "leave it, for the syncing node's 2-thread verification pool. Separate processes on "
        "separate machines would take the serving off the syncing node's CPU.",
        "Validation-only feeds the blocks to a fresh Chain: no networking, no node, and the JSON "
        "decoded before the clock starts (bench/validation_throughput.py's run_one_thread and "
        "run_two_threads). Each run decodes the blocks afresh, so that no id, signing bytes or "
        "transaction root is left made by an earlier run: a syncing node meets new blocks.",
        "CPU s = CPU seconds of this process over the run (every thread; a sync's include its "
        "sources' serving). On 2 cores a sync can reach validation-only's throughput only if it "
        "spends no more CPU than validation-only does, less the idle share of the 2 cores.",
        "A sync is timed from the dial to the last block as tip: it includes the handshake, the "
        "fork-point search (GET_HASHES) and the first batch's round trip.",
        "CPUs busy = process CPU seconds / wall seconds (2 = both cores); reactor CPU busy = the "
        "reactor thread's CPU seconds / wall seconds. storage = wall time of the syncing node's "
        "Chain.add_block calls (context checks, state, savepoints) and of its run commits "
        "(Chain.end_run: the account write-back, COMMIT and its fsync), per block and as a share "
        "of the sync's wall time.",
        "lag = how late a call the reactor was asked to make every 5 ms ran, over the whole "
        "sync (the sources' serving shares the reactor: their lag is in it too).",
        "The discriminant cache (process-wide) is cleared before every run: filling the sources "
        "computed every block's discriminant in this process.",
        "The chains are bench/validation_throughput.py's fastnet chains (its funded genesis, so "
        "that the 50-transfer chain is valid; the consensus parameters are fastnet's).",
    ]
    vt.print_note_list(notes)


def print_profile(profile: cProfile.Profile, tx_per_block: int) -> None:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
    if os.environ.get("ARCHIVAS_BENCH_CALLERS"):
        pstats.Stats(profile, stream=out).print_callers(os.environ["ARCHIVAS_BENCH_CALLERS"])
    print(f"Profile of an extra 1-peer sync ({tx_per_block} tx/block), reactor thread only "
          "(cProfile does not follow the verification threads), top 25 by own time")
    print(out.getvalue().strip("\n"))


async def run(reactor: Any, args: argparse.Namespace) -> None:
    params = vt.bench_params("fastnet")
    workloads = [vt.Workload("fastnet", params, n_tx, vt.build_chain(params, n_tx, args.blocks))
                 for n_tx in args.tx]
    profiles: list[tuple[int, cProfile.Profile]] = []
    rows: list[Row] = []
    with vt.OtherLoad() as other:
        for w in workloads:
            profile = cProfile.Profile() if args.profile else None
            rows += await measure(reactor, w, args.peers, args.repeats, profile)
            if profile is not None:
                profiles.append((w.tx_per_block, profile))

    print(f"Archivas initial sync throughput: {args.blocks:,} fastnet blocks, one process, loopback TCP")
    print(vt.machine())
    if other.cpus is not None:
        print(f"other processes kept {other.cpus:.2f} CPUs busy on average while this measured "
              "(0 = the machine to itself)")
    print()
    print_results(rows, args.repeats)
    print()
    print_notes()
    for n_tx, profile in profiles:
        print()
        print_profile(profile, n_tx)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=2000, help="chain length (default 2000)")
    ap.add_argument("--tx", type=int, nargs="+", default=[0, 50], choices=vt.TX_PER_BLOCK,
                    help="transfers per block, one workload each (default: 0 50)")
    ap.add_argument("--peers", type=int, nargs="+", default=[1, 3], help="source counts (default: 1 3)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per row, the fastest shown (default 2)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 blocks, 0 transfers, 1 run")
    ap.add_argument("--profile", action="store_true",
                    help="also run one 1-peer sync per workload under cProfile and print the top 15")
    args = ap.parse_args(argv)
    if args.quick:
        args.blocks, args.tx, args.repeats = 200, [0], 1
    vt.warnings_to_stderr()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
