"""What /metrics and /readyz show of one node: Prometheus series and readiness.

Each node has its own `CollectorRegistry` (several nodes share a test process). Most
series are read from the node at scrape time by `NodeCollector` (tip, peers, traffic,
mempool, bans, sync); the rest are Counters and Histograms fed by small hooks in the node,
the peer layer's disconnect event and the embedded farmer (validation time by component,
blocks added, reorganisations by depth, VDF segments, plot look-ups). Every series is named
`archivas_*`; docs/metrics.md lists them with their labels, buckets and windows.

A scrape runs on the reactor thread (reading the tip reads SQLite, which belongs to that
thread), so /metrics is rendered here with prometheus_client's own encoders rather than
through its WSGI resource, which would collect in a thread pool. Durations of checks are
measured with `time.perf_counter` where they run (a thread of the verify pool); windows
and ages come from the node's reactor clock.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import time
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from archivas import __version__
from archivas.chain.blockchain import ADDED_TIP
from archivas.chain.encoding import canonical_json
from archivas.protocols import wire

READY_TIP_AGE_BLOCKS = 10  # /readyz: the tip may be at most this many target block times old
SYNC_RATE_WINDOW = 10.0  # seconds over which archivas_sync_rate_blocks_per_second is averaged
VDF_RATE_WINDOW = 60.0  # seconds over which local VDF segments estimate the timelord's speed
MAX_NAME_FILTERS = 64  # name[] parameters a scrape may give (more: 400)

# Seconds. A fastnet segment verifies in ~1.5 ms, a devnet one in ~3.6 ms; a block carries
# up to 1,024 segments.
VALIDATION_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
LOOKUP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
REORG_BUCKETS = (1, 2, 3, 4, 5, 10, 20, 50, 100, 1000)  # blocks disconnected

# The function a verify thread runs -> the component it is counted as.
COMPONENTS = {
    "check_standalone": "block",  # a whole block: header proofs (signature, space, VDF) and body
    "check_header": "header",  # a header alone (headers-first sync): signature, space, VDF
    "_body_then": "body",  # the body of a block whose header was proved: root, transfers
    "assumed_body": "body",  # the same below the assumed block (chain/assumed.py): no signatures
    "verify_segment": "vdf_segment",  # one VDF segment from a timelord or a peer
}
# Checks that split their own time (consensus `timings`) into these components too.
SPLIT = frozenset({"check_standalone", "check_header", "_body_then"})
PARTS = ("farmer_signature", "proof_of_space", "vdf", "signatures")

# Message types as labels: the known names, and "other" for the rest (a peer sending
# unknown type numbers must not grow the label set).
KNOWN_TYPES = frozenset({cls.NAME for cls in wire.MESSAGES.values()} | {"HANDSHAKE"})

F = TypeVar("F", bound=Callable[..., Any])


def type_label(kind: str) -> str:
    return kind if kind in KNOWN_TYPES else "other"


def _add_traffic(totals: collections.Counter[tuple[str, str, str]], info: Any) -> None:
    """A connection's messages and bytes by type and direction, added to `totals`."""
    for direction, messages, nbytes in (("in", info.messages_in, info.bytes_in),
                                        ("out", info.messages_out, info.bytes_out)):
        for kind, count in messages.items():
            totals[(direction, type_label(kind), "messages")] += count
        for kind, count in nbytes.items():
            totals[(direction, type_label(kind), "bytes")] += count


class NodeMetrics:
    """A node's registry and the hooks that feed it. `node` is read at scrape time only."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=False)
        self.validation = Histogram(
            "archivas_validation_seconds", "Time spent validating, by component", ["component"],
            buckets=VALIDATION_BUCKETS, registry=self.registry)
        self.reorgs = Histogram(
            "archivas_reorg_depth_blocks", "Reorganisations, by the number of blocks they disconnected",
            buckets=REORG_BUCKETS, registry=self.registry)
        self.blocks_added = Counter(
            "archivas_blocks_added", "Valid blocks stored, by where they went (tip or side branch)",
            ["result"], registry=self.registry)
        self.sync_blocks = Counter(
            "archivas_sync_blocks", "Blocks added by sync (batched import)", registry=self.registry)
        self.vdf_segments = Counter(
            "archivas_vdf_segments_accepted", "VDF segments accepted on the tip, by source",
            ["source"], registry=self.registry)
        self.farmer_lookups = Histogram(
            "archivas_farmer_lookup_seconds", "Time the embedded farmer took to look its plots up "
            "for one signage point", buckets=LOOKUP_BUCKETS, registry=self.registry)
        self.farmer_proofs = Counter(
            "archivas_farmer_proofs_found", "Winning proofs of space the embedded farmer found",
            registry=self.registry)
        for component in (*COMPONENTS.values(), *PARTS, "storage"):
            self.validation.labels(component)  # every component shows, at 0, before its first check
        for result in ("tip", "side"):
            self.blocks_added.labels(result)
        for source in ("local", "peer"):
            self.vdf_segments.labels(source)
        self.farmer: Any = None
        self.timelord: Any = None
        self.local_segments = 0
        self.closed_traffic: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._sync_added: collections.deque[tuple[float, int]] = collections.deque()
        self._local_segments: collections.deque[tuple[float, int]] = collections.deque()  # (when, iterations)
        self._tx_sizes: dict[bytes, int] = {}
        self.registry.register(NodeCollector(self))

    # hooks (each cheap; none changes what the node decides)

    def timed(self, f: F) -> F:
        """`f`, observing its duration as its component (COMPONENTS; others as 'other')."""
        component = COMPONENTS.get(getattr(f, "__name__", ""), "other")
        histogram = self.validation.labels(component)

        validation = self.validation
        split = getattr(f, "__name__", "") in SPLIT

        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            timings: dict[str, float] = {}
            try:
                return f(*args, timings=timings, **kwargs) if split else f(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - started)
                for part, seconds in timings.items():  # the consensus checks' own split
                    if part in PARTS:  # (timings also count what was verified: not seconds)
                        validation.labels(part).observe(seconds)

        run.__name__ = getattr(f, "__name__", "run")
        return run  # type: ignore[return-value]

    @contextlib.contextmanager
    def storing(self) -> Iterator[None]:
        """Around Chain.add_block: context and state checks and the SQLite commit."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.validation.labels("storage").observe(time.perf_counter() - started)

    def block_accepted(self, result: Any) -> None:
        """A valid block stored (Node._accepted): counted, and a reorganisation by depth."""
        self.blocks_added.labels("tip" if result.status == ADDED_TIP else "side").inc()
        if result.disconnected:
            self.reorgs.observe(len(result.disconnected))

    def synced_block(self) -> None:
        self.sync_blocks.inc()
        now = self.node.reactor.seconds()
        if self._sync_added and self._sync_added[-1][0] == now:
            self._sync_added[-1] = (now, self._sync_added[-1][1] + 1)
        else:
            self._sync_added.append((now, 1))
        self._prune(now)

    def vdf_accepted(self, local: bool, iterations: int) -> None:
        self.vdf_segments.labels("local" if local else "peer").inc()
        if local:
            self.local_segments += 1
            now = self.node.reactor.seconds()
            self._local_segments.append((now, iterations))
            self._prune(now)

    def peer_closed(self, proto: Any) -> None:
        """A connection left the peer list: its traffic stays in the totals."""
        if proto.info is not None:
            _add_traffic(self.closed_traffic, proto.info)

    def attach_farmer(self, farmer: Any) -> None:
        self.farmer = farmer

    def attach_timelord(self, timelord: Any) -> None:
        """A timelord in this process: its `iterations_per_second` and `segments_made`."""
        self.timelord = timelord

    def timed_lookup(self, f: F) -> F:
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                self.farmer_lookups.observe(time.perf_counter() - started)

        return run  # type: ignore[return-value]

    def proof_found(self) -> None:
        self.farmer_proofs.inc()

    # derived values

    def _prune(self, now: float) -> None:
        while self._sync_added and self._sync_added[0][0] <= now - SYNC_RATE_WINDOW:
            self._sync_added.popleft()
        while self._local_segments and self._local_segments[0][0] <= now - VDF_RATE_WINDOW:
            self._local_segments.popleft()

    def sync_rate(self) -> float:
        """Blocks added by sync in the last SYNC_RATE_WINDOW seconds, per second."""
        self._prune(self.node.reactor.seconds())
        return sum(n for _, n in self._sync_added) / SYNC_RATE_WINDOW

    def timelord_rate(self) -> tuple[float, int]:
        """(iterations per second, segments made): the embedded timelord's own figures when
        one is attached, else estimated from the segments the node accepted from local
        callers (the RPC, an embedded timelord) over the last VDF_RATE_WINDOW seconds."""
        if self.timelord is not None:
            return (float(getattr(self.timelord, "iterations_per_second", 0) or 0),
                    int(getattr(self.timelord, "segments_made", 0) or 0))
        self._prune(self.node.reactor.seconds())
        rate = sum(iterations for _, iterations in self._local_segments) / VDF_RATE_WINDOW
        return rate, self.local_segments

    def mempool_bytes(self) -> int:
        """The pending transfers' JSON size (sizes cached by hash between scrapes)."""
        sizes = self._tx_sizes
        current = {}
        for tx in self.node.mempool.transactions():
            size = sizes.get(tx.hash)
            if size is None:
                size = len(canonical_json(tx.to_json()))
            current[tx.hash] = size
        self._tx_sizes = current
        return sum(current.values())

    def traffic(self) -> collections.Counter[tuple[str, str, str]]:
        """(direction, type, messages|bytes) -> total, closed connections and open ones."""
        totals = collections.Counter(self.closed_traffic)
        for proto in self.node.peers.peers:
            if proto.info is not None:
                _add_traffic(totals, proto.info)
        return totals

    def render(self, accept: Optional[str] = None, accept_encoding: Optional[str] = None,
               names: Iterable[str] = ()) -> tuple[bytes, dict[str, str]]:
        """The exposition (Prometheus text, or OpenMetrics if `accept` asks for it), gzip
        when `accept_encoding` allows it, restricted to `names` if any; and its headers."""
        encoder, content_type = choose_encoder(accept or "")
        wanted = list(names)
        registry: Any = self.registry.restricted_registry(wanted) if wanted else self.registry
        body = encoder(registry)
        headers = {"content-type": content_type}
        if accept_encoding and "gzip" in accept_encoding:
            body = gzip.compress(body, compresslevel=1)
            headers["content-encoding"] = "gzip"
        return body, headers


def scrape(metrics: NodeMetrics, request: Any) -> bytes:
    """GET /metrics: the exposition for a twisted.web request (`name[]=...` restricts it to
    those series, at most MAX_NAME_FILTERS of them)."""
    raw = request.args.get(b"name[]", [])
    try:
        names = [n.decode("utf-8") for n in raw]
    except UnicodeDecodeError:
        names = None
    if names is None or len(names) > MAX_NAME_FILTERS:
        request.setResponseCode(400)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"error": f"name[] must be at most {MAX_NAME_FILTERS} UTF-8 series names"}).encode()
    accept = request.getHeader(b"accept")
    encoding = request.getHeader(b"accept-encoding")
    body, headers = metrics.render(accept.decode("latin-1") if isinstance(accept, bytes) else accept,
                                   encoding.decode("latin-1") if isinstance(encoding, bytes) else encoding, names)
    for key, value in headers.items():
        request.setHeader(key.encode(), value.encode())
    return body


def readiness(node: Any) -> dict[str, Any]:
    """Whether the node is synced (GET /readyz), and why not.

    Ready when all of: (1) no sync round is running; (2) no ready peer shows more weight
    than our tip with a claim that no round has refuted; (3) the tip is at most
    READY_TIP_AGE_BLOCKS target block times old, by the node's clock. (3) is waived only for
    a node at genesis with no connection at all: the first node of a fresh network has
    nothing to be behind of."""
    tip = node.chain.tip
    now = node.reactor.seconds()
    age = max(0.0, now - tip.timestamp / 1000)
    limit = READY_TIP_AGE_BLOCKS * node.params.target_block_time_ms / 1000
    doc: dict[str, Any] = {"ready": False, "height": tip.height, "weight": tip.weight,
                           "syncing": bool(node.sync.active), "tipAgeSeconds": round(age, 3),
                           "maxTipAgeSeconds": limit}
    ahead = []
    for proto in node.peers.ready_peers():
        info = proto.info
        if info is None or info.weight <= tip.weight:
            continue
        agent = proto.sync_agent
        refuted = agent.refuted if agent is not None else None
        if refuted != (info.tip_hash, info.weight, info.height):
            ahead.append(info)
    if node.sync.active:
        doc["error"] = f"syncing: at height {tip.height}"
    elif ahead:
        best = max(ahead, key=lambda i: i.weight)
        doc["error"] = (f"behind: peer {best.address} shows weight {best.weight} at height {best.height}, "
                        f"ours is {tip.weight} at height {tip.height}")
    elif age > limit and not (tip.height == 0 and not node.peers.peers):
        doc["error"] = (f"stale tip: {age:.0f} s old, more than {READY_TIP_AGE_BLOCKS} target block times "
                        f"({limit:g} s)")
    else:
        doc["ready"] = True
    return doc


class NodeCollector:
    """Series read from the node at scrape time."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self.metrics.node)

    def _families(self, node: Any) -> list[Metric]:
        """The families, filled from `node` (None: empty, for describe())."""
        m = self.metrics

        def gauge(name: str, doc: str, value: Any = None, labels: Optional[list[str]] = None) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            if node is not None and value is not None and labels is None:
                family.add_metric([], value)
            return family

        def counter(name: str, doc: str, value: Any = None, labels: Optional[list[str]] = None) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            if node is not None and value is not None and labels is None:
                family.add_metric([], value)
            return family

        live = node is not None
        tip: Any = node.chain.tip if live else None
        peers: Any = node.peers if live else None
        info = GaugeMetricFamily("archivas_node_info", "The node's network, genesis and version (value 1)",
                                 labels=["network", "genesis", "version"])
        families: list[Metric] = [info]
        if live:
            info.add_metric([node.params.name, node.genesis_hash.hex(), __version__], 1)
        families += [
            gauge("archivas_height", "Height of the tip", tip.height if tip else None),
            gauge("archivas_weight", "Weight (sum of difficulties) of the tip", tip.weight if tip else None),
            gauge("archivas_difficulty", "Difficulty of the tip", tip.difficulty if tip else None),
            gauge("archivas_tip_timestamp_seconds", "The tip's timestamp (Unix seconds)",
                  tip.timestamp / 1000 if tip else None),
            gauge("archivas_syncing", "1 while a sync round runs", int(node.sync.active) if live else None),
            gauge("archivas_ready", "1 when /readyz answers 200", int(readiness(node)["ready"]) if live else None),
            counter("archivas_sync_rounds", "Sync rounds started", node.sync.rounds if live else None),
            gauge("archivas_sync_rate_blocks_per_second",
                  f"Blocks added by sync per second over the last {SYNC_RATE_WINDOW:g} s",
                  m.sync_rate() if live else None),
            gauge("archivas_mempool_transactions", "Pending transfers", len(node.mempool) if live else None),
            gauge("archivas_mempool_bytes", "Pending transfers' JSON size in bytes",
                  m.mempool_bytes() if live else None),
            gauge("archivas_orphans", "Blocks held until their parent arrives", len(node.orphans) if live else None),
            counter("archivas_blocks_rejected", "Blocks refused by validation", node.rejected_blocks if live else None),
            gauge("archivas_bans", "Operator bans in force (addresses or subnets)", len(peers.bans) if live else None),
            gauge("archivas_discouraged_addresses", "Addresses discouraged for misbehaviour",
                  len(peers.discouraged) if live else None),
            counter("archivas_p2p_evictions", "Inbound peers evicted for a newcomer", peers.evicted if live else None),
        ]
        by_direction = GaugeMetricFamily("archivas_peers", "Peers past the handshake, by direction",
                                         labels=["direction"])
        by_slot = GaugeMetricFamily("archivas_connections", "Open connections, by slot", labels=["slot"])
        messages = CounterMetricFamily("archivas_p2p_messages", "Peer messages, by direction and type",
                                       labels=["direction", "type"])
        nbytes = CounterMetricFamily("archivas_p2p_bytes", "Peer message bytes (with the newline), by "
                                     "direction and type", labels=["direction", "type"])
        dropped = CounterMetricFamily("archivas_p2p_dropped", "Messages dropped unparsed (not accepted in "
                                      "the connection's state) and addresses not stored, by type",
                                      labels=["type"])
        misbehaviour = CounterMetricFamily("archivas_p2p_misbehaviour", "Misbehaviour counted against peers, "
                                           "by reason", labels=["reason"])
        families += [by_direction, by_slot, messages, nbytes, dropped, misbehaviour]
        iterations, segments = m.timelord_rate() if live else (None, None)
        families += [
            gauge("archivas_timelord_iterations_per_second", "VDF iterations per second of the timelord in "
                  "this process (else estimated from local segments)", iterations),
            counter("archivas_timelord_segments", "VDF segments the timelord in this process made", segments),
        ]
        farmer = m.farmer if live else None
        families += [
            gauge("archivas_farmer_plots", "Plots the embedded farmer farms (0: none in this process)",
                  (len(farmer.plots) if farmer else 0) if live else None),
            counter("archivas_farmer_blocks_submitted", "Blocks the embedded farmer submitted",
                    (farmer.won if farmer else 0) if live else None),
        ]
        if not live:
            return families
        ready = peers.ready_peers()
        for direction in ("inbound", "outbound"):
            by_direction.add_metric([direction], sum(1 for p in ready if p.info and p.info.direction == direction))
        slots: collections.Counter[str] = collections.Counter({s: 0 for s in (
            "inbound", "manual", "outbound", "block-relay", "feeler")})
        for proto in peers.peers:
            slots[proto.slot] += 1
        for slot, count in sorted(slots.items()):
            by_slot.add_metric([slot], count)
        for (direction, kind, what), total in sorted(m.traffic().items()):
            (messages if what == "messages" else nbytes).add_metric([direction, kind], total)
        folded: collections.Counter[str] = collections.Counter()
        for kind, count in peers.dropped_counts.items():
            folded[kind if kind in KNOWN_TYPES or kind.startswith("address") else "other"] += count
        for kind, count in sorted(folded.items()):
            dropped.add_metric([kind], count)
        for reason, count in sorted(peers.misbehaviour_counts.items()):
            misbehaviour.add_metric([reason], count)
        return families


__all__ = ["NodeMetrics", "readiness", "scrape", "READY_TIP_AGE_BLOCKS", "SYNC_RATE_WINDOW", "VDF_RATE_WINDOW"]
