"""The farmer at work: answers the node's signage points with its plots.

For each new signage point it looks its plots up in a thread; when one wins it asks the
node for a block template, checks the template carries its own proof and reward address,
signs the header with its key (which never leaves this process) and submits the block.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from archivas.chain.block import Block, sign_header
from archivas.chain.keys import PrivateKey
from archivas.farmer.plots import Plot, best_win
from archivas.nodeapi import ApiError, as_deferred

log = Logger()

POLL_SECONDS = 0.2


class Farmer(service.Service):
    name: Optional[str] = "farmer"  # type: ignore[assignment]  # Twisted types it None

    def __init__(self, api: Any, plots: Sequence[Plot], key: PrivateKey, reactor: Any,
                 reward_address: Optional[str] = None, poll: float = POLL_SECONDS) -> None:
        self.api = api
        self.key = key
        self.reactor = reactor
        self.reward_address = reward_address or key.address
        self.poll = poll
        self.plots = [p for p in plots if p.farmer_public_key == key.public_key]
        for p in plots:
            if p.farmer_public_key != key.public_key:
                log.warn("[farmer] {path} belongs to another farmer key: not farming it", path=str(p.path))
        self.won = 0
        # An embedded farmer (api is the node's LocalNodeAPI) shows in the node's /metrics.
        self.metrics: Any = getattr(getattr(api, "node", None), "metrics", None)
        if self.metrics is not None:
            self.metrics.attach_farmer(self)
        self._checked: set[tuple[str, int]] = set()
        self._loop: Optional[defer.Deferred] = None

    def startService(self) -> None:
        super().startService()
        log.info("[farmer] farming {n} plot(s) for {address}", n=len(self.plots), address=self.reward_address)
        self._loop = defer.ensureDeferred(self._run())
        self._loop.addErrback(lambda f: log.failure("[farmer] stopped by an error", f))

    def stopService(self) -> Optional[defer.Deferred]:  # type: ignore[override]
        super().stopService()
        return self._loop

    async def _run(self) -> None:
        unavailable = False  # said once when the node goes away, once when it is back
        while self.running:
            try:
                await self.farm_once()
                if unavailable:
                    unavailable = False
                    log.info("[farmer] node available again")
            except ApiError as e:
                if e.status >= 500 and not unavailable:
                    unavailable = True
                    log.warn("[farmer] node unavailable: {e}", e=e.message)
            await task.deferLater(self.reactor, self.poll, lambda: None)

    async def farm_once(self) -> Optional[dict[str, Any]]:
        """Check the new signage points; submit a block if a plot wins. Returns the
        node's answer to the submission, if any."""
        points = await as_deferred(self.api.signage_points())
        parent = points["parentHash"]
        self._checked = {c for c in self._checked if c[0] == parent}
        for point in points["signagePoints"]:
            key = (parent, point["index"])
            if key in self._checked or not self.running:
                continue
            self._checked.add(key)
            lookup = best_win if self.metrics is None else self.metrics.timed_lookup(best_win)
            win = await threads.deferToThread(
                lookup, self.plots, bytes.fromhex(point["challenge"]), points["difficulty"],
                points["kMin"], points["plotFilterBits"],
            )
            if win is None:
                continue
            if self.metrics is not None:
                self.metrics.proof_found()
            return await self._submit(parent, point["index"], win)
        return None

    async def _submit(self, parent: str, index: int, win: Any) -> Optional[dict[str, Any]]:
        template = await as_deferred(self.api.block_template({
            "parentHash": parent, "index": index,
            "proofOfSpace": win.proof.to_json(), "rewardAddress": self.reward_address,
        }))
        block = Block.from_json(template)
        header = block.header
        if header.proof_of_space != win.proof or header.reward_address != self.reward_address:
            log.error("[farmer] the node's template does not carry our proof and address: not signing")
            return None
        signed = Block(sign_header(header, self.key), block.transactions)
        answer = await as_deferred(self.api.submit_block(signed.to_json()))
        self.won += 1
        log.info("[farmer] won signage point {i}: block {h} at height {height} ({status})",
                 i=index, h=answer["hash"][:16], height=answer["height"], status=answer["status"])
        return answer
