"""PING round trips between two nodes over real loopback TCP, with TCP_NODELAY and without.

One job: print a table of round-trip percentiles (p50/p90/p99, ms). For each setting a
fresh pair of nodes (fastnet genesis, in this process, on one reactor): A listens on
127.0.0.1, B dials it; when B's connection is ready, B sends PINGs through its
PeerProtocol and A answers with the node's own PONG handler. Without NODELAY means
`peer.set_no_delay` made a no-op and the sockets' TCP_NODELAY cleared (the kernel's
default, what the nodes had before).

Two workloads, PINGS round trips each, one in flight at a time:
- "ping alone": each PING as soon as the last PONG came.
- "after a message": B first writes one small message that A does not answer (a PONG
  echoing nothing, which A ignores), and the PING in the next reactor turn: the pattern
  of a node that announced something and then pings (write, write, read), where Nagle
  holds the second write until the first is acknowledged and the receiver delays that
  acknowledgement (Linux: 40 ms at least).

Budgets: PING and PONG are 1,200 a minute per peer (ratelimit.LIMITS), a fresh pair per
setting uses at most 2 x PINGS + PINGS.

    .venv/bin/python bench/ping_rtt.py            # ~20 s
    .venv/bin/python bench/ping_rtt.py --pings 50
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from typing import Any, Optional

from twisted.internet import defer, task

from archivas.chain import params as network_params
from archivas.chain.blockchain import Chain
from archivas.node import Node
from archivas.protocols import peer, wire
from archivas.protocols.peer import PeerState

PARAMS = network_params.load("fastnet")
PINGS = 300
PING_TIMEOUT = 2.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def wait_for(reactor: Any, condition: Any, what: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.01, lambda: None)


async def measure(reactor: Any, nodelay: bool, pings: int) -> dict[str, list[float]]:
    original = peer.set_no_delay
    if not nodelay:
        peer.set_no_delay = lambda transport: None
    directory = tempfile.mkdtemp(prefix="ping-rtt-")
    nodes: list[Node] = []
    ports: list[Any] = []
    try:
        for name in ("a", "b"):
            node = Node(Chain.open(f"{directory}/{name}", PARAMS), reactor, discover=False)
            port = reactor.listenTCP(0, node.peers.inbound_factory, interface="127.0.0.1")
            node.peers.listen_port = port.getHost().port
            node.start()
            nodes.append(node)
            ports.append(port)
        a, b = nodes
        b.peers.dial(f"127.0.0.1:{ports[0].getHost().port}")

        def ready() -> list[Any]:
            return [p for p in b.peers.peers if p.info is not None and p.info.state is PeerState.READY]

        await wait_for(reactor, lambda: bool(ready()) and bool(a.peers.ready_peers()), "the handshake")
        proto = ready()[0]
        for p in (proto, a.peers.ready_peers()[0]):
            p.transport.setTcpNoDelay(nodelay)
            assert bool(p.transport.getTcpNoDelay()) == nodelay

        # B's PONG handler: ours are timed here, anything else goes on to the node's.
        waiting: dict[float, defer.Deferred[float]] = {}
        node_on_pong = b.peers._lifecycle[wire.Pong]

        def on_pong(p: Any, message: wire.Pong) -> None:
            d = waiting.pop(message.timestamp, None)
            if d is None:
                node_on_pong(p, message)
            else:
                d.callback(time.perf_counter())

        b.peers._lifecycle[wire.Pong] = on_pong
        results: dict[str, list[float]] = {}
        token = 0.5
        for workload in ("ping alone", "after a message"):
            rtts = results.setdefault(workload, [])
            for _ in range(pings):
                token += 1
                if workload == "after a message":
                    proto.send(wire.Pong(7.25))  # A's handler ignores a PONG it did not ask for
                    await task.deferLater(reactor, 0, lambda: None)
                d: defer.Deferred[float] = defer.Deferred()
                waiting[token] = d
                d.addTimeout(PING_TIMEOUT, reactor)
                started = time.perf_counter()
                proto.send(wire.Ping(token))
                rtts.append(await d - started)
                await task.deferLater(reactor, 0.002, lambda: None)  # let the ACKs settle
        assert proto.connected and proto.info is not None and proto.info.state is PeerState.READY
        return results
    finally:
        peer.set_no_delay = original
        for port in ports:
            await defer.maybeDeferred(port.stopListening)
        for node in nodes:
            await node.stop()
            node.chain.close()
        shutil.rmtree(directory, ignore_errors=True)


async def run(reactor: Any, pings: int) -> None:
    rows = []
    for nodelay in (False, True):
        for workload, rtts in (await measure(reactor, nodelay, pings)).items():
            rows.append((workload, "on" if nodelay else "off", rtts))
    print(f"PING round trips over loopback TCP, two nodes, {pings} per row (ms)")
    print(f"{'workload':<18}{'NODELAY':<9}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    for workload, setting, rtts in sorted(rows, key=lambda r: r[0], reverse=True):
        ms = [1000 * r for r in rtts]
        print(f"{workload:<18}{setting:<9}{percentile(ms, 50):>8.2f}{percentile(ms, 90):>8.2f}"
              f"{percentile(ms, 99):>8.2f}{max(ms):>8.2f}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pings", type=int, default=PINGS, help=f"round trips per row (default {PINGS}, at most 400)")
    args = ap.parse_args(argv)
    if not 1 <= args.pings <= 400:
        ap.error("--pings must be 1-400 (the peer's PING budget)")
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args.pings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
