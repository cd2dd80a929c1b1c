"""The node of tests/test_orphan_flood.py, in a process of its own so that its memory
(VmRSS) is its own:

    python -m archivas.testing.orphanflood DBDIR [NETWORK]

It opens a chain in DBDIR on the built-in NETWORK's parameters (fastnet by default),
starts a Node listening on 127.0.0.1 (an OS-chosen port; every loopback address its own
address group, no discovery) and prints, flushing each line, one JSON object a line:

    {"event": "ready", "port": P, "pid": N, "genesis": HEX, "network": NAME, ...state}

once it listens, and then one `{"event": "state", ...}` for each `state` line read on
stdin. A state has the chain's tip and height; the orphan pool's blocks and bytes now and
the most they ever were right after an add (`peak_orphans`, `peak_orphan_bytes`, with
the pool's own bounds); how many blocks reached `Node._hold_orphan` and what became of
them (`hold_from_not_ready`: from a peer not READY, and of those `held_from_not_ready`
added to the pool all the same; from READY peers, `hold_added` to the pool or
`hold_not_added`, too far above the tip); `pool_adds`, every call of the pool's `add`
(sync adds there too); VmRSS and VmHWM
in bytes; the peer layer's misbehaviour and dropped counts, and how many peers are
connected. `quit` or the end of stdin stops the reactor (and the process); so does a
hard deadline (--deadline, 120 s by default).

Only the calls are wrapped to count them: nothing of the node is changed.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
from typing import Any, Optional

_COUNTERS: collections.Counter[str] = collections.Counter()
_PEAKS = {"orphans": 0, "orphan_bytes": 0}


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for text in f:
            if text.startswith(field + ":"):
                return int(text.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _say(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
    sys.stdout.flush()


def _instrument(node: Any) -> None:
    """Count what reaches the orphan pool, and remember the most it held."""
    from archivas.protocols.peer import PeerState

    pool = node.orphans
    add = pool.add
    hold = node._hold_orphan

    def counted_add(block: Any, source: Any = None) -> None:
        add(block, source)
        _COUNTERS["pool_adds"] += 1
        _PEAKS["orphans"] = max(_PEAKS["orphans"], len(pool))
        _PEAKS["orphan_bytes"] = max(_PEAKS["orphan_bytes"], pool.bytes)

    def counted_hold(block: Any, source: Any) -> None:
        ready = source is not None and source.info is not None and source.info.state is PeerState.READY
        adds = _COUNTERS["pool_adds"]
        hold(block, source)
        added = _COUNTERS["pool_adds"] > adds
        if not ready:
            _COUNTERS["hold_from_not_ready"] += 1
            if added:
                _COUNTERS["held_from_not_ready"] += 1
        elif added:
            _COUNTERS["hold_added"] += 1  # near the tip: into the pool
        else:
            _COUNTERS["hold_not_added"] += 1  # too far above: a sync asked for instead

    pool.add = counted_add
    node._hold_orphan = counted_hold


def _state(node: Any, event: str, extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    pool = node.orphans
    doc = {
        "event": event,
        "height": node.chain.height,
        "tip": node.chain.tip.hash.hex(),
        "orphans": len(pool),
        "orphan_bytes": pool.bytes,
        "orphan_bound": pool.size,
        "orphan_bytes_bound": pool.max_bytes,
        "peak_orphans": _PEAKS["orphans"],
        "peak_orphan_bytes": _PEAKS["orphan_bytes"],
        "counters": dict(_COUNTERS),
        "rss": _proc_status("VmRSS"),
        "hwm": _proc_status("VmHWM"),
        "misbehaviour": dict(node.peers.misbehaviour_counts),
        "dropped": dict(node.peers.dropped_counts),
        "peers": len(node.peers.peers),
        "rejected_blocks": node.rejected_blocks,
        "sync_active": bool(node.sync.active),
    }
    doc.update(extra or {})
    return doc


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m archivas.testing.orphanflood")
    parser.add_argument("db")
    parser.add_argument("network", nargs="?", default="fastnet")
    parser.add_argument("--deadline", type=float, default=120.0)
    args = parser.parse_args(argv)

    from twisted.internet import reactor as installed

    reactor: Any = installed
    from twisted.logger import FileLogObserver, formatEventAsClassicLogText, globalLogBeginner

    from archivas.chain import params as network_params
    from archivas.chain.blockchain import Chain
    from archivas.node import Node

    # Log to stderr: otherwise the global log beginner buffers events, in this process's memory.
    globalLogBeginner.beginLoggingTo([FileLogObserver(sys.stderr, formatEventAsClassicLogText)],
                                     redirectStandardIO=False)
    params = network_params.load(args.network)
    chain = Chain.open(args.db, params)
    node = Node(chain, reactor, group=lambda host: host.encode(), discover=False)
    _instrument(node)
    port = reactor.listenTCP(0, node.peers.inbound_factory, interface="127.0.0.1")
    node.peers.listen_port = port.getHost().port
    node.start()
    # Close every connection and stop the verify threads before the reactor goes (they
    # would keep the process alive).
    reactor.addSystemEventTrigger("before", "shutdown", node.stop)

    def stop() -> None:
        if reactor.running:
            reactor.stop()

    def command(text: str) -> None:
        if text == "state":
            _say(_state(node, "state"))
        elif text == "quit":
            stop()
        else:
            _say({"event": "error", "error": f"unknown command {text!r}"})

    def read_stdin() -> None:
        for raw in sys.stdin:
            reactor.callFromThread(command, raw.strip())
        reactor.callFromThread(stop)

    threading.Thread(target=read_stdin, daemon=True).start()
    reactor.callLater(args.deadline, stop)
    reactor.callWhenRunning(lambda: _say(_state(node, "ready", {
        "port": port.getHost().port, "pid": os.getpid(), "genesis": chain.genesis.hash.hex(),
        "network": params.name})))
    reactor.run()
    chain.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
