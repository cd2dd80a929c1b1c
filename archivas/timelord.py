"""The timelord: proves time on the node's tip, one VDF segment after another.

It follows the node's heaviest tip through `vdf_job` (the tip, its seed and the last
segment the node holds), computes the next segment in a thread (chiavdf releases the GIL)
and publishes it the moment it is done. When the tip moves, the node refuses the stale
segment and the next job starts over from the new tip.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from archivas.chain import vdf
from archivas.nodeapi import ApiError, as_deferred

log = Logger()

POLL_SECONDS = 0.2  # how often to look at the tip when there is nothing new to do


class Timelord(service.Service):
    name: Optional[str] = "timelord"  # type: ignore[assignment]  # Twisted types it None

    def __init__(self, api: Any, reactor: Any, poll: float = POLL_SECONDS) -> None:
        self.api = api
        self.reactor = reactor
        self.poll = poll
        self.published = 0
        self._loop: Optional[defer.Deferred] = None

    def startService(self) -> None:
        super().startService()
        self._loop = defer.ensureDeferred(self._run())
        self._loop.addErrback(lambda f: log.failure("[timelord] stopped by an error", f))

    def stopService(self) -> Optional[defer.Deferred]:  # type: ignore[override]
        super().stopService()
        return self._loop  # ends after the segment in progress

    async def _run(self) -> None:
        log.info("[timelord] started")
        while self.running:
            try:
                job = await as_deferred(self.api.vdf_job())
                segment = await threads.deferToThread(
                    vdf.prove_segment, bytes.fromhex(job["seed"]), bytes.fromhex(job["lastOutput"]),
                    job["discriminantBits"], job["iterations"],
                )
                if not self.running:
                    return
                index = job["segments"] + 1
                await as_deferred(self.api.vdf_output({
                    "parentHash": job["parentHash"], "index": index,
                    "output": segment.output.hex(), "proof": segment.proof.hex(),
                }))
                self.published += 1
            except ApiError as e:
                if e.status >= 500:
                    log.warn("[timelord] node unavailable: {e}", e=e.message)
                await task.deferLater(self.reactor, self.poll, lambda: None)
