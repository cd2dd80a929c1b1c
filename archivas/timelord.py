"""The timelord: proves time on the node's tip, one VDF segment after another.

It follows the node's heaviest tip through `vdf_job` (the tip, its seed and the last
segment the node holds), computes the next segment in a thread (chiavdf releases the GIL)
and publishes it the moment it is done. When the tip moves, the node refuses the stale
segment and the next job starts over from the new tip.

Every REPORT_SECONDS it logs what it did (`[timelord] 12 segments in 10 s, 41,000 it/s`);
`segments_made` and `iterations_per_second` say the same to metrics at any time.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import attrs
from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from archivas.chain import vdf
from archivas.nodeapi import ApiError, as_deferred

log = Logger()

POLL_SECONDS = 0.2  # how often to look at the tip when there is nothing new to do
REPORT_SECONDS = 10.0  # one progress line at info this often


def prove_in_thread(discriminant_seed: bytes, start: bytes, bits: int, iterations: int) -> defer.Deferred:
    return threads.deferToThread(vdf.prove_segment, discriminant_seed, start, bits, iterations)


@attrs.define
class _Window:
    """What the timelord did since its last report."""

    started: float
    segments: int = 0
    iterations: int = 0
    proving: float = 0.0  # seconds spent proving
    accepted: int = 0


class Timelord(service.Service):
    """`segments_made`: segments proven since start (published or not: a segment the tip
    moved past is refused). `iterations_per_second`: the prover's speed, iterations over
    the seconds spent proving, in the current report window (or the last one while the
    current has none yet); 0.0 after a window with no segment at all (idle)."""

    name: Optional[str] = "timelord"  # type: ignore[assignment]  # Twisted types it None

    def __init__(self, api: Any, reactor: Any, poll: float = POLL_SECONDS,
                 prove: Callable[[bytes, bytes, int, int], defer.Deferred] = prove_in_thread,
                 report_every: float = REPORT_SECONDS) -> None:
        self.api = api
        self.reactor = reactor
        self.poll = poll
        self.prove = prove
        self.report_every = report_every
        self.published = 0
        self.segments_made = 0
        self.iterations_per_second = 0.0
        self._window = _Window(reactor.seconds())
        self._unavailable = False  # the node is down: said once, not at every poll
        self._loop: Optional[defer.Deferred] = None
        self._reporter: Optional[task.LoopingCall] = None
        # A timelord in the node's process (api is its LocalNodeAPI) shows in the node's /metrics.
        metrics = getattr(getattr(api, "node", None), "metrics", None)
        if metrics is not None and hasattr(metrics, "attach_timelord"):
            metrics.attach_timelord(self)

    def startService(self) -> None:
        super().startService()
        self._window = _Window(self.reactor.seconds())
        self._reporter = task.LoopingCall(self.report)
        self._reporter.clock = self.reactor
        self._reporter.start(self.report_every, now=False).addErrback(
            lambda f: log.failure("[timelord] progress reports stopped by an error", f))
        self._loop = defer.ensureDeferred(self._run())
        self._loop.addErrback(lambda f: log.failure("[timelord] stopped by an error", f))

    def stopService(self) -> Optional[defer.Deferred]:  # type: ignore[override]
        super().stopService()
        if self._reporter is not None and self._reporter.running:
            self._reporter.stop()
        return self._loop  # ends after the segment in progress

    def report(self) -> None:
        """Log the window's segments and speed at info, and start a new window."""
        now = self.reactor.seconds()
        window, self._window = self._window, _Window(now)
        if window.segments == 0:
            self.iterations_per_second = 0.0
        log.info("[timelord] {n} segments in {s:.0f} s ({accepted} accepted), {rate:,.0f} it/s",
                 n=window.segments, s=now - window.started, accepted=window.accepted,
                 rate=self.iterations_per_second)

    def _proved(self, iterations: int, seconds: float) -> None:
        self.segments_made += 1
        window = self._window
        window.segments += 1
        window.iterations += iterations
        window.proving += seconds
        if window.proving > 0:
            self.iterations_per_second = window.iterations / window.proving

    async def _run(self) -> None:
        log.info("[timelord] started")
        while self.running:
            try:
                job = await as_deferred(self.api.vdf_job())
                if self._unavailable:
                    self._unavailable = False
                    log.info("[timelord] node reachable again")
                started = self.reactor.seconds()
                segment = await self.prove(
                    bytes.fromhex(job["discriminantSeed"]), bytes.fromhex(job["lastOutput"]),
                    job["discriminantBits"], job["iterations"],
                )
                self._proved(job["iterations"], self.reactor.seconds() - started)
                if not self.running:
                    return
                index = job["segments"] + 1
                await as_deferred(self.api.vdf_output({
                    "parentHash": job["parentHash"], "index": index,
                    "output": segment.output.hex(), "proof": segment.proof.hex(),
                }))
                self.published += 1
                self._window.accepted += 1
            except ApiError as e:
                if e.status >= 500 and not self._unavailable:
                    self._unavailable = True
                    log.warn("[timelord] node unavailable: {e} (trying again every {poll} s)",
                             e=e.message, poll=self.poll)
                await task.deferLater(self.reactor, self.poll, lambda: None)
