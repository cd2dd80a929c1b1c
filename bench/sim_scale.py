"""The simulator's goal run, and the figures beside their goals, in one table.

One job: run `archivas-sim`'s Simulation for the goal configuration (1,000 nodes, 8
outbound each, links 50-150 ms at 20 Mbit/s, 50 transfers per block, 100 blocks) or a
smaller one, and print each figure next to its goal (docs/simulator.md says what each
figure is). Optionally the same network with silent and hostile nodes, side by side.

    .venv/bin/python bench/sim_scale.py                      # the goal run (long: see the note)
    .venv/bin/python bench/sim_scale.py --nodes 200 --blocks 10
    .venv/bin/python bench/sim_scale.py --nodes 200 --blocks 10 --adversaries
    .venv/bin/python bench/sim_scale.py --quick              # 100 nodes, 4 blocks
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional

from archivas.sim.run import Result, SimConfig, Simulation

GOALS = {"p90": 1000.0, "p99": 2000.0, "stale": 0.005, "relay_x": 3.0, "wall_s": 900.0}


def row(name: str, r: Result) -> dict[str, Any]:
    return {
        "run": name, "nodes": r.nodes, "blocks": r.blocks_made,
        "p50": r.arrival_ms["p50"], "p90": r.arrival_ms["p90"], "p99": r.arrival_ms["p99"],
        "p100": r.arrival_ms["p100"], "worst_p90": r.arrival_ms_worst["p90"], "stale": r.stale_rate,
        "block_B": r.block_bytes, "relay_x": round(r.relay_bytes_per_node_per_block / max(1.0, r.block_bytes), 2),
        "msgs": r.messages_per_node_per_block, "newcomer_ms": r.newcomer_sync_ms,
        "one_tip": r.agreed, "wall_s": r.wall_s, "digest": r.digest[:16],
    }


def fmt(v: Optional[Any]) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if v < 1 else f"{v:,.1f}"
    return str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--blocks", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--adversaries", action="store_true", help="also run with 10%% silent and 5%% hostile nodes")
    ap.add_argument("--quick", action="store_true", help="100 nodes, 4 blocks")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    nodes, blocks = (100, 4) if args.quick else (args.nodes, args.blocks)
    base = dict(nodes=nodes, blocks=blocks, seed=args.seed, latency_ms=(50.0, 150.0), bandwidth_mbit=20.0,
                transfers_per_block=50.0, outbound=8)
    rows = [row("clean", Simulation(SimConfig(**base)).run())]
    if args.adversaries:
        rows.append(row("10% silent, 5% hostile", Simulation(SimConfig(**base, silent=0.1, hostile=0.05)).run()))
    if args.json:
        print(json.dumps(rows))
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(fmt(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(fmt(r[c]).rjust(widths[c]) for c in columns))
    print()
    print("goals: p90 < {p90:.0f} ms, p99 < {p99:.0f} ms, stale < {stale:.1%}, relay < {relay_x}x a block, "
          "wall < {wall_s:.0f} s (1,000 nodes, 100 blocks)".format(**GOALS))
    clean = rows[0]
    if len(rows) > 1 and clean["p90"] and rows[1]["p90"]:
        print(f"p90 with adversaries / clean: {rows[1]['p90'] / clean['p90']:.2f} (goal <= 1.5)")


if __name__ == "__main__":
    main()
