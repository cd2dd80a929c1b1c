"""Validation in the simulator: every proof verified once, every node charged its own time.

A thousand nodes cannot each verify every block for real in one process, and need not:
the answer to "does this block verify" depends only on its bytes. `Truth` verifies each
block, header, transfer signature and VDF segment once, for real, and remembers the answer
keyed by everything the check reads (the full block bytes and the parent's hash; the whole
signed transfer; the segment with its seed, start, size and iterations). Nothing is
skipped: a forged copy has other bytes, misses, and is verified (and refused).

`SimChecker` stands in for a node's verify thread pool (Node's `checker` hook). It takes
the answer from `Truth` and delivers it on the simulated clock after the time the node's
own validation would take: the calibrated cost of each component (costs.json, written by
bench/validation_costs.py on this machine) for what that node has not verified before (its
own verified-transfer and verified-segment caches are consulted and filled as the real
check would), queued on as many lanes as the node has verify threads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import attrs
from twisted.internet import defer

from archivas.chain import consensus, transactions, vdf
from archivas.chain.block import Block, Header, child_discriminant_seed, child_seed
from archivas.chain.encoding import canonical_json
from archivas.chain.verifycache import VerifiedSegments, VerifiedTransfers, segment_key, transfer_key

COSTS_FILE = Path(__file__).with_name("costs.json")
# Used when costs.json is missing: figures of the same order as a 2-core x86-64 (seconds).
DEFAULT_COSTS = {
    "farmer_signature": 60e-6, "proof_of_space": 0.13e-3, "vdf_segment_fastnet": 1.9e-3,
    "vdf_segment_devnet": 12e-3, "tx_signature": 60e-6, "tx_stateless": 25e-6,
    "decode_per_byte": 12e-9, "encode_per_byte": 8e-9, "tx_root_per_tx": 3e-6,
}
PER_MESSAGE = 30e-6  # a line's framing, envelope and dispatch on the reactor, besides its bytes
STORE_BLOCK = 1.5e-3  # committing a block (SQLite on disk, WAL) on the reactor thread
SEEN_STATELESS = 4e-6  # stateless checks of a transfer whose addresses were decoded before (bench table)


@attrs.frozen
class Costs:
    farmer_signature: float
    proof_of_space: float
    vdf_segment: float
    tx_signature: float
    tx_stateless: float
    decode_per_byte: float
    encode_per_byte: float
    tx_root_per_tx: float

    @classmethod
    def load(cls, discriminant_bits: int, path: Path = COSTS_FILE) -> "Costs":
        """The calibration for a network: its VDF segment cost by discriminant size."""
        data = dict(DEFAULT_COSTS)
        if path.exists():
            data.update({k: v for k, v in json.loads(path.read_text()).items() if isinstance(v, (int, float))})
        segment = data["vdf_segment_devnet"] if discriminant_bits >= 1024 else data["vdf_segment_fastnet"]
        return cls(data["farmer_signature"], data["proof_of_space"], segment, data["tx_signature"],
                   data["tx_stateless"], data["decode_per_byte"], data["encode_per_byte"], data["tx_root_per_tx"])

    def receive(self, nbytes: int) -> float:
        """Reading a line of `nbytes` on the reactor thread: framing, JSON, typed parse."""
        return PER_MESSAGE + self.decode_per_byte * nbytes


class Truth:
    """Each proof verified once in the process; the answers kept (see the module doc)."""

    def __init__(self) -> None:
        self._blocks: dict[tuple[str, bytes, bytes], Any] = {}
        self._transfers: dict[bytes, bool] = {}
        self._segments: dict[bytes, bool] = {}
        self.verified = {"blocks": 0, "transfers": 0, "segments": 0}
        # The Truth's answers as caches for the real checks it runs (each proof once).
        self.segments = VerifiedSegments(capacity=1 << 30, verify=self.segment)
        self.transfers = VerifiedTransfers(capacity=1 << 30, verify=self.transfer)

    def transfer(self, tx: transactions.Transaction) -> bool:
        key = transfer_key(tx)
        ok = self._transfers.get(key)
        if ok is None:
            ok = self._transfers[key] = transactions.verify_signature(tx)
            self.verified["transfers"] += 1
        return ok

    def segment(self, seed: bytes, start: bytes, segment: vdf.Segment, bits: int, iterations: int) -> bool:
        key = segment_key(seed, start, segment, bits, iterations)
        ok = self._segments.get(key)
        if ok is None:
            ok = self._segments[key] = vdf.verify_segment(seed, start, segment, bits, iterations)
            self.verified["segments"] += 1
        return ok

    def check(self, name: str, f: Callable[..., Any], subject: bytes, parent: bytes, *args: Any,
              **kwargs: Any) -> Any:
        """The result of `f(*args, **kwargs)` (a score, or the BlockRejected it raised),
        computed once per (check, subject bytes, parent hash). Its own proofs go through
        this Truth's caches, so a block's segments verified from gossip are not redone."""
        key = (name, subject, parent)
        if key not in self._blocks:
            self.verified["blocks"] += 1
            try:
                self._blocks[key] = f(*args, **kwargs)
            except consensus.BlockRejected as e:
                self._blocks[key] = e
        result = self._blocks[key]
        if isinstance(result, consensus.BlockRejected):
            raise result
        return result


class TruthTransfers(VerifiedTransfers):
    """A node's verified-transfer cache whose misses ask the Truth (and charge the node)."""

    def __init__(self, truth: Truth, charge: Callable[[float], None], cost: float) -> None:
        super().__init__(verify=self._verify)
        self._truth, self._charge, self._cost = truth, charge, cost

    def _verify(self, tx: transactions.Transaction) -> bool:
        self._charge(self._cost)
        return self._truth.transfer(tx)


class TruthSegments(VerifiedSegments):
    def __init__(self, truth: Truth) -> None:
        super().__init__(verify=truth.segment)


class SimChecker:
    """One node's verify pool on the simulated clock: `lanes` checks at once, each done
    after its calibrated cost. Use as `Node(checker=...)`; it is called (node, f, args,
    kwargs) where the node would hand `f` to a thread."""

    def __init__(self, clock: Any, truth: Truth, costs: Costs, lanes: int = 2) -> None:
        self.clock = clock
        self.truth = truth
        self.costs = costs
        self._lanes = [0.0] * lanes
        self._cost = 0.0
        self.busy_seconds = 0.0

    def __call__(self, node: Any, f: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> defer.Deferred:
        result: Any
        try:
            result = self._run(node, f, args, kwargs)
        except consensus.BlockRejected as e:
            result = e
        cost = self._cost
        now = self.clock.seconds()
        lane = min(range(len(self._lanes)), key=lambda i: self._lanes[i])
        start = max(now, self._lanes[lane])
        done = self._lanes[lane] = start + cost
        self.busy_seconds += cost
        d: defer.Deferred = defer.Deferred()
        if isinstance(result, BaseException):
            self.clock.callLater(done - now, d.errback, result)
        else:
            self.clock.callLater(done - now, d.callback, result)
        return d

    def _run(self, node: Any, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The answer, and (in self._cost) what this node's own check would have cost."""
        c = self.costs
        name = getattr(f, "__name__", "")
        segments: Optional[VerifiedSegments] = kwargs.get("segments")
        transfers: Optional[VerifiedTransfers] = kwargs.get("transfers")
        self._cost = 0.0
        if name == "verify_segment":
            seed, start, segment, bits, iterations = args
            cache = kwargs.get("cache")
            if cache is not None and (seed, start, segment, bits, iterations) in cache:
                return True
            self._cost = c.vdf_segment
            ok = self.truth.segment(seed, start, segment, bits, iterations)
            if ok and cache is not None:
                cache.add(seed, start, segment, bits, iterations)
            return ok
        if name in ("check_standalone", "check_header"):
            subject: Any = args[0]
            header: Header = subject.header if isinstance(subject, Block) else subject
            parent: Header = args[1]
            self._cost += c.farmer_signature + c.proof_of_space + self._segments_cost(header, parent, node, segments)
            if isinstance(subject, Block):
                self._cost += self._body_cost(subject, transfers)
            raw = subject.encode() if isinstance(subject, Block) else canonical_json(subject.to_json())
            truth_kwargs: dict[str, Any] = {"segments": self.truth.segments}
            if isinstance(subject, Block):
                truth_kwargs["transfers"] = self.truth.transfers
            result = self.truth.check(name, f, raw, parent.hash, *args, **truth_kwargs)
            self._remember(node, header, subject, parent, segments, transfers)
            return result
        if name == "_body_then":
            block: Block = args[0]
            self._cost += self._body_cost(block, transfers)
            result = self.truth.check(name, f, block.encode(), b"", *args, transfers=self.truth.transfers)
            self._remember(node, block.header, block, None, None, transfers)
            return result
        return f(*args, **kwargs)  # anything else runs for real, uncharged

    def _segments_cost(self, header: Header, parent: Header, node: Any, segments: Optional[VerifiedSegments]) -> float:
        if segments is None:
            return self.costs.vdf_segment * len(header.vdf)
        seed, dseed = child_seed(parent, node.params), child_discriminant_seed(parent, node.params)
        bits, iterations = node.params.discriminant_bits, header.vdf_iterations
        start, misses = vdf.origin(dseed, seed, bits), 0
        for segment in header.vdf:
            if (dseed, start, segment, bits, iterations) not in segments:
                misses += 1
            start = segment.output
        return self.costs.vdf_segment * misses

    def _body_cost(self, block: Block, transfers: Optional[VerifiedTransfers]) -> float:
        c = self.costs
        n = len(block.transactions)
        unsigned = n if transfers is None else sum(1 for tx in block.transactions if tx not in transfers)
        # A transfer the node verified before (in its mempool) has addresses it decoded
        # already: its stateless checks cost a few µs (SEEN_STATELESS), not bech32's ~0.2 ms.
        return (c.encode_per_byte * len(block.encode()) + c.tx_root_per_tx * n
                + (c.tx_stateless + c.tx_signature) * unsigned + SEEN_STATELESS * (n - unsigned))

    def _remember(self, node: Any, header: Header, subject: Any, parent: Optional[Header],
                  segments: Optional[VerifiedSegments], transfers: Optional[VerifiedTransfers]) -> None:
        """What the node's own check would have left in its caches (only what verified)."""
        if segments is not None and parent is not None:
            seed, dseed = child_seed(parent, node.params), child_discriminant_seed(parent, node.params)
            bits, iterations = node.params.discriminant_bits, header.vdf_iterations
            start = vdf.origin(dseed, seed, bits)
            for segment in header.vdf:
                if not self.truth.segment(dseed, start, segment, bits, iterations):
                    break
                segments.add(dseed, start, segment, bits, iterations)
                start = segment.output
        if transfers is not None and isinstance(subject, Block):
            for tx in subject.transactions:
                if self.truth.transfer(tx):
                    transfers.add(tx)


