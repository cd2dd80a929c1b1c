"""Measure how fast a node validates blocks it is given: validation-only throughput.

One job: print plain-text tables of blocks/s for a fastnet chain and for devnet parameters,
with 0 and with 50 transfers per block, on one thread and on two, and the mean cost per
block of each component (VDF segments, proof of space, signatures, storage).

"Validation-only" means feeding prebuilt blocks to a fresh `Chain` (SQLite in a temporary
directory) with `add_block`: every consensus check plus storage, no networking, no mempool.
On two threads, `consensus.check_standalone` (proofs and signatures, needs only the
parent's header) runs in a 2-worker pool ahead of the sequential `add_block(score=...)`.

Chains are built once with `archivas.testing.chainbuilder` (real k=18 plots, real VDF
segments) and cached as JSON lines under bench/.cache/, so reruns only measure.

    .venv/bin/python bench/validation_throughput.py            # full run (a few minutes)
    .venv/bin/python bench/validation_throughput.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import platform
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

from archivas.chain import keys, pos, vdf
from archivas.chain import params as network_params
from archivas.chain.block import Block, Header, child_discriminant_seed, child_seed, genesis_block, tx_root
from archivas.chain.blockchain import ADDED_TIP, Chain
from archivas.chain.consensus import BlockRejected, check_standalone
from archivas.chain.encoding import DecodeError
from archivas.chain.keys import PrivateKey
from archivas.chain.params import COIN, NetworkParams
from archivas.chain.transactions import check_stateless
from archivas.node import INDEX_STEP_BLOCKS
from archivas.testing.chainbuilder import ChainBuilder, shared_plots

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "bench" / ".cache"
TX_PER_BLOCK = (0, 50)
DEVNET_BENCH_ITERATIONS = 2_000  # devnet chains start at this T instead of devnet's initial 800,000
SENDER_FUNDS = 1_000_000 * COIN
TRANSFER_AMOUNT = COIN


@dataclasses.dataclass
class Workload:
    label: str  # as printed: "fastnet" or "devnet*"
    params: NetworkParams
    tx_per_block: int
    blocks: list[Block]

    @functools.cached_property
    def parents(self) -> list[Header]:
        """The parent header of each block (the blocks form one chain from genesis)."""
        return [genesis_block(self.params).header] + [b.header for b in self.blocks[:-1]]

    @functools.cached_property
    def lines(self) -> list[bytes]:
        return [b.encode() for b in self.blocks]

    def fresh(self) -> "Workload":
        """The same chain decoded again from its bytes: blocks no check has touched, with
        no id, signing bytes or transaction root made yet, as a node receives them (a run
        over the cached objects would find those made by the run before it)."""
        return Workload(self.label, self.params, self.tx_per_block,
                        [Block.from_json(json.loads(line)) for line in self.lines])

    @property
    def segments_per_block(self) -> float:
        return sum(b.header.segments for b in self.blocks) / len(self.blocks)


# Chains: senders, building, the on-disk cache


def senders(count: int) -> list[tuple[PrivateKey, str]]:
    """`count` (sender key, recipient address) pairs; each sender sends once per block."""
    return [
        (PrivateKey.from_secret(b"bench-sender-%d" % i),
         PrivateKey.from_secret(b"bench-recipient-%d" % i).address)
        for i in range(count)
    ]


def bench_params(network: str) -> NetworkParams:
    """The network's parameters with funded senders (and, for devnet, a short VDF segment)."""
    params = network_params.load(network)
    if network == "devnet":
        params = dataclasses.replace(params, vdf_iterations=DEVNET_BENCH_ITERATIONS)
    return params.with_allocation({key.address: SENDER_FUNDS for key, _ in senders(max(TX_PER_BLOCK))})


def cache_path(params: NetworkParams, tx_per_block: int) -> Path:
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(params), sort_keys=True).encode()).hexdigest()
    return CACHE_DIR / f"{params.name}-T{params.vdf_iterations}-{tx_per_block}tx-{digest[:12]}.jsonl"


def load_cached(path: Path, params: NetworkParams) -> list[Block]:
    """The cached chain, or [] when there is none or it does not start at this genesis."""
    if not path.exists():
        return []
    try:
        with path.open() as f:
            blocks = [Block.from_json(json.loads(line)) for line in f if line.strip()]
    except (ValueError, DecodeError):  # written by an older block format: rebuild
        return []
    if not blocks or blocks[0].header.parent_hash != genesis_block(params).hash:
        return []
    return blocks


def build_chain(params: NetworkParams, tx_per_block: int, count: int) -> list[Block]:
    """`count` valid blocks from genesis, each with `tx_per_block` transfers; cached.

    A cached chain longer than `count` is cut; a shorter one is extended and re-saved."""
    path = cache_path(params, tx_per_block)
    blocks = load_cached(path, params)
    if len(blocks) >= count:
        return blocks[:count]
    print(f"building {count - len(blocks)} {params.name} blocks with {tx_per_block} tx "
          f"(once; cached in {path.relative_to(ROOT)})", file=sys.stderr, flush=True)
    builder = ChainBuilder(params, shared_plots(2))
    builder.blocks.update((b.hash, b) for b in blocks)
    parent = blocks[-1] if blocks else builder.genesis
    pairs = senders(tx_per_block)
    while len(blocks) < count:
        nonce = parent.height  # block h carries each sender's transfer with nonce h - 1
        txs = [builder.transfer(key, to, TRANSFER_AMOUNT, nonce) for key, to in pairs]
        parent = builder.make_block(parent, txs)
        blocks.append(parent)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for block in blocks:
            f.write(json.dumps(block.to_json()) + "\n")
    os.replace(tmp, path)
    return blocks


# Throughput: whole blocks through Chain.add_block


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class FreshChain:
    """A `Chain` in a temporary directory, removed on exit."""

    def __init__(self, params: NetworkParams) -> None:
        self.params = params

    def __enter__(self) -> Chain:
        self._dir = tempfile.TemporaryDirectory(prefix="archivas-bench-")
        self.chain = Chain.open(self._dir.name, self.params)
        return self.chain

    def __exit__(self, *exc: object) -> None:
        self.chain.close()
        self._dir.cleanup()


def add(chain: Chain, block: Block, now: int, score: int | None = None) -> None:
    result = chain.add_block(block, now, score=score)
    if result.status != ADDED_TIP:
        raise RuntimeError(f"block {block.height} was not added as the tip: {result.status}")


RUN = 64  # blocks a transaction, as sync imports them (headersfirst.IMPORT_RUN)


def run_one_thread(w: Workload) -> float:
    """Seconds to add every block, validation and storage on this thread, in runs of 64
    blocks a transaction as sync stores them. On freshly decoded blocks (decoding untimed)."""
    w = w.fresh()
    vdf.clear_caches()
    with FreshChain(w.params) as chain:
        now = now_ms()
        start = time.perf_counter()
        for i, block in enumerate(w.blocks):
            if i % RUN == 0:
                chain.begin_run()
            add(chain, block, now)
            if i % RUN == RUN - 1 or i == len(w.blocks) - 1:
                chain.end_run()
        return time.perf_counter() - start


def run_two_threads(w: Workload) -> float:
    """Seconds to add every block with check_standalone in 2 worker threads, pipelined
    ahead of the sequential add_block (context, state, storage) on this thread. On freshly
    decoded blocks (decoding untimed)."""
    w = w.fresh()
    vdf.clear_caches()
    with FreshChain(w.params) as chain, ThreadPoolExecutor(2) as pool:
        now = now_ms()
        start = time.perf_counter()
        futures = [pool.submit(check_standalone, b, p, w.params) for b, p in zip(w.blocks, w.parents)]
        for i, (block, future) in enumerate(zip(w.blocks, futures)):
            if i % RUN == 0:
                chain.begin_run()
            add(chain, block, now, score=future.result())
            if i % RUN == RUN - 1 or i == len(w.blocks) - 1:
                chain.end_run()
        return time.perf_counter() - start


def measure_throughput(workloads: Sequence[Workload], rounds: int) -> list[tuple[Workload, int, float]]:
    """(workload, threads, fastest seconds) for 1 and 2 threads. Each round runs every case
    once, so a burst of other work on the machine spoils one run of a case, not all."""
    cases = [(w, threads, run) for w in workloads
             for threads, run in ((1, run_one_thread), (2, run_two_threads))]
    best = [float("inf")] * len(cases)
    for _ in range(rounds):
        for i, (w, _, run) in enumerate(cases):
            best[i] = min(best[i], run(w))
    return [(w, threads, seconds) for (w, threads, _), seconds in zip(cases, best)]


# Components: each part of validation timed alone over the same blocks


def mean_us(w: Workload, part: Callable[[Block, Header], object]) -> float:
    """Mean microseconds per block of `part(block, parent_header)`."""
    total = 0.0
    for block, parent in zip(w.blocks, w.parents):
        start = time.perf_counter()
        part(block, parent)
        total += time.perf_counter() - start
    return total / len(w.blocks) * 1e6


def components(w: Workload) -> dict[str, float]:
    """Mean us per block of each part of validation, one thread."""
    p = w.params

    def vdf_verify(block: Block, parent: Header) -> None:
        if vdf.verify_chain(child_discriminant_seed(parent, p), child_seed(parent, p), list(block.header.vdf),
                            p.discriminant_bits, block.header.vdf_iterations) >= 0:
            raise RuntimeError("VDF does not verify")

    def discriminant(block: Block, parent: Header) -> None:
        vdf.discriminant(child_discriminant_seed(parent, p), p.discriminant_bits)

    def proof_of_space(block: Block, parent: Header) -> None:
        h, proof = block.header, block.header.proof_of_space
        assert proof is not None
        challenge = vdf.signage_challenge(child_seed(parent, p), h.vdf[-1].output)
        pid = pos.plot_id(proof.farmer_public_key, proof.plot_nonce)
        quality = pos.verify(pid, proof.k, challenge, proof.proof) if pos.passes_filter(
            pid, challenge, p.plot_filter_bits) else None
        if quality is None or not pos.wins(quality, challenge, proof.k, h.difficulty, p.k_min):
            raise RuntimeError("proof of space does not verify")

    def farmer_signature(block: Block, parent: Header) -> None:
        h = block.header
        assert h.proof_of_space is not None
        if not keys.verify(h.proof_of_space.farmer_public_key, h.signing_bytes, h.farmer_signature):
            raise RuntimeError("farmer signature does not verify")

    def transactions(block: Block, parent: Header) -> None:
        for tx in block.transactions:
            check_stateless(tx, p)

    def encoding(block: Block, parent: Header) -> None:
        len(block.encode())
        tx_root(block.transactions)

    out = {}
    vdf.clear_caches()
    out["discriminant"] = mean_us(w, discriminant)
    vdf.clear_caches()
    out["vdf"] = mean_us(w, vdf_verify)  # with the discriminant, as a node computes it
    out["pos"] = mean_us(w, proof_of_space)
    out["farmer_sig"] = mean_us(w, farmer_signature)
    out["transactions"] = mean_us(w, transactions)
    out["encoding"] = mean_us(w, encoding)

    vdf.clear_caches()
    scores = []

    def standalone(block: Block, parent: Header) -> None:
        scores.append(check_standalone(block, parent, p))

    out["standalone"] = mean_us(w, standalone)
    with FreshChain(p) as chain:
        now = now_ms()
        it = iter(scores)
        out["storage_per_block"] = mean_us(w, lambda block, parent: add(chain, block, now, score=next(it)))
        depth = chain._context_depth()
        out["ancestors"] = mean_us(w, lambda block, parent: chain.ancestors(block.header.parent_hash, depth))
    with FreshChain(p) as chain:  # as sync stores them: runs of 64 blocks, one transaction each
        now = now_ms()
        it = iter(scores)
        seen = [0]

        def in_runs(block: Block, parent: Header) -> None:
            if seen[0] % RUN == 0:
                chain.begin_run()
            add(chain, block, now, score=next(it))
            seen[0] += 1
            if seen[0] % RUN == 0 or seen[0] == len(w.blocks):
                chain.end_run()

        out["storage"] = mean_us(w, in_runs)
        # The transfer indexes the runs left behind, caught up as a node does after a sync.
        start = time.perf_counter()
        caught_up = 0
        while True:
            step = chain.catch_up_index(INDEX_STEP_BLOCKS)
            if not step:
                break
            caught_up += step
        out["index_catch_up"] = (time.perf_counter() - start) * 1e6 / max(1, caught_up)
    return out


# The 1024-bit segment at devnet's real T


@dataclasses.dataclass
class SegmentCost:
    iterations: int
    prove_s: float  # mean over the instances
    verify_ms: list[float]  # mean per instance


def devnet_segment_costs(params: NetworkParams, iterations: Sequence[int], instances: int = 3,
                         repeats: int = 30) -> list[SegmentCost]:
    """Prove `instances` segments (different seeds) at devnet's discriminant size for each
    iteration count and time their verification; verifications alternate between all the
    segments so that load affects them alike. The cost varies between instances (the forms
    and the proof's prime differ), so one instance per count would not show the trend."""
    bits = params.discriminant_bits
    seeds = [hashlib.sha256(b"archivas-bench-segment-%d" % i).digest() for i in range(instances)]
    for seed in seeds:
        vdf.discriminant(seed, bits)  # computed once, outside the timings
    proved, prove_s = [], {t: 0.0 for t in iterations}
    for t in iterations:
        for seed in seeds:
            start = time.perf_counter()
            proved.append((t, seed, vdf.prove_segment(seed, vdf.GENERATOR, bits, t)))
            prove_s[t] += time.perf_counter() - start
    verify_s = [0.0] * len(proved)
    for _ in range(repeats):
        for i, (t, seed, segment) in enumerate(proved):
            start = time.perf_counter()
            if not vdf.verify_segment(seed, vdf.GENERATOR, segment, bits, t):
                raise RuntimeError(f"segment of {t} iterations does not verify")
            verify_s[i] += time.perf_counter() - start
    return [
        SegmentCost(t, prove_s[t] / instances,
                    [v / repeats * 1e3 for (ti, _, _), v in zip(proved, verify_s) if ti == t])
        for t in iterations
    ]


# Printing


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns left-aligned for the first, right-aligned for the rest."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("chiavdf", "chiapos", "PyNaCl"))
    return (f"machine: nproc {len(os.sched_getaffinity(0))}, {cpu}\n"
            f"Python {platform.python_version()} on {platform.system()} {platform.machine()}; {versions}")


NON_VDF = ("pos", "farmer_sig", "transactions", "encoding", "storage")


def print_throughput(results: Sequence[tuple[Workload, int, float]], repeats: int) -> None:
    print("Throughput: blocks through Chain.add_block" + (f" (fastest of {repeats} runs)" if repeats > 1 else ""))
    rows = [[w.label, str(w.tx_per_block), str(threads), str(len(w.blocks)), f"{seconds:.2f}",
             f"{len(w.blocks) / seconds:.1f}"] for w, threads, seconds in results]
    print(table(["network", "tx/block", "threads", "blocks", "seconds", "blocks/s"], rows))


def print_components(workloads: Sequence[Workload], costs: Sequence[dict[str, float]]) -> None:
    print("Cost per block by component (mean us per block, one thread, same blocks as above)")
    rows = [["VDF segments per block (count)", *(f"{w.segments_per_block:.2f}" for w in workloads)]]

    def row(name: str, values: Sequence[float]) -> None:
        rows.append([name, *(f"{v:,.0f}" for v in values)])

    row("VDF segments (verify_chain)", [c["vdf"] for c in costs])
    row("  of which discriminant", [c["discriminant"] for c in costs])
    row("  per segment, excl. discriminant",
        [(c["vdf"] - c["discriminant"]) / w.segments_per_block for c, w in zip(costs, workloads)])
    row("proof of space (id, filter, verify)", [c["pos"] for c in costs])
    row("signature: farmer (Ed25519)", [c["farmer_sig"] for c in costs])
    row("signatures: transactions (stateless)", [c["transactions"] for c in costs])
    row("encoding + tx root", [c["encoding"] for c in costs])
    row("storage (add_block given the score, runs of 64)", [c["storage"] for c in costs])
    row("storage, one commit a block", [c["storage_per_block"] for c in costs])
    row("transfer indexes caught up after the runs", [c["index_catch_up"] for c in costs])
    row("  of which reading ancestors (context)", [c["ancestors"] for c in costs])
    row("sum of components", [c["vdf"] + sum(c[k] for k in NON_VDF) for c in costs])
    row("check_standalone, measured", [c["standalone"] for c in costs])
    row("check_standalone + storage", [c["standalone"] + c["storage"] for c in costs])
    print(table(["component", *(f"{w.label} {w.tx_per_block}tx" for w in workloads)], rows))


def print_segments(bits: int, segment_costs: Sequence[SegmentCost]) -> None:
    print(f"One VDF segment at devnet's {bits}-bit discriminant, from the generator")
    rows = [[f"{c.iterations:,}", str(len(c.verify_ms)), f"{c.prove_s:.3f}",
             f"{sum(c.verify_ms) / len(c.verify_ms):.2f}", " ".join(f"{v:.2f}" for v in c.verify_ms)]
            for c in segment_costs]
    print(table(["iterations", "segments", "prove s (mean)", "verify ms (mean)", "verify ms (each)"], rows))


def print_projection(devnet: NetworkParams, real: SegmentCost, workloads: Sequence[Workload],
                     costs: Sequence[dict[str, float]]) -> None:
    """Devnet blocks at equilibrium: targetVdfSegments segments (the iterations retarget to
    hold that many per block whatever the timelord's speed), each verified at the devnet*
    per-segment cost (the devnet* chains share their segments: one estimate)."""
    runs = [(w, c) for w, c in zip(workloads, costs) if w.label == "devnet*"]
    per_segment = sum((c["vdf"] - c["discriminant"]) / w.segments_per_block for w, c in runs) / len(runs)
    discriminant = sum(c["discriminant"] for _, c in runs) / len(runs)
    target_s = devnet.target_block_time_ms / 1000
    segments = devnet.target_vdf_segments
    equilibrium = real.iterations / real.prove_s * target_s / segments
    print(f"Projected devnet at equilibrium: {target_s:.0f} s blocks of {segments} segments (targetVdfSegments; "
          f"with this machine\nas timelord, {real.prove_s:.2f} s per {real.iterations:,} iterations, the "
          f"iterations retarget to about {equilibrium:,.0f} a segment);\na block costs {segments} devnet*"
          f" per-segment verifies "
          f"({per_segment / 1e3:.2f} ms), one discriminant ({discriminant / 1e3:.1f} ms) and the "
          f"non-VDF components above")
    rows = []
    for w, c in runs:
        per_block_us = segments * per_segment + discriminant + sum(c[k] for k in NON_VDF)
        rows.append([str(w.tx_per_block), f"{per_block_us / 1e3:.1f}", f"{1e6 / per_block_us:.1f}"])
    print(table(["tx/block", "ms per block (1 thread)", "blocks/s (1 thread)"], rows))


def print_notes(devnet: NetworkParams) -> None:
    notes = [
        f"devnet* = devnet parameters with initial vdfIterations {DEVNET_BENCH_ITERATIONS:,} instead of "
        f"{devnet.vdf_iterations:,} per segment (retargeting from there), so that its chain builds in "
        "reasonable time. A "
        "Wesolowski verification costs the same at any iteration count (segment table), so "
        "per-segment costs carry over to the real count.",
        "The chain builder spaces blocks exactly one target apart, so the difficulty, and with it "
        "the segments per block, stays near its initial value rather than at the equilibrium of "
        "the projection (and the iterations per segment fall to their floor).",
        "Transfers: N funded senders each send once per block (nonce = height - 1) to their own "
        "recipient. The same funded genesis serves 0 and 50 transfers, so both chains carry the "
        "same VDF segments and proofs of space.",
        "Storage = add_block given the score from check_standalone: context checks, state, and "
        "the SQLite commit (WAL, synchronous=NORMAL, the default, in a temporary directory), in runs of 64 "
        "blocks a transaction as sync stores them (Chain.begin_run/end_run: one commit a run), and "
        "with one commit a block, as a block from gossip is stored. The throughput runs "
        "store in runs of 64.",
        "2 threads: check_standalone runs in a 2-worker pool ahead of this thread, which adds the "
        "blocks in order with their scores (context, state, storage).",
        "Every throughput run gets the chain decoded afresh from its bytes, untimed: a run over "
        "blocks an earlier run checked would find their ids, signing bytes and transaction roots "
        "made (about 1 ms a block of Python at 50 transfers). The components table reuses the "
        "same objects.",
    ]
    print_note_list(notes)


def print_note_list(notes: Sequence[str]) -> None:
    """The closing "Notes" of a bench's output, one wrapped bullet each."""
    print("Notes")
    for note in notes:
        print(textwrap.fill(note, width=100, initial_indent="* ", subsequent_indent="  "))


def warnings_to_stderr() -> None:
    """Warnings and errors from nodes (misbehaving peers, failed sync rounds) go to stderr."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr),
                              [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])],
        redirectStandardIO=False)


def cpu_seconds_busy() -> float | None:
    """CPU seconds all processes have been busy since boot (Linux), or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """How many CPUs other processes kept busy, on average, during the `with` block."""

    def __enter__(self) -> "OtherLoad":
        self._busy, self._own, self._wall = cpu_seconds_busy(), time.process_time(), time.monotonic()
        self.cpus: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        busy = cpu_seconds_busy()
        if busy is not None and self._busy is not None:
            others = (busy - self._busy) - (time.process_time() - self._own)
            self.cpus = max(0.0, others) / (time.monotonic() - self._wall)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=1000, help="fastnet chain length (default 1000)")
    ap.add_argument("--devnet-blocks", type=int, default=200, help="devnet* chain length (default 200)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 100 fastnet and 30 devnet* blocks, 1 run")
    ap.add_argument("--repeats", type=int, default=2, help="throughput runs per row, the fastest shown (default 2)")
    args = ap.parse_args(argv)
    if args.quick:
        args.blocks, args.devnet_blocks, args.repeats = 100, 30, 1

    workloads = []
    for network, count in (("fastnet", args.blocks), ("devnet", args.devnet_blocks)):
        params = bench_params(network)
        label = "devnet*" if network == "devnet" else network
        for n_tx in TX_PER_BLOCK:
            workloads.append(Workload(label, params, n_tx, build_chain(params, n_tx, count)))

    devnet = network_params.load("devnet")
    with OtherLoad() as other:
        try:
            results = measure_throughput(workloads, args.repeats)
            costs = [components(w) for w in workloads]
        except BlockRejected as e:
            sys.exit(f"a cached block was rejected ({e}); the chains in {CACHE_DIR} may predate a "
                     "consensus change: delete them to rebuild")
        segment_costs = devnet_segment_costs(devnet, (DEVNET_BENCH_ITERATIONS, devnet.vdf_iterations))

    print("Archivas validation-only throughput")
    print(machine())
    if other.cpus is not None:
        print(f"other processes kept {other.cpus:.2f} CPUs busy on average while this measured "
              "(0 = the machine to itself)")
    print()
    print_throughput(results, args.repeats)
    print()
    print_components(workloads, costs)
    print()
    print_segments(devnet.discriminant_bits, segment_costs)
    print()
    print_projection(devnet, segment_costs[-1], workloads, costs)
    print()
    print_notes(devnet)


if __name__ == "__main__":
    main()
