"""Measure initial sync of 10,000 fastnet blocks: headers-first against the old way, side by side.

One job: print a plain-text table of the time from a fresh node's first connection (the
dial) to "synced" (its tip is the source's tip) for a 10,000-block fastnet chain, once with
headers-first sync (`Node(headers_first=True)`, the default: GET_HEADERS, headers proven in
threads, then GET_BODIES) and once the old way (`headers_first=False`: the fork point by
GET_HASHES, then GET_BLOCKS batches, each block's proofs checked on import), the two modes
interleaved and repeated in one run; for headers-first, the share of that time spent on
headers; and the validation-only throughput of the same blocks for reference.

Every node runs in this process on the global Twisted reactor, over loopback TCP, as
bench/sync_throughput.py does; the syncing node's 2-thread pool verifies the proofs for
real. The chain is tests/fixtures' 3,200 blocks (tests.common.fixture_blocks) extended with
`tests.common.builder()` to 10,000 on tests.common.PARAMS, with the fixture's transfer from
Alice to Bob every tenth block; it is built once and cached, with a source database filled
from it, under /tmp/archivas-bench-sync-headers-first/ (keyed by the genesis hash; each run
syncs from a fresh copy of that database).

    .venv/bin/python bench/sync_headers_first.py               # full run (several minutes)
    .venv/bin/python bench/sync_headers_first.py --quick       # smoke run: 3,200 blocks, 1 run each
    .venv/bin/python bench/sync_headers_first.py --profile     # also cProfile one sync of each mode
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gzip
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.common: the test network and its fixture chain

import validation_throughput as vt  # noqa: E402  (the bench beside this file: tables, notes, machine)
from twisted.internet import defer, task  # noqa: E402

from archivas.chain import vdf  # noqa: E402
from archivas.chain.block import Block, Header, genesis_block  # noqa: E402
from archivas.chain.blockchain import Chain  # noqa: E402
from archivas.chain.consensus import check_header, check_standalone  # noqa: E402
from archivas.node import Node  # noqa: E402
from archivas.protocols import sync as sync_module  # noqa: E402
from archivas.protocols.headersfirst import HeadersFirstRound  # noqa: E402
from tests.common import ALICE, BOB, PARAMS, builder, fixture_blocks  # noqa: E402

CACHE_DIR = Path("/tmp/archivas-bench-sync-headers-first")
BLOCKS = 10_000
TRANSFER_EVERY = 10  # as tests/fixtures/make_chain.py: Alice -> Bob every tenth block
SYNC_DEADLINE = 900.0  # seconds before a sync counts as stuck
POLL = 0.05  # seconds between looks at the round's header run
MODES = (("headers-first", True), ("old (hashes+blocks)", False))


# The chain: the fixture's 3,200 blocks extended with the test builder, cached


def genesis_hex() -> str:
    return genesis_block(PARAMS).hash.hex()


def chain_path(count: int) -> Path:
    return CACHE_DIR / f"chain-{genesis_hex()[:16]}-{count}.jsonl.gz"


def load_chain(path: Path) -> list[Block]:
    """The cached blocks, or [] when there are none for this genesis."""
    if not path.exists():
        return []
    try:
        with gzip.open(path, "rt") as f:
            head = json.loads(f.readline())
            if head.get("genesis") != genesis_hex():
                return []
            return [Block.from_json(json.loads(line)) for line in f if line.strip()]
    except (OSError, ValueError, EOFError):
        return []


def build_chain(count: int) -> list[Block]:
    """`count` valid blocks on tests.common.PARAMS, heights 1..count; cached."""
    path = chain_path(count)
    blocks = load_chain(path)
    if len(blocks) >= count:
        return blocks[:count]
    blocks = fixture_blocks()[:count]
    b = builder()
    for block in blocks:  # the builder reads ancestors (for the difficulty) from what it knows
        b.blocks[block.hash] = block
    nonce = sum(1 for block in blocks for tx in block.transactions if tx.sender == ALICE.address)
    print(f"building {count - len(blocks)} fastnet blocks on the fixture's {len(blocks)} "
          f"(once; cached in {path})", file=sys.stderr, flush=True)
    started = time.monotonic()
    parent = blocks[-1] if blocks else b.genesis
    while len(blocks) < count:
        height = parent.height + 1
        txs = []
        if height % TRANSFER_EVERY == 0:
            txs.append(b.transfer(ALICE, BOB.address, 1000, nonce))
            nonce += 1
        parent = b.make_block(parent, txs)
        blocks.append(parent)
        if height % 500 == 0:
            print(f"  height {height}, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt", compresslevel=6) as f:
        f.write(json.dumps({"genesis": genesis_hex(), "network": PARAMS.name}) + "\n")
        for block in blocks:
            f.write(json.dumps(block.to_json(), separators=(",", ":"), sort_keys=True) + "\n")
    os.replace(tmp, path)
    return blocks


def parents_of(blocks: Sequence[Block]) -> list[Header]:
    return [genesis_block(PARAMS).header] + [b.header for b in blocks[:-1]]


def template_db(blocks: Sequence[Block]) -> Path:
    """A database directory holding all the blocks (made once: proofs in 2 threads ahead of
    add_block, as sync_throughput.fill does), copied for each run's source node."""
    directory = CACHE_DIR / f"db-{genesis_hex()[:16]}-{len(blocks)}"
    marker = directory / "bench-tip"
    if marker.exists() and marker.read_text() == blocks[-1].hash.hex():
        try:
            chain = Chain.open(directory, PARAMS)
            ok = chain.tip.hash == blocks[-1].hash
            chain.close()
            if ok:
                return directory
        except Exception:  # an older schema, a broken copy: fill again
            pass
    print(f"filling the source database {directory} (once)", file=sys.stderr, flush=True)
    shutil.rmtree(directory, ignore_errors=True)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    chain = Chain.open(tmp, PARAMS)
    try:
        now = vt.now_ms()
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(check_standalone, b, p, PARAMS) for b, p in zip(blocks, parents_of(blocks))]
            for block, future in zip(blocks, futures):
                vt.add(chain, block, now, score=future.result())
    finally:
        chain.close()
    (tmp / "bench-tip").write_text(blocks[-1].hash.hex())
    os.replace(tmp, directory)
    return directory


# Validation-only, for reference


def checks_two_threads(items: Sequence[Any], parents: Sequence[Header], check: Callable[..., Any]) -> float:
    """Seconds for `check(item, parent header, PARAMS)` over every item, 2 threads."""
    vdf.clear_caches()
    with ThreadPoolExecutor(2) as pool:
        start = time.perf_counter()
        for _ in pool.map(check, items, parents, [PARAMS] * len(items), chunksize=16):
            pass
        return time.perf_counter() - start


def validation_reference(blocks: Sequence[Block]) -> list[tuple[str, float]]:
    w = vt.Workload("fastnet", PARAMS, 0, list(blocks))
    parents = parents_of(blocks)
    return [
        ("check_header (proofs of the header), 2 threads",
         checks_two_threads([b.header for b in blocks], parents, check_header)),
        ("check_standalone (header + body), 2 threads", checks_two_threads(blocks, parents, check_standalone)),
        ("check_standalone, 2 threads, + Chain.add_block", vt.run_two_threads(w)),
    ]


# The source: a node on a copy of the filled database, listening on loopback


class Source:
    def __init__(self, reactor: Any, directory: str, tip: bytes) -> None:
        self.chain = Chain.open(directory, PARAMS)
        if self.chain.tip.hash != tip:
            raise RuntimeError(f"source database {directory} does not end at the chain's last block")
        self.node = Node(self.chain, reactor, discover=False)
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


# One sync, instrumented from outside the node


class RecordedRound(HeadersFirstRound):
    """A headers-first round that also times its header loop's waits: for HEADERS replies,
    and for room in the header window (the bench puts it in place of HeadersFirstRound in
    archivas.protocols.sync; the round's logic is unchanged)."""

    made: list["RecordedRound"] = []

    def __init__(self, *a: Any, **kw: Any) -> None:
        self.headers_wait = 0.0  # seconds waiting for HEADERS replies (request to reply)
        self.header_requests = 0
        self.headers_received = 0  # headers in the replies (some fetched again after presync records)
        self.stored_at_loop_end = 0  # blocks stored when the header loop ended
        self.room_wait = 0.0  # seconds the header loop waited for the window to make room
        self.loop_ended: Optional[float] = None  # perf_counter when the header loop ended
        self._room_since: Optional[float] = None
        self._room_d: Optional[defer.Deferred] = None
        super().__init__(*a, **kw)
        self.created = time.perf_counter()
        RecordedRound.made.append(self)

    @property  # type: ignore[override]
    def _room(self) -> Optional[defer.Deferred]:
        return self._room_d

    @_room.setter
    def _room(self, d: Optional[defer.Deferred]) -> None:
        now = time.perf_counter()
        if self._room_since is not None:
            self.room_wait += now - self._room_since
        self._room_since = now if d is not None else None
        self._room_d = d

    async def _get_headers(self, locator: tuple[bytes, ...]) -> Any:
        t = time.perf_counter()
        try:
            reply = await super()._get_headers(locator)
            self.headers_received += len(reply.headers)
            return reply
        finally:
            self.headers_wait += time.perf_counter() - t
            self.header_requests += 1

    async def _headers(self, first: Any) -> None:
        try:
            await super()._headers(first)
        finally:
            self.loop_ended = time.perf_counter()
            self.stored_at_loop_end = self.stored


@dataclasses.dataclass
class SyncRun:
    mode: str
    run: int
    seconds: float  # dial to the source's tip as ours
    ready: float  # dial to the first round starting (handshake and status)
    first_block: float  # dial to the first block as tip
    rounds: int
    cpu_process: float
    cpu_reactor: float
    # headers-first only
    header_seconds: float = 0.0  # the rounds' header_seconds (their header loop checking headers)
    headers_wait: float = 0.0  # waiting for HEADERS replies
    header_requests: int = 0
    headers_received: int = 0
    stored_at_loop_end: int = 0
    room_wait: float = 0.0  # the header loop waiting for room in the window
    loop_end: Optional[float] = None  # dial to the header loop's end (the last reply checked)
    headers_at: Optional[float] = None  # dial to run.last.height == goal (all headers proven), polled
    # old mode only
    fork_seconds: float = 0.0  # the fork-point search (GET_HASHES)


async def sync_once(reactor: Any, blocks: Sequence[Block], source: Source, mode: str, headers_first: bool,
                    run_no: int, profile: Optional[cProfile.Profile] = None) -> SyncRun:
    vdf.clear_caches()  # earlier runs computed the same discriminants in this process
    target = blocks[-1]
    RecordedRound.made = []
    with tempfile.TemporaryDirectory(prefix="archivas-bench-hf-") as directory:
        chain = Chain.open(directory, PARAMS)
        node = Node(chain, reactor, headers_first=headers_first, discover=False)
        times: dict[str, float] = {}
        fork = [0.0]
        find_fork, seed_round = node.sync._find_fork, node.sync._seed_round

        async def timed_find_fork(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return await find_fork(*a, **kw)
            finally:
                fork[0] += time.perf_counter() - t

        async def timed_seed_round(*a: Any, **kw: Any) -> Any:
            times.setdefault("round", time.perf_counter())
            return await seed_round(*a, **kw)

        node.sync._find_fork = timed_find_fork  # type: ignore[method-assign]
        node.sync._seed_round = timed_seed_round  # type: ignore[method-assign]
        done: defer.Deferred = defer.Deferred()

        def on_tip(block: Any) -> None:
            now = time.perf_counter()
            times.setdefault("first", now)
            if block.hash == target.hash and "last" not in times:
                times["last"] = now
                reactor.callLater(0, finish)  # after the import returns

        def finish() -> None:
            if not done.called:
                done.callback(None)

        def poll() -> None:
            current = node.sync.current
            if current is None:
                return
            times.setdefault("round", getattr(current, "created", time.perf_counter()))
            run = current.run
            if run is not None and run.last.height >= target.height and run.proven:
                times.setdefault("headers", time.perf_counter())

        def too_slow() -> None:
            if not done.called:
                done.errback(TimeoutError(f"{mode}: sync stuck at height {chain.height} of {target.height} "
                                          f"after {SYNC_DEADLINE:.0f} s"))

        node.on_tip.append(on_tip)
        node.start()
        poller = task.LoopingCall(poll)
        deadline = reactor.callLater(SYNC_DEADLINE, too_slow)
        if profile is not None:
            profile.enable()
        cpu, cpu_thread = time.process_time(), time.thread_time()
        start = time.perf_counter()
        try:
            node.peers.dial(source.address)
            poller.start(POLL, now=True)
            await done
            cpu, cpu_thread = time.process_time() - cpu, time.thread_time() - cpu_thread
        finally:
            if profile is not None:
                profile.disable()
            if poller.running:
                poller.stop()
            if deadline.active():
                deadline.cancel()
            await node.stop()
            chain.close()
    rounds = list(RecordedRound.made)
    return SyncRun(
        mode, run_no, times["last"] - start, times.get("round", start) - start, times["first"] - start,
        node.sync.rounds, cpu, cpu_thread,
        header_seconds=sum(r.header_seconds for r in rounds),
        headers_wait=sum(r.headers_wait for r in rounds),
        header_requests=sum(r.header_requests for r in rounds),
        headers_received=sum(r.headers_received for r in rounds),
        stored_at_loop_end=sum(r.stored_at_loop_end for r in rounds),
        room_wait=sum(r.room_wait for r in rounds),
        loop_end=max((r.loop_ended for r in rounds if r.loop_ended is not None), default=start) - start
        if rounds else None,
        headers_at=times["headers"] - start if "headers" in times else None,
        fork_seconds=fork[0],
    )


# The run


async def measure(reactor: Any, blocks: Sequence[Block], repeats: int, validation: bool,
                  profiles: dict[str, cProfile.Profile]) -> tuple[list[SyncRun], list[tuple[str, float]]]:
    template = template_db(blocks)
    sync_module.HeadersFirstRound = RecordedRound  # type: ignore[misc]
    runs: list[SyncRun] = []
    reference: list[tuple[str, float]] = []
    try:
        for r in range(repeats):
            if validation:  # blocks the reactor; no node is up meanwhile
                cases = validation_reference(blocks)
                reference = cases if not reference else [
                    (case, min(a, b)) for (case, a), (_, b) in zip(reference, cases)]
            order = MODES if r % 2 == 0 else MODES[::-1]  # ABBA: a drift in load touches both alike
            for mode, headers_first in order:
                with tempfile.TemporaryDirectory(prefix="archivas-bench-hf-source-") as base:
                    directory = str(Path(base) / "source")
                    shutil.copytree(template, directory)
                    source = Source(reactor, directory, blocks[-1].hash)
                    try:
                        run = await sync_once(reactor, blocks, source, mode, headers_first, r + 1)
                    finally:
                        await source.stop()
                runs.append(run)
                print(f"  {mode} run {r + 1}: {run.seconds:.1f} s", file=sys.stderr, flush=True)
        for mode, headers_first in MODES:  # extra runs, not counted (profiling slows them)
            if mode in profiles:
                with tempfile.TemporaryDirectory(prefix="archivas-bench-hf-source-") as base:
                    directory = str(Path(base) / "source")
                    shutil.copytree(template, directory)
                    source = Source(reactor, directory, blocks[-1].hash)
                    try:
                        await sync_once(reactor, blocks, source, mode, headers_first, 0, profiles[mode])
                    finally:
                        await source.stop()
    finally:
        sync_module.HeadersFirstRound = HeadersFirstRound  # type: ignore[misc]
    return runs, reference


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "-"


def print_results(runs: Sequence[SyncRun], n: int) -> None:
    print(f"Dial to synced, {n:,} blocks, one source (runs in the order made)")
    rows = []
    for s in runs:
        hf = s.mode.startswith("headers")
        rows.append([s.mode, str(s.run), f"{s.seconds:.2f}", f"{n / s.seconds:.1f}",
                     pct(s.header_seconds, s.seconds) if hf else "-",
                     (f"{s.headers_at:.2f} ({pct(s.headers_at, s.seconds)})" if s.headers_at is not None else "-")
                     if hf else "-",
                     f"{s.fork_seconds * 1000:.0f}" if not hf else "-",
                     str(s.rounds)])
    print(vt.table(["mode", "run", "seconds", "blocks/s", "header share", "all headers proven at s",
                    "fork search ms", "rounds"], rows))
    print()
    print("Side by side")
    by_mode = {m: [s for s in runs if s.mode == m] for m, _ in MODES}
    hf_runs, old_runs = by_mode[MODES[0][0]], by_mode[MODES[1][0]]
    rows = []
    for label, pick in (("fastest", min), ("mean", statistics.fmean)):
        a, b = pick([s.seconds for s in hf_runs]), pick([s.seconds for s in old_runs])
        rows.append([label, f"{a:.2f}", f"{b:.2f}", f"{n / a:.1f}", f"{n / b:.1f}", f"{b / a:.2f}"])
    print(vt.table(["of the runs", "headers-first s", "old s", "headers-first blocks/s", "old blocks/s",
                    "old / headers-first"], rows))
    print()
    print("The runs in detail")
    rows = []
    for s in runs:
        rows.append([s.mode, str(s.run), f"{s.ready * 1000:.0f}", f"{s.first_block:.2f}",
                     f"{s.cpu_process:.1f}", f"{s.cpu_process / s.seconds:.2f}", f"{s.cpu_reactor / s.seconds:.2f}"])
    print(vt.table(["mode", "run", "dial to round ms", "dial to 1st block s", "CPU s", "CPUs busy",
                    "reactor CPU busy"], rows))
    print()
    print("Headers-first: where the header loop's time went (seconds from the dial)")
    rows = []
    for s in runs:
        if not s.mode.startswith("headers") or s.loop_end is None:
            continue
        rest = s.loop_end - s.ready - s.header_seconds - s.headers_wait - s.room_wait
        rows.append([str(s.run), f"{s.header_seconds:.2f}", f"{s.headers_wait:.2f}",
                     f"{s.header_requests} / {s.headers_received:,}", f"{s.room_wait:.2f}", f"{rest:.2f}",
                     f"{s.loop_end:.2f}", f"{s.stored_at_loop_end:,}", f"{s.seconds - s.loop_end:.2f}",
                     f"{s.seconds:.2f}"])
    print(vt.table(["run", "checking headers", "HEADERS wait", "requests / headers got", "waiting for room",
                    "other", "loop ended at", "stored then", "bodies after it", "synced at"], rows))


def print_reference(reference: Sequence[tuple[str, float]], n: int, repeats: int) -> None:
    print(f"Validation-only, the same {n:,} blocks in memory (no node, no network)"
          + (f", fastest of {repeats} runs" if repeats > 1 else ""))
    print(vt.table(["case", "seconds", "blocks/s"],
                   [[case, f"{seconds:.2f}", f"{n / seconds:.1f}"] for case, seconds in reference]))


def print_notes(n: int) -> None:
    notes = [
        f"The chain ({n:,} blocks): tests/fixtures' 3,200, then blocks from tests.common.builder(), "
        "on tests.common.PARAMS (fastnet, difficulty 1: about one VDF segment per block), a "
        "transfer from Alice to Bob every tenth block. One source node holds it (a fresh copy of "
        "a database filled once); a fresh node dials it; both share this process and its reactor.",
        "seconds = dial to the fresh node's tip being the source's tip. headers-first is "
        "Node(headers_first=True), the default; old is headers_first=False: the fork point by "
        "GET_HASHES, then GET_BLOCKS batches of 32 (3 in flight), each block's proofs checked "
        "(check_standalone) in the 2-thread pool on import.",
        "header share = the round's header_seconds / seconds: wall time its header loop spent "
        "checking replies (context on the reactor, check_header in the 2-thread pool, which it "
        "shares with the bodies' checks), not its waits for HEADERS replies nor for room in the "
        "header window.",
        "all headers proven at = dial to the round's last proven header reaching the tip's height "
        f"(polled every {POLL * 1000:.0f} ms): when the header side finished, not its cost. The "
        "header window keeps at most 4,096 headers ahead of the stored chain; headers checked "
        "past it are kept as presync records and fetched again once there is room.",
        "Where the header loop's time went: the loop runs reply by reply - check a reply's headers, "
        "wait for room in the window if it is full, ask for the next (HEADERS wait: request to "
        "reply). other = the rest of the loop up to its end; stored then = blocks stored when it "
        "ended; bodies after it = the bodies still to store then, with no header left to check.",
        "Runs alternate (ABBA) so that a change in the machine's other load touches both modes. "
        "The discriminant cache (process-wide) is cleared before every run.",
        "CPUs busy = process CPU seconds / wall seconds (source and fresh node together); reactor "
        "CPU busy = the reactor thread's share (serving, decoding, context checks, SQLite).",
    ]
    vt.print_note_list(notes)


def print_profile(mode: str, profile: cProfile.Profile) -> None:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(20)
    print(f"Profile of an extra {mode} sync, reactor thread only (cProfile does not follow the "
          "verification threads), top 20 by own time")
    print(out.getvalue().strip("\n"))


async def run(reactor: Any, args: argparse.Namespace) -> None:
    blocks = build_chain(args.blocks)
    profiles = {mode: cProfile.Profile() for mode, _ in MODES} if args.profile else {}
    with vt.OtherLoad() as other:
        runs, reference = await measure(reactor, blocks, args.repeats, not args.no_validation, profiles)
    print(f"Archivas initial sync, headers-first against the old way: {len(blocks):,} fastnet blocks, "
          "one process, loopback TCP")
    print(vt.machine())
    if other.cpus is not None:
        print(f"other processes kept {other.cpus:.2f} CPUs busy on average while this measured "
              "(0 = the machine to itself)")
    print()
    print_results(runs, len(blocks))
    if reference:
        print()
        print_reference(reference, len(blocks), args.repeats)
    print()
    print_notes(len(blocks))
    for mode, profile in profiles.items():
        print()
        print_profile(mode, profile)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=BLOCKS, help=f"chain length (default {BLOCKS})")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each mode, interleaved (default 2)")
    ap.add_argument("--no-validation", action="store_true", help="skip the validation-only reference")
    ap.add_argument("--quick", action="store_true", help="smoke run: the fixture's 3,200 blocks, 1 run each")
    ap.add_argument("--build-only", action="store_true", help="build (or check) the cached chain and database")
    ap.add_argument("--profile", action="store_true",
                    help="also run one sync of each mode under cProfile and print the top 20")
    args = ap.parse_args(argv)
    if args.quick:
        args.blocks, args.repeats = 3200, 1
    if args.build_only:
        template_db(build_chain(args.blocks))
        return
    vt.warnings_to_stderr()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
