"""One simulated network, from set-up to figures.

`Simulation(SimConfig(...)).run()` builds N real nodes (Node, PeerManager, PeerProtocol,
sync, Chain on in-memory SQLite) on one HeapClock over a SimNetwork, lets them find each
other (each starts with a DNS-seed-like sample of addresses in its book; the topology is
what their own outbound logic makes of it), then farms `blocks` blocks with transfers
flowing, optionally cuts a partition and heals it, waits for agreement, lets a newcomer
sync, and returns a `Result` with the figures and the digest of the whole event trace.

Everything random comes from the seed: the network's draws, the farmers' and timelords'
events, and the peer layer's nonces and choices (protocols/entropy.seeded). Two runs with
one seed are the same event for event, whatever PYTHONHASHSEED is.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import math
import random
import sqlite3
import tempfile
import time
from typing import Any, Optional

from archivas.chain import params as network_params
from archivas.chain.block import Block
from archivas.chain.blockchain import Chain
from archivas.chain.keys import PrivateKey
from archivas.chain.params import NetworkParams
from archivas.chain.storage import Storage
from archivas.node import Node
from archivas.protocols import entropy, eviction
from archivas.protocols.identity import NodeIdentity
from archivas.sim.actors import HostileNode, SilentFactory
from archivas.sim.checker import STORE_BLOCK, Costs, SimChecker, Truth, TruthSegments, TruthTransfers
from archivas.sim.clock import HeapClock
from archivas.sim.codec import SharedDecoder
from archivas.sim.farming import BlockMaker, Farming, sim_plots
from archivas.sim.network import SimNetwork
from archivas.sim.traffic import FUNDS, Traffic, accounts

PORT = 9090
SEEDED_ADDRESSES = 32  # addresses a node starts with, as from a DNS seed
PING_INTERVAL = 120.0  # the sim's PING period, as Bitcoin's (a node's default is 10 s)
PEER_TIMEOUT = 360.0
ACCOUNTS = 256  # funded accounts sending transfers
PREROLL = 1.0  # block times of transfers before farming starts
# During farming, what survived each this many simulated seconds joins the frozen heap:
# the collector's full passes, which scan everything not frozen, then see only what the
# last seconds made (cyclic garbage among frozen objects waits for the end of the run).
FREEZE_EVERY = 20
# Allocations between young collections during a run (Python's default is 700): a run
# allocates millions of short-lived objects, and every tenth young pass is followed by
# an older one. 200 nodes x 4 blocks: 0.75 s in the collector instead of 1.98 s.
GC_YOUNG = 20_000


@dataclasses.dataclass
class SimConfig:
    nodes: int = 50
    blocks: int = 20
    seed: int = 1
    latency_ms: tuple[float, float] = (50.0, 150.0)
    bandwidth_mbit: float = 20.0
    loss: float = 0.0
    partition: Optional[tuple[float, float, float]] = None  # (T0, T1, fraction): seconds after farming starts
    silent: float = 0.0
    hostile: float = 0.0
    transfers_per_block: float = 50.0
    block_time: float = 20.0
    farmers: float = 0.1  # share of honest nodes that farm
    timelords: int = 2
    outbound: int = 8
    warmup: float = 90.0  # seconds for the nodes to find each other before farming starts
    drain: float = 120.0  # seconds after the last block for every node to agree
    newcomer: bool = True
    min_blocks_after_heal: int = 3  # with a partition: keep farming until this many blocks follow the heal


@dataclasses.dataclass
class Result:
    digest: str
    nodes: int
    blocks: int
    arrival_ms: dict[str, Optional[float]]
    arrival_ms_worst: dict[str, Optional[float]]
    stale_rate: float
    block_bytes: float
    relay_bytes_per_node_per_block: float
    messages_per_node_per_block: float
    heal_ms: Optional[float]
    newcomer_sync_ms: Optional[float]
    agreed: bool
    honest_nodes: int
    blocks_made: int
    transfers: int
    lost_transfers: int
    returned_transfers: int
    compact: dict[str, int]
    proofs_verified: dict[str, int]
    sim_seconds: float
    wall_s: float
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class MemoryStorage(Storage):
    """The chain's SQLite store in memory (no directory lock, nothing on disk)."""

    def __init__(self) -> None:
        super().__init__(tempfile.gettempdir(), connect=lambda path, **kw: sqlite3.connect(":memory:", **kw))

    def _take_lock(self) -> Any:
        return None


def simnet(block_time: float, keys: list[PrivateKey]) -> NetworkParams:
    """fastnet's proofs (cheap to make) with the simulated block time and funded accounts."""
    base = network_params.load("fastnet")
    params = dataclasses.replace(base, name="simnet", chain_id=1699, genesis_message="Archivas simnet",
                                 target_block_time_ms=int(block_time * 1000))
    return params.with_allocation({k.address: FUNDS for k in keys})


class SimNode:
    """One simulated host and what runs on it."""

    def __init__(self, index: int, address: str, kind: str, host: Any) -> None:
        self.index = index
        self.address = address
        self.kind = kind  # honest, silent, hostile
        self.host = host
        self.node: Any = None
        self.up = True
        self.tips: list[tuple[float, bytes, int]] = []  # (time, tip hash, height) at each new tip
        self.admitted: dict[bytes, float] = {}  # transfer id -> when its node admitted it (templates)
        self.address_for_rewards = PrivateKey.from_secret(b"archivas-sim-reward-%d" % index).address

    @property
    def honest(self) -> bool:
        return self.kind == "honest"


def host_address(i: int) -> str:
    """One address group (/16) per node, all routable: 11.0.0.1, 11.1.0.1, ..."""
    return f"{11 + i // 250}.{i % 250}.0.1"


class Simulation:
    def __init__(self, config: SimConfig) -> None:
        self.config = config

    def run(self) -> Result:
        started = time.monotonic()
        saved_key = eviction._PROCESS_KEY
        saved_threshold = gc.get_threshold()
        with entropy.seeded(self.config.seed * 1_000_003 + 17) as source:
            eviction._PROCESS_KEY = source.randbytes(32)
            gc.set_threshold(GC_YOUNG, *saved_threshold[1:])
            try:
                result = self._run()
            finally:
                eviction._PROCESS_KEY = saved_key
                gc.set_threshold(*saved_threshold)
                gc.unfreeze()
        result.wall_s = round(time.monotonic() - started, 2)
        return result

    # set-up

    def _run(self) -> Result:
        c = self.config
        rng = random.Random(c.seed)
        keys = accounts(ACCOUNTS)
        self.params = params = simnet(c.block_time, keys)
        self.clock = clock = HeapClock(start=params.genesis_timestamp / 1000 + 3600)
        self.net = SimNetwork(clock, random.Random(rng.getrandbits(64)), latency_ms=c.latency_ms,
                              bandwidth_mbit=c.bandwidth_mbit, loss=c.loss)
        self.truth = Truth()
        self.codec = SharedDecoder()
        self.costs = Costs.load(params.discriminant_bits)
        self.maker = BlockMaker(params, sim_plots())
        kinds = self._kinds(rng)
        self.sims = [self._make(i, kinds[i]) for i in range(c.nodes)]
        self.honest = [s for s in self.sims if s.honest]
        for s in self.sims:
            self._seed_book(s, rng)
        for s in self.sims:
            if s.node is not None:
                s.node.start()
        gc.freeze()  # the nodes as built: long-lived, out of the warm-up's full passes
        phases: dict[str, float] = {}
        mark = time.monotonic()
        # Transfers start flowing PREROLL block times before farming, so that the first
        # blocks find mempools as full as later ones (a network in its steady state).
        preroll = min(c.warmup, PREROLL * c.block_time)
        clock.run_until(clock.seconds() + c.warmup - preroll)
        self.traffic = Traffic(clock, random.Random(rng.getrandbits(64)), params, keys, self.honest,
                               c.transfers_per_block, c.block_time)
        self.traffic.start()
        clock.run_until(clock.seconds() + preroll)
        # What the set-up and the warm-up built (nodes, chains, connections: most of the
        # heap) is out of the collector's full passes from here on (they took ~5% of a
        # run, growing with the nodes); the end of the run gives it back. The set-up's
        # objects were frozen before the warm-up already (its full passes scanned them: a
        # fifth of a 200-node warm-up's time).
        gc.collect()
        gc.freeze()
        phases["warmup"], mark = time.monotonic() - mark, time.monotonic()

        # farming
        # Farmers spread evenly over the nodes (so both sides of any partition farm).
        count = max(2, round(len(self.honest) * c.farmers))
        step = len(self.honest) / count
        offset = rng.random() * step
        farmers = [self.honest[min(len(self.honest) - 1, int(offset + k * step))] for k in range(count)]
        space = [rng.uniform(1.0, 10.0) for _ in farmers]
        timelords = self._timelords()
        self.cut: set[int] = set()
        self.created: dict[bytes, tuple[Block, float, int]] = {}
        self.farming = Farming(clock, random.Random(rng.getrandbits(64)), self.maker, farmers, space, timelords,
                               c.block_time, self._reachable, self._made_block)
        self.t_start = clock.seconds()
        sent_before = self._sent()
        self.heal_at: Optional[float] = None
        self.healed_at: Optional[float] = None
        if c.partition is not None:
            t0, t1, fraction = c.partition
            side = [s for s in self.sims if s.index >= c.nodes * (1 - fraction)]
            clock.callLater(t0, self._cut, side)
            clock.callLater(t1, self._heal)
        self.farming.start(limit=c.blocks)
        ticks = 0
        while self.farming.made < c.blocks or self._heal_pending():
            if self.farming.made >= c.blocks and self.farming.limit is not None:
                self.farming.limit += 1  # a partition not yet healed (or just healed): keep farming
            clock.run_until(clock.seconds() + 1.0)
            ticks += 1
            if ticks % FREEZE_EVERY == 0:
                gc.freeze()
        self.farming.stop()
        self.traffic.stop()
        deadline = clock.seconds() + c.drain
        clock.run_until(clock.seconds() + c.block_time / 2)
        while not self._agreed() and clock.seconds() < deadline:
            clock.run_until(clock.seconds() + 1.0)
        sim_end = clock.seconds()
        phases["farming"], mark = time.monotonic() - mark, time.monotonic()
        sent = {k: v - sent_before[k] for k, v in self._sent().items()}
        newcomer_ms = self._newcomer(rng) if c.newcomer else None
        phases["newcomer"] = time.monotonic() - mark
        result = self._figures(sent, newcomer_ms, sim_end)
        result.extras["wall_s_by_phase"] = {k: round(v, 1) for k, v in phases.items()}
        result.extras["deliveries"] = self.net.deliveries
        return result

    def _kinds(self, rng: random.Random) -> list[str]:
        c = self.config
        kinds = ["honest"] * c.nodes
        protected = {0, c.nodes - 1}  # timelord nodes stay honest
        others = [i for i in range(c.nodes) if i not in protected]
        bad = rng.sample(others, min(len(others), round(c.nodes * c.silent) + round(c.nodes * c.hostile)))
        for n, i in enumerate(bad):
            kinds[i] = "silent" if n < round(c.nodes * c.silent) else "hostile"
        return kinds

    def _make(self, i: int, kind: str) -> SimNode:
        c = self.config
        address = host_address(i)
        host = self.net.add_host(address)
        sim = SimNode(i, address, kind, host)
        if kind == "silent":
            host.listen(PORT, SilentFactory())
            return sim
        chain = Chain(MemoryStorage(), self.params)
        identity = NodeIdentity(PrivateKey.from_secret(b"archivas-sim-node-%d-%d" % (c.seed, i)))
        options: dict[str, Any] = dict(
            node_identity=identity, listen_port=PORT, threaded=False,
            checker=SimChecker(self.clock, self.truth, self.costs), max_outbound=c.outbound,
            ping_interval=PING_INTERVAL, peer_timeout=PEER_TIMEOUT,
            endpoint_factory=lambda h, p, t, host=host: host.endpoint(h, p, t), codec=self.codec,
        )
        if kind == "hostile":
            node: Node = HostileNode(chain, self.clock, rng=random.Random(c.seed * 7919 + i), **options)
        else:
            node = Node(chain, self.clock, **options)
        node.verified_transfers = TruthTransfers(self.truth, host.charge, self.costs.tx_signature)
        node.verified_segments = TruthSegments(self.truth)
        host.receive_cost = self.costs.receive
        host.listen(PORT, node.peers.inbound_factory)
        node.on_tip.append(functools.partial(self._tip, sim))
        if kind == "honest":
            self._watch_admissions(sim, node)
        sim.node = node
        return sim

    def _watch_admissions(self, sim: SimNode, node: Node) -> None:
        """Note when each transfer entered this node's mempool (for its farmer's template)."""
        submit = node.submit_transaction

        def submit_and_note(tx: Any, source: Any = None) -> bytes:
            fresh = tx.hash not in node.mempool
            out = submit(tx, source)
            if fresh and tx.hash in node.mempool:
                sim.admitted[tx.hash] = self.clock.seconds()
                if len(sim.admitted) > 4 * node.mempool.max_transactions:
                    for old in list(sim.admitted)[: len(sim.admitted) // 2]:
                        del sim.admitted[old]
            return out

        node.submit_transaction = submit_and_note  # type: ignore[method-assign]

    def _seed_book(self, sim: SimNode, rng: random.Random) -> None:
        if sim.node is None:
            return
        others = [s for s in self.sims if s is not sim]
        for other in rng.sample(others, min(SEEDED_ADDRESSES, len(others))):
            sim.node.peers.book.add([f"{other.address}:{PORT}"], other.address)

    def _timelords(self) -> list[SimNode]:
        c = self.config
        picks = [0, c.nodes - 1] + [round(c.nodes * k / c.timelords) for k in range(1, c.timelords)]
        chosen: list[SimNode] = []
        for i in picks:
            s = self.sims[i]
            if s.honest and s not in chosen and len(chosen) < max(1, c.timelords):
                chosen.append(s)
        return chosen

    # events

    def _tip(self, sim: SimNode, block: Block) -> None:
        sim.host.charge(STORE_BLOCK)
        sim.tips.append((self.clock.seconds(), block.hash, block.height))
        if self.healed_at is None and self.heal_at is not None and self._agreed():
            self.healed_at = self.clock.seconds()

    def _made_block(self, winner: SimNode, block: Block) -> None:
        self.created[block.hash] = (block, self.clock.seconds(), winner.index)
        self.net.trace_note(b"block" + block.hash)
        d = winner.node.receive_block(block)
        d.addErrback(lambda f: None)

    def _reachable(self, a: SimNode, b: SimNode) -> bool:
        return (a.index in self.cut) == (b.index in self.cut)

    def _cut(self, side: list[SimNode]) -> None:
        self.cut = {s.index for s in side}
        self.net.partition([s.address for s in side])

    def _heal(self) -> None:
        self.cut = set()
        self.net.heal()
        self.heal_at = self.clock.seconds()
        if self._agreed():
            self.healed_at = self.heal_at

    def _heal_pending(self) -> bool:
        c = self.config
        if c.partition is None:
            return False
        if self.heal_at is None:
            return True
        after = sum(1 for _, t, _ in self.created.values() if t > self.heal_at)
        return after < c.min_blocks_after_heal

    def _agreed(self) -> bool:
        tips = {s.node.chain.tip.hash for s in self.honest if s.up}
        return len(tips) == 1

    def _sent(self) -> dict[str, int]:
        return {"bytes": sum(s.host.bytes_sent for s in self.honest),
                "writes": sum(s.host.writes_sent for s in self.honest)}

    def _newcomer(self, rng: random.Random) -> Optional[float]:
        """A fresh node joins after the run: how long until its tip is everyone's."""
        index = len(self.sims)
        sim = self._make(index, "honest")
        self._seed_book(sim, rng)
        target = self.honest[0].node.chain.tip.hash
        started = self.clock.seconds()
        sim.node.start()
        deadline = started + 300.0
        while sim.node.chain.tip.hash != target and self.clock.seconds() < deadline:
            self.clock.run_until(self.clock.seconds() + 0.5)
        if sim.node.chain.tip.hash != target:
            return None
        return round((self.clock.seconds() - started) * 1000, 1)

    # figures

    def _figures(self, sent: dict[str, int], newcomer_ms: Optional[float], sim_end: float) -> Result:
        reference = self.honest[0].node.chain
        tip_height = reference.height
        main: dict[int, bytes] = {}
        for height in range(1, tip_height + 1):
            h = reference.storage.main_hash(height)
            if h is not None:
                main[height] = h
        main_set = set(main.values())
        made = list(self.created.values())
        on_main = [(b, t) for b, t, _ in made if b.hash in main_set]
        stale = 1 - len(on_main) / len(made) if made else 0.0
        shares = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p100": 1.0}
        per_block: dict[str, list[float]] = {k: [] for k in shares}
        firsts = [self._first_times(s, main_set) for s in self.honest]
        for block, created in on_main:
            arrivals = sorted(f.get(block.height, math.inf) - created for f in firsts)
            for name, share in shares.items():
                k = max(1, math.ceil(share * len(arrivals)))
                per_block[name].append(arrivals[k - 1] * 1000)
        arrival = {k: _median(v) for k, v in per_block.items()}
        worst = {k: (round(max(v), 1) if v and max(v) != math.inf else None) for k, v in per_block.items()}
        n_blocks = max(1, len(made))
        n_honest = len(self.honest)
        in_main_txs = {tx.hash for b, _ in on_main for tx in b.transactions}
        for h in main.values():
            blk = reference.block(h)
            if blk is not None:
                in_main_txs.update(tx.hash for tx in blk.transactions)
        mined_anywhere = {tx.hash for b, _, _ in made for tx in b.transactions}
        stale_txs = {tx.hash for b, _, _ in made if b.hash not in main_set for tx in b.transactions}
        pooled: set[bytes] = set()
        for s in self.honest:
            pooled.update(tx.hash for tx in s.node.mempool.transactions())
        lost = len(mined_anywhere - in_main_txs - pooled)
        returned = len(stale_txs & in_main_txs)
        compact: dict[str, int] = {}
        for s in self.honest:
            for k, v in s.node.compact_stats.items():
                compact[k] = compact.get(k, 0) + v
        heal_ms = None
        if self.heal_at is not None:
            heal_ms = round((self.healed_at - self.heal_at) * 1000, 1) if self.healed_at is not None else None
        return Result(
            digest=self.net.digest(), nodes=self.config.nodes, blocks=len(on_main),
            arrival_ms={k: (round(v, 1) if v is not None else None) for k, v in arrival.items()},
            arrival_ms_worst=worst, stale_rate=round(stale, 4),
            block_bytes=round(sum(len(b.encode()) for b, _ in on_main) / max(1, len(on_main)), 1),
            relay_bytes_per_node_per_block=round(sent["bytes"] / n_honest / n_blocks, 1),
            messages_per_node_per_block=round(sent["writes"] / n_honest / n_blocks, 2),
            heal_ms=heal_ms, newcomer_sync_ms=newcomer_ms, agreed=self._agreed(), honest_nodes=n_honest,
            blocks_made=len(made), transfers=len(self.traffic.submitted), lost_transfers=lost,
            returned_transfers=returned, compact=compact, proofs_verified=dict(self.truth.verified),
            sim_seconds=round(sim_end - self.t_start, 1), wall_s=0.0,
        )

    def _first_times(self, sim: SimNode, main_set: set[bytes]) -> dict[int, float]:
        """Height -> when this node's tip first reached it on the final main chain."""
        out: dict[int, float] = {}
        best = 0
        for t, h, height in sim.tips:
            if h in main_set and height > best:
                for k in range(best + 1, height + 1):
                    out[k] = t
                best = height
        return out


def _median(values: list[float]) -> Optional[float]:
    """The median over blocks; None if any block never reached that share of nodes."""
    finite = sorted(v for v in values if v != math.inf)
    if not finite or len(finite) < len(values):
        return None
    mid = len(finite) // 2
    return finite[mid] if len(finite) % 2 else (finite[mid - 1] + finite[mid]) / 2
