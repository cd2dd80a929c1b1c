"""Measure what each piece of block validation costs on this machine: the simulator's calibration.

One job: print a plain-text table of the median cost (µs) of each component, and with
`--write PATH` save it as a JSON object of seconds per item (archivas/sim/costs.json is
the simulator's copy). Components, each measured on real objects:

- farmer_signature: `keys.verify` of a header's farmer signature (signing bytes ready).
- proof_of_space: what `check_header` times as "proof_of_space" (challenge, plot id, filter,
  `pos.verify`, the winning rule) for a k=18 proof from the shared test plots, averaged
  over several blocks' proofs.
- vdf_segment_fastnet / vdf_segment_devnet: `vdf.verify_segment` of one segment (256 bits,
  the fastnet blocks' own iterations, from 5,000 down / 1024 bits, devnet's initial 800,000
  iterations; the cost hardly depends on the iterations) with its discriminant already made:
  the cost of every segment after a seed's first. A seed's first segment also pays
  `create_discriminant` once, shown in the table as "discriminant" (not in the JSON).
- tx_signature: `transactions.verify_signature` of a transfer whose signing bytes are made
  (a Transaction computes them once, and a block's are made by its tx root, checked
  first): Ed25519 alone. The table also shows a fresh transfer's (signing bytes included).
- tx_stateless: `check_stateless(..., verify_signature=False)` with addresses never seen
  (the bech32 decode cache cleared), as in a block from sync; warm figure in the table.
- decode_per_byte: `strict_loads` + `Block.from_json` (peer limits) of a block line, per byte.
- encode_per_byte: `Block.encode`, per byte of its output.
- tx_root_per_tx: `tx_root` of a freshly decoded block's transfers (their ids, computed
  once per Transaction, and the Merkle tree), per transfer.

The per-byte and per-transfer figures are measured on a block of BLOCK_TRANSFERS transfers
from distinct senders (a typical loaded block; an empty block's per-byte figures are in the
table). Each figure is the median of repeated runs, a run timing enough calls to last at
least RUN_SECONDS. Plots are made once (archivas.testing.chainbuilder.shared_plots, ~3 s)
and a devnet segment is proved once per run (~5-10 s here).

    .venv/bin/python bench/validation_costs.py                 # ~20 s
    .venv/bin/python bench/validation_costs.py --quick         # ~10 s, fewer and shorter runs
    .venv/bin/python bench/validation_costs.py --write archivas/sim/costs.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import chiavdf

from archivas.chain import keys, pos, vdf
from archivas.chain import params as network_params
from archivas.chain.block import Block, Header, child_discriminant_seed, child_origin, child_seed, genesis_seed, tx_root
from archivas.chain.encoding import strict_loads
from archivas.chain.iterations import bounds
from archivas.chain.keys import PrivateKey
from archivas.chain.params import COIN, NetworkParams
from archivas.chain.transactions import Transaction, check_stateless, sign_transfer, verify_signature
from archivas.testing.chainbuilder import ChainBuilder, shared_plots

BLOCK_TRANSFERS = 500  # transfers in the block the per-byte and per-transfer costs are read on
HEADERS = 8  # blocks whose signatures, proofs of space and segments are cycled through
KEYS = (
    "farmer_signature", "proof_of_space", "vdf_segment_fastnet", "vdf_segment_devnet",
    "tx_signature", "tx_stateless", "decode_per_byte", "encode_per_byte", "tx_root_per_tx",
)


@dataclasses.dataclass
class Mode:
    runs: int  # runs per figure; the median is reported
    run_seconds: float  # a run calls the function until at least this long has passed


FULL = Mode(runs=15, run_seconds=0.05)
QUICK = Mode(runs=5, run_seconds=0.02)


@dataclasses.dataclass
class Figure:
    key: str  # the JSON key, or a table-only name
    label: str
    per: str  # what one item is
    samples: list[float]  # seconds per item, one per run
    in_json: bool = True

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def measure(call: Callable[[], Any], items: int, mode: Mode,
            setup: Optional[Callable[[], None]] = None, loops: Optional[int] = None) -> list[float]:
    """Seconds per item of `call` (which does `items` items), one sample per run.

    Each run calls `call` `loops` times (found once so a run lasts mode.run_seconds, or
    fixed: 1 for a cold figure that `setup`, untimed, prepares before every call)."""
    if loops is None:
        loops = 1
        while True:
            started = time.perf_counter()
            for _ in range(loops):
                call()
            if time.perf_counter() - started >= mode.run_seconds or loops >= 1 << 20:
                break
            loops *= 2
    samples = []
    for _ in range(mode.runs):
        total = 0.0
        for _ in range(loops):
            if setup is not None:
                setup()
            started = time.perf_counter()
            call()
            total += time.perf_counter() - started
        samples.append(total / (loops * items))
    return samples


def cycling(values: Sequence[Any], f: Callable[[Any], Any]) -> Callable[[], None]:
    """A call that applies `f` to each of `values` in turn (len(values) items a call)."""
    def run() -> None:
        for value in values:
            f(value)
    return run


def transfers(params: NetworkParams, count: int) -> list[Transaction]:
    """`count` signed transfers, each from its own sender to its own recipient."""
    out = []
    for i in range(count):
        sender = PrivateKey.from_secret(b"cost-sender-%d" % i)
        recipient = PrivateKey.from_secret(b"cost-recipient-%d" % i).address
        out.append(sign_transfer(sender, params, recipient, COIN, params.min_fee, 0))
    return out


def proof_of_space_check(params: NetworkParams) -> Callable[[tuple[Header, Header]], None]:
    """check_header's "proof_of_space" span, for a (header, parent header) pair."""
    def check(pair: tuple[Header, Header]) -> None:
        header, parent = pair
        proof = header.proof_of_space
        assert proof is not None
        challenge = vdf.signage_challenge(child_seed(parent, params), header.vdf[-1].output)
        pid = pos.plot_id(proof.farmer_public_key, proof.plot_nonce)
        if not pos.passes_filter(pid, challenge, params.plot_filter_bits):
            raise AssertionError("a real block's plot fails the filter")
        quality = pos.verify(pid, proof.k, challenge, proof.proof)
        if quality is None or not pos.wins(quality, challenge, proof.k, header.difficulty, params.k_min):
            raise AssertionError("a real block's proof does not verify")
    return check


def devnet_block_vdf(devnet: NetworkParams, mode: Mode) -> list[Figure]:
    """A devnet block's whole VDF check: its origin and targetVdfSegments chained segments,
    with the epoch's discriminant not yet made (the first block of a discriminant epoch) and
    made (the other DISCRIMINANT_EPOCH - 1), and the mean over an epoch ("at equilibrium").
    The segments are proved at the iterations' floor to keep the run short: a Wesolowski
    check costs about the same at any iteration count."""
    bits, count = devnet.discriminant_bits, devnet.target_vdf_segments
    iterations = bounds(devnet.vdf_iterations)[0]
    dseed, seed = b"cost-devnet-epoch", b"cost-devnet-block"
    segments, start = [], vdf.origin(dseed, seed, bits)
    for _ in range(count):
        segments.append(vdf.prove_segment(dseed, start, bits, iterations))
        start = segments[-1].output
    check = lambda: vdf.verify_chain(dseed, seed, segments, bits, iterations)  # noqa: E731
    assert check() == -1

    first = measure(check, 1, mode, setup=vdf.clear_caches, loops=1)
    later = measure(check, 1, mode, setup=vdf.origin.cache_clear, loops=1)
    epoch = vdf.DISCRIMINANT_EPOCH
    mean = [(f + (epoch - 1) * x) / epoch for f, x in zip(sorted(first), sorted(later))]
    return [
        Figure("devnet_block_vdf_first",
               f"devnet block VDF, first of its epoch (discriminant, origin, {count} segments)",
               "block", first, in_json=False),
        Figure("devnet_block_vdf_later", f"devnet block VDF, later in its epoch (origin, {count} segments)",
               "block", later, in_json=False),
        Figure("devnet_block_vdf", f"devnet block VDF at equilibrium (mean over an epoch of {epoch})",
               "block", mean, in_json=False),
    ]


def run(mode: Mode) -> list[Figure]:
    fastnet = network_params.load("fastnet")
    devnet = network_params.load("devnet")
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    figures: list[Figure] = []

    log("plots (k=18, once per process) and fastnet blocks...")
    builder = ChainBuilder(fastnet, shared_plots(2, 18))
    chain = builder.extend(builder.genesis, HEADERS)
    parents = [builder.genesis.header] + [b.header for b in chain[:-1]]
    txs = transfers(fastnet, BLOCK_TRANSFERS)
    loaded = builder.make_block(chain[-1], txs)
    empty = chain[-1]

    headers = [b.header for b in chain]
    proofs = [h.proof_of_space for h in headers if h.proof_of_space is not None]
    # The signing bytes (the block id) are computed before the timing, as a node has them.
    signed = [(p.farmer_public_key, h.signing_bytes, h.farmer_signature) for h, p in zip(headers, proofs)]
    log("measuring...")
    figures.append(Figure("farmer_signature", "farmer signature (keys.verify of a header)", "header",
                          measure(cycling(signed, lambda s: keys.verify(*s)), len(signed), mode)))
    pairs = list(zip(headers, parents))
    figures.append(Figure("proof_of_space", f"proof of space (k={proofs[0].k})", "header",
                          measure(cycling(pairs, proof_of_space_check(fastnet)), len(pairs), mode)))

    # VDF: fastnet segments of real blocks (each at its block's iterations, which retarget
    # along the chain; the cost hardly depends on them); one devnet segment proved here.
    bits, iterations = fastnet.discriminant_bits, fastnet.vdf_iterations
    segments = [(child_discriminant_seed(p, fastnet), child_origin(p, fastnet), h.vdf[0], h.vdf_iterations)
                for h, p in pairs]
    for dseed_, origin, segment, t in segments:
        assert vdf.verify_segment(dseed_, origin, segment, bits, t)  # discriminant made
    figures.append(Figure("vdf_segment_fastnet", f"VDF segment, fastnet ({bits} bits, T={iterations:,} retargeting)",
                          "segment", measure(cycling(segments, lambda s: vdf.verify_segment(
                              s[0], s[1], s[2], bits, s[3])), len(segments), mode)))
    log(f"proving a devnet segment ({devnet.discriminant_bits} bits, T={devnet.vdf_iterations:,})...")
    dseed = genesis_seed(devnet)
    dbits, diterations = devnet.discriminant_bits, devnet.vdf_iterations
    dsegment = vdf.prove_segment(dseed, vdf.GENERATOR, dbits, diterations)
    assert vdf.verify_segment(dseed, vdf.GENERATOR, dsegment, dbits, diterations)
    figures.append(Figure("vdf_segment_devnet", f"VDF segment, devnet ({dbits} bits, T={diterations:,})",
                          "segment", measure(lambda: vdf.verify_segment(
                              dseed, vdf.GENERATOR, dsegment, dbits, diterations), 1, mode)))
    seeds = [b"cost-discriminant-%d" % i for i in range(4)]
    for name, size in (("fastnet", bits), ("devnet", dbits)):
        def make(seed: bytes, size: int = size) -> str:  # chiavdf's own call: no lru_cache
            return str(chiavdf.create_discriminant(seed, size))

        figures.append(Figure(f"discriminant_{name}", f"  discriminant, {name} (a seed's first segment)",
                              "seed", measure(cycling(seeds, make), len(seeds), mode), in_json=False))
    figures.extend(devnet_block_vdf(devnet, mode))

    # Transfers. `fresh` copies have no cached signing bytes or id, as just decoded.
    held: dict[str, list[Transaction]] = {"txs": txs}

    def fresh() -> None:
        held["txs"] = [dataclasses.replace(tx) for tx in txs]

    for tx in txs:
        tx.signing_bytes()
    figures.append(Figure("tx_signature", "transfer signature (verify_signature)", "transfer",
                          measure(cycling(txs, verify_signature), len(txs), mode)))
    figures.append(Figure("tx_signature_fresh", "  the same, signing bytes not yet made", "transfer",
                          measure(lambda: [verify_signature(tx) for tx in held["txs"]], len(txs), mode,
                                  setup=fresh, loops=1), in_json=False))
    stateless = cycling(txs, lambda tx: check_stateless(tx, fastnet, verify_signature=False))
    figures.append(Figure("tx_stateless", "transfer stateless rules, addresses new", "transfer",
                          measure(stateless, len(txs), mode, setup=keys.decode_address.cache_clear, loops=1)))
    figures.append(Figure("tx_stateless_warm", "  the same, addresses decoded before", "transfer",
                          measure(stateless, len(txs), mode), in_json=False))

    # Encoding, on the loaded block (the JSON figures) and an empty one.
    for block, suffix, in_json in ((loaded, "", True), (empty, "_empty", False)):
        line = block.encode()

        def decode(line: bytes = line) -> Block:
            return Block.from_json(strict_loads(line), max_transactions=fastnet.max_block_transactions,
                                   max_segments=fastnet.max_vdf_segments, allow_allocation=False)

        assert decode() == block
        what = f"{len(block.transactions)} transfers, {len(line):,} bytes"
        figures.append(Figure(f"decode_per_byte{suffix}", f"decode a block line ({what})", "byte",
                              measure(decode, len(line), mode), in_json))
        figures.append(Figure(f"encode_per_byte{suffix}", f"Block.encode ({what})", "byte",
                              measure(block.encode, len(line), mode), in_json))
    assert tx_root(txs) == loaded.header.tx_root
    figures.append(Figure("tx_root_per_tx", f"transaction root ({len(txs)} transfers, ids not yet made)",
                          "transfer", measure(lambda: tx_root(held["txs"]), len(txs), mode, setup=fresh, loops=1)))
    figures.append(Figure("tx_root_per_tx_cached", "  the same, ids made before", "transfer",
                          measure(lambda: tx_root(txs), len(txs), mode), in_json=False))
    return figures


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{platform.platform()}, {cpu}, {os.cpu_count()} CPUs, "
            f"{platform.python_implementation()} {platform.python_version()}")


def table(figures: Sequence[Figure], mode: Mode) -> str:
    rows: list[tuple[str, ...]] = [("component", "per", "median µs", "min µs", "max µs")]
    for f in figures:
        rows.append((f.label, f.per, *(f"{x * 1e6:.4g}" for x in (f.median, min(f.samples), max(f.samples)))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    load = ", load average %.2f %.2f %.2f at the end" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    head = (f"Validation costs on {machine()}\n"
            f"median of {mode.runs} runs of >= {mode.run_seconds * 1000:g} ms each; µs per item{load}\n")
    return head + "\n".join(lines)


def document(figures: Sequence[Figure]) -> dict[str, Any]:
    by_key = {f.key: f for f in figures if f.in_json}
    assert set(by_key) == set(KEYS), set(by_key) ^ set(KEYS)
    doc: dict[str, Any] = {key: float(f"{by_key[key].median:.4g}") for key in KEYS}
    doc["machine"] = machine()
    doc["measured"] = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    return doc


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK.runs} runs of {QUICK.run_seconds * 1000:g} ms "
                    f"per figure (default {FULL.runs} of {FULL.run_seconds * 1000:g} ms)")
    ap.add_argument("--write", metavar="PATH", help="also write the figures as JSON (seconds per item)")
    args = ap.parse_args(argv)
    mode = QUICK if args.quick else FULL
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if busy > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {busy:.2f} on {os.cpu_count()} CPUs: other work inflates these figures",
              file=sys.stderr)
    started = time.perf_counter()
    figures = run(mode)
    print(table(figures, mode))
    if args.write:
        path = Path(args.write)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document(figures), indent=2) + "\n")
        print(f"wrote {path}")
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
