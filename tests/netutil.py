"""Real nodes on loopback TCP, in this process, for the network tests."""

from __future__ import annotations

import time
from typing import Callable, Iterable, Optional

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from archivas.chain.blockchain import Chain
from archivas.node import Node
from tests.common import PARAMS

DEADLINE = 60.0


class NodeHandle:
    def __init__(self, node: Node, port) -> None:
        self.node = node
        self.port = port
        self.stopped = False

    async def stop(self) -> None:
        """Stop listening, close every connection, close the database (once)."""
        if self.stopped:
            return
        self.stopped = True
        await defer.maybeDeferred(self.port.stopListening)
        await self.node.stop()
        self.node.chain.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"

    @property
    def chain(self) -> Chain:
        return self.node.chain


def start_node(case: unittest.TestCase, directory: Optional[str] = None, blocks: Iterable = (),
               interface: str = "127.0.0.1", **options) -> NodeHandle:
    chain = Chain.open(directory or case.mktemp(), PARAMS)
    now = int(time.time() * 1000)
    for block in blocks:
        chain.add_block(block, now)
    options.setdefault("discover", False)  # the tests draw their own topologies
    node = Node(chain, reactor, **options)
    port = reactor.listenTCP(0, node.peers.inbound_factory, interface=interface)
    node.peers.listen_port = port.getHost().port
    node.start()
    handle = NodeHandle(node, port)
    case.addCleanup(lambda: defer.ensureDeferred(handle.stop()))
    return handle


async def wait_until(predicate: Callable[[], bool], what: str, deadline: float = DEADLINE) -> float:
    """Poll `predicate` until true; fail after `deadline` seconds. Returns the seconds taken."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > deadline:
            raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)
    return time.monotonic() - start


def connected(a: NodeHandle, b: NodeHandle) -> bool:
    """a has a ready connection to b."""
    return any(p.info and p.info.node_id == b.node.node_id for p in a.node.peers.ready_peers())
