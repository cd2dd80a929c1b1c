"""Transfer relay by inventory (Bitcoin's INV/GETDATA/TX, on the original INV/REQ/RES).

A node that admits a transfer queues its id for every peer that may not have it; each
peer's queue leaves as one INV (at most wire.MAX_INV ids) every OUTBOUND_INTERVAL seconds
to peers we dialed, every INBOUND_INTERVAL to the others (Bitcoin's 2 s and 5 s), less the
ids that peer announced to us meanwhile: so on most links a transfer is announced in one
direction only. A
peer that gets an INV asks (REQ) for the ids it neither has nor is already fetching, from
the first peer that announced each; the others that announced it are remembered (at most
MAX_ANNOUNCERS) and asked in turn if the first does not deliver within REQUEST_TIMEOUT, or
answers without it, or goes away. So each transfer crosses each link about once, and an
announcer that never serves (a liar, a silent peer) delays a transfer by one timeout.

Bounds (docs/protocol.md): ids queued for one peer, ids being fetched at once from one
peer, ids tracked in all. Past them, new ids are dropped (the transfer will be announced
again by another peer, or included in a block: nothing here is needed for consensus).

Ids here are inv ids (wire.inv_id: a transfer id's first 16 bytes). No reactor of its own:
`clock` (IReactorTime) for times, `send` to write, `have` to ask whether an id is known
already. Peers are keyed by object identity.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterable, Optional

import attrs

from archivas.protocols import wire

OUTBOUND_INTERVAL = 2.0  # seconds between INVs to a peer we dialed (Bitcoin: 2 s on average)
INBOUND_INTERVAL = 5.0  # ... to a peer that dialed us (Bitcoin: 5 s)
TICK = 1.0  # how often queues are looked at
REQUEST_TIMEOUT = 5.0  # seconds for an asked transfer to arrive before the next announcer is asked
# An id announced only by peers that dialed us is asked for this much later (Bitcoin's
# TxRequestTracker waits 2 s for non-preferred peers): a peer we chose (outbound) that
# announces it meanwhile is asked first, so inbound liars cost a delay only when no
# outbound peer has the transfer.
NONPREFERRED_DELAY = 2.0
MAX_ANNOUNCERS = 8  # peers remembered per id as having announced it
MAX_QUEUED_PER_PEER = 5000  # ids waiting for one peer's next INV (oldest dropped past it)
MAX_IN_FLIGHT_PER_PEER = 2000  # ids asked of one peer and not yet answered
MAX_TRACKED = 50_000  # ids being fetched or waiting for a second announcer, in all


@attrs.define(eq=False)
class _Wanted:
    """An id we lack: who announced it, whom we asked and until when."""

    announcers: list[Any] = attrs.field(factory=list)  # preferred (outbound) ones first
    asked: Optional[Any] = None
    deadline: float = 0.0
    not_before: float = 0.0  # when it may be asked of a non-preferred announcer


class TxRelay:
    def __init__(self, clock: Any, send: Callable[[Any, wire.Message], None],
                 have: Callable[[bytes], bool],
                 still_unknown: Callable[[Any, list[bytes]], list[bytes]] = lambda peer, ids: ids,
                 interval: Callable[[Any], float] = lambda peer: OUTBOUND_INTERVAL,
                 preferred: Callable[[Any], bool] = lambda peer: True) -> None:
        self.clock = clock
        self.send = send
        self.have = have
        self.still_unknown = still_unknown  # at send time: those of the ids the peer is not known to have
        self.interval = interval
        self.preferred = preferred  # peers whose announcements are asked at once (outbound)
        self._queues: dict[Any, list[bytes]] = {}
        self._due: dict[Any, float] = {}  # when each peer's next INV may leave
        self._wanted: collections.OrderedDict[bytes, _Wanted] = collections.OrderedDict()
        self._in_flight: collections.Counter[Any] = collections.Counter()
        # REQ batches sent to each peer and not answered yet, oldest first (each holds ids
        # counted in _in_flight, so their number is bounded by MAX_IN_FLIGHT_PER_PEER).
        self._outstanding: dict[Any, collections.deque[list[bytes]]] = {}
        self.dropped = 0  # ids not queued or tracked for a bound
        self.timeouts = 0
        # No deadline or delay among the tracked ids ends before this: check_timeouts has
        # nothing to do until then (ids leave without lowering it; they only make it early).
        self._next_due = float("inf")

    # announcing

    def announce(self, tx_id: bytes, peers: Iterable[Any]) -> None:
        queues = self._queues
        for peer in peers:
            queue = queues.get(peer)
            if queue is None:
                queues[peer] = [tx_id]
                continue
            if len(queue) >= MAX_QUEUED_PER_PEER:
                del queue[0]
                self.dropped += 1
            queue.append(tx_id)

    def flush(self) -> int:
        """Send each peer whose time has come its queued ids that it is still not known
        to have (one INV, split at wire.MAX_INV); returns how many INVs went out. Called
        every TICK seconds."""
        sent = 0
        now = self.clock.seconds()
        for peer in [p for p in self._queues if self._due.get(p, 0.0) <= now]:
            ids = self.still_unknown(peer, self._queues.pop(peer))
            self._due[peer] = now + self.interval(peer)
            for start in range(0, len(ids), wire.MAX_INV):
                self.send(peer, wire.Inv(tuple(ids[start:start + wire.MAX_INV])))
                sent += 1
        return sent

    # fetching

    def inv_received(self, peer: Any, ids: Iterable[bytes]) -> None:
        ask: list[bytes] = []
        now = self.clock.seconds()
        preferred = self.preferred(peer)
        for tx_id in ids:
            if self.have(tx_id):
                continue
            wanted = self._wanted.get(tx_id)
            if wanted is None:
                if len(self._wanted) >= MAX_TRACKED:
                    self.dropped += 1
                    continue
                wanted = self._wanted[tx_id] = _Wanted(not_before=now + NONPREFERRED_DELAY)
                if now + NONPREFERRED_DELAY < self._next_due:
                    self._next_due = now + NONPREFERRED_DELAY
            if peer not in wanted.announcers and len(wanted.announcers) < MAX_ANNOUNCERS:
                if preferred:
                    first_other = next((i for i, p in enumerate(wanted.announcers) if not self.preferred(p)),
                                       len(wanted.announcers))
                    wanted.announcers.insert(first_other, peer)
                else:
                    wanted.announcers.append(peer)
            if (wanted.asked is None and (preferred or wanted.not_before <= now)
                    and self._in_flight[peer] < MAX_IN_FLIGHT_PER_PEER):
                wanted.asked, wanted.deadline = peer, now + REQUEST_TIMEOUT
                if wanted.deadline < self._next_due:
                    self._next_due = wanted.deadline
                self._in_flight[peer] += 1
                ask.append(tx_id)
        self._request(peer, ask)

    def _request(self, peer: Any, ids: list[bytes]) -> None:
        for start in range(0, len(ids), wire.MAX_INV):
            batch = ids[start:start + wire.MAX_INV]
            self._outstanding.setdefault(peer, collections.deque()).append(batch)
            self.send(peer, wire.Req(tuple(batch)))

    def res_received(self, peer: Any, txs: Iterable[Any]) -> list[Any]:
        """A RES from `peer`: it answers our oldest REQ to it (a peer answers in order).
        Returns the transfers of it that we asked of that peer (to admit); the REQ's ids it
        left out go to their next announcer at once. Anything else is ignored."""
        batches = self._outstanding.get(peer)
        if not batches:
            return []
        batch = batches.popleft()
        if not batches:
            del self._outstanding[peer]
        asked = set(batch)
        out = []
        for tx in txs:
            tx_id = wire.inv_id(tx.hash)
            wanted = self._wanted.get(tx_id)
            if tx_id in asked and wanted is not None and wanted.asked is peer:
                self._done(tx_id, wanted)
                out.append(tx)
        self._retry([tx_id for tx_id in batch if (w := self._wanted.get(tx_id)) is not None and w.asked is peer])
        return out

    def known(self, tx_id: bytes) -> None:
        """We have the transfer now (from anywhere): stop fetching it."""
        wanted = self._wanted.get(tx_id)
        if wanted is not None:
            self._done(tx_id, wanted)

    def _done(self, tx_id: bytes, wanted: _Wanted) -> None:
        if wanted.asked is not None:
            self._release(wanted.asked)
        del self._wanted[tx_id]

    def _release(self, peer: Any) -> None:
        self._in_flight[peer] -= 1
        if self._in_flight[peer] <= 0:
            del self._in_flight[peer]

    def check_timeouts(self) -> None:
        """Asked ids past their deadline go to the next announcer, and ids that only
        non-preferred peers announced are asked once their delay is over (call every
        second or so)."""
        now = self.clock.seconds()
        if now < self._next_due:
            return
        late = [tx_id for tx_id, w in self._wanted.items() if w.asked is not None and w.deadline <= now]
        due = [tx_id for tx_id, w in self._wanted.items() if w.asked is None and w.not_before <= now]
        self.timeouts += len(late)
        self._next_due = float("inf")
        self._retry(late + due)  # (sets the deadlines of the ids it asks again)
        for w in self._wanted.values():
            when = w.deadline if w.asked is not None else w.not_before
            if when < self._next_due:
                self._next_due = when

    def _retry(self, ids: list[bytes]) -> None:
        batches: dict[Any, list[bytes]] = {}
        now = self.clock.seconds()
        for tx_id in ids:
            wanted = self._wanted[tx_id]
            failed = wanted.asked
            if failed is not None:
                self._release(failed)
                if failed in wanted.announcers:
                    wanted.announcers.remove(failed)
            wanted.asked = None
            nxt = next((p for p in wanted.announcers if self._in_flight[p] < MAX_IN_FLIGHT_PER_PEER), None)
            if nxt is None:
                del self._wanted[tx_id]  # nobody else announced it: it may come again
                continue
            wanted.asked, wanted.deadline = nxt, now + REQUEST_TIMEOUT
            if wanted.deadline < self._next_due:
                self._next_due = wanted.deadline
            self._in_flight[nxt] += 1
            batches.setdefault(nxt, []).append(tx_id)
        for peer, batch in batches.items():
            self._request(peer, batch)

    def peer_lost(self, peer: Any) -> None:
        self._queues.pop(peer, None)
        self._due.pop(peer, None)
        self._outstanding.pop(peer, None)
        mine = [tx_id for tx_id, w in self._wanted.items() if w.asked is peer]
        for wanted in self._wanted.values():
            if peer in wanted.announcers and wanted.asked is not peer:
                wanted.announcers.remove(peer)
        self._retry(mine)

    def asked_of(self, peer: Any) -> int:
        return self._in_flight.get(peer, 0)

    def tracked(self) -> int:
        return len(self._wanted)
