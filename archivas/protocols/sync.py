"""Sync: catching up with peers that show more weight.

The Syncer picks a round's target among the peers that show more weight, rotating off
those that failed lately (and never again for a claim that a round refuted: it must
announce another tip first), and keeps each peer's requests and timeouts on it
(SyncAgent). With an Archivas peer that serves headers, a round is headers-first
(headersfirst.py). With a seed peer (GET_BLOCK only) or an older Archivas peer, a round
(1) finds the fork point with the best peer: windows of main-chain hashes
(GET_HASHES) from an Archivas peer, or a walk back with GET_BLOCK from a seed peer;
(2) fetches the missing heights in batches from every peer on the same tip, several
requests in flight per peer, a timed-out batch retried elsewhere; (3) imports arrived
runs in order while later batches are still in flight (proofs checked in parallel), and
the chain reorganises if the fetched branch is heavier. Then it looks again.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger

from archivas.chain.block import Block
from archivas.protocols import wire
from archivas.protocols.headersfirst import Failed as HeadersFailed
from archivas.protocols.headersfirst import HeadersFirstRound
from archivas.protocols.interfaces import BlockSink, ChainView
from archivas.protocols.peer import PeerProtocol, PeerState

if TYPE_CHECKING:
    from archivas.protocols.manager import PeerManager

log = Logger()

BATCH = 32  # heights per GET_BLOCKS request
IN_FLIGHT_PER_PEER = 3  # outstanding batch requests per peer
LOOKAHEAD_BATCHES = 24  # fetched-but-not-imported batches at most (memory bound)
REQUEST_TIMEOUT = 2.0  # seconds a request may take at first (plus BYTES_ALLOWANCE); doubles per timeout
MAX_REQUEST_TIMEOUT = 64.0
BYTES_ALLOWANCE = 0.25  # seconds more per block asked for (a devnet block may be large)
ASSUMED_RATE = 256 * 1024  # bytes/s a link is assumed to carry at least, for a request's timeout
MAX_TIMEOUTS = 2  # a peer timing out this often leaves the round
MAX_HOSTS_REMEMBERED = 4096  # hosts whose failed rounds are remembered past their connection
MAX_WALK = 512  # blocks a fork-point walk with a seed peer goes back at most
MAX_WALK_BYTES = 16 * 1024 * 1024  # and the blocks it holds meanwhile
AVOID_SECONDS = 2.0  # a source that failed a round is not picked again for this long, doubling
PROGRESS_EVERY = 2.0  # seconds between progress lines on long syncs


class SyncFailed(Exception):
    pass


class _Batches:
    """The heights still to fetch, in batches: made as they are needed (a peer claiming a
    height of 10^18 costs nothing up front), retried ones first."""

    def __init__(self, first: int, last: int) -> None:
        self.retry: collections.deque[tuple[int, int]] = collections.deque()
        self.cursor = first
        self.last = last

    def __bool__(self) -> bool:
        return bool(self.retry) or self.cursor <= self.last

    def peek(self) -> tuple[int, int]:
        if self.retry:
            return self.retry[0]
        return self.cursor, min(BATCH, self.last - self.cursor + 1)

    def popleft(self) -> tuple[int, int]:
        batch = self.peek()
        if self.retry:
            self.retry.popleft()
        else:
            self.cursor += batch[1]
        return batch

    def appendleft(self, batch: tuple[int, int]) -> None:
        self.retry.appendleft(batch)


class SyncAgent:
    """One peer's outstanding sync requests and their timeouts; it lives on the peer
    (`PeerProtocol.sync_agent`), so a peer that leaves takes its requests with it."""

    def __init__(self, proto: PeerProtocol, reactor: Any) -> None:
        self.proto = proto
        self.reactor = reactor
        # (kind, start) -> the Deferreds waiting for that reply (a repeated request shares
        # the one sent: each gets the reply itself) and its timeout call
        self.waiting: dict[tuple[str, Any], tuple[list[defer.Deferred], Any]] = {}
        self.timeouts = 0  # in a row; each doubles the next request's timeout
        self.failed_rounds = 0  # rounds it led that ended early
        self.avoid_until = 0.0  # not picked as a round's target before this
        self.refuted: Optional[tuple[Any, ...]] = None  # the claim a round showed false
        # Its headers were walked for the assumed block and it was not there (assumevalid.py):
        # not walked again on this connection (a walk reads up to 1 GiB of headers).
        self.assumed_not_found = False

    def claim(self) -> tuple[Any, ...]:
        info = self.proto.info
        return (info.tip_hash, info.weight, info.height) if info is not None else ()

    def timeout(self, blocks: int) -> float:
        return min(REQUEST_TIMEOUT * 2 ** self.timeouts, MAX_REQUEST_TIMEOUT) + BYTES_ALLOWANCE * blocks

    def timeout_for(self, nbytes: int) -> float:
        """2 s (doubling per timeout in a row, up to 64 s) plus the time the bytes expected
        take at ASSUMED_RATE."""
        return min(REQUEST_TIMEOUT * 2 ** self.timeouts, MAX_REQUEST_TIMEOUT) + nbytes / ASSUMED_RATE

    def round_failed(self) -> None:
        self.failed_rounds += 1
        self.avoid_until = self.reactor.seconds() + min(AVOID_SECONDS * 2 ** (self.failed_rounds - 1),
                                                        MAX_REQUEST_TIMEOUT)

    def request(self, message: wire.Message, kind: str, start: Any, timeout: float) -> defer.Deferred:
        key = (kind, start)
        d: defer.Deferred = defer.Deferred()
        if key in self.waiting:  # the same request is out already: share its answer
            self.waiting[key][0].append(d)
            return d
        info = self.proto.info

        def expire() -> None:
            entry = self.waiting.pop(key, None)
            if entry is not None:
                self.timeouts += 1
                for waiter in entry[0]:
                    waiter.errback(defer.TimeoutError(f"{kind} {start} from {info.address if info else '?'}"))

        call = self.reactor.callLater(timeout, expire)
        self.waiting[key] = ([d], call)
        self.proto.send(message)
        return d

    def oldest(self, kind: str) -> Optional[Any]:
        """The `start` of the oldest request of this kind still waiting (replies come in order)."""
        return next((start for k, start in self.waiting if k == kind), None)

    def reply(self, kind: str, start: Any, message: wire.Message) -> bool:
        """True when the reply answers a request of ours (and was delivered to it)."""
        entry = self.waiting.pop((kind, start), None)
        if entry is None:
            return False
        self.timeouts = 0
        waiters, call = entry
        if call.active():
            call.cancel()
        for d in waiters:
            d.callback(message)
        return True

    def cancel_all(self, reason: str) -> None:
        entries = list(self.waiting.values())
        self.waiting.clear()
        for waiters, call in entries:
            if call.active():
                call.cancel()
            for d in waiters:
                d.errback(SyncFailed(reason))


class Syncer:
    def __init__(self, view: ChainView, sink: BlockSink, peers: "PeerManager", reactor: Any,
                 headers_first: bool = True) -> None:
        self.view = view
        self.sink = sink
        self.peers = peers
        self.reactor = reactor
        self.headers_first = headers_first  # False: every round as with a seed peer (for bench/)
        self.current: Optional[HeadersFirstRound] = None
        self.rounds = 0
        self._last_progress = 0.0
        self._progress_from: tuple[float, int] = (0.0, 0)
        self.active = False
        self._stopped = False
        self._retry: Any = None
        self._host_failures: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()

    def stop(self) -> None:
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        for proto in list(self.peers.peers):
            agent = proto.sync_agent
            if agent is not None:
                for _, call in list(agent.waiting.values()):
                    if call.active():
                        call.cancel()
                agent.waiting.clear()

    def round_failed(self, proto: PeerProtocol) -> None:
        """Remember the failure on the connection and on its host (a reconnect, or another
        connection from the same address, does not start afresh)."""
        agent = self.agent(proto)
        host = proto.info.host if proto.info is not None else "?"
        agent.failed_rounds = max(agent.failed_rounds, self._host_failures.get(host, (0, 0.0))[0])
        agent.round_failed()
        self._host_failures[host] = (agent.failed_rounds, agent.avoid_until)
        self._host_failures.move_to_end(host)
        while len(self._host_failures) > MAX_HOSTS_REMEMBERED:
            self._host_failures.popitem(last=False)

    def now_ms(self) -> int:
        return int(self.reactor.seconds() * 1000)

    def claimed_weight(self, proto: PeerProtocol) -> int:
        return proto.info.weight if proto.info is not None and proto.info.weight else 0

    def best_header_height(self) -> Optional[int]:
        """The height of the best proven header of the round under way (None: none is)."""
        run = self.current.run if self.current is not None else None
        return run.last.height if run is not None and run.proven else None

    def progress(self, height: int, goal: int) -> None:
        now = self.reactor.seconds()
        if self._progress_from[0] == 0.0 or now - self._progress_from[0] > 10 * PROGRESS_EVERY:
            self._last_progress, self._progress_from = now, (now, height)  # a new reference
        elif now - self._last_progress >= PROGRESS_EVERY:
            since, at = self._progress_from
            rate = (height - at) / max(now - since, 1e-9)
            self._last_progress, self._progress_from = now, (now, height)
            log.info("[sync] height {h} of {goal} proven, {rate:.0f} blocks/s", h=height, goal=goal, rate=rate)

    def agent(self, proto: PeerProtocol) -> SyncAgent:
        if proto.sync_agent is None:
            agent = proto.sync_agent = SyncAgent(proto, self.reactor)
            if proto.info is not None and proto.info.host in self._host_failures:
                agent.failed_rounds, agent.avoid_until = self._host_failures[proto.info.host]
        return proto.sync_agent

    # triggers

    def _ahead(self, proto: PeerProtocol) -> bool:
        info = proto.info
        if info is None or info.state is not PeerState.READY:
            return False
        tip = self.view.tip()
        if info.weight:
            if info.weight > tip.weight:
                return True
            return (info.weight == tip.weight and info.tip_hash is not None
                    and not self.view.has_block(info.tip_hash))
        return info.height > tip.height

    def peer_updated(self, proto: PeerProtocol) -> None:
        if not self.active and not self._stopped and self._ahead(proto):
            self.start_round()

    def _candidates(self) -> list[PeerProtocol]:
        """Peers ahead of us, those that led no failed round recently first, then by the
        weight (or height) they show: rounds rotate, so a liar cannot be picked forever."""
        now = self.reactor.seconds()
        ahead = [p for p in self.peers.ready_peers()
                 if self._ahead(p) and self.agent(p).refuted != self.agent(p).claim()]

        def rank(p: PeerProtocol) -> tuple[bool, int, int, int]:
            agent = self.agent(p)
            assert p.info is not None
            return (agent.avoid_until > now, agent.failed_rounds, -p.info.weight, -p.info.height)

        return sorted(ahead, key=rank)

    def start_round(self) -> None:
        if self.active or self._stopped:
            return
        candidates = self._candidates()
        if not candidates:
            return
        target = candidates[0]
        wait = self.agent(target).avoid_until - self.reactor.seconds()
        if wait > 0:  # every peer ahead failed lately: try the least bad one when its wait ends
            if self._retry is None or not self._retry.active():
                self._retry = self.reactor.callLater(wait, self.start_round)
            return
        self.active = True
        defer.ensureDeferred(self._round(target)).addErrback(lambda f: log.failure("[sync] round failed", f))

    def peer_lost(self, proto: PeerProtocol) -> None:
        if proto.sync_agent is not None:
            proto.sync_agent.cancel_all("peer disconnected")

    # replies (True: consumed by a waiting request)

    def _fire(self, proto: PeerProtocol, kind: str, start: int, message: wire.Message) -> bool:
        return proto.sync_agent is not None and proto.sync_agent.reply(kind, start, message)

    def blocks(self, proto: PeerProtocol, message: wire.Blocks) -> bool:
        return self._fire(proto, "blocks", message.start, message)

    def block_data(self, proto: PeerProtocol, message: wire.BlockData) -> bool:
        return self._fire(proto, "block", message.height, message)

    def hashes(self, proto: PeerProtocol, message: wire.Hashes) -> bool:
        return self._fire(proto, "hashes", message.start, message)

    def headers(self, proto: PeerProtocol, message: wire.Headers) -> bool:
        return self._fire(proto, "headers", 0, message)

    def bodies(self, proto: PeerProtocol, message: wire.Bodies) -> bool:
        agent = proto.sync_agent
        if agent is None:
            return False
        start = message.bodies[0][0] if message.bodies else agent.oldest("bodies")
        return agent.reply("bodies", start, message)

    def _request(self, proto: PeerProtocol, message: wire.Message, kind: str, start: int,
                 blocks: int = 1) -> defer.Deferred:
        agent = self.agent(proto)
        return agent.request(message, kind, start, agent.timeout(blocks))

    async def fetch_range(self, proto: PeerProtocol, start: int, count: int) -> list[Block]:
        """Main-chain blocks start.. from one peer (fewer when it has fewer)."""
        assert proto.info is not None
        if proto.info.can("blocks"):
            reply = await self._request(proto, wire.GetBlocks(start, count), "blocks", start, count)
            return list(reply.blocks)
        results = await defer.DeferredList(
            [self._request(proto, wire.GetBlock(h), "block", h) for h in range(start, start + count)],
            consumeErrors=True,
        )
        out: list[Block] = []
        for ok, reply in results:
            if not ok:
                if out:
                    break
                reply.raiseException()
            out.append(reply.block)
        return out

    # a round

    async def _round(self, target: PeerProtocol) -> None:
        weight_before = self.view.tip().weight
        claim = self.agent(target).claim()
        self.rounds += 1
        early, ok, synced = 0.0, False, False
        try:
            assert target.info is not None
            if self.headers_first and target.info.can("headers"):
                self.current = HeadersFirstRound(self, target)
                await self.current.go()
                early, ok = self.current.early_until, True
                if self.current.short_of_claim:  # what it proved is ours now; the rest was a lie
                    self.round_failed(target)
                    self.agent(target).refuted = claim
                synced = True
            else:
                synced = await self._seed_round(target)
                ok = True
        except Exception as e:  # any failure of the round is the target's: rotate off it
            if not isinstance(e, (SyncFailed, HeadersFailed, defer.TimeoutError, defer.CancelledError)):
                log.failure("[sync] round with {peer} failed unexpectedly",
                            peer=target.info.address if target.info else "?")
            self.round_failed(target)
            self.agent(target).refuted = claim
            log.info("[sync] round with {peer} ended early: {e}",
                     peer=target.info.address if target.info else "?", e=str(e) or type(e).__name__)
        finally:
            self.active = False
            self.current = None
        if self._stopped:  # the node shut down meanwhile: its database is closed
            return
        if ok and early > 0:  # its next header is early: not before it is due (no failure counted)
            agent = self.agent(target)
            agent.avoid_until = max(agent.avoid_until, early)
        elif ok and self.view.tip().weight == weight_before and self._ahead(target):
            self.round_failed(target)  # it showed more than it gave: try others first
            self.agent(target).refuted = claim
        before_commit = self.view.tip().weight
        self.sink.sync_ended()  # (commits what the round stored; a failed commit moves the tip back)
        if synced and self.view.tip().weight >= before_commit:
            log.info("Synced to tip (height={height}) from {peer}", height=self.view.tip().height,
                     peer=target.info.address if target.info else "?")
        tip = self.view.block(self.view.tip().hash)  # (the stored tip: nothing rolled back is announced)
        if tip is not None and tip.height > 0:
            self.sink.relay_block(tip)
        self.reactor.callLater(0, self.start_round)

    async def _seed_round(self, target: PeerProtocol) -> bool:
        """Block by block (GET_BLOCK) from a seed peer, or in batches from an Archivas peer
        that does not serve headers: the fork point, then the heights above it. False when
        there was nothing to fetch."""
        assert target.info is not None
        start_height = self.view.tip().height
        fork, held_blocks = await self._find_fork(target)
        held = {h: (block, target) for h, block in held_blocks.items()}
        goal = target.info.height
        if goal <= fork:
            return False
        log.info("[p2p] peers are ahead, need to sync from {ours} to {goal}", ours=start_height, goal=goal)
        tip_hash = target.info.tip_hash

        def sources() -> list[PeerProtocol]:
            """Peers on the target's tip that did not fail us lately: asked again as the
            round goes, so peers that become ready meanwhile join in."""
            now = self.reactor.seconds()
            return [p for p in self.peers.ready_peers()
                    if p.info is not None and p.info.tip_hash == tip_hash
                    and (p is target or self.agent(p).avoid_until <= now)]

        await self._fetch(fork + 1, goal, sources() or [target], held, sources)
        return True

    async def _find_fork(self, proto: PeerProtocol) -> tuple[int, dict[int, Block]]:
        """The highest height where our main chain and the peer's agree, and any blocks
        above it that the search already fetched."""
        info = proto.info
        assert info is not None
        hi = min(self.view.tip().height, info.height)
        held: dict[int, Block] = {}
        if info.can("hashes"):
            window = 64
            while True:
                lo = max(0, hi - window + 1)
                reply = await self._request(proto, wire.GetHashes(lo, hi - lo + 1), "hashes", lo)
                for i in range(len(reply.hashes) - 1, -1, -1):
                    if self.view.main_hash(lo + i) == reply.hashes[i]:
                        return lo + i, held
                if lo == 0:
                    raise SyncFailed("no common block, not even genesis")
                hi, window = lo - 1, min(window * 2, wire.MAX_HASHES)
        held_bytes = 0
        for height in range(hi, max(-1, hi - MAX_WALK - 1), -1):
            got = await self.fetch_range(proto, height, 1)
            if not got:
                raise SyncFailed(f"no block at height {height} from a peer that claims more")
            block = got[0]
            if self.view.has_block(block.hash):
                return height, held
            above = held.get(height + 1)
            if above is not None and above.header.parent_hash != block.hash:
                raise SyncFailed(f"the blocks walked back do not link at height {height}")
            held_bytes += len(block.encode())
            if held_bytes > MAX_WALK_BYTES:
                raise SyncFailed("the walk back holds too much")
            held[height] = block
        raise SyncFailed(f"no common block within {MAX_WALK} of height {hi}")

    async def _fetch(self, first: int, last: int, sources: list[PeerProtocol],
                     held: dict[int, tuple[Block, PeerProtocol]],
                     more_sources: Callable[[], list[PeerProtocol]] = list) -> None:
        received: dict[int, tuple[Block, PeerProtocol]] = dict(held)  # height -> block, sender
        queue = _Batches(first, last)
        in_flight: dict[int, int] = {id(p): 0 for p in sources}
        timeouts: dict[int, int] = {id(p): 0 for p in sources}
        live = list(sources)
        dropped: set[int] = set()

        def join_new_sources() -> None:
            for proto in more_sources():
                if id(proto) not in in_flight and id(proto) not in dropped:
                    in_flight[id(proto)] = timeouts[id(proto)] = 0
                    live.append(proto)
        state = {"next": first, "importing": False}
        finished: defer.Deferred = defer.Deferred()
        clock = self.reactor
        started, last_log = clock.seconds(), clock.seconds()

        def fail(reason: str) -> None:
            if not finished.called:
                finished.errback(SyncFailed(reason))

        def pump() -> None:
            join_new_sources()
            while queue and live and not finished.called:
                if queue.peek()[0] > state["next"] + LOOKAHEAD_BATCHES * BATCH:
                    return
                proto = min(live, key=lambda p: in_flight[id(p)])
                if in_flight[id(proto)] >= IN_FLIGHT_PER_PEER:
                    return
                start, count = queue.popleft()
                if all(h in received for h in range(start, start + count)):
                    continue
                in_flight[id(proto)] += 1
                d = defer.ensureDeferred(self.fetch_range(proto, start, count))
                d.addCallbacks(arrived, failed, callbackArgs=(proto, start, count),
                               errbackArgs=(proto, start, count))

        def arrived(blocks: list[Block], proto: PeerProtocol, start: int, count: int) -> None:
            in_flight[id(proto)] -= 1
            blocks = blocks[:count]  # more than asked for: the rest is not ours to take
            for i, block in enumerate(blocks):
                received[start + i] = (block, proto)
            if len(blocks) < count:
                queue.appendleft((start + len(blocks), count - len(blocks)))
                if not blocks and proto in live:
                    live.remove(proto)  # it does not have these heights (any more)
                    dropped.add(id(proto))
            if not live and queue:
                fail("no peer left to fetch from")
            drain()
            pump()

        def failed(failure, proto: PeerProtocol, start: int, count: int) -> None:
            in_flight[id(proto)] -= 1
            queue.appendleft((start, count))
            if failure.check(defer.TimeoutError):
                timeouts[id(proto)] += 1  # slowness costs no score: it leaves the round and backs off
            if (timeouts[id(proto)] >= MAX_TIMEOUTS or not failure.check(defer.TimeoutError)) and proto in live:
                live.remove(proto)
                dropped.add(id(proto))
            if not live:
                fail("no peer left to fetch from")
            pump()

        def drain() -> None:
            nonlocal last_log
            if state["importing"] or finished.called:
                return
            run: list[Block] = []
            senders: list[PeerProtocol] = []
            h = state["next"]
            while h in received and len(run) < 2 * BATCH:
                block, sender = received.pop(h)
                run.append(block)
                senders.append(sender)
                h += 1
            if not run:
                return
            state["importing"] = True
            d = defer.ensureDeferred(self.sink.import_batch(run, senders))

            def imported(added: int) -> None:
                nonlocal last_log
                state["importing"] = False
                state["next"] += added
                if added < len(run):
                    fail(f"block at height {state['next']} was refused")
                    return
                now = clock.seconds()
                done = state["next"] - first
                if now - last_log >= PROGRESS_EVERY:
                    last_log = now
                    rate = done / max(now - started, 1e-9)
                    log.info("[sync] {done}/{total} blocks, height {h}, {rate:.0f} blocks/s",
                             done=done, total=last - first + 1, h=state["next"] - 1, rate=rate)
                if state["next"] > last:
                    if not finished.called:
                        finished.callback(None)
                    return
                drain()
                pump()

            d.addCallbacks(imported, lambda f: fail(f"import failed: {f.getErrorMessage()}"))

        pump()
        drain()
        await finished
