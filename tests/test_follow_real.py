"""Real nodes on loopback: a node joining a farming node catches up and then follows it.

The farming node starts from a copy of a database holding the first SOURCE_HEIGHT blocks
of the shipped fixture chain (built once per test process, so the test does not farm or
re-validate them) and keeps making a valid block on its tip every FARM_EVERY seconds of
real time, stamped with the real clock, as a farmer would. A fresh node dials it, syncs
the history, and must then stay within MAX_LAG blocks of it for FOLLOW_SECONDS.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from twisted.internet import defer, reactor, task, threads
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from archivas.chain.blockchain import Chain
from archivas.testing.chainbuilder import ChainBuilder
from tests.common import PARAMS, fixture_blocks
from tests.netutil import connected, start_node, wait_until

SOURCE_HEIGHT = 450  # blocks in the farming node's database when the other node joins
FARM_EVERY = 0.5  # real seconds between the farming node's blocks (fastnet's target)
FOLLOW_SECONDS = 60.0
POLL = 0.25
MAX_LAG = 3
CATCH_UP_DEADLINE = 60.0
SETTLE_DEADLINE = 10.0  # both on one tip after the farming stops

_source_dir: Optional[Path] = None


def source_database() -> Path:
    """A closed database directory holding fixture_blocks(SOURCE_HEIGHT), made once per process."""
    global _source_dir
    if _source_dir is None:
        root = Path(tempfile.mkdtemp(prefix="archivas-follow-source-"))
        atexit.register(shutil.rmtree, root, True)
        directory = root / "chain"
        chain = Chain.open(directory, PARAMS)
        try:
            now = int(time.time() * 1000)
            for block in fixture_blocks(SOURCE_HEIGHT):
                chain.add_block(block, now)
            assert chain.height == SOURCE_HEIGHT, chain.height
        finally:
            chain.close()  # releases the LOCK file before anyone copies the directory
        _source_dir = directory
    return _source_dir


class Farmer:
    """Makes a valid block on the node's tip every `every` seconds (in a thread: the
    builder shares nothing with the node) and submits it as the local farmer would."""

    def __init__(self, handle, every: float) -> None:
        self.handle = handle
        self.node = handle.node
        self.builder = ChainBuilder(PARAMS)
        for block in fixture_blocks(SOURCE_HEIGHT)[-40:]:  # parents for the retarget's window
            self.builder.blocks[block.hash] = block
        self.made = 0
        self.accepted = 0
        self.make_seconds: list[float] = []
        self.errors: list[str] = []
        self._busy: Optional[defer.Deferred] = None
        self._loop = task.LoopingCall(self._tick)
        self._every = every

    def start(self) -> None:
        self._loop.start(self._every, now=True)

    async def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._busy is not None:
            await self._busy

    def _tick(self) -> None:
        if self._busy is not None:  # the last block is still being made: skip a beat
            return
        self._busy = defer.ensureDeferred(self._farm_one())
        self._busy.addBoth(self._done)

    def _done(self, result) -> None:
        self._busy = None
        return None

    async def _farm_one(self) -> None:
        tip = self.node.chain.tip
        parent = self.builder.blocks.get(tip.hash) or self.node.chain.block(tip.hash)
        self.builder.blocks[parent.hash] = parent
        started = time.monotonic()
        try:
            block = await threads.deferToThread(self.builder.make_block, parent, timestamp=int(time.time() * 1000))
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(f"making a block on {parent.height}: {e!r}")
            return
        self.make_seconds.append(time.monotonic() - started)
        self.made += 1
        try:
            result = await self.node.receive_block(block)
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"block {block.height} refused: {e!r}")
            return
        if result is not None and result.status == "tip":
            self.accepted += 1
        else:
            self.errors.append(f"block {block.height}: {result.status if result else None}")


class FollowReal(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_a_joining_node_catches_up_and_follows_a_farming_node(self):
        yield defer.ensureDeferred(self._follow())

    async def _follow(self) -> None:
        lines: list[str] = []
        observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

        directory = self.mktemp()
        shutil.copytree(source_database(), directory)
        source = start_node(self, directory)
        self.assertEqual(source.chain.height, SOURCE_HEIGHT)
        farmer = Farmer(source, FARM_EVERY)
        self.addCleanup(lambda: defer.ensureDeferred(farmer.stop()))
        farmer.start()
        # The first block made on the fixture chain (after the months between its
        # timestamps and now) is accepted: the retarget is computed the same on both sides.
        await wait_until(lambda: farmer.accepted >= 1 or farmer.errors, "the first farmed block", deadline=20)
        self.assertEqual(farmer.errors, [])
        self.assertGreater(source.chain.height, SOURCE_HEIGHT)

        def tail() -> str:
            return "\n".join(line for line in lines[-60:])

        joiner = start_node(self)
        joined_at = time.monotonic()
        joined_height = source.chain.height
        joiner.node.peers.dial(source.address)
        await wait_until(lambda: connected(joiner, source) and connected(source, joiner), "the handshake")
        try:
            await wait_until(lambda: joiner.chain.height >= source.chain.height, "the joiner at the source's tip",
                             deadline=CATCH_UP_DEADLINE)
        except AssertionError as e:
            raise AssertionError(f"{e}: joiner at {joiner.chain.height}, source at {source.chain.height}\n"
                                 f"{tail()}") from None
        catch_up = time.monotonic() - joined_at
        caught_up_height = source.chain.height
        self.assertGreaterEqual(joined_height, 400)
        self.assertEqual(joiner.chain.block_at(caught_up_height - 1).hash,
                         source.chain.block_at(caught_up_height - 1).hash)

        made_before = farmer.made
        follow_from = source.chain.height
        lags: list[int] = []
        worst: tuple[int, float] = (0, 0.0)
        started = time.monotonic()
        while time.monotonic() - started < FOLLOW_SECONDS:
            lag = source.chain.height - joiner.chain.height
            lags.append(lag)
            if lag > worst[0]:
                worst = (lag, time.monotonic() - started)
            await task.deferLater(reactor, POLL, lambda: None)
        made_during = farmer.made - made_before
        followed = source.chain.height - follow_from

        await farmer.stop()
        settle = await wait_until(lambda: joiner.chain.tip.hash == source.chain.tip.hash,
                                  "both on one tip after the farming stopped", deadline=SETTLE_DEADLINE)
        makes = sorted(farmer.make_seconds)
        sys.stderr.write(
            f"\nFOLLOWREAL joined at height {joined_height}, caught up to {caught_up_height} in {catch_up:.2f} s\n"
            f"FOLLOWREAL {made_during} blocks made during the {FOLLOW_SECONDS:.0f} s follow ({followed} heights), "
            f"max lag {worst[0]} (at {worst[1]:.1f} s), lags seen {sorted(set(lags))}, {len(lags)} polls\n"
            f"FOLLOWREAL sync rounds {joiner.node.sync.rounds}, final tip {source.chain.height}, settled in "
            f"{settle:.2f} s; making a block: median {makes[len(makes) // 2] * 1000:.0f} ms, "
            f"max {makes[-1] * 1000:.0f} ms, {farmer.made} made, {farmer.accepted} accepted\n")
        self.assertEqual(farmer.errors, [])
        self.assertGreaterEqual(made_during, FOLLOW_SECONDS / FARM_EVERY / 2, "the farming node kept farming")
        self.assertLessEqual(worst[0], MAX_LAG, f"lag while following: {sorted(lags)[-10:]}\n{tail()}")
        self.assertEqual(joiner.chain.height, source.chain.height)
        self.assertEqual(joiner.chain.accounts(), source.chain.accounts())
