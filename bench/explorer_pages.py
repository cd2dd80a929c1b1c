"""Measure the explorer: server time per page at a 10,000-block chain, and the latency of
a live update (a new tip reaching 64 open event streams).

One job: print two plain-text tables.

Pages: each page is asked REPEATS times through the node's RPC resource (the real Klein
routing, the explorer's handlers and templates) with treq's StubTreq, on a node whose
chain is tests/fixtures' 3,200 blocks extended with `tests.common.builder()` to 10,000 on
tests.common.PARAMS, five transfers a block from Alice to 100 other keys (so Alice's
address page has ~34,000 transfers of history, each other key ~340), then one full block
on top (2,000 transfers, the most a block holds: the heaviest block page), 500 transfers
in the mempool and 8 peers connected (in-memory transports). "server" is the explorer's own
Server-Timing (route entry to rendered page): "first" the first ask (nothing cached yet),
then the median, p95 and max of the others; "total" adds Klein's routing and the fake
transport (median). The goal is under 50 ms per page.

Updates: the same chain on the real reactor behind a loopback listener, 64 clients on
`GET /events` (the explorer's maximum); UPDATES new blocks are given to the node 0.3 s
apart (more than the 0.25 s between tip events, so none is coalesced); for each, the time
from the node's on_tip to the event's arrival at the first and at the last client, and
the server time spent building and writing the event.

The chain is built once (about 4 minutes: each block's VDF) and cached, with its
database, under /tmp/archivas-bench-explorer/ (keyed by genesis and length; blocks are
loaded trusted: add_block(block, 2**62, score=0)).

    .venv/bin/python bench/explorer_pages.py              # 10,000 blocks
    .venv/bin/python bench/explorer_pages.py --blocks 3200  # the fixture chain only (no building)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.common: the test network and its fixture chain

from treq.testing import StubTreq  # noqa: E402
from twisted.internet import defer, protocol, reactor, task  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from archivas.chain.block import Block, genesis_block  # noqa: E402
from archivas.chain.blockchain import Chain  # noqa: E402
from archivas.chain.keys import PrivateKey  # noqa: E402
from archivas.chain.params import COIN  # noqa: E402
from archivas.explorer.events import MAX_CLIENTS  # noqa: E402
from archivas.node import Node  # noqa: E402
from archivas.nodeapi import LocalNodeAPI  # noqa: E402
from archivas.rpc import NodeRPC, site  # noqa: E402
from tests.common import ALICE, BOB, CAROL, PARAMS, builder, fixture_blocks  # noqa: E402

CACHE_DIR = Path("/tmp/archivas-bench-explorer")
TRANSFERS_PER_BLOCK = 5
RECIPIENTS = [PrivateKey.from_secret(b"explorer-bench-%d" % i) for i in range(100)]
REPEATS = 30
MEMPOOL = 500  # 5 pending transfers from each of the 100 recipients
PEERS = 8
UPDATES = 20


def build_chain(total: int) -> list[Block]:
    """Heights 1..total: the fixture, then builder blocks with five of Alice's transfers
    each (first 1 RCHV to each recipient, then 0.001 RCHV round the 100)."""
    blocks = fixture_blocks()[:total]
    if total <= len(blocks):
        return blocks
    path = CACHE_DIR / f"chain-{genesis_block(PARAMS).hash.hex()[:16]}-{total}.jsonl.gz"
    if path.exists():
        with gzip.open(path, "rt") as f:
            return [Block.from_json(json.loads(line)) for line in f]
    b = builder()
    for block in blocks:
        b.blocks[block.hash] = block
    nonce = sum(1 for block in blocks for tx in block.transactions if tx.sender == ALICE.address)
    parent = blocks[-1]
    started = time.monotonic()
    for i in range(total - len(blocks)):
        txs = []
        for j in range(TRANSFERS_PER_BLOCK):
            k = i * TRANSFERS_PER_BLOCK + j
            amount = COIN if k < len(RECIPIENTS) else COIN // 1000
            txs.append(b.transfer(ALICE, RECIPIENTS[k % len(RECIPIENTS)].address, amount, nonce))
            nonce += 1
        parent = b.make_block(parent, transactions=txs)
        blocks.append(parent)
        if i % 500 == 0:
            print(f"  building: height {parent.height} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as f:
        for block in blocks:
            f.write(json.dumps(block.to_json()) + "\n")
    tmp.rename(path)
    return blocks


def open_database(blocks: list[Block]) -> Chain:
    """A copy of the cached database holding `blocks` (made once, trusted adds)."""
    source = CACHE_DIR / f"db-{genesis_block(PARAMS).hash.hex()[:16]}-{len(blocks)}"
    if not (source / "done").exists():
        shutil.rmtree(source, ignore_errors=True)
        chain = Chain.open(source, PARAMS)
        for block in blocks:
            chain.add_block(block, 2**62, score=0)
        chain.close()
        (source / "done").write_text("ok")
    target = Path(tempfile.mkdtemp(prefix="archivas-explorer-"))
    for name in os.listdir(source):
        if name != "LOCK":
            shutil.copy(source / name, target / name)
    return Chain.open(target, PARAMS)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _result(d: defer.Deferred):
    """A Deferred that StubTreq.flush() has fired."""
    out: list = []
    d.addBoth(out.append)
    assert out, "the request did not complete"
    return out[0]


def measure_pages(chain: Chain, blocks: list[Block]) -> list[tuple]:
    from tests.test_protocol import handshake

    clock = task.Clock()
    clock.advance(time.time())
    node = Node(chain, clock, threaded=False, discover=False)
    node.start()
    for i in range(PEERS):
        proto = node.peers.inbound_factory.buildProtocol(None)
        from twisted.internet.address import IPv4Address

        proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", f"10.0.0.{i + 1}", 40000)))
        handshake(proto, node_id=bytes([i + 1]) * 16, genesis=node.genesis_hash)
    # A full block on top (maxBlockTransactions, 2,000 of Alice's transfers): the heaviest block page.
    b = builder()
    for height in range(max(0, chain.height - 40), chain.height + 1):  # the ancestors its difficulty needs
        ancestor = chain.block_at(height)
        assert ancestor is not None
        b.blocks[ancestor.hash] = ancestor
    alice_nonce = chain.account(ALICE.address)[1]
    full = b.make_block(b.blocks[chain.storage.main_hash(chain.height)], transactions=[
        b.transfer(ALICE, CAROL.address, 1000, alice_nonce + n) for n in range(PARAMS.max_block_transactions)])
    node.receive_block(full).addErrback(lambda f: f.printTraceback())
    assert chain.height == full.height, "the full block was not taken"
    blocks = blocks + [full]
    funded = [k for k in RECIPIENTS if chain.account(k.address)[0] > COIN // 100]
    if funded:  # five pending from each recipient
        pending = [(k, n) for k in funded for n in range(MEMPOOL // len(RECIPIENTS))]
    else:  # the fixture chain alone: Alice's and Bob's (64 pending each at most)
        pending = [(k, chain.account(k.address)[1] + n) for k in (ALICE, BOB) for n in range(64)]
    for key, nonce in pending:
        node.submit_transaction(builder().transfer(key, CAROL.address, 1000, nonce))
    http = StubTreq(NodeRPC(LocalNodeAPI(node)).resource())
    tip = chain.height
    with_transfers = next((b for b in reversed(blocks[:-1]) if b.transactions), blocks[-2])
    deep_tx = next(tx for b in blocks[len(blocks) // 2:] for tx in b.transactions)
    pages = [
        ("overview /", "/"),
        (f"block {tip} (tip, {len(full.transactions):,} transfers, page 1)", f"/explorer/block/{tip}"),
        (f"block {tip} page 20", f"/explorer/block/{tip}?page=19"),
        (f"block {tip // 2}", f"/explorer/block/{tip // 2}"),
        (f"block {with_transfers.height} by hash ({len(with_transfers.transactions)} transfers)",
         f"/explorer/block/{with_transfers.hash.hex()}"),
        ("transfer (mid-chain)", f"/explorer/tx/{deep_tx.hash.hex()}"),
        ("address: Alice (most history)", f"/explorer/address/{ALICE.address}"),
        ("address: a recipient", f"/explorer/address/{RECIPIENTS[7].address}"),
        (f"mempool ({len(node.mempool)} pending)", "/explorer/mempool"),
        (f"peers ({len(node.peers.ready_peers())})", "/explorer/peers"),
    ]
    rows = []
    for name, path in pages:
        server, total, size = [], [], 0
        for i in range(REPEATS + 1):
            started = time.perf_counter()
            d = http.get("http://node" + path, headers={b"accept": [b"text/html"]})
            d.addCallback(lambda r: http.content(r).addCallback(lambda c, r=r: (r, c)))
            http.flush()
            elapsed = (time.perf_counter() - started) * 1000
            response, content = _result(d)
            assert response.code == 200, (path, response.code, content[-300:])
            timing = float(response.headers.getRawHeaders(b"server-timing")[0].decode().split("dur=")[1])
            if i == 0:
                first = timing  # a cold ask: rows and blocks not cached yet
                continue
            server.append(timing)
            total.append(elapsed)
            size = len(content)
        rows.append((name, first, statistics.median(server), percentile(server, 95), max(server),
                     statistics.median(total), size))
    node.stop()
    return rows


async def measure_updates(chain: Chain) -> dict:
    node = Node(chain, reactor, discover=False)
    node.start()
    rpc = NodeRPC(LocalNodeAPI(node))
    port = reactor.listenTCP(0, site(rpc.resource()), interface="127.0.0.1")
    arrivals: dict[str, list[float]] = {}

    class Client(protocol.Protocol):
        def connectionMade(self) -> None:
            self.buffer = b""
            self.transport.write(b"GET /events HTTP/1.1\r\nHost: node\r\n\r\n")

        def dataReceived(self, data: bytes) -> None:
            now = time.perf_counter()
            self.buffer += data
            while b"\n\n" in self.buffer:
                message, self.buffer = self.buffer.split(b"\n\n", 1)
                if b'"tipHash":"' in message and b"event: tip" in message:
                    tip = message.split(b'"tipHash":"', 1)[1][:64].decode()
                    arrivals.setdefault(tip, []).append(now)

    clients = [await protocol.ClientCreator(reactor, Client).connectTCP("127.0.0.1", port.getHost().port)
               for _ in range(MAX_CLIENTS)]
    deadline = time.monotonic() + 30
    while getattr(rpc, "_explorer", None) is None or len(rpc._explorer.hub.clients) < MAX_CLIENTS:
        assert time.monotonic() < deadline, "clients did not connect"
        await task.deferLater(reactor, 0.05, lambda: None)
    hub = rpc._explorer.hub
    spent: list[float] = []
    original = hub._send_tip

    def timed() -> None:
        started = time.perf_counter()
        original()
        spent.append((time.perf_counter() - started) * 1000)

    hub._send_tip = timed  # type: ignore[method-assign]
    b = builder()
    for height in range(max(0, chain.height - 40), chain.height + 1):  # the ancestors its difficulty needs
        block = chain.block_at(height)
        assert block is not None
        b.blocks[block.hash] = block
    new_blocks = b.extend(b.blocks[chain.storage.main_hash(chain.height)], UPDATES)
    tipped: dict[str, float] = {}
    node.on_tip.append(lambda block: tipped.setdefault(block.hash.hex(), time.perf_counter()))
    for block in new_blocks:
        await node.receive_block(block)
        await task.deferLater(reactor, 0.3, lambda: None)
    first, last = [], []
    for block in new_blocks:
        h = block.hash.hex()
        got = arrivals.get(h, [])
        assert len(got) == MAX_CLIENTS, (block.height, len(got))
        first.append((min(got) - tipped[h]) * 1000)
        last.append((max(got) - tipped[h]) * 1000)
    for c in clients:
        c.transport.loseConnection()
    await task.deferLater(reactor, 0.2, lambda: None)
    await port.stopListening()
    await node.stop()
    return {"first": first, "last": last, "spent": spent[-UPDATES:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10_000, help="chain length (default 10,000)")
    args = parser.parse_args()
    blocks = build_chain(args.blocks)
    chain = open_database(blocks)
    print(f"Explorer at a {chain.height:,}-block fastnet chain ({platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}); "
          f"{REPEATS} asks a page after one warm-up\n")
    rows = measure_pages(chain, blocks)
    width = max(len(r[0]) for r in rows)
    print(f"{'page':<{width}}  server ms: first  median    p95    max   total ms    bytes")
    for name, first, median, p95, top, total, size in rows:
        print(f"{name:<{width}}  {first:16.2f} {median:7.2f} {p95:6.2f} {top:6.2f} {total:10.2f} {size:8,}")
    print(f"\ngoal: under 50 ms per page; slowest first ask {max(r[1] for r in rows):.2f} ms, slowest median "
          f"{max(r[2] for r in rows):.2f} ms, slowest p95 {max(r[3] for r in rows):.2f} ms")

    result: dict = {}

    async def run() -> None:
        result.update(await measure_updates(chain))

    def stop(outcome):
        reactor.stop()
        return outcome

    d = defer.ensureDeferred(run())
    d.addErrback(lambda f: (f.printTraceback(), result.setdefault("error", str(f.value))))
    d.addBoth(stop)
    reactor.run()
    if "error" in result:
        raise SystemExit(result["error"])
    print(f"\nLive updates: {UPDATES} new tips, {MAX_CLIENTS} streams on loopback (on_tip to arrival)")
    print(f"{'':<22}  median    p95    max")
    for key, label in (("first", "first client, ms"), ("last", "last client, ms"),
                       ("spent", "server build+write, ms")):
        values = result[key]
        print(f"{label:<22}  {statistics.median(values):6.2f} {percentile(values, 95):6.2f} {max(values):6.2f}")
    chain.close()


if __name__ == "__main__":
    main()
