"""`archivas-sim`: run one simulated network and print its figures (a table, or JSON).

    archivas-sim --nodes 200 --blocks 20 --seed 1
    archivas-sim --nodes 1000 --blocks 100 --seed 1 --latency-ms 50:150 --bandwidth-mbit 20 --json
    archivas-sim --nodes 200 --blocks 10 --partition 30:90:0.5
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from archivas.sim.run import Result, SimConfig, Simulation


def _range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(":")
    try:
        a, b = float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH milliseconds, got {text!r}") from None
    if not 0 <= a <= b:
        raise argparse.ArgumentTypeError(f"need 0 <= LOW <= HIGH, got {text!r}")
    return a, b


def _partition(text: str) -> tuple[float, float, float]:
    parts = text.split(":")
    try:
        t0, t1, fraction = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T0:T1:FRACTION, got {text!r}") from None
    if not (0 <= t0 < t1 and 0 < fraction < 1):
        raise argparse.ArgumentTypeError(f"need 0 <= T0 < T1 and 0 < FRACTION < 1, got {text!r}")
    return t0, t1, fraction


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"a share of the nodes is 0 <= x < 1, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archivas-sim", description="Simulate an Archivas network of real nodes "
                                "on one simulated clock (docs/simulator.md).")
    p.add_argument("--nodes", type=int, default=50, help="nodes in the network (default 50)")
    p.add_argument("--blocks", type=int, default=20, help="blocks to farm (default 20)")
    p.add_argument("--seed", type=int, default=1, help="the run's seed: the same seed, the same run")
    p.add_argument("--latency-ms", type=_range, default=(50.0, 150.0), metavar="LOW:HIGH",
                   help="one-way link latency, uniform (default 50:150)")
    p.add_argument("--bandwidth-mbit", type=float, default=20.0, help="each node's up and down link (default 20)")
    p.add_argument("--loss", type=float, default=0.0, help="share of writes lost and retransmitted (default 0)")
    p.add_argument("--partition", type=_partition, metavar="T0:T1:FRACTION",
                   help="cut FRACTION of the nodes off from T0 to T1 seconds after farming starts")
    p.add_argument("--silent", type=_share, default=0.0, help="share of nodes that accept and never answer")
    p.add_argument("--hostile", type=_share, default=0.0, help="share of nodes that lie and serve nothing")
    p.add_argument("--transfers-per-block", type=float, default=50.0, help="transfers a block time (default 50)")
    p.add_argument("--block-time", type=float, default=20.0, help="mean seconds between blocks (default 20)")
    p.add_argument("--warmup", type=float, default=90.0,
                   help="seconds for the nodes to find each other before farming starts (default 90)")
    p.add_argument("--no-newcomer", action="store_true", help="skip the newcomer's sync at the end")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def config_from(args: argparse.Namespace) -> SimConfig:
    if args.nodes < 4:
        raise SystemExit("archivas-sim: --nodes must be at least 4")
    if args.blocks < 1:
        raise SystemExit("archivas-sim: --blocks must be at least 1")
    if not 0 <= args.loss < 1:
        raise SystemExit("archivas-sim: --loss is a share, 0 <= x < 1")
    if args.silent + args.hostile >= 0.5:
        raise SystemExit("archivas-sim: --silent and --hostile together must stay below half the nodes")
    if args.warmup < 0:
        raise SystemExit("archivas-sim: --warmup must not be negative")
    if args.bandwidth_mbit <= 0 or args.block_time <= 0 or args.transfers_per_block < 0:
        raise SystemExit("archivas-sim: --bandwidth-mbit and --block-time must be positive")
    return SimConfig(nodes=args.nodes, blocks=args.blocks, seed=args.seed, latency_ms=args.latency_ms,
                     bandwidth_mbit=args.bandwidth_mbit, loss=args.loss, partition=args.partition,
                     silent=args.silent, hostile=args.hostile, transfers_per_block=args.transfers_per_block,
                     block_time=args.block_time, newcomer=not args.no_newcomer, warmup=args.warmup)


def table(result: Result) -> str:
    def ms(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:,.0f} ms"

    a = result.arrival_ms
    ratio = result.relay_bytes_per_node_per_block / max(1.0, result.block_bytes)
    rows = [
        ("nodes (honest)", f"{result.nodes} ({result.honest_nodes})"),
        ("blocks on the main chain / made", f"{result.blocks} / {result.blocks_made}"),
        ("block at 50% / 90% / 99% / 100% of nodes", " / ".join(ms(a[k]) for k in ("p50", "p90", "p99", "p100"))),
        ("  (median over blocks; worst block)", " / ".join(ms(result.arrival_ms_worst[k])
                                                          for k in ("p50", "p90", "p99", "p100"))),
        ("stale block rate", f"{result.stale_rate:.2%}"),
        ("mean block size", f"{result.block_bytes:,.0f} B"),
        ("bytes sent per node per block", f"{result.relay_bytes_per_node_per_block:,.0f} B ({ratio:.1f}x a block)"),
        ("messages sent per node per block", f"{result.messages_per_node_per_block:,.1f}"),
        ("one tip after the partition healed", ms(result.heal_ms)),
        ("newcomer synced in", ms(result.newcomer_sync_ms)),
        ("every honest node on one tip", "yes" if result.agreed else "NO"),
        ("transfers sent / lost", f"{result.transfers} / {result.lost_transfers}"),
        ("compact blocks rebuilt / needed a round trip", f"{result.compact.get('rebuilt', 0)} / "
                                                          f"{result.compact.get('asked_missing', 0)}"),
        ("simulated time", f"{result.sim_seconds:,.0f} s"),
        ("wall time", f"{result.wall_s:,.1f} s"),
        ("digest", result.digest),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    result = Simulation(config_from(args)).run()
    if args.json:
        json.dump(result.to_json(), sys.stdout)
        sys.stdout.write("\n")
    else:
        print(table(result))
    return 0 if result.agreed else 1


if __name__ == "__main__":
    raise SystemExit(main())
