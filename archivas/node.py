"""The node: chain, mempool, timelord output and the peer layer, joined.

Blocks from anywhere (peers, sync, the local farmer) go through one pipeline: the costly
proof and signature checks run in a small thread pool (chiavdf and pynacl release the GIL),
then the short context/state check and SQLite commit run on the reactor thread. A block is
relayed only after it validated and became the tip, to peers not known to have it, once.

A block id leaves out the signatures, so two copies with one id may differ: an id is
remembered as invalid only for a failure of what it commits to; a copy that fails in its
signatures blames its sender alone, and another copy (held meanwhile, or fetched from a
peer that announced it) is checked next. A second block on one parent with one proof of
space (a farmer re-making its block) is not checked or relayed unless a child needs it.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Optional, Sequence

import attrs
from twisted.internet import defer, task, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import failure
from twisted.python.threadpool import ThreadPool

from archivas.chain import assumed, keys, vdf
from archivas.chain.block import Block, Header, child_origin
from archivas.chain.blockchain import ADDED_TIP, KNOWN, ORPHAN, AddResult, Chain
from archivas.chain.consensus import BlockRejected, check_body, check_header, check_standalone
from archivas.chain.encoding import sha256
from archivas.chain.mempool import Mempool
from archivas.chain.transactions import InvalidTransaction, Transaction
from archivas.chain.verifycache import VerifiedSegments, VerifiedTransfers
from archivas.metrics import NodeMetrics
from archivas.protocols import compact, txrelay, wire
from archivas.protocols.identity import NodeIdentity
from archivas.protocols.manager import PeerManager
from archivas.protocols.orphans import OrphanPool
from archivas.protocols.peer import BoundedSet, PeerProtocol, PeerState
from archivas.protocols.sync import Syncer

log = Logger()

VERIFY_THREADS = 2
ORPHAN_FETCH_GAP = 32  # an orphan further above our tip than this starts a sync instead
STALE_CHECK_SECONDS = 30.0  # how often the stale-tip check runs (and its least quiet time)
STALE_TIP_BLOCKS = 3  # target block times without a new tip before peers are asked again
RELAY_NEAR_TOP = 3  # during a sync, blocks this close to the best height peers show are relayed
# ... and blocks made this recently by our clock (3 block times, at least 60 s), whatever
# peers claim: a peer that lies about its height must not stop us relaying new blocks.
RELAY_RECENT_BLOCKS = 3
RELAY_RECENT_MIN_MS = 60_000
EARLY_RETRIES = 3  # a block refused only for being early is tried again this often, when it is due
MAX_PENDING_PER_PEER = 8  # blocks or VDF segments from one peer under check at once (more wait their turn)
MAX_EARLY_PENDING = 64  # early blocks waiting for their time at once (each holds a block and a timer)
MAX_BLOCKS_REPLY_BYTES = 2 * 1024 * 1024  # blocks (or bodies) in one reply, at least one
MAX_HEADERS_REPLY_BYTES = 1024 * 1024  # headers in one reply (a 1,024-segment header is ~410 KB)
HEADER_PREFIX_BYTES = 8192  # read of each stored block to serve its header (~16 VDF segments fit)
MAX_VERIFIED_HEADERS = 16384  # headers proved (by sync or a block) whose proofs are not checked again
LOCATOR_DENSE = 10  # a locator lists the last 10 main-chain hashes, then steps that double
MAX_INVALID_REMEMBERED = 4096
MAX_PROOFS_REMEMBERED = 4096  # (parent, proof of space) of recent blocks, against re-made siblings
MAX_COPIES = 4  # other copies of a block under check, kept in case that one is forged
MAX_ANNOUNCERS = 8  # peers that announced a block under check, asked if every copy fails
FORGERY_REASONS = ("malformed", "bad_signature", "wrong_chain", "key_mismatch", "bad_address")
MAX_RES_BYTES = 1024 * 1024  # transfers in one RES answer
MAX_INV_IDS = 65536  # inv ids of transfers seen, and of admitted ones for answering REQ
HIGH_BANDWIDTH_PEERS = 3  # peers asked to send new blocks as CMPCT_BLOCK unannounced (BIP152's 3)
MAX_PARTIAL_BLOCKS = 32  # compact blocks waiting for their missing transfers, in all
MAX_PARTIAL_PER_PEER = 2  # of those, from one peer
MAX_PARTIAL_SOURCES = 3  # peers one block is rebuilt from at once (Bitcoin Core's 3): a peer
# that sends a compact block and never the missing transfers delays it only until another's
PARTIAL_TIMEOUT = 10.0  # seconds for a BLOCK_TXN to come before the block is fetched whole
COMPACT_ASK_AGAIN = 2.0  # seconds before a block announced by several peers is asked of the next
COMPACT_SERVE_DEPTH = 10  # GET_CMPCT / GET_BLOCK_TXN are answered for blocks this close to the tip (BIP152's 10)
RECENT_BLOCKS = 16  # decoded recent blocks (and their compact forms) kept to answer those
# Seconds after a gossiped block became the tip before its transfer-index rows are written
# (their own transaction, off the block's relay: Chain.add_block(index_later=True)); an
# index read writes them at once (Storage._current_index).
INDEX_WRITE_DELAY = 1.0
# A sync run's transaction stays open this long after its batch for the next batch to join
# it (up to RUN_BLOCKS blocks, then it commits): sync imports what has arrived, often a
# block or two at a time, and a commit per block cost 2.7 ms of reactor time a block at 50
# transfers. A crash loses at most this much of a sync, and reopens at a run boundary.
RUN_LINGER = 0.25
RUN_BLOCKS = 64
RUN_MAX_SECONDS = 1.0  # ... and once it is this old, however its batches come
MAX_VDF_AHEAD = 64  # VDF segments held that came before the ones they follow
INDEX_STEP_BLOCKS = 8  # blocks indexed a reactor turn while they catch up (docs/storage.md)
CHECKPOINT_SECONDS = 1.0  # between passive WAL checkpoints in a thread (docs/storage.md)


@attrs.define(eq=False)
class _Partial:
    """A compact block waiting for the transfers its sender is to send (BLOCK_TXN)."""

    partial: compact.PartialBlock
    source: PeerProtocol
    timer: Any


@attrs.define(eq=False)
class _Checking:
    """A block id being checked, with other copies and announcers met meanwhile."""

    block: Block
    copies: list[tuple[Block, Optional[PeerProtocol]]] = attrs.field(factory=list)
    announcers: list[PeerProtocol] = attrs.field(factory=list)


class Node:
    def __init__(
        self,
        chain: Chain,
        reactor: Any,
        node_identity: Optional[NodeIdentity] = None,
        listen_port: int = 0,
        verify_threads: int = VERIFY_THREADS,
        threaded: bool = True,
        headers_first: bool = True,
        checker: Optional[Callable[..., defer.Deferred]] = None,
        assume_valid: Optional[str] = None,
        **manager_options: Any,
    ) -> None:
        self.chain = chain
        self.params = chain.params
        # Assume-valid (chain/assumed.py): `assume_valid` is the --assume-valid option (a
        # block hash, or "0" for none), None for the network's. Headers-first sync takes the
        # ancestors of that block on the header chain it syncs without their proofs
        # (protocols/assumevalid.py decides which); nothing else changes.
        self.assume_valid: Optional[bytes] = assumed.resolve(assume_valid, self.params)
        # (hash, farmer signature) of headers sync took as assumed: their bodies are
        # imported without the transfers' signatures. Never consulted outside import_batch's
        # headers-first path: the same block by gossip is fully verified.
        self._assumed: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.reactor = reactor
        self.genesis_hash = chain.genesis.hash
        self.identity = node_identity or NodeIdentity.ephemeral()
        self.node_id = self.identity.node_id
        self.mempool = Mempool(self.params)
        # What this node verified already (chain/verifycache.py): a transfer's signature on
        # its way into the mempool, a VDF segment from timelord gossip; a block carrying
        # them has those checked from the cache, keyed by every byte the check reads.
        self.verified_transfers = VerifiedTransfers()
        self.verified_segments = VerifiedSegments()
        self.orphans: OrphanPool[PeerProtocol] = OrphanPool()
        # The peer layer reaches the chain only through the seams it declares
        # (protocols/interfaces.py): this node is its ChainView, BlockSink and PeerEvents.
        self.peers = PeerManager(self, self, reactor, self.identity, listen_port, **manager_options)
        self.sync = Syncer(self, self, self.peers, reactor, headers_first=headers_first)
        # threaded=False checks proofs on the calling thread: for reactors without threads
        # (task.Clock, MemoryReactor) in unit tests.
        self.threaded = threaded
        # checker(node, f, args, kwargs) -> Deferred runs the costly checks instead of the
        # thread pool: the simulator's (archivas/sim/), which charges simulated time for them.
        self.checker = checker
        self.threadpool = ThreadPool(minthreads=0, maxthreads=verify_threads, name="archivas-verify")
        self._in_progress: dict[bytes, _Checking] = {}
        self._seen_txs = BoundedSet(16384)
        # The same by inv id (wire.inv_id), and the mempool's transfers by inv id (for REQ).
        self._seen_inv = BoundedSet(MAX_INV_IDS)
        self._by_inv: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        # Refused for good (with why): not verified again.
        self._invalid_blocks: collections.OrderedDict[bytes, BlockRejected] = collections.OrderedDict()
        # (parent hash, proof of space) -> the first valid block seen with them.
        self._proofs: collections.OrderedDict[tuple[bytes, bytes], bytes] = collections.OrderedDict()
        self.dropped_siblings = 0
        self._stale: Optional[LoopingCall] = None
        self._last_tip_at = 0.0
        self._early: collections.OrderedDict[bytes, int] = collections.OrderedDict()  # retries of early blocks
        self._early_pending = 0
        self._pending: collections.Counter[int] = collections.Counter()  # checks in flight per peer
        self._vdf_checking: set[tuple[bytes, int]] = set()
        # (hash, farmer signature) -> score of headers whose proofs passed (the id leaves
        # the signature out, so it is part of the key).
        self._verified: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        # Background checks (sync batches, headers) hold at most two places per verify thread
        # (one running, one queued, so no thread waits on the reactor between checks); a block
        # that extends the tip waits behind those few, not behind a whole batch.
        # Bodies and headers queue apart, so a reply of 512 headers does not hold up the
        # bodies of the blocks being stored (each queue two places a thread).
        self._background_checks = {
            "headers": defer.DeferredSemaphore(2 * max(1, verify_threads)),
            "blocks": defer.DeferredSemaphore(2 * max(1, verify_threads)),
        }
        self._handlers: dict[type[wire.Message], Callable[[PeerProtocol, Any], None]] = {
            wire.NewBlock: self._on_new_block,
            wire.GetBlock: self._on_get_block,
            wire.BlockData: self._on_block_data,
            wire.GetBlocks: self._on_get_blocks,
            wire.Blocks: self._on_blocks,
            wire.GetHashes: self._on_get_hashes,
            wire.Hashes: self._on_hashes,
            wire.PushBlock: self._on_push_block,
            wire.GetHeaders: self._on_get_headers,
            wire.Headers: self._on_headers,
            wire.GetBodies: self._on_get_bodies,
            wire.Bodies: self._on_bodies,
            wire.NewTransaction: self._on_new_transaction,
            wire.VdfOutput: self._on_vdf_output,
            wire.Inv: self._on_inv,
            wire.Req: self._on_req,
            wire.Res: self._on_res,
            wire.SendCmpct: self._on_send_cmpct,
            wire.CmpctBlock: self._on_cmpct_block,
            wire.GetBlockTxn: self._on_get_block_txn,
            wire.BlockTxn: self._on_block_txn,
            wire.GetCmpct: self._on_get_cmpct,
        }
        # Transfer inventory (protocols/txrelay.py) and compact blocks (protocols/compact.py).
        self.txrelay = txrelay.TxRelay(reactor, lambda proto, message: proto.send(message),
                                       lambda inv: inv in self._seen_inv,
                                       self._not_known_to, _inv_interval, _outbound)
        self._partials: dict[bytes, list[_Partial]] = {}  # block hash -> rebuilds waiting, by source
        self._compact_asked: dict[bytes, float] = {}  # block hash -> when a GET_CMPCT went out
        self.high_bandwidth: list[PeerProtocol] = []  # peers sending us new blocks unannounced
        self.compact_stats: collections.Counter[str] = collections.Counter()
        # Recent blocks decoded, and their compact forms, so that asking for them again
        # and again costs a dictionary look-up, not a decode (and only near the tip).
        self._recent: collections.OrderedDict[bytes, tuple[Block, Optional[wire.CmpctBlock]]] = \
            collections.OrderedDict()
        self.peers.on_ready.append(self._peer_ready)
        # Timelord output for children of the tip: segments 1..n of the VDF on the tip.
        self.vdf_parent: bytes = chain.tip.hash
        self._vdf_iterations: tuple[bytes, int] = (b"", 0)  # (parent, T) last asked (vdf_iterations)
        self.vdf_segments: list[vdf.Segment] = []
        # Segments that came before the one they follow was taken: index -> (segment, sender)
        self._vdf_ahead: dict[int, tuple[vdf.Segment, Optional[PeerProtocol]]] = {}
        self.on_tip: list[Callable[[Block], None]] = []
        self.on_vdf: list[Callable[[bytes, int, vdf.Segment], None]] = []
        self.rejected_blocks = 0
        self.stopped = False
        self._indexing: Optional[defer.Deferred] = None  # the transfer indexes catching up (catch_up_index)
        self._index_call: Any = None  # the pending catch_up_index of gossiped blocks (INDEX_WRITE_DELAY)
        self.run_linger = RUN_LINGER  # 0: every import_batch commits its own run
        self._linger: Any = None  # the pending commit of a sync run left open for the next batch
        self._run_blocks = 0  # blocks the open sync run holds
        self._run_started = 0.0  # when it opened (reactor seconds)
        self._checkpointing: Optional[defer.Deferred] = None  # a WAL checkpoint in its thread
        self._checkpoint_failures = 0  # in a row
        self.metrics = NodeMetrics(self)  # /metrics (archivas/metrics.py): read at scrape time, fed by hooks

    def start(self) -> None:
        if self.assume_valid is not None:
            log.info("[sync] assume-valid: headers-first sync takes the ancestors of block {h} without checking "
                     "their proofs and signatures (--assume-valid 0 checks everything)", h=self.assume_valid.hex())
        if self.threaded:
            self.threadpool.start()
        self.peers.start()
        self._last_tip_at = self.reactor.seconds()
        self._stale = LoopingCall(self._stale_tip_check)
        self._stale.clock = self.reactor
        self._stale.start(STALE_CHECK_SECONDS, now=False).addErrback(
            lambda f: log.failure("[sync] stale-tip check failed", f))
        self._loops = []
        for seconds, work in ((txrelay.TICK, self.txrelay.flush), (1.0, self.txrelay.check_timeouts)):
            loop = LoopingCall(work)
            loop.clock = self.reactor
            loop.start(seconds, now=False).addErrback(lambda f: log.failure("[p2p] transfer relay failed", f))
            self._loops.append(loop)
        self.reactor.callLater(0, self.catch_up_index)  # what a sync killed before the end left behind
        if self.threaded and self.checker is None:  # the WAL checkpoints leave the reactor
            self.chain.storage.checkpoint_in_background()
            loop = LoopingCall(self._checkpoint)
            loop.clock = self.reactor
            loop.start(CHECKPOINT_SECONDS, now=False).addErrback(
                lambda f: log.failure("[storage] checkpoint loop failed", f))
            self._loops.append(loop)

    def _checkpoint(self) -> None:
        """A passive WAL checkpoint in a thread (Storage.checkpoint), unless one is running."""
        if self._checkpointing is not None:
            return
        d = self._checkpointing = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                                            self.chain.storage.checkpoint)

        def done(result: Any) -> None:
            self._checkpointing = None
            if not isinstance(result, failure.Failure):
                self._checkpoint_failures = 0
                return
            self._checkpoint_failures += 1  # the first with its traceback; then a line a minute
            if self._checkpoint_failures == 1:
                log.failure("[storage] WAL checkpoint failed (tried again every second)", result)
            elif self._checkpoint_failures % 60 == 0:
                log.warn("[storage] WAL checkpoint still failing ({n} times): {e}", n=self._checkpoint_failures,
                         e=result.getErrorMessage())

        d.addBoth(done)

    def sync_ended(self) -> None:
        self.commit_run()  # no batch of this round comes to join it
        self.reactor.callLater(0, self.catch_up_index)

    def catch_up_index(self) -> Optional[defer.Deferred]:
        """Once no sync runs (at start, as each sync round ends, and a moment after a
        gossiped block), the transfer indexes left behind catch up, a few blocks a reactor
        turn (Chain.catch_up_index); a sync that starts pauses them until it ends."""
        behind = self.chain.storage.index_behind()
        if (behind is None or self._indexing is not None or self.sync.active or self.chain.storage.in_run
                or self.stopped or self.chain.storage.db is None):
            return None
        if self.chain.tip.height - behind <= INDEX_STEP_BLOCKS:  # gossiped blocks: one step, quietly
            try:
                self.chain.catch_up_index(INDEX_STEP_BLOCKS)
            except Exception:  # (a disk error: the next block, read or restart tries again)
                log.failure("[storage] writing the transfer index failed")
            return None
        d = defer.ensureDeferred(self._index_steps(behind))
        if not d.called:  # (done at once, or failed at its first step: nothing to wait on)
            self._indexing = d
        d.addErrback(lambda f: log.failure("[storage] indexing failed", f))
        return d

    async def _index_steps(self, behind: int) -> None:
        started, top = self.reactor.seconds(), self.chain.tip.height
        log.info("[storage] transfer indexes are {n} blocks behind the chain: catching up", n=top - behind)
        try:
            while not self.stopped and not self.sync.active and not self.chain.storage.in_run:
                if not self.chain.catch_up_index(INDEX_STEP_BLOCKS):
                    break
                if self.chain.storage.index_behind() is None:
                    log.info("[storage] transfer indexes caught up at height {h} ({n} blocks in {s:.1f} s)",
                             h=self.chain.tip.height, n=self.chain.tip.height - behind,
                             s=self.reactor.seconds() - started)
                    break
                await task.deferLater(self.reactor, 0, lambda: None)
        finally:
            self._indexing = None

    def _stale_tip_check(self) -> None:
        """As Bitcoin Core's: no new tip for a while although a peer shows more weight ->
        ask every peer for its status again and start a round (which rotates sources)."""
        quiet = self.reactor.seconds() - self._last_tip_at
        if quiet < max(STALE_TIP_BLOCKS * self.params.target_block_time_ms / 1000, STALE_CHECK_SECONDS):
            return
        weight = self.chain.tip.weight
        if any(p.info is not None and p.info.weight > weight for p in self.peers.ready_peers()):
            log.info("[sync] no new tip for {s:.0f} s while peers show more weight: asking again", s=quiet)
            for proto in self.peers.ready_peers():
                proto.send(wire.GetStatus())
            self.sync.start_round()

    def stop(self) -> defer.Deferred:
        """Close every connection (fires when they are gone), then the thread pool."""
        self.stopped = True
        if self._stale is not None and self._stale.running:
            self._stale.stop()
        for loop in getattr(self, "_loops", ()):
            if loop.running:
                loop.stop()
        for block_hash in list(self._partials):
            self._drop_partial(block_hash)
        self.sync.stop()
        if self._index_call is not None and self._index_call.active():
            self._index_call.cancel()
        self.commit_run()
        d = self.peers.stop()
        if self.threaded:
            d.addBoth(lambda _: self.threadpool.stop())
        checkpointing = self._checkpointing
        if checkpointing is not None:  # the storage may be closed next: let it finish first
            d.addBoth(lambda result: _after(checkpointing, result))
        return d

    # the ChainView the peer layer reads

    def tip(self) -> Any:
        return self.chain.tip

    def has_block(self, block_hash: bytes) -> bool:
        return self.chain.has_block(block_hash)

    def main_hash(self, height: int) -> Optional[bytes]:
        return self.chain.storage.main_hash(height)

    def block(self, block_hash: bytes) -> Optional[Block]:
        return self.chain.block(block_hash)

    def header(self, block_hash: bytes) -> Optional[Header]:
        return self.chain.header(block_hash)

    def meta(self, block_hash: bytes) -> Any:
        return self.chain.storage.block_meta(block_hash)

    def ancestors(self, block_hash: bytes, count: int) -> list[Any]:
        return self.chain.ancestors(block_hash, count)

    def locator(self) -> tuple[bytes, ...]:
        """Main-chain hashes from the tip back (10 dense, then doubling steps), genesis last."""
        out: list[bytes] = []
        height, step = self.chain.height, 1
        while height > 0 and len(out) < wire.MAX_LOCATOR - 1:
            h = self.chain.storage.main_hash(height)
            if h is not None:
                out.append(h)
            if len(out) >= LOCATOR_DENSE:
                step *= 2
            height -= step
        out.append(self.genesis_hash)
        return tuple(out)

    def now_ms(self) -> int:
        return int(self.reactor.seconds() * 1000)

    def status(self) -> wire.Status:
        tip = self.chain.tip
        return wire.Status(
            height=tip.height, difficulty=tip.difficulty, tip_hash=tip.hash, weight=tip.weight,
            genesis_hash=self.genesis_hash, network=self.params.name, version=wire.PROTOCOL_VERSION,
            capabilities=wire.CAPABILITIES,
        )

    # peers

    def peer_updated(self, proto: PeerProtocol) -> None:
        self.sync.peer_updated(proto)

    def peer_lost(self, proto: PeerProtocol) -> None:
        self.metrics.peer_closed(proto)
        self.sync.peer_lost(proto)
        self.txrelay.peer_lost(proto)
        if proto in self.high_bandwidth:
            self.high_bandwidth.remove(proto)
        for block_hash, waiting in list(self._partials.items()):
            for pending in [p for p in waiting if p.source is proto]:
                self._drop_partial(block_hash, pending)

    def message_received(self, proto: PeerProtocol, message: wire.Message) -> None:
        handler = self._handlers.get(type(message))
        if handler is not None:
            handler(proto, message)

    def _background(self, d: defer.Deferred, what: str) -> None:
        """Errback for work started from a message: a refusal was already handled and
        logged where it happened; anything else is logged here, never left unhandled."""
        d.addErrback(lambda f: None if f.check(BlockRejected) else log.failure("[chain] {what} failed", f,
                                                                                what=what))

    def _on_new_block(self, proto: PeerProtocol, message: wire.NewBlock) -> None:
        info = proto.info
        assert info is not None
        info.known_blocks.add(message.hash)
        if message.height > info.height:
            info.height = message.height
        checking = self._in_progress.get(message.hash)
        if checking is not None:
            if len(checking.announcers) < MAX_ANNOUNCERS and proto not in checking.announcers:
                checking.announcers.append(proto)  # asked if the copy being checked fails
            return
        if (self.chain.has_block(message.hash) or message.hash in self.orphans
                or message.hash in self._invalid_blocks):
            return
        if message.height > self.chain.height + ORPHAN_FETCH_GAP:
            self.sync.peer_updated(proto)
        elif info.can("cmpct") and message.height == self.chain.height + 1:
            self._ask_compact(proto, message.hash)  # compact relay is for a child of our tip
        else:
            self._request_block(proto, message.height)

    def _ask_compact(self, proto: PeerProtocol, block_hash: bytes) -> None:
        """GET_CMPCT once per block, asked of the next announcer only if the first has not
        delivered within COMPACT_ASK_AGAIN seconds."""
        now = self.reactor.seconds()
        asked = self._compact_asked.get(block_hash)
        if asked is not None and now - asked < COMPACT_ASK_AGAIN:
            return
        self._compact_asked[block_hash] = now
        while len(self._compact_asked) > MAX_INVALID_REMEMBERED:
            del self._compact_asked[next(iter(self._compact_asked))]
        proto.send(wire.GetCmpct(block_hash))

    def _request_block(self, proto: PeerProtocol, height: int) -> None:
        if proto.info is not None and proto.info.can("blocks"):
            proto.send(wire.GetBlocks(height, 1))
        else:
            proto.send(wire.GetBlock(height))

    def _on_get_block(self, proto: PeerProtocol, message: wire.GetBlock) -> None:
        # Served from the stored bytes, never decoded and encoded again.
        raw = self.chain.block_bytes_at(message.height) if message.height <= self.chain.height else None
        if raw is not None:
            proto.send(wire.block_data_line(message.height, raw))

    def _on_get_blocks(self, proto: PeerProtocol, message: wire.GetBlocks) -> None:
        raws: list[bytes] = []
        size = 0
        tip_height = self.chain.height
        for height in range(message.start, min(message.start + message.count, tip_height + 1)):
            raw = self.chain.block_bytes_at(height)
            if raw is None:
                break
            size += len(raw)
            if raws and size > MAX_BLOCKS_REPLY_BYTES:
                break
            raws.append(raw)
        eof = bool(raws) and message.start + len(raws) - 1 == tip_height
        proto.send(wire.blocks_line(message.start, raws, tip_height, eof))

    def _on_get_headers(self, proto: PeerProtocol, message: wire.GetHeaders) -> None:
        """Main-chain headers after the first locator hash on our main chain (none when
        none is: another network), at most the count asked and MAX_HEADERS_REPLY_BYTES."""
        storage, tip = self.chain.storage, self.chain.tip
        start = None
        for block_hash in message.locator:
            meta = storage.block_meta(block_hash)
            if meta is not None and storage.main_hash(meta.height) == block_hash:
                start = meta.height + 1
                break
        headers: list[bytes] = []  # cut from the stored bytes: nothing decoded or encoded again
        if start is not None:
            size, count = 0, max(0, min(message.count, tip.height + 1 - start))
            # One query for the range, read as far as the reply goes, each block's first
            # bytes only (most headers fit).
            rows = storage.main_block_prefixes(start, count, HEADER_PREFIX_BYTES)
            for expected, (height, block_hash, prefix) in enumerate(rows, start):
                if height != expected:  # (below a snapshot's base the main chain has no blocks)
                    break
                header = wire.stored_header(prefix)
                if header is None:  # a header of many VDF segments: the block whole
                    raw = storage.block_bytes(block_hash)
                    if raw is None:
                        break
                    header = wire.split_stored_block(raw)[0]
                size += len(header)
                if headers and size > MAX_HEADERS_REPLY_BYTES:
                    break
                headers.append(header)
        proto.send(wire.headers_line(headers, tip.height, tip.weight))

    def _on_get_bodies(self, proto: PeerProtocol, message: wire.GetBodies) -> None:
        """Bodies in the order asked, up to the first we lack or MAX_BLOCKS_REPLY_BYTES."""
        bodies: list[tuple[bytes, bytes]] = []  # (hash, transfers' JSON) cut from the stored bytes
        size = 0
        for block_hash in message.hashes:
            raw = self.chain.storage.block_bytes(block_hash)
            if raw is None:
                break
            size += len(raw)
            if bodies and size > MAX_BLOCKS_REPLY_BYTES:
                break
            bodies.append((block_hash, b"[]" if block_hash == self.genesis_hash else wire.split_stored_block(raw)[1]))
        proto.send(wire.bodies_line(bodies))

    def _on_headers(self, proto: PeerProtocol, message: wire.Headers) -> None:
        self.sync.headers(proto, message)

    def _on_bodies(self, proto: PeerProtocol, message: wire.Bodies) -> None:
        self.sync.bodies(proto, message)

    def _on_get_hashes(self, proto: PeerProtocol, message: wire.GetHashes) -> None:
        hashes = []
        for height in range(message.start, min(message.start + message.count, self.chain.height + 1)):
            h = self.chain.storage.main_hash(height)
            if h is None:
                break
            hashes.append(h)
        proto.send(wire.Hashes(message.start, tuple(hashes)))

    def _on_block_data(self, proto: PeerProtocol, message: wire.BlockData) -> None:
        if not self.sync.block_data(proto, message):
            self._background(self.receive_block(message.block, proto), "BLOCK_DATA")

    def _on_blocks(self, proto: PeerProtocol, message: wire.Blocks) -> None:
        if not self.sync.blocks(proto, message):
            for block in message.blocks:
                self._background(self.receive_block(block, proto), "BLOCKS_BATCH")

    def _on_hashes(self, proto: PeerProtocol, message: wire.Hashes) -> None:
        self.sync.hashes(proto, message)

    def _on_push_block(self, proto: PeerProtocol, message: wire.PushBlock) -> None:
        self._background(self.receive_block(message.block, proto), "PUSH_BLOCK")

    def _on_new_transaction(self, proto: PeerProtocol, message: wire.NewTransaction) -> None:
        try:
            self.submit_transaction(message.tx, proto)
        except InvalidTransaction as e:
            if e.reason in FORGERY_REASONS:
                self.peers.misbehaved(proto, "invalid_transaction", str(e))

    def _on_vdf_output(self, proto: PeerProtocol, message: wire.VdfOutput) -> None:
        assert proto.info is not None
        proto.info.known_blocks.add(_vdf_id(message.parent_hash, message.index))
        self._background(self.add_vdf_output(message.parent_hash, message.index, message.segment, proto),
                         "VDF_OUTPUT")

    # blocks

    def receive_block(self, block: Block, source: Optional[PeerProtocol] = None) -> defer.Deferred:
        """Validate and add a block from a peer or the local farmer; fires with the
        AddResult, or None when it is waiting for its parent (or, from a peer, was refused:
        a local block that is refused fails with BlockRejected)."""
        if source is not None and source.info is not None:
            source.info.known_blocks.add(block.hash)
            source.info.height = max(source.info.height, block.height)
        return defer.ensureDeferred(self._receive(block, source))

    async def _receive(self, block: Block, source: Optional[PeerProtocol]) -> Optional[AddResult]:
        known_bad = self._invalid_blocks.get(block.hash)
        if known_bad is not None:
            if source is None:
                raise known_bad
            self.peers.misbehaved(source, "invalid_block", f"resent invalid block {block.hash.hex()[:16]}")
            return None
        if self.chain.has_block(block.hash):
            return AddResult(KNOWN)
        checking = self._in_progress.get(block.hash)
        if checking is not None:
            # Another copy of a block under check: kept (one per sender) in case the one
            # under check is forged; past that, its sender may be asked for it again.
            if block != checking.block and source is not None:
                if (len(checking.copies) < MAX_COPIES
                        and all(other is not source for _, other in checking.copies)):
                    checking.copies.append((block, source))
                elif len(checking.announcers) < MAX_ANNOUNCERS and source not in checking.announcers:
                    checking.announcers.append(source)
            return AddResult(KNOWN)
        parent = self.chain.header(block.header.parent_hash)
        if parent is None:
            self._hold_orphan(block, source)
            return None
        if source is not None and self._remade_sibling(block):
            self.dropped_siblings += 1
            return None
        if source is not None and self._pending[id(source)] >= MAX_PENDING_PER_PEER:
            return None  # it has enough blocks under check already; it may send this one again
        checking = self._in_progress[block.hash] = _Checking(block)
        if source is not None:
            self._pending[id(source)] += 1
        tried: list[Optional[PeerProtocol]] = []
        candidate, sender = block, source
        try:
            while True:
                tried.append(sender)
                try:
                    score = await self.verify(candidate, parent)
                    if self.stopped:
                        return None
                    with self.metrics.storing():
                        result = self.chain.add_block(candidate, self.now_ms(), score, index_later=True)
                    break
                except BlockRejected as e:
                    self._rejected(candidate, sender, e)
                    if e.permanent or e.reason == "timestamp_in_future":
                        for _, other in checking.copies:  # the same id: the same failure
                            if other is not None:
                                self.peers.misbehaved(other, "invalid_block", f"block at height {block.height}: {e}")
                        if source is None:
                            raise
                        return None
                    if not checking.copies:  # every copy forged: ask a peer that announced it
                        self._ask_again(block, checking.announcers, tried)
                        if source is None:
                            raise
                        return None
                    candidate, sender = checking.copies.pop(0)
        finally:
            del self._in_progress[block.hash]
            if source is not None:
                self._release(source)
        if result.status == ORPHAN:  # parent vanished meanwhile: cannot happen, but be safe
            self._hold_orphan(candidate, sender)
            return None
        self._accepted(candidate, result)
        if self.chain.storage.index_behind() is not None and (self._index_call is None
                                                               or not self._index_call.active()):
            self._index_call = self.reactor.callLater(INDEX_WRITE_DELAY, self.catch_up_index)
        if sender is not None and sender.info is not None and result.status == ADDED_TIP:
            sender.info.last_block_at = self.reactor.seconds()  # a novel block (eviction protects it)
            sender.info.weight = max(sender.info.weight, self.chain.tip.weight)
            sender.info.tip_hash = candidate.hash
            self._delivered_first(sender)
        self._connect_children(candidate.hash)
        return result

    def _release(self, source: PeerProtocol) -> None:
        self._pending[id(source)] -= 1
        if self._pending[id(source)] <= 0:
            del self._pending[id(source)]

    def _ask_again(self, block: Block, announcers: Sequence[PeerProtocol],
                   tried: Sequence[Optional[PeerProtocol]]) -> None:
        """Every copy we had of a block failed in what its id leaves out: ask a peer that
        announced or sent it (its copy may be the real one; a forged orphan must not
        shadow it either)."""
        others = [p for p in self.peers.ready_peers() if p.info is not None and block.hash in p.info.known_blocks]
        for proto in list(announcers) + others:
            if proto not in tried and proto.info is not None and proto.info.state is not PeerState.CLOSED:
                self._request_block(proto, block.height)
                return

    def _connect_children(self, parent_hash: bytes) -> None:
        for child, child_source in self.orphans.take_children(parent_hash):
            self._background(self.receive_block(child, child_source), "orphan child")

    def _remade_sibling(self, block: Block) -> bool:
        """A block on a parent with a proof of space that a valid stored block already used
        (a winning farmer's other version): not worth checking unless a child needs it."""
        pos = block.header.proof_of_space
        if pos is None:
            return False
        first = self._proofs.get((block.header.parent_hash, pos.proof))
        return first is not None and first != block.hash and not self.orphans.has_children(block.hash)

    def _remember_proof(self, block: Block) -> None:
        pos = block.header.proof_of_space
        if pos is None:
            return
        self._proofs.setdefault((block.header.parent_hash, pos.proof), block.hash)
        while len(self._proofs) > MAX_PROOFS_REMEMBERED:
            self._proofs.popitem(last=False)

    def verify(self, block: Block, parent: Header, background: Optional[str] = None) -> defer.Deferred:
        """The costly, state-free checks in the thread pool; fires with the score. A header
        proved before (by headers-first sync) has only its body checked."""
        score = self.verified_score(block.header)
        if score is not None:
            return self._in_thread(_body_then, block, self.params, score, background=background,
                                   transfers=self.verified_transfers)
        d = self._in_thread(check_standalone, block, parent, self.params, background=background,
                            segments=self.verified_segments, transfers=self.verified_transfers)
        d.addCallback(self._remember_verified, block.header)
        return d

    def verify_header(self, header: Header, parent: Header) -> defer.Deferred:
        """A header's proofs (cheapest first, consensus.check_header), in the thread pool
        behind any block that extends the tip; fires with its score."""
        score = self.verified_score(header)
        if score is not None:
            return defer.succeed(score)
        d = self._in_thread(check_header, header, parent, self.params, background="headers",
                            segments=self.verified_segments)
        d.addCallback(self._remember_verified, header)
        return d

    def assume_header(self, header: Header) -> int:
        """A header headers-first sync found below the assumed block on the chain it syncs
        (protocols/assumevalid.py): its shape checked, its proofs not; its body will be
        checked without the transfers' signatures. Returns assumed.ASSUMED_SCORE. Not
        remembered as verified: the same block by any other way is fully verified."""
        score = assumed.check_header(header, self.params)
        key = header.hash + header.farmer_signature
        self._assumed[key] = None
        self._assumed.move_to_end(key)
        while len(self._assumed) > MAX_VERIFIED_HEADERS:
            self._assumed.popitem(last=False)
        return score

    def check_body(self, block: Block, score: int) -> defer.Deferred:
        """The body of a block whose header headers-first sync took (proved, or assumed)."""
        key = block.header.hash + block.header.farmer_signature
        if key in self._assumed:
            return self._in_thread(assumed.assumed_body, block, self.params, score, background="blocks")
        return self._in_thread(_body_then, block, self.params, score, background="blocks",
                               transfers=self.verified_transfers)

    def verified_score(self, header: Header) -> Optional[int]:
        return self._verified.get(header.hash + header.farmer_signature)

    def _remember_verified(self, score: int, header: Header) -> int:
        self._verified[header.hash + header.farmer_signature] = score
        while len(self._verified) > MAX_VERIFIED_HEADERS:
            self._verified.popitem(last=False)
        return score

    def _in_thread(self, f: Callable[..., Any], *args: Any, background: Optional[str] = None,
                   **kwargs: Any) -> defer.Deferred:
        """`f(*args, **kwargs)` in the verify pool; `background` names the queue of sync
        work it waits in ("headers" or "blocks"), None for a block that may extend the tip
        (at once). With a `checker` (the simulator's), that runs it instead."""
        if self.checker is not None:
            return self.checker(self, f, args, kwargs)
        f = self.metrics.timed(f)  # validation time by component (metrics.COMPONENTS)
        if not self.threaded:
            return defer.maybeDeferred(f, *args, **kwargs)
        if background:
            return self._background_checks[background].run(threads.deferToThreadPool, self.reactor,
                                                           self.threadpool, f, *args, **kwargs)
        return threads.deferToThreadPool(self.reactor, self.threadpool, f, *args, **kwargs)

    def _hold_orphan(self, block: Block, source: Optional[PeerProtocol]) -> None:
        """Hold a block whose parent is missing, and ask for the parent. Held only from a
        peer past its handshake (a ready seed or Archivas peer), and only near our tip:
        further above, it starts a sync instead (orphans.py has the size bounds)."""
        if source is None or source.info is None or source.info.state is not PeerState.READY:
            return
        if block.height > max(self.chain.height, self.sync.best_header_height() or 0) + ORPHAN_FETCH_GAP:
            self.sync.peer_updated(source)
            return
        self.orphans.add(block, source)
        if block.header.parent_hash in self._in_progress:
            return
        root = self.orphans.root_of(block)
        if root is not None and root.height > 0:
            self._request_block(source, root.height - 1)

    def _rejected(self, block: Block, source: Optional[PeerProtocol], error: BlockRejected) -> None:
        self.rejected_blocks += 1
        if error.permanent:  # every copy with this id fails so: not verified again
            self._invalid_blocks[block.hash] = error
            while len(self._invalid_blocks) > MAX_INVALID_REMEMBERED:
                self._invalid_blocks.popitem(last=False)
        if source is None:
            log.warn("[chain] local block {h} rejected: {e}", h=block.hash.hex()[:16], e=str(error))
        elif error.reason == "invalid_ancestor" and not error.permanent and block.height <= self.chain.snapshot_base:
            # Loaded from a snapshot: below it we hold no history to judge by. An honest peer
            # on a stale sibling, or with an orphan's parent, is not to blame.
            log.debug("[chain] block {h} from {peer} is below our snapshot: {e}", h=block.hash.hex()[:16],
                      peer=source.info.address if source.info else "?", e=str(error))
        elif error.reason == "timestamp_in_future":
            log.info("[chain] block {h} from {peer} is ahead of our clock: {e}", h=block.hash.hex()[:16],
                     peer=source.info.address if source.info else "?", e=str(error))
            self._retry_when_due(block, source)
        else:
            self.peers.misbehaved(source, "invalid_block", f"block at height {block.height}: {error}")

    def _best_height(self) -> int:
        """The best proven header's height during a sync (else what peers claim)."""
        proven = self.sync.best_header_height()
        if proven is not None:
            return max(proven, self.chain.height)
        return max([p.info.height for p in self.peers.ready_peers() if p.info is not None] + [self.chain.height])

    def _retry_when_due(self, block: Block, source: PeerProtocol) -> None:
        """Take a block that was only early once it is due: at most EARLY_RETRIES times,
        without re-running a sync round."""
        tries = self._early.get(block.hash, 0)
        if tries >= EARLY_RETRIES or self.stopped or self._early_pending >= MAX_EARLY_PENDING:
            return
        self._early_pending += 1
        self._early[block.hash] = tries + 1
        while len(self._early) > MAX_INVALID_REMEMBERED:
            self._early.popitem(last=False)
        due = (block.header.timestamp - self.params.max_future_ms) / 1000 - self.reactor.seconds()
        self.reactor.callLater(max(0.0, due) + 0.05 * (tries + 1), self._retry_early, block, source)

    def _retry_early(self, block: Block, source: PeerProtocol) -> None:
        self._early_pending -= 1
        if not self.stopped and not self.chain.has_block(block.hash):
            self._background(self.receive_block(block, source), "early block")

    def _accepted(self, block: Block, result: AddResult) -> None:
        self._remember_proof(block)
        self.metrics.block_accepted(result)
        if result.status != ADDED_TIP:
            return
        self._last_tip_at = self.reactor.seconds()
        recent = block.header.timestamp >= self.now_ms() - max(RELAY_RECENT_MIN_MS,
                                                               RELAY_RECENT_BLOCKS * self.params.target_block_time_ms)
        at_top = not self.sync.active or recent or block.height + RELAY_NEAR_TOP >= self._best_height()
        # During a sync the history's tips are not news (sync logs its progress instead).
        (log.info if at_top else log.debug)("[chain] new tip height={height} hash={hash}", height=block.height,
                                            hash=block.hash.hex()[:16])
        self.mempool.update_for_blocks(result.connected, result.disconnected, self.chain.account)
        for old in result.disconnected:  # back in the mempool: peers on the other branch may lack them
            for tx in old.transactions:
                if tx.hash in self.mempool:
                    self._relay_transaction(tx)
        self.vdf_parent, self.vdf_segments = block.hash, []
        self._vdf_ahead.clear()
        if at_top:
            self.relay_block(block)  # during a sync, only blocks at the top (history is not pushed)
        for callback in list(self.on_tip):
            callback(block)

    def relay_block(self, block: Block) -> None:
        """To each peer that lacks it: as CMPCT_BLOCK to those that asked for high
        bandwidth, announced (NEW_BLOCK) to other compact peers, whole (PUSH_BLOCK) to
        older Archivas peers, announced to seed peers. A peer that is not reading what we
        write gets the small announcement only."""
        announce = wire.NewBlock(block.height, block.hash)
        push: Optional[wire.Encoded] = None
        cmpct: Optional[wire.CmpctBlock] = None
        for proto in self.peers.ready_peers():
            info = proto.info
            assert info is not None
            if block.hash in info.known_blocks:
                continue
            info.known_blocks.add(block.hash)
            if proto.writes_paused:
                proto.send(announce)
            elif info.can("cmpct"):
                if info.cmpct_high_bandwidth:
                    cmpct = cmpct or self.compact_for(block)
                    proto.send(cmpct)
                else:
                    proto.send(announce)
            elif info.can("push"):
                # From the block's canonical JSON, made once already to store it: encoding
                # a PushBlock would build and serialise the whole block again.
                push = push or wire.push_block_line(block.encode())
                proto.send(push)
            else:
                proto.send(announce)

    def compact_for(self, block: Block) -> wire.CmpctBlock:
        """`block` as CMPCT_BLOCK; the transfers we had not seen before it (so our peers
        likely lack them too) go in full. The nonce is ours and the block's: one per block
        (made once, kept with the recent blocks)."""
        kept = self._recent.get(block.hash)
        if kept is not None and kept[1] is not None:
            return kept[1]
        nonce = int.from_bytes(sha256(b"cmpct", self.node_id, block.hash)[:6], "big")
        prefill = [i for i, tx in enumerate(block.transactions) if tx.hash not in self._seen_txs]
        message = compact.make_compact(block, nonce, prefill)
        self._keep_recent(block, message)
        return message

    def _keep_recent(self, block: Block, message: Optional[wire.CmpctBlock] = None) -> None:
        old = self._recent.get(block.hash)
        self._recent[block.hash] = (block, message or (old[1] if old else None))
        self._recent.move_to_end(block.hash)
        while len(self._recent) > RECENT_BLOCKS:
            self._recent.popitem(last=False)

    def _recent_block(self, block_hash: bytes) -> Optional[Block]:
        """A block near the tip, for GET_CMPCT / GET_BLOCK_TXN (None for older ones: those
        are asked for whole, at REQUEST_BLOCKS' costs and limits)."""
        kept = self._recent.get(block_hash)
        if kept is not None:
            return kept[0]
        meta = self.chain.storage.block_meta(block_hash)
        if meta is None or meta.height + COMPACT_SERVE_DEPTH < self.chain.height:
            return None
        block = self.chain.block(block_hash)
        if block is not None:
            self._keep_recent(block)
        return block

    # compact blocks

    def _peer_ready(self, proto: PeerProtocol) -> None:
        """Until blocks show who is fast, the first compact-capable outbound peers are the
        high-bandwidth ones."""
        info = proto.info
        if (info is not None and info.can("cmpct") and info.direction == "outbound"
                and len(self.high_bandwidth) < HIGH_BANDWIDTH_PEERS):
            self.high_bandwidth.append(proto)
            proto.send(wire.SendCmpct(True))

    def _delivered_first(self, proto: PeerProtocol) -> None:
        """`proto` gave us a new tip first: it becomes (or stays) a high-bandwidth peer; the
        one that delivered least recently leaves the three (BIP152)."""
        info = proto.info
        if info is None or not info.can("cmpct") or info.state is PeerState.CLOSED:
            return
        if proto in self.high_bandwidth:
            self.high_bandwidth.remove(proto)
            self.high_bandwidth.insert(0, proto)
            return
        self.high_bandwidth.insert(0, proto)
        proto.send(wire.SendCmpct(True))
        while len(self.high_bandwidth) > HIGH_BANDWIDTH_PEERS:
            self.high_bandwidth.pop().send(wire.SendCmpct(False))

    def _on_send_cmpct(self, proto: PeerProtocol, message: wire.SendCmpct) -> None:
        assert proto.info is not None
        proto.info.cmpct_high_bandwidth = message.high_bandwidth

    def _on_get_cmpct(self, proto: PeerProtocol, message: wire.GetCmpct) -> None:
        block = self._recent_block(message.hash)
        if block is not None:
            assert proto.info is not None
            proto.info.known_blocks.add(block.hash)
            proto.send(self.compact_for(block))

    def _on_cmpct_block(self, proto: PeerProtocol, message: wire.CmpctBlock) -> None:
        """Rebuild from the mempool; a whole block goes to receive_block, one that lacks
        transfers asks its sender for exactly those (one round trip)."""
        info = proto.info
        assert info is not None
        header = message.header
        block_hash = header.hash
        info.known_blocks.add(block_hash)
        info.height = max(info.height, header.height)
        waiting = self._partials.get(block_hash, [])
        if (self.chain.has_block(block_hash) or block_hash in self._in_progress
                or block_hash in self.orphans or block_hash in self._invalid_blocks
                or len(waiting) >= MAX_PARTIAL_SOURCES or any(p.source is proto for p in waiting)):
            return
        parent = self.chain.header(header.parent_hash)
        if parent is None:
            # Not on anything we have: the ordinary announcement path fetches what is needed.
            self._on_new_block(proto, wire.NewBlock(header.height, block_hash))
            return
        # Rebuilding costs a pass over the mempool: first what is cheap to check (height,
        # the farmer's signature: tens of microseconds), so junk headers cost their sender.
        pos = header.proof_of_space
        if (header.height != parent.height + 1 or pos is None
                or not keys.verify(pos.farmer_public_key, header.signing_bytes, header.farmer_signature)):
            self.peers.misbehaved(proto, "invalid_block", f"CMPCT_BLOCK at height {header.height} is not signed "
                                                          "by its farmer or not on its parent")
            return
        partial = compact.rebuild(message, self.mempool.transactions())
        missing = partial.missing
        if not missing:
            self.compact_stats["rebuilt"] += 1
            self._compact_complete(proto, partial)
            return
        everything = [p for ps in self._partials.values() for p in ps]
        if (len(everything) >= MAX_PARTIAL_BLOCKS
                or sum(1 for p in everything if p.source is proto) >= MAX_PARTIAL_PER_PEER):
            self.compact_stats["too_many_partial"] += 1
            if not waiting:
                self._request_block(proto, header.height)
            return
        self.compact_stats["asked_missing"] += 1
        pending = _Partial(partial, proto, None)
        pending.timer = self.reactor.callLater(PARTIAL_TIMEOUT, self._partial_timed_out, block_hash, pending)
        self._partials.setdefault(block_hash, []).append(pending)
        proto.send(wire.GetBlockTxn(block_hash, missing))

    def _compact_complete(self, proto: PeerProtocol, partial: compact.PartialBlock) -> None:
        block = partial.block()
        if block is None:  # a short-id collision, or a lie: fetch it whole
            self.compact_stats["root_mismatch"] += 1
            self._request_block(proto, partial.header.height)
            return
        self._drop_partial(block.hash)  # rebuilds from other peers are not needed now
        self._background(self.receive_block(block, proto), "CMPCT_BLOCK")

    def _on_block_txn(self, proto: PeerProtocol, message: wire.BlockTxn) -> None:
        pending = next((p for p in self._partials.get(message.hash, ()) if p.source is proto), None)
        if pending is None:
            return  # late (timed out, or the block came another way), or not asked of it
        if not pending.partial.fill(message.txs):
            self._drop_partial(message.hash, pending)  # the others go on
            self.peers.misbehaved(proto, "invalid_block", "BLOCK_TXN with the wrong number of transfers")
            return
        self._drop_partial(message.hash)  # one complete copy: the other rebuilds are not needed
        self._compact_complete(proto, pending.partial)

    def _on_get_block_txn(self, proto: PeerProtocol, message: wire.GetBlockTxn) -> None:
        block = self._recent_block(message.hash)
        if block is None:
            return
        if message.indexes[-1] >= len(block.transactions):
            self.peers.misbehaved(proto, "bad_payload", "GET_BLOCK_TXN index beyond the block")
            return
        proto.send(wire.BlockTxn(message.hash, tuple(block.transactions[i] for i in message.indexes)))

    def _partial_timed_out(self, block_hash: bytes, pending: _Partial) -> None:
        """No BLOCK_TXN in time: that rebuild ends; if it was the last, the block is asked
        for whole, of another peer that has it if there is one."""
        self._drop_partial(block_hash, pending)
        self.compact_stats["partial_timeout"] += 1
        if block_hash in self._partials or self.chain.has_block(block_hash) or block_hash in self._in_progress:
            return
        others = [p for p in self.peers.ready_peers()
                  if p is not pending.source and p.info is not None and block_hash in p.info.known_blocks]
        target = others[0] if others else pending.source
        if target.info is not None and target.info.state is not PeerState.CLOSED:
            self._request_block(target, pending.partial.header.height)

    def _drop_partial(self, block_hash: bytes, only: Optional[_Partial] = None) -> None:
        """Forget the rebuilds of a block (or just `only`), cancelling their timers."""
        waiting = self._partials.get(block_hash, [])
        for pending in [p for p in waiting if only is None or p is only]:
            waiting.remove(pending)
            if pending.timer is not None and pending.timer.active():
                pending.timer.cancel()
        if not waiting:
            self._partials.pop(block_hash, None)

    # transfer inventory

    def _not_known_to(self, proto: PeerProtocol, ids: list[bytes]) -> list[bytes]:
        """Of the ids queued for a peer, those it has not announced (nor got from us) since:
        they go in its INV now and are known to it from now on."""
        info = proto.info
        if info is None or info.state is PeerState.CLOSED:
            return []
        return info.known_txs.add_unknown(ids)

    def _on_inv(self, proto: PeerProtocol, message: wire.Inv) -> None:
        assert proto.info is not None
        proto.info.known_txs.add_all(message.ids)
        self.txrelay.inv_received(proto, message.ids)

    def _on_req(self, proto: PeerProtocol, message: wire.Req) -> None:
        txs: list[Transaction] = []
        size = 0
        for inv in message.ids:
            tx_id = self._by_inv.get(inv)
            tx = self.mempool.get(tx_id) if tx_id is not None else None
            if tx is None:
                continue
            size += 400 + 2 * len(tx.signature)
            if txs and size > MAX_RES_BYTES:
                break
            txs.append(tx)
        proto.send(wire.Res(tuple(txs)))

    def _on_res(self, proto: PeerProtocol, message: wire.Res) -> None:
        # Only what we asked of it is admitted (and relayed); the rest is ignored.
        for tx in self.txrelay.res_received(proto, message.txs):
            self._on_new_transaction(proto, wire.NewTransaction(tx))

    async def import_batch(self, blocks: list[Block],
                           sources: Optional[Sequence[Optional[PeerProtocol]]] = None,
                           scores: Optional[Sequence[int]] = None,
                           checks: Optional[Sequence[defer.Deferred]] = None) -> int:
        """Consecutive blocks from sync (`sources[i]` sent `blocks[i]`): every block's
        proofs checked in parallel (each needs only its parent's header, the previous block
        in the batch; a header proved by headers-first sync has only its body checked, or
        `checks[i]`, its check_body started when the body arrived), then added in order.
        Returns how many were added; stops at the first refusal, which is blamed on the
        block's sender."""
        if not blocks:
            return 0
        senders: Sequence[Optional[PeerProtocol]] = sources if sources is not None else [None] * len(blocks)
        first_parent = self.chain.header(blocks[0].header.parent_hash)
        if first_parent is None:
            for block, sender in zip(blocks, senders):
                self.orphans.add(block, sender)
            for check in checks or ():
                check.addErrback(lambda f: None)
            return 0
        parents = [first_parent] + [b.header for b in blocks[:-1]]
        if checks is not None:
            checks = list(checks)
        elif scores is not None:  # headers proved by headers-first sync: their bodies only
            checks = [self.check_body(b, score) for b, score in zip(blocks, scores)]
        else:
            checks = [self.verify(b, p, background="blocks") for b, p in zip(blocks, parents)]
        added = 0
        # One transaction for the run (a crash reopens at a run boundary); each block a
        # savepoint in it. Between blocks the reactor runs (a PING, a gossiped block, the
        # next reply of the sync round): what it writes meanwhile joins the run. The run
        # may be the one the batch before left open (RUN_LINGER).
        self._open_run()
        try:
            for i, (block, check, sender) in enumerate(zip(blocks, checks, senders)):
                if i and check.called:  # (awaiting a check still running yields anyway)
                    await task.deferLater(self.reactor, 0, lambda: None)
                try:
                    score = await check
                    if self.stopped:
                        return added
                    with self.metrics.storing():
                        result = self.chain.add_block(block, self.now_ms(), score)
                except BlockRejected as e:
                    self._rejected(block, sender, e)
                    if e.permanent and sender is not None:
                        sender.disconnect(f"served a block refused for good ({e.reason})")  # not used again
                    return added
                if result.status == ORPHAN:
                    return added
                self._accepted(block, result)
                added += 1
                self.metrics.synced_block()
                if self.orphans.has_children(block.hash):
                    self._connect_children(block.hash)  # blocks that arrived during the sync
        finally:
            self._close_run(added)
            for check in checks:
                check.addErrback(lambda f: None)
        return added

    def _open_run(self) -> None:
        if self._linger is not None:  # the last batch's run, left open: this batch joins it
            if self._linger.active():
                self._linger.cancel()
            self._linger = None
            return
        if not self.chain.storage.in_run:  # a new transaction, not one a batch in flight holds
            self._run_blocks = 0
            self._run_started = self.reactor.seconds()
        self.chain.begin_run()

    def _close_run(self, added: int) -> None:
        """The batch's end: its run commits now (the run is full or RUN_MAX_SECONDS old, the
        node stops, lingering is off) or stays open RUN_LINGER seconds for the next batch
        (commit_run then). So a crash loses at most about RUN_MAX_SECONDS of a sync."""
        self._run_blocks += added
        if (self.run_linger <= 0 or self._run_blocks >= RUN_BLOCKS or self.stopped or self._linger is not None
                or not self.chain.storage.in_run
                or self.reactor.seconds() - self._run_started >= RUN_MAX_SECONDS):
            with self.metrics.storing():
                self.chain.end_run()  # the run's one commit
            return
        self._linger = self.reactor.callLater(self.run_linger, self.commit_run)

    def commit_run(self) -> None:
        """Commit the sync run a batch left open, if any (at once: the node stops, or its
        RUN_LINGER is over). A failed commit (disk full, an I/O error) rolls the run back:
        the node forgets what it held of those blocks and follows the stored tip again, and
        the sync fetches them anew (the round's next batch no longer links)."""
        linger, self._linger = self._linger, None
        if linger is None:
            return
        if linger.active():
            linger.cancel()
        try:
            with self.metrics.storing():
                self.chain.end_run()
        except Exception as e:
            self.chain.forget_cached()
            self.vdf_parent, self.vdf_segments = self.chain.tip.hash, []
            log.error("[storage] committing a sync run failed ({e}): its blocks are not stored, "
                      "the tip is back at height {h}", e=e, h=self.chain.height)

    # transactions

    def submit_transaction(self, tx: Transaction, source: Optional[PeerProtocol] = None) -> bytes:
        """Admit a transfer to the mempool and relay it; InvalidTransaction says why not."""
        inv = wire.inv_id(tx.hash)
        if source is not None and source.info is not None:
            source.info.known_txs.add(inv)
        if tx.hash in self.mempool:
            return tx.hash
        if source is not None and tx.hash in self._seen_txs:
            return tx.hash
        try:
            self.mempool.add(tx, self.chain.account, self.verified_transfers)
        except InvalidTransaction as e:
            # Remember only what can never be admitted by this id; a gap or a full pool may
            # clear, and a bad signature condemns this copy only (the id leaves the
            # signature out: a forged copy must not shadow the real transfer).
            if e.reason != "bad_signature" and (e.reason in FORGERY_REASONS or e.reason == "bad_nonce"):
                self._seen_txs.add(tx.hash)
                self._seen_inv.add(inv)
            raise
        self._seen_txs.add(tx.hash)
        self._seen_inv.add(inv)
        self._by_inv[inv] = tx.hash
        while len(self._by_inv) > MAX_INV_IDS:
            self._by_inv.popitem(last=False)
        if source is not None and source.info is not None:
            source.info.last_tx_at = self.reactor.seconds()
        self.txrelay.known(inv)
        self._relay_transaction(tx)
        return tx.hash

    def _relay_transaction(self, tx: Transaction) -> None:
        """Announced in the next INV to inventory peers, pushed whole to older ones."""
        message: Optional[wire.NewTransaction] = None
        announce_to = []
        inv = wire.inv_id(tx.hash)
        for proto in self.peers.ready_peers():
            info = proto.info
            assert info is not None
            if info.block_relay_only:
                continue
            if "inv" in info.capabilities:  # (info.can, inline: once per peer per transfer)
                # Queued; whether it knows the id already is asked when its INV leaves
                # (_not_known_to): by then it may have announced it to us.
                announce_to.append(proto)
            elif inv not in info.known_txs and info.can("tx") and not proto.writes_paused:
                info.known_txs.add(inv)
                message = message or wire.NewTransaction(tx)
                proto.send(message)
        self.txrelay.announce(inv, announce_to)

    # timelord output

    @property
    def vdf_iterations(self) -> int:
        """The iterations per segment of the VDF on the tip (what its child must use):
        computed on first use per tip, not at every new tip (a sync connects thousands)."""
        parent, iterations = self._vdf_iterations
        if parent != self.vdf_parent:
            iterations = self.chain.next_iterations(self.vdf_parent)
            self._vdf_iterations = (self.vdf_parent, iterations)
        return iterations

    def vdf_origin(self, parent_hash: bytes) -> defer.Deferred:
        """Where the VDF of a child of `parent_hash` starts (block.child_origin), drawn in the
        verify pool: the first block of a discriminant epoch costs a discriminant (tens of
        ms on devnet), and vdf.origin remembers it for the segments and the block."""
        return self._in_thread(child_origin, self.chain.stored_header(parent_hash), self.params)

    def add_vdf_output(
        self, parent_hash: bytes, index: int, segment: vdf.Segment, source: Optional[PeerProtocol] = None
    ) -> defer.Deferred:
        """Verify and keep segment `index` of the VDF on our tip, then relay it."""
        return defer.ensureDeferred(self._add_vdf(parent_hash, index, segment, source))

    async def _add_vdf(self, parent_hash: bytes, index: int, segment: vdf.Segment,
                       source: Optional[PeerProtocol]) -> bool:
        if parent_hash != self.vdf_parent:
            return False
        if index != len(self.vdf_segments) + 1:
            # Ahead of what we have (the one before it still under check, or on its way):
            # held, one per index and at most MAX_VDF_AHEAD ahead, and taken in its turn.
            if (len(self.vdf_segments) + 1 < index <= len(self.vdf_segments) + MAX_VDF_AHEAD
                    and index not in self._vdf_ahead):
                self._vdf_ahead[index] = (segment, source)
            return False
        # One check at a time per segment slot, and a few per peer: a burst of forged
        # segments cannot fill the verify threads before its penalty lands.
        slot = (parent_hash, index)
        if slot in self._vdf_checking or (source is not None and self._pending[id(source)] >= MAX_PENDING_PER_PEER):
            return False
        self._vdf_checking.add(slot)
        if source is not None:
            self._pending[id(source)] += 1
        try:
            # Everything the check reads is taken before any wait: the tip may move while
            # the origin is drawn, and a segment checked against the new tip's iterations
            # would fail and cost an honest sender its score.
            discriminant_seed = self.chain.discriminant_seed_for_child(parent_hash)
            iterations = self.vdf_iterations
            if self.vdf_segments:
                start = self.vdf_segments[-1].output
            else:
                start = await self.vdf_origin(parent_hash)
                if parent_hash != self.vdf_parent:
                    return False  # the tip moved on: stale, not invalid
            ok = await self._in_thread(verify_segment, discriminant_seed, start, segment, self.params.discriminant_bits,
                                       iterations, cache=self.verified_segments)
        finally:
            self._vdf_checking.discard(slot)
            if source is not None:
                self._release(source)
        if self.stopped:
            return False
        if not ok:
            if source is not None:
                self.peers.misbehaved(source, "invalid_block", f"VDF segment {index} does not verify")
            return False
        if parent_hash != self.vdf_parent or index != len(self.vdf_segments) + 1:
            return False  # the tip moved or another copy won the race
        self.vdf_segments.append(segment)
        self.metrics.vdf_accepted(local=source is None, iterations=self.vdf_iterations)
        following = self._vdf_ahead.pop(index + 1, None)
        if following is not None:
            nxt, nxt_source = following
            if nxt_source is None or nxt_source.info is None or nxt_source.info.state is not PeerState.CLOSED:
                self._background(self.add_vdf_output(parent_hash, index + 1, nxt, nxt_source), "VDF_OUTPUT held")
        message = wire.VdfOutput(parent_hash, index, segment)
        key = _vdf_id(parent_hash, index)
        for proto in self.peers.ready_peers():
            info = proto.info
            assert info is not None
            if info.can("vdf") and key not in info.known_blocks and not proto.writes_paused:
                info.known_blocks.add(key)
                proto.send(message)
        for callback in list(self.on_vdf):
            callback(parent_hash, index, segment)
        return True


def _outbound(proto: PeerProtocol) -> bool:
    return proto.info is not None and proto.info.direction == "outbound"


def _inv_interval(proto: PeerProtocol) -> float:
    outbound = proto.info is not None and proto.info.direction == "outbound"
    return txrelay.OUTBOUND_INTERVAL if outbound else txrelay.INBOUND_INTERVAL


def _after(d: defer.Deferred, result: Any) -> defer.Deferred:
    """`result` once `d` has fired (a Deferred whose errbacks `d`'s owner has added)."""
    waiting: defer.Deferred = defer.Deferred()
    d.addBoth(lambda _: waiting.callback(None))
    waiting.addCallback(lambda _: result)
    return waiting


def _body_then(block: Block, params: Any, score: int, timings: Optional[dict[str, float]] = None,
               transfers: Optional[VerifiedTransfers] = None) -> int:
    check_body(block, params, timings, transfers)
    return score


def verify_segment(discriminant_seed: bytes, start: bytes, segment: vdf.Segment, bits: int, iterations: int,
                   cache: Optional[VerifiedSegments] = None) -> bool:
    """One timelord segment, remembered in `cache` when it verifies (so the block that
    carries it does not check it again)."""
    if cache is None:
        return vdf.verify_segment(discriminant_seed, start, segment, bits, iterations)
    return cache.check(discriminant_seed, start, segment, bits, iterations)


def _vdf_id(parent_hash: bytes, index: int) -> bytes:
    return sha256(b"vdf", parent_hash, index.to_bytes(4, "big"))

