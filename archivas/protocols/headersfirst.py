"""A headers-first sync round with one peer, as Bitcoin Core syncs: a peer's claimed weight
is believed only as far as its headers prove it.

1. GET_HEADERS with our block locator; the first header's parent is the fork point (a
   block we store). Headers come in replies sized in bytes by the sender.
2. Each reply is checked in order: the context rules on the reactor (cheap), then every
   header's proofs in the thread pool, independently and cheapest first
   (consensus.check_header). The first invalid header ends the round and its sender is
   refused; a header only early (timestamp ahead of our clock) ends the headers for now.
3. Nothing is stored until the headers prove `max(minChainWeight, our weight + 1)`
   (presync, chain/headerchain.py). Then bodies are fetched by hash right behind the
   proven frontier, inside a bounded window, in parallel from every peer that can serve
   them, each checked against its header's transaction root on arrival, and imported in
   runs whose headers are not checked again.

Peers whose headers end below what they claimed, or that stall, fail the round; the
Syncer rotates. Numbers are below and in docs/protocol.md.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from archivas.chain.block import Block, Header
from archivas.chain.consensus import BlockRejected, context_depth
from archivas.chain.headerchain import HeaderMismatch, HeaderRun, Point, header_size
from archivas.protocols import assumevalid, wire
from archivas.protocols.peer import PeerProtocol

if TYPE_CHECKING:
    from archivas.protocols.sync import Syncer

log = Logger()

HEADERS_PER_REQUEST = 512  # asked for at once (the sender may send fewer: 1 MiB at most)
BODIES_PER_REQUEST = 32  # at most; fewer for big bodies (BODY_BATCH_BYTES)
BODIES_IN_FLIGHT = 3  # body requests outstanding per peer (more for small batches, MAX_BODIES_IN_FLIGHT)
MAX_BODIES_IN_FLIGHT = 8
# The bodies a request asks for are expected to take about this much (from the bodies seen
# so far this round): a reply is decoded and its transaction roots checked on the reactor,
# and 32 bodies of 50 transfers held it for 30-60 ms.
BODY_BATCH_BYTES = 64 * 1024
MIN_BODIES_PER_REQUEST = 4
DOWNLOAD_WINDOW = 1024  # heights past the stored chain whose bodies may be fetched
MAX_HELD_BYTES = 64 * 1024 * 1024  # bodies received and not yet stored
BODY_ESTIMATE = 16 * 1024  # bytes a body is assumed to take, for a request's timeout
PRESYNC_BUDGET = 128 * 1024 * 1024  # header bytes a peer may send in a round before it proves its weight
IMPORT_RUN = 64  # blocks handed to the node at once (one transaction: docs/storage.md)
# ... and at most about this many bytes of bodies: a run's COMMIT writes its pages at once
# on the reactor (64 blocks of 50 transfers: 16-20 ms).
IMPORT_RUN_BYTES = 512 * 1024
STALL_SECONDS = 2.0  # a body request holding up the window's front this long is asked of another peer


class Failed(Exception):
    pass


class HeadersFirstRound:
    def __init__(self, syncer: "Syncer", target: PeerProtocol) -> None:
        self.syncer = syncer
        self.view = syncer.view
        self.sink = syncer.sink
        self.reactor = syncer.reactor
        self.target = target
        self.run: Optional[HeaderRun] = None
        self.next = 0  # the lowest height not yet stored
        self.importing_to = 0  # while importing: the height after the run handed to the node
        # height -> (block, sender, its body check: sink.check_body, started on arrival)
        self.received: dict[int, tuple[Block, PeerProtocol, defer.Deferred]] = {}
        self.held_bytes = 0
        self.body_bytes = 1024.0  # a moving average of the bodies received (_body_bytes)
        self.requested: set[int] = set()
        self.in_flight: dict[int, int] = {}
        self.dropped: set[int] = set()
        self.headers_done = False
        self.presync_bytes = 0
        self.early_until = 0.0  # a header ahead of our clock ended the headers: when it is due
        self.importing = False
        self.finished: defer.Deferred = defer.Deferred()
        self._room: Optional[defer.Deferred] = None
        self.stored = 0
        self.header_seconds = 0.0
        self.stalls = 0
        self.short_of_claim = False  # its headers ended below the weight it claims
        self._batches: dict[int, tuple[PeerProtocol, float, list[int]]] = {}
        self._batch_ids = itertools.count()
        self._rescued: set[int] = set()
        self.assumed: Optional[assumevalid.AssumedChain] = None  # the walk to the assumed block

    # the round

    async def go(self) -> None:
        first = await self._get_headers(self.view.locator())
        for _ in range(8):  # a locator is sparse below the tip: skip headers we store already
            if not first.headers:
                raise Failed("no headers after our locator from a peer that claims more")
            known = 0
            while known < len(first.headers) and self.view.has_block(first.headers[known].hash):
                known += 1
            if known < len(first.headers):
                first = wire.Headers(first.headers[known:], first.tip_height, first.tip_weight)
                break
            first = await self._get_headers((first.headers[-1].hash,) + self.view.locator())
        else:
            raise Failed("its headers are all of blocks we store")
        fork_hash = first.headers[0].parent_hash
        fork = self.view.meta(fork_hash)
        fork_header = self.view.header(fork_hash)
        if fork is None or fork_header is None:
            raise Failed("its headers do not start on a block we have")
        threshold = max(self.view.params.min_chain_weight, self.view.tip().weight + 1)
        depth = context_depth(self.view.params)
        self.run = HeaderRun(self.view.params, Point(fork.hash, fork.height, fork.weight, fork_header),
                             self.view.ancestors(fork.hash, depth), threshold)
        self.next = fork.height + 1
        log.info("[p2p] peers are ahead, need to sync from {ours} to {goal}", ours=self.view.tip().height,
                 goal=first.tip_height)
        log.info("[sync] headers first from {peer}: fork at height {fork}", peer=self._name(self.target),
                 fork=fork.height)
        assumed = self.sink.assume_valid
        agent = self.syncer.agent(self.target)
        if assumed is not None and not self.view.has_block(assumed) and not agent.assumed_not_found:
            self.assumed = await assumevalid.scout(self, first, assumed, fork.hash, fork.height)  # assumevalid.py
            agent.assumed_not_found = self.assumed is None
        loop = defer.ensureDeferred(self._headers(first))
        loop.addErrback(self._fail)
        ticker = LoopingCall(self.pump)  # the stall check runs even when nothing arrives
        ticker.clock = self.reactor
        ticker.start(STALL_SECONDS / 2, now=False).addErrback(self._fail)
        try:
            await self.finished
        finally:
            if ticker.running:
                ticker.stop()
            self.discard_all()

    def _fail(self, failure: Any) -> None:
        if not self.finished.called:
            self.finished.errback(failure)

    def _done_if_finished(self) -> None:
        run = self.run
        if (self.headers_done and not self.finished.called and run is not None
                and not self.importing and self.next > run.end.height and not run.compact):
            self.finished.callback(None)

    async def _get_headers(self, locator: tuple[bytes, ...]) -> wire.Headers:
        agent = self.syncer.agent(self.target)
        size = header_size(self.run.end.header) if self.run is not None else 2048
        timeout = agent.timeout_for(HEADERS_PER_REQUEST * size)
        reply = await agent.request(wire.GetHeaders(locator, HEADERS_PER_REQUEST), "headers", 0, timeout)
        assert isinstance(reply, wire.Headers)
        return reply

    async def _headers(self, first: wire.Headers) -> None:
        run = self.run
        assert run is not None
        reply = first
        while True:
            started = self.reactor.seconds()
            go_on = await self._take(reply.headers)
            self.header_seconds += self.reactor.seconds() - started
            self.pump()
            self.drain()
            ended = not reply.headers or run.last.height >= reply.tip_height
            if not go_on or (ended and not (run.compact and run.proven)):
                break
            while not run.wants_headers():
                self._room = defer.Deferred()
                await self._room
            if run.compact and not run.proven and self.presync_bytes > PRESYNC_BUDGET:
                raise Failed(f"{self.presync_bytes} bytes of headers without reaching the weight needed")
            after = run.fetch_after()
            reply = await self._get_headers((after.hash,) + self.view.locator())
            if reply.headers and reply.headers[0].parent_hash != after.hash:
                raise Failed("its headers no longer follow the ones it sent (its chain moved): starting again")
            if not reply.headers and run.compact:
                break
        self.headers_done = True
        claimed = self.syncer.claimed_weight(self.target)
        if run.last.weight < claimed:
            self.short_of_claim = True
            log.info("[sync] {peer}'s headers end at weight {w}, below the {c} it claims",
                     peer=self._name(self.target), w=run.last.weight, c=claimed)
        if not run.proven:
            raise Failed(f"its headers reach weight {run.last.weight}, not the {run.threshold} needed")
        if run.compact:
            raise Failed("its headers ended before those let go in presync were fetched again")
        self._done_if_finished()

    async def _take(self, headers: tuple[Header, ...]) -> bool:
        """Check and add one reply's headers; False when headers should stop for now."""
        run = self.run
        assert run is not None
        fresh: list[Header] = []
        for header in headers:
            try:
                if not fresh and run.is_known(header):
                    run.add_known(header)
                    if self.assumed is not None and self.assumed.covers(header):
                        self.sink.assume_header(header)  # (checked before: its body is to be taken as assumed)
                    continue
            except HeaderMismatch as e:
                raise Failed(str(e)) from None
            fresh.append(header)
        if run.proven and not run.compact:
            fresh = fresh[:run.room()]  # past the window's room they would be let go and fetched again
        if not fresh:
            return True
        if run.compact and not run.proven:
            self.presync_bytes += sum(header_size(h) for h in fresh)
        try:
            usable = run.check_context(fresh, self.syncer.now_ms())
        except BlockRejected as e:
            return self._refused(fresh[0], e)
        checks = []
        parent = run.last.header
        for header in fresh[:usable]:
            checks.append(self._check_proofs(header, parent))
            parent = header
        # Taken in order as each one's proofs come back (they run in parallel), so that bodies
        # are fetched behind the frontier while the rest of the reply is still being checked
        # (the first body of a sync waited for a whole reply of 512 headers: ~0.9 s).
        outcomes = [check.addCallbacks(lambda score: (True, score), lambda failure: (False, failure))
                    for check in checks]
        for i, (header, outcome) in enumerate(zip(fresh, outcomes)):
            ok, result = await outcome
            if self.finished.called:  # the round ended meanwhile
                return False
            if not ok:
                error = result.value
                if isinstance(error, BlockRejected):
                    return self._refused(header, error)
                raise Failed(f"checking header {header.height} failed: {result.getErrorMessage()}")
            run.add_checked(header, result)
            if i % BODIES_PER_REQUEST == BODIES_PER_REQUEST - 1:  # (a pump walks the window: not every header)
                self.pump()
        self.pump()
        info = self.target.info
        if info is not None and run.last.weight > (info.weight or 0):  # it proved more than it claimed
            info.weight, info.height, info.tip_hash = run.last.weight, run.last.height, run.last.hash
        if usable < len(fresh):  # the next one failed its context: see why, from the new last
            try:
                run.check_context(fresh[usable:usable + 1], self.syncer.now_ms())
            except BlockRejected as e:
                return self._refused(fresh[usable], e)
        return True

    def _check_proofs(self, header: Header, parent: Header) -> defer.Deferred:
        """A header's proofs in the thread pool, or, below the assumed block on the chain
        the walk saw (assumevalid.py), its shape only."""
        try:
            if self.assumed is not None and self.assumed.covers(header):
                return defer.maybeDeferred(self.sink.assume_header, header)
        except HeaderMismatch as e:
            return defer.fail(Failed(str(e)))
        return self.sink.verify_header(header, parent)

    def _refused(self, header: Header, error: BlockRejected) -> bool:
        if error.reason == "timestamp_in_future":  # only early: what came before is good
            self.early_until = (header.timestamp - self.view.params.max_future_ms) / 1000
            log.info("[sync] header {height} from {peer} is ahead of our clock: later",
                     height=header.height, peer=self._name(self.target))
            return False
        self.syncer.peers.misbehaved(self.target, "invalid_header", f"header at height {header.height}: {error}")
        if error.permanent:  # a chain that is invalid for good: not used again
            self.target.disconnect(f"served a header refused for good ({error.reason})")
        raise Failed(f"header at height {header.height} refused: {error}")

    # bodies

    def sources(self) -> list[PeerProtocol]:
        """Peers that may have the bodies: the target, and every ready peer that fetches by
        hash and shows at least the weight of the window's first header (each body is
        checked against its proven header, so any peer is safe to ask)."""
        run = self.run
        assert run is not None
        first = run.entry(self.next)
        need = first.weight if first is not None else 0
        now = self.reactor.seconds()
        out = []
        for proto in self.syncer.peers.ready_peers():
            info = proto.info
            if info is None or id(proto) in self.dropped or not info.can("headers"):
                continue
            agent = self.syncer.agent(proto)
            if proto is self.target or (self.syncer.claimed_weight(proto) >= need and agent.avoid_until <= now
                                        and agent.refuted != agent.claim()):
                out.append(proto)
        return out

    def pump(self) -> None:
        run = self.run
        if run is None or self.finished.called or not run.proven:
            return
        sources = self.sources()
        if not sources:
            if self.next <= run.end.height and not any(self.in_flight.values()):
                self._fail_now("no peer left to fetch bodies from")
            return
        self._unstall(sources)
        height = self._first_unheld()
        limit = min(run.end.height, self.next + DOWNLOAD_WINDOW - 1)
        while height <= limit and self.held_bytes < MAX_HELD_BYTES:
            if height in self.received or height in self.requested:
                height += 1
                continue
            proto = min(sources, key=lambda p: self.in_flight.get(id(p), 0))
            per_request = self.bodies_per_request()
            if self.in_flight.get(id(proto), 0) >= self.bodies_in_flight(per_request):
                return
            batch: list[int] = []
            while (height <= limit and len(batch) < per_request
                   and height not in self.received and height not in self.requested):
                batch.append(height)
                height += 1
            self._ask(proto, batch)

    def _unstall(self, sources: list[PeerProtocol]) -> None:
        """The request that holds the window's front, out for STALL_SECONDS: asked of another
        peer (the first answer is taken), and its peer leaves the round, as Bitcoin Core
        treats a staller."""
        front = self._first_unheld()
        if front in self.received or front in self._rescued:
            return
        now = self.reactor.seconds()
        for proto, asked_at, heights in self._batches.values():
            if heights[0] <= front <= heights[-1]:
                if now - asked_at < STALL_SECONDS:
                    return
                in_flight = self.bodies_in_flight(self.bodies_per_request())
                others = [p for p in sources if p is not proto and self.in_flight.get(id(p), 0) < in_flight]
                if not others:
                    return
                self._rescued.add(front)
                self.stalls += 1
                self._drop(proto)
                log.info("[sync] {peer} holds up blocks from height {h}: asking another peer",
                         peer=self._name(proto), h=front)
                rest = [h for h in heights if h >= front and h not in self.received]
                self._ask(min(others, key=lambda p: self.in_flight.get(id(p), 0)), rest)
                return

    def _first_unheld(self) -> int:
        """The lowest height neither stored nor being imported (the import yields to the
        reactor between blocks: its heights are in neither `received` nor the chain)."""
        return max(self.next, self.importing_to) if self.importing else self.next

    def bodies_per_request(self) -> int:
        """BODY_BATCH_BYTES worth of the bodies seen so far, 4 to 32."""
        return max(MIN_BODIES_PER_REQUEST, min(BODIES_PER_REQUEST, int(BODY_BATCH_BYTES // self.body_bytes)))

    def bodies_in_flight(self, per_request: int) -> int:
        """Requests out per peer: the heights in flight of 3 full requests, 3 to 8 requests."""
        return max(BODIES_IN_FLIGHT, min(MAX_BODIES_IN_FLIGHT, BODIES_IN_FLIGHT * BODIES_PER_REQUEST // per_request))

    def _ask(self, proto: PeerProtocol, heights: list[int]) -> None:
        run = self.run
        assert run is not None
        entries = [run.entry(h) for h in heights]
        hashes = tuple(e.header.hash for e in entries if e is not None)
        self.requested.update(heights)
        self.in_flight[id(proto)] = self.in_flight.get(id(proto), 0) + 1
        batch = next(self._batch_ids)
        self._batches[batch] = (proto, self.reactor.seconds(), heights)
        agent = self.syncer.agent(proto)
        d = agent.request(wire.GetBodies(hashes), "bodies", hashes[0], agent.timeout_for(len(hashes) * BODY_ESTIMATE))
        d.addCallbacks(self._arrived, self._not_arrived, callbackArgs=(proto, heights, batch),
                       errbackArgs=(proto, heights, batch))
        d.addErrback(self._fail)

    def _arrived(self, reply: wire.Bodies, proto: PeerProtocol, heights: list[int], batch: int) -> None:
        self._batches.pop(batch, None)
        self.in_flight[id(proto)] -= 1
        run = self.run
        assert run is not None
        served = 0
        for height, (block_hash, txs) in zip(heights, reply.bodies):
            entry = run.entry(height)
            if entry is None or height < self._first_unheld() or height in self.received:
                served += 1
                continue  # stored, being stored, or received meanwhile (from another peer)
            # (Whether the transfers are the header's, by its root, is the body check's
            # question, in the verify pool: check_body or assumed_body, bind_body first.)
            if block_hash != entry.header.hash:
                self.syncer.peers.misbehaved(proto, "invalid_block", f"body for height {height} is not its header's")
                self._drop(proto)
                break
            block = Block(entry.header, txs)
            self.received[height] = (block, proto, self.sink.check_body(block, entry.score))
            size = _body_bytes(txs)
            self.held_bytes += size
            self.body_bytes = 0.8 * self.body_bytes + 0.2 * size
            served += 1
        for height in heights:
            self.requested.discard(height)
        if served == 0 and heights[0] >= self._first_unheld():
            self._drop(proto)  # it does not have them
        self.drain()
        self.pump()

    def _not_arrived(self, failure: Any, proto: PeerProtocol, heights: list[int], batch: int) -> None:
        self._batches.pop(batch, None)
        self.in_flight[id(proto)] -= 1
        for height in heights:
            self.requested.discard(height)
        agent = self.syncer.agent(proto)
        if not failure.check(defer.TimeoutError) or agent.timeouts >= 2:
            self._drop(proto)  # slowness costs no score: it leaves the round
        self.pump()

    def _drop(self, proto: PeerProtocol) -> None:
        self.dropped.add(id(proto))

    def _fail_now(self, reason: str) -> None:
        if not self.finished.called:
            self.finished.errback(Failed(reason))

    # storing

    def drain(self) -> None:
        run = self.run
        if self.importing or self.finished.called or run is None:
            return
        blocks: list[Block] = []
        senders: list[PeerProtocol] = []
        scores: list[int] = []
        checks: list[defer.Deferred] = []
        height = self.next
        size = 0
        while height in self.received and len(blocks) < IMPORT_RUN and (not blocks or size < IMPORT_RUN_BYTES):
            block, sender, check = self.received.pop(height)
            size += _body_bytes(block.transactions)
            entry = run.entry(height)
            assert entry is not None
            self.held_bytes -= _body_bytes(block.transactions)
            blocks.append(block)
            senders.append(sender)
            scores.append(entry.score)
            checks.append(check)
            height += 1
        if not blocks:
            self._done_if_finished()
            return
        self.importing = True
        self.importing_to = height
        d = defer.ensureDeferred(self.sink.import_batch(blocks, senders, scores, checks))
        d.addCallbacks(self._imported, self._fail, callbackArgs=(blocks, senders))

    def _imported(self, added: int, blocks: list[Block], senders: list[PeerProtocol]) -> None:
        run = self.run
        assert run is not None
        self.importing = False
        run.stored(added)
        self.next += added
        self.stored += added
        if added < len(blocks):
            sender = senders[added]
            if sender is self.target:
                self._fail_now(f"block at height {self.next} was refused")
                return
            self._drop(sender)  # another copy may be fine: fetch it again from someone else
            for i in range(added, len(blocks)):
                self._discard(blocks[i].height)
        self.syncer.progress(self.next - 1, run.last.height)
        if self._room is not None and run.wants_headers():
            room, self._room = self._room, None
            room.callback(None)
        self.drain()
        self.pump()

    def _discard(self, height: int) -> None:
        held = self.received.pop(height, None)
        if held is not None:
            self.held_bytes -= _body_bytes(held[0].transactions)
            held[2].addErrback(lambda f: None)  # its outcome is not wanted

    def discard_all(self) -> None:
        """The round is over: the bodies held and not stored are let go."""
        for height in list(self.received):
            self._discard(height)

    def _name(self, proto: PeerProtocol) -> str:
        return proto.info.address if proto.info is not None else "?"


def _body_bytes(txs: tuple[Any, ...]) -> int:
    return 256 + 512 * len(txs)
