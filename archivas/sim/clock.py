"""HeapClock: simulated time for the whole simulation, an IReactorTime on a binary heap.

twisted.internet.task.Clock sorts its whole list of calls at every callLater, which is
too slow with tens of thousands of calls pending (1,000 nodes' timers and every packet in
flight). Here a call is one heap entry: (time, sequence, call). The sequence number, taken
from a counter, breaks ties, so calls due at the same time run in the order they were
scheduled (FIFO) and the order never depends on object identity or hashing. A cancelled
or moved call leaves its old entry in the heap; it is skipped when it comes up (lazy
deletion), and the heap is rebuilt without such entries once they outnumber the live ones.

Time only moves forward, and only when the simulation runs it (`run_until`, `advance`,
`run_until_idle`, `step`); each call runs at exactly its scheduled time. A call that
raises is logged (log.failure) and the run goes on, as the reactor does.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Optional

from twisted.internet import error
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

COMPACT_MIN_STALE = 1024  # dead heap entries tolerated before a rebuild is considered
_NO_KEYWORDS: dict[str, Any] = {}  # shared by calls without keyword arguments (never written)


@implementer(IDelayedCall)
class SimDelayedCall:
    """One scheduled call (IDelayedCall). `_seq` is the sequence number of its live heap
    entry; an entry whose number is not the call's current one is stale."""

    __slots__ = ("clock", "time", "func", "args", "kw", "called", "cancelled", "_seq")

    def __init__(self, clock: "HeapClock", time: float, func: Callable[..., Any], args: tuple[Any, ...],
                 kw: dict[str, Any]) -> None:
        self.clock = clock
        self.time = time
        self.func = func
        self.args = args
        self.kw = kw
        self.called = False
        self.cancelled = False
        self._seq = -1

    def getTime(self) -> float:
        return self.time

    def active(self) -> bool:
        return not (self.called or self.cancelled)

    def _check_active(self) -> None:
        if self.cancelled:
            raise error.AlreadyCancelled()
        if self.called:
            raise error.AlreadyCalled()

    def cancel(self) -> None:
        self._check_active()
        self.cancelled = True
        self.clock._forget(self)

    def reset(self, secondsFromNow: float) -> None:
        self._check_active()
        self.clock._move(self, self.clock._now + max(0.0, secondsFromNow))

    def delay(self, secondsLater: float) -> None:
        self._check_active()
        self.clock._move(self, max(self.clock._now, self.time + secondsLater))

    def __repr__(self) -> str:
        state = "called" if self.called else "cancelled" if self.cancelled else "pending"
        name = getattr(self.func, "__qualname__", None) or repr(self.func)
        return f"<SimDelayedCall {state} at {self.time:.6f}: {name}>"


@implementer(IReactorTime)
class HeapClock:
    """The simulation's reactor time. `start` is the Unix time (seconds) the run begins at."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._heap: list[tuple[float, int, SimDelayedCall]] = []
        self._seq = 0
        self._stale = 0  # heap entries of cancelled or moved calls
        self.calls_run = 0

    # IReactorTime

    def seconds(self) -> float:
        return self._now

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> SimDelayedCall:
        return self._push(SimDelayedCall(self, self._now + max(0.0, delay), callable, args, kw))

    def getDelayedCalls(self) -> list[SimDelayedCall]:
        """The pending calls, in the order they will run."""
        live = [(when, seq, call) for when, seq, call in self._heap if call._seq == seq]
        return [call for _, _, call in sorted(live, key=lambda entry: (entry[0], entry[1]))]

    # scheduling at an absolute time (the network's hot path)

    def call_at(self, when: float, f: Callable[..., Any], *args: Any) -> SimDelayedCall:
        """Call `f(*args)` at time `when` (not before now). The network computes arrival
        times itself; scheduling them as delays would round them off."""
        if when < self._now:
            when = self._now
        call = SimDelayedCall(self, when, f, args, _NO_KEYWORDS)
        seq = call._seq = self._seq
        self._seq = seq + 1
        heapq.heappush(self._heap, (when, seq, call))
        return call

    def _push(self, call: SimDelayedCall) -> SimDelayedCall:
        seq = self._seq
        self._seq = seq + 1
        call._seq = seq
        heapq.heappush(self._heap, (call.time, seq, call))
        return call

    def _forget(self, call: SimDelayedCall) -> None:
        call._seq = -1
        self._one_stale()

    def _move(self, call: SimDelayedCall, when: float) -> None:
        call.time = when
        self._push(call)  # its old entry no longer carries its sequence number
        self._one_stale()

    def _one_stale(self) -> None:
        self._stale += 1
        if self._stale > COMPACT_MIN_STALE and self._stale * 2 > len(self._heap):
            # In place: a run in progress holds this very list.
            self._heap[:] = [entry for entry in self._heap if entry[2]._seq == entry[1]]
            heapq.heapify(self._heap)
            self._stale = 0

    # running

    @property
    def pending(self) -> int:
        """How many calls are scheduled and not cancelled."""
        return len(self._heap) - self._stale

    def next_time(self) -> Optional[float]:
        """When the next pending call is due (None: nothing pending)."""
        heap = self._heap
        while heap and heap[0][2]._seq != heap[0][1]:
            heapq.heappop(heap)
            self._stale -= 1
        return heap[0][0] if heap else None

    def run_until(self, t: float) -> int:
        """Run every call due at or before `t`, in order, then set the time to `t` (never
        back: a `t` in the past runs nothing). Returns how many calls ran."""
        ran = self._run(t, None)
        if t > self._now:
            self._now = t
        return ran

    def advance(self, dt: float) -> int:
        """Move time forward by `dt` seconds, running what falls due on the way."""
        return self.run_until(self._now + dt)

    def run_until_idle(self, max_time: float) -> int:
        """Run calls until none is pending or the next is due after `max_time`; the time
        stays at the last call run. Returns how many calls ran."""
        return self._run(max_time, None)

    def step(self) -> bool:
        """Run the next pending call, moving time to it; False when none is pending."""
        return self._run(float("inf"), 1) == 1

    def _run(self, until: float, limit: Optional[int]) -> int:
        heap = self._heap
        pop = heapq.heappop
        ran = 0
        while heap and heap[0][0] <= until:
            when, seq, call = pop(heap)
            if call._seq != seq:
                self._stale -= 1
                continue
            if when > self._now:
                self._now = when
            call.called = True
            ran += 1
            try:
                if call.kw:
                    call.func(*call.args, **call.kw)
                else:
                    call.func(*call.args)
            except Exception:
                log.failure("Unhandled error in a delayed call {call!r}", call=call)
            if limit is not None and ran >= limit:
                break
        self.calls_run += ran
        return ran


__all__ = ["HeapClock", "SimDelayedCall", "COMPACT_MIN_STALE"]
