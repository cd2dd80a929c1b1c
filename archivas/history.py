"""verify-history in the background of a node loaded from a snapshot, as Bitcoin Core
validates an assumeutxo snapshot's history (docs/snapshots.md).

The HistoryVerifier fetches main-chain blocks 1..H from ready peers that show at least
height H, over the peer protocol the node already speaks (GET_BLOCKS, or GET_BLOCK from a
seed peer: `Syncer.fetch_range`), and validates them in full into a scratch database
(`<db>/history-check`, chain/history.py) in a thread of its own, so the reactor never
waits on it. At H it compares the state hash with the snapshot's: equal, it records
`history_validated` in the node's database meta (reported by /status) and removes the
scratch database; different, it logs the one-line error and `wait()` fails with it.
A block a peer serves that is refused, or not the next, is blamed on that peer, which is
not asked again; another is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

from twisted.application import service
from twisted.internet import defer, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from archivas.chain.consensus import BlockRejected
from archivas.chain.history import HistoryCheck, HistoryMismatch, HistoryOtherChain, HistoryRefused
from archivas.chain.snapshot import HISTORY_FAILED_META, HISTORY_META, Manifest, history_validated, stored_manifest
from archivas.protocols.peer import PeerProtocol

log = Logger()

SCRATCH_DIR = "history-check"
BATCH = 32  # blocks asked at once
RETRY_SECONDS = 5.0  # how often a verifier without a peer looks again
PROGRESS_SECONDS = 10.0  # between progress lines
KEEP_BATCH = 8  # validated blocks copied into the node's database (and its indexes) a transaction


class HistoryVerifier(service.Service):
    name = "history"  # type: ignore[assignment]

    def __init__(self, node: Any, directory: Optional[Path] = None,
                 on_failed: Optional[Callable[[str], Any]] = None) -> None:
        self.node = node
        self.on_failed = on_failed  # called with the one-line error once it is recorded
        manifest = stored_manifest(node.chain.storage)
        assert manifest is not None, "a verifier is for a database loaded from a snapshot"
        self.manifest: Manifest = manifest
        self.directory = directory or node.chain.storage.directory / SCRATCH_DIR
        self.check: Optional[HistoryCheck] = None
        self.outcome: Optional[Any] = None  # the state hash, or the HistoryMismatch, once known
        self._waiters: list[defer.Deferred] = []
        self.refused: set[str] = set()  # peers (host:port) whose history was refused
        self.last_error: Optional[str] = None
        self.busy = False
        self.finished = False
        self._pool: Optional[ThreadPool] = None
        self._loop: Optional[LoopingCall] = None
        self._job: Optional[defer.Deferred] = None
        self._in_thread: Optional[defer.Deferred] = None
        self._last_progress = 0.0

    def wait(self) -> defer.Deferred:
        """Fires with the state hash once the history is validated, or fails with the
        HistoryMismatch."""
        d: defer.Deferred = defer.Deferred()
        if self.outcome is None:
            self._waiters.append(d)
        else:
            self._fire(d)
        return d

    def _fire(self, d: defer.Deferred) -> None:
        if isinstance(self.outcome, Exception):
            d.errback(self.outcome)
        else:
            d.callback(self.outcome)

    def _settle(self, outcome: Any) -> None:
        self.outcome = outcome
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire(d)

    # the one thread the scratch chain is used from (synchronous on a reactor without threads)

    def _work(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self._pool is None:
            return defer.maybeDeferred(f, *args)
        d = self._in_thread = threads.deferToThreadPool(self.node.reactor, self._pool, f, *args)
        return d

    def startService(self) -> None:
        super().startService()
        if history_validated(self.node.chain.storage) is not None:
            self.finished = True
            self._settle(self.manifest.state_hash)
            return
        if self.node.threaded:
            self._pool = ThreadPool(minthreads=0, maxthreads=1, name="archivas-history")
            self._pool.start()
        log.info("[history] validating the history below the snapshot at height {h} in the background",
                 h=self.manifest.height)
        self.node.peers.on_ready.append(self._peer_ready)
        self._loop = LoopingCall(self.kick)
        self._loop.clock = self.node.reactor
        self._loop.start(RETRY_SECONDS, now=True).addErrback(lambda f: log.failure("[history] failed", f))

    def stopService(self) -> defer.Deferred:  # type: ignore[override]
        super().stopService()
        self.finished = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._peer_ready in self.node.peers.on_ready:
            self.node.peers.on_ready.remove(self._peer_ready)
        # A fetch may never answer (the peers close): wait only for the thread's work.
        job = self._in_thread if self._in_thread is not None and not self._in_thread.called else defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        job.addBoth(lambda _: d.callback(None))
        d.addCallback(lambda _: self._close())
        return d

    def _close(self, remove: bool = False) -> None:
        if self.check is not None:
            self.check.close(remove)
            self.check = None
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    def _peer_ready(self, proto: PeerProtocol) -> None:
        self.kick()

    def _sources(self) -> list[PeerProtocol]:
        return [p for p in self.node.peers.ready_peers()
                if p.info is not None and p.info.height >= self.manifest.height and p.info.address not in self.refused]

    def kick(self) -> None:
        if self.busy or self.finished:
            return
        sources = self._sources()
        if not sources:
            return
        self.busy = True
        self._job = defer.ensureDeferred(self._run(sources[0]))
        self._job.addErrback(lambda f: log.failure("[history] check failed unexpectedly", f))

    async def _run(self, proto: PeerProtocol) -> None:
        address = proto.info.address if proto.info is not None else "?"
        try:
            if self.check is None:
                check = await self._work(HistoryCheck, self.directory, self.node.params, self.manifest,
                                         self._own_chain())
                if self.finished:  # stopped meanwhile
                    await self._work(check.close)
                    return
                self.check = check
            check = self.check
            while not check.done and not self.finished:
                start = check.next_height
                count = min(BATCH, self.manifest.height - start + 1)
                blocks = await self.node.sync.fetch_range(proto, start, count)
                if not blocks:
                    raise HistoryRefused(f"served no block at height {start}")
                if self.finished:
                    return
                await self._work(check.add, blocks, self.node.now_ms())
                now = self.node.reactor.seconds()
                if now - self._last_progress >= PROGRESS_SECONDS:
                    self._last_progress = now
                    log.info("[history] validated to height {h} of {goal} (from {peer})", h=check.next_height - 1,
                             goal=self.manifest.height, peer=address)
            if self.finished:
                return
            state_hash = await self._work(check.finish)
            if self.finished:
                return
            if not await self._keep_history(check):
                return
        except HistoryMismatch as e:
            self._failed(str(e))
            return
        except HistoryOtherChain as e:  # valid, but another chain: start the scratch chain afresh
            self.refused.add(address)
            self.last_error = f"the history from {address} is another chain's: {e}"
            log.warn("[history] {e}: starting again with another peer", e=self.last_error)
            check, self.check = self.check, None
            if check is not None:
                await self._work(check.close, True)
            return
        except (BlockRejected, HistoryRefused) as e:
            self.refused.add(address)
            self.last_error = f"the history from {address} was refused: {e}"
            log.warn("[history] {e}: asking another peer", e=self.last_error)
            if isinstance(e, BlockRejected) and e.permanent:
                self.node.peers.misbehaved(proto, "invalid_block", f"history block: {e}")
            return
        except Exception as e:  # a timeout, a lost peer: try again (another peer first)
            self.last_error = f"fetching the history from {address} failed: {e or type(e).__name__}"
            log.info("[history] {e}", e=self.last_error)
            return
        finally:
            self.busy = False
        self._validated(state_hash)

    async def _keep_history(self, check: HistoryCheck) -> bool:
        """The validated blocks below those the node holds become its own, so it serves its
        whole history (GET_BLOCKS, GET_HEADERS, GET /block): KEEP_BATCH blocks a transaction
        on the reactor, read in the history thread. False if stopped meanwhile (a restart
        validates again from the scratch chain's tip and keeps the rest: rows already kept
        are left as they are)."""
        storage = self.node.chain.storage
        held = min(self._own_chain(), default=self.manifest.height + 1)
        kept = 0
        for start in range(1, held, KEEP_BATCH):
            rows, blocks = await self._work(check.history_rows, start, min(KEEP_BATCH, held - start))
            if self.finished:
                return False
            with storage.transaction():
                storage.put_history(rows)
                storage.index_blocks(blocks)  # their transfers in /tx and /address too
            kept += len(rows)
        # The snapshot's own blocks (H-n+1..H, n at most consensus.context_depth: the load did
        # not index them).
        own = [self.node.chain.block_at(h) for h in range(held, self.manifest.height + 1)]
        with storage.transaction():
            storage.index_blocks([b for b in own if b is not None])
        if kept:
            log.info("[history] kept the {n} validated blocks below the snapshot's own {m}: "
                     "this node serves its whole history", n=kept, m=self.manifest.height - held + 1)
        return True

    def _own_chain(self) -> dict[int, bytes]:
        """The snapshot's main chain as this node holds it (the blocks the file carried)."""
        storage, out = self.node.chain.storage, {}
        for height in range(self.manifest.height, 0, -1):
            block_hash = storage.main_hash(height)
            if block_hash is None:
                break
            out[height] = block_hash
        return out

    def _validated(self, state_hash: bytes) -> None:
        storage = self.node.chain.storage
        record = {"height": self.manifest.height, "stateHash": state_hash.hex(), "at": int(time.time() * 1000)}
        with storage.transaction():
            storage.set_meta(HISTORY_META, json.dumps(record, sort_keys=True))
        self.finished = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        log.info("[history] history validated: blocks 0..{h} reproduce the snapshot's state (state hash {s})",
                 h=self.manifest.height, s=state_hash.hex())
        self._work(self._close_scratch).addBoth(lambda _: self._settle(state_hash))

    def _close_scratch(self) -> None:
        if self.check is not None:
            self.check.close(remove=True)
            self.check = None

    def _failed(self, message: str) -> None:
        self.finished = True
        self.last_error = message
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        storage = self.node.chain.storage
        with storage.transaction():  # a node refuses this database from now on (docs/snapshots.md)
            storage.set_meta(HISTORY_FAILED_META, message)
        log.error("[history] {message}", message=message)
        self._settle(HistoryMismatch(message))
        if self.on_failed is not None:
            self.on_failed(message)
