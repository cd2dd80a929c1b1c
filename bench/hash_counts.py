"""Count canonical_json and sha256 calls per transfer admitted and per block added.

One job: print, for a node on a fake clock (threaded=False, as the tests run it) with
four ready peers on StringTransports (the source, one pushed blocks in full, two
high-bandwidth compact), how many times `encoding.canonical_json` and
`encoding.sha256` run, and from where, while it

- admits TRANSFERS transfers, each arriving as a NEW_TRANSACTION line from one peer
  (decoded there, so a fresh Transaction whose caches are empty, as in a running node),
  through Node.submit_transaction, then relays them (the INV ticks, the REQ of one peer
  answered with RES);
- adds BLOCKS blocks, each a PUSH_BLOCK line from one peer, through validation,
  chain.add_block, the mempool update and the relay to the other peers. The first block
  carries the TRANSFERS transfers (already pending: the mempool has them), the others
  none.

Wrappers replace the two functions in every archivas module that imported them; a
caller is named by file and function. Lines are encoded before counting starts.

    .venv/bin/python bench/hash_counts.py             # ~10 s (plots and VDFs are made once)
    .venv/bin/python bench/hash_counts.py --top 12    # more call sites
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
from typing import Any, Callable, Optional

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from archivas.chain import encoding
from archivas.chain.blockchain import Chain
from archivas.chain.params import COIN
from archivas.node import Node
from archivas.protocols import wire

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.common import ALICE, CAROL, PARAMS, builder, now_ms  # noqa: E402
from tests.test_protocol import handshake  # noqa: E402

TRANSFERS = 50
BLOCKS = 20


class Counter:
    def __init__(self) -> None:
        self.calls: dict[str, collections.Counter[str]] = {"canonical_json": collections.Counter(),
                                                            "sha256": collections.Counter()}
        self.on = False

    def wrap(self, name: str, f: Callable[..., Any]) -> Callable[..., Any]:
        calls = self.calls[name]

        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.on:
                code = sys._getframe(1).f_code
                calls[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += 1
            return f(*args, **kwargs)

        return counted

    def install(self) -> None:
        for name in ("canonical_json", "sha256"):
            original = getattr(encoding, name)
            counted = self.wrap(name, original)
            for module in list(sys.modules.values()):
                if (getattr(module, "__name__", "") or "").startswith("archivas") and \
                        getattr(module, name, None) is original:
                    setattr(module, name, counted)

    def take(self) -> dict[str, collections.Counter[str]]:
        out = {name: collections.Counter(c) for name, c in self.calls.items()}
        for c in self.calls.values():
            c.clear()
        return out


def feed_line(proto: Any, line: bytes) -> None:
    proto.dataReceived(line + b"\n")


def report(title: str, per: int, counts: dict[str, collections.Counter[str]], top: int) -> None:
    print(f"\n{title}")
    for name, calls in counts.items():
        total = sum(calls.values())
        print(f"  {name}: {total / per:.2f} per item ({total} calls)")
        for site, n in calls.most_common(top):
            print(f"    {n / per:>7.2f}  {site}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=8, help="call sites shown per function")
    args = ap.parse_args(argv)

    b = builder()
    txs = [b.transfer(ALICE, CAROL.address, COIN, n) for n in range(TRANSFERS)]
    loaded = b.make_block(b.genesis, txs)
    blocks = [loaded] + b.extend(loaded, BLOCKS - 1)
    tx_lines = [wire.encode(wire.NewTransaction(tx)) for tx in txs]
    block_lines = [wire.encode(wire.PushBlock(block)) for block in blocks]

    directory = tempfile.mkdtemp(prefix="hash-counts-")
    clock = task.Clock()
    clock.advance(now_ms() / 1000)
    chain = Chain.open(directory, PARAMS)
    node = Node(chain, clock, threaded=False)
    node.start()
    # The source; a peer without "cmpct" (it is pushed blocks in full); two that asked
    # for high-bandwidth compact blocks.
    peers = []
    no_cmpct = tuple(c for c in wire.CAPABILITIES if c != "cmpct")
    for i, capabilities in enumerate((wire.CAPABILITIES, no_cmpct, wire.CAPABILITIES, wire.CAPABILITIES)):
        factory = node.peers.inbound_factory if i else node.peers.outbound_factory
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", f"10.{i}.0.1", 40000))
        proto.makeConnection(transport)
        handshake(proto, genesis=node.genesis_hash, node_id=bytes([i + 1]) * 16, capabilities=capabilities)
        if i >= 2:
            feed_line(proto, wire.encode(wire.SendCmpct(True)))
        peers.append((proto, transport))
    assert len(node.peers.ready_peers()) == 4, "handshakes"
    assert sum(1 for p, _ in peers if p.info.cmpct_high_bandwidth) == 2
    counter = Counter()
    counter.install()
    try:
        source = peers[0][0]
        counter.on = True
        for line in tx_lines:
            feed_line(source, line)
        assert len(node.mempool) == TRANSFERS, len(node.mempool)
        clock.advance(6)  # INV ticks to the other peers
        # One of them asks for them all (REQ) and is answered (RES).
        ids = tuple(wire.inv_id(tx.hash) for tx in txs)
        feed_line(peers[1][0], wire.encode(wire.Req(ids)))
        admitted = counter.take()
        report(f"Per transfer admitted and relayed ({TRANSFERS} transfers)", TRANSFERS, admitted, args.top)

        feed_line(source, block_lines[0])
        clock.advance(1)
        first = counter.take()
        assert chain.height == 1, chain.height
        report(f"The block of {TRANSFERS} transfers, added and relayed", 1, first, args.top)
        for line in block_lines[1:]:
            feed_line(source, line)
            clock.advance(1)
        rest = counter.take()
        assert chain.height == BLOCKS, chain.height
        report(f"Per empty block added and relayed ({BLOCKS - 1} blocks)", BLOCKS - 1, rest, args.top)
        counter.on = False
        print("\nsummary (calls per item)")
        print(f"{'':<34}{'canonical_json':>16}{'sha256':>10}")
        for label, per, counts in (("transfer admitted + relayed", TRANSFERS, admitted),
                                   (f"block of {TRANSFERS} transfers", 1, first),
                                   ("empty block", BLOCKS - 1, rest)):
            print(f"{label:<34}{sum(counts['canonical_json'].values()) / per:>16.2f}"
                  f"{sum(counts['sha256'].values()) / per:>10.2f}")
    finally:
        counter.on = False
        node.stop()
        chain.close()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
