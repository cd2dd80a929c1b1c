"""Real nodes on loopback TCP: the seed's walk-through and partitions."""

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.common import builder
from tests.netutil import connected, start_node, wait_until


def same_tip(*handles):
    return len({h.chain.tip.hash for h in handles}) == 1


class SeedWalkThrough(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_1_block_made_on_a_reaches_b(self):
        b = builder()
        a_node = start_node(self)
        b_node = start_node(self)
        b_node.node.peers.dial(a_node.address)
        yield defer.ensureDeferred(wait_until(lambda: connected(b_node, a_node) and connected(a_node, b_node),
                                              "the handshake"))
        block = b.make_block(b.genesis)
        result = yield a_node.node.receive_block(block)
        self.assertEqual(result.status, "tip")
        yield defer.ensureDeferred(wait_until(lambda: b_node.chain.height == 1, "B at height 1"))
        self.assertEqual(b_node.chain.tip.hash, block.hash)
        self.assertEqual(a_node.chain.accounts(), b_node.chain.accounts())


async def link(a, b):
    """a dials b and both see the handshake."""
    a.node.peers.dial(b.address)
    await wait_until(lambda: connected(a, b) and connected(b, a), f"{a.address} <-> {b.address}")


class MoreNodes(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_2_three_nodes_converge_and_see_timelord_output(self):
        from archivas.chain import vdf
        from archivas.chain.block import child_discriminant_seed, child_origin

        b = builder()
        a_node, b_node, c_node = start_node(self), start_node(self), start_node(self)
        yield defer.ensureDeferred(link(b_node, a_node))
        yield defer.ensureDeferred(link(c_node, a_node))
        blocks = b.extend(b.genesis, 5)
        for block in blocks:
            yield a_node.node.receive_block(block)
        yield defer.ensureDeferred(wait_until(lambda: same_tip(a_node, b_node, c_node)
                                              and c_node.chain.height == 5, "B and C at A's tip"))
        # Timelord output on A's tip reaches B and C.
        tip = blocks[-1]
        segment = vdf.prove_segment(child_discriminant_seed(tip.header, b.params), child_origin(tip.header, b.params),
                                    b.params.discriminant_bits, a_node.node.vdf_iterations)
        seen = {h: [] for h in ("b", "c")}
        b_node.node.on_vdf.append(lambda p, i, s: seen["b"].append((p, i)))
        c_node.node.on_vdf.append(lambda p, i, s: seen["c"].append((p, i)))
        accepted = yield a_node.node.add_vdf_output(tip.hash, 1, segment)
        self.assertTrue(accepted)
        yield defer.ensureDeferred(wait_until(lambda: seen["b"] and seen["c"], "timelord output on B and C"))
        self.assertEqual(seen, {"b": [(tip.hash, 1)], "c": [(tip.hash, 1)]})
        self.assertEqual(b_node.node.vdf_segments, [segment])

    @defer.inlineCallbacks
    def test_3_restarted_node_catches_up_from_its_database(self):
        b = builder()
        a_node = start_node(self)
        b_dir = self.mktemp()
        b_node = start_node(self, b_dir)
        yield defer.ensureDeferred(link(b_node, a_node))
        blocks = b.extend(b.genesis, 3)
        for block in blocks:
            yield a_node.node.receive_block(block)
        yield defer.ensureDeferred(wait_until(lambda: b_node.chain.height == 3, "B at 3"))
        yield defer.ensureDeferred(b_node.stop())
        more = b.extend(blocks[-1], 12)
        for block in more:
            yield a_node.node.receive_block(block)
        b_again = start_node(self, b_dir)
        self.assertEqual(b_again.chain.height, 3)  # from its database
        lines = []
        observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        yield defer.ensureDeferred(link(b_again, a_node))
        yield defer.ensureDeferred(wait_until(lambda: b_again.chain.height == 15, "B caught up to 15"))
        self.assertIn("[p2p] peers are ahead, need to sync from 3 to 15", lines)
        self.assertTrue(any(line.startswith("Synced to tip (height=15)") for line in lines), lines)
        self.assertTrue(same_tip(a_node, b_again))
        self.assertEqual(a_node.chain.accounts(), b_again.chain.accounts())

    @defer.inlineCallbacks
    def test_3b_a_failed_run_commit_is_not_reported_as_synced(self):
        """The disk fails at the commit of the round's run: the node goes back to its stored
        tip, logs no "Synced to tip" for blocks it did not store, and the next round
        stores them (every such line names a height that was committed when it was logged)."""
        import sqlite3

        b = builder()
        a_node = start_node(self)
        b_node = start_node(self)
        blocks = b.extend(b.genesis, 12)
        for block in blocks:
            yield a_node.node.receive_block(block)
        storage = b_node.chain.storage
        write_back = storage._write_back
        failures = []

        def full_once():
            if not failures:
                failures.append(b_node.chain.height)
                raise sqlite3.OperationalError("database or disk is full")
            write_back()

        storage._write_back = full_once
        synced, rolled_back = [], []

        def observer(event):
            line = formatEvent(event)
            if line.startswith("Synced to tip"):
                synced.append((line, storage.in_run, b_node.chain.height))
            elif "committing a sync run failed" in line:
                rolled_back.append(line)

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        yield defer.ensureDeferred(link(b_node, a_node))
        yield defer.ensureDeferred(wait_until(lambda: b_node.chain.height == 12 and not storage.in_run
                                              and any("height=12" in line for line, _, _ in synced),
                                              "B synced to 12"))
        self.assertEqual(len(failures), 1)
        self.assertGreater(failures[0], 0)  # blocks of the run were held when it failed
        self.assertEqual(len(rolled_back), 1, rolled_back)
        for line, in_run, height in synced:
            self.assertFalse(in_run, line)
            self.assertIn(f"height={height})", line)
        self.assertTrue(same_tip(a_node, b_node))

    @defer.inlineCallbacks
    def test_partition_and_heal(self):
        b = builder()
        nodes = [start_node(self) for _ in range(4)]
        left, right = nodes[:2], nodes[2:]
        yield defer.ensureDeferred(link(left[1], left[0]))
        yield defer.ensureDeferred(link(right[1], right[0]))
        common = b.extend(b.genesis, 2)
        for block in common:
            yield left[0].node.receive_block(block)
            yield right[0].node.receive_block(block)
        # Each half extends its own branch: the right one is heavier (longer).
        for block in b.extend(common[-1], 3, farmer=0):
            yield left[0].node.receive_block(block)
        heavier = b.extend(common[-1], 5, farmer=1)
        for block in heavier:
            yield right[0].node.receive_block(block)
        yield defer.ensureDeferred(wait_until(lambda: same_tip(*left) and same_tip(*right), "halves settled"))
        self.assertNotEqual(left[0].chain.tip.hash, right[0].chain.tip.hash)
        # Heal: one link across.
        yield defer.ensureDeferred(link(left[1], right[1]))
        yield defer.ensureDeferred(wait_until(lambda: same_tip(*nodes), "every node on one tip"))
        self.assertEqual(nodes[0].chain.tip.hash, heavier[-1].hash)
        accounts = nodes[0].chain.accounts()
        for handle in nodes[1:]:
            self.assertEqual(handle.chain.accounts(), accounts)

    @defer.inlineCallbacks
    def test_dialing_itself_is_detected_and_stopped(self):
        node = start_node(self)
        node.node.peers.dial(node.address)
        yield defer.ensureDeferred(wait_until(lambda: not node.node.peers.dialers, "the self-dial forgotten"))
        yield defer.ensureDeferred(wait_until(lambda: not node.node.peers.peers, "both ends closed"))
        self.assertEqual(node.node.peers.ready_peers(), [])

    @defer.inlineCallbacks
    def test_ten_node_line(self):
        b = builder()
        # One outbound link each (none for the first), so peer exchange cannot add
        # shortcuts: node i talks to i-1 and i+1 only.
        nodes = [start_node(self, max_outbound=0 if i == 0 else 1) for i in range(10)]
        for left, right in zip(nodes, nodes[1:]):
            yield defer.ensureDeferred(link(right, left))
        for i, handle in enumerate(nodes):
            neighbours = {n.node.node_id for n in nodes[max(0, i - 1):i + 2] if n is not handle}
            self.assertEqual({p.info.node_id for p in handle.node.peers.ready_peers()}, neighbours)
        block = b.make_block(b.genesis)
        yield nodes[0].node.receive_block(block)
        seconds = yield defer.ensureDeferred(wait_until(lambda: nodes[-1].chain.tip.hash == block.hash,
                                                        "the block at the far end"))
        for handle in nodes:
            self.assertEqual(handle.chain.tip.hash, block.hash)
        print(f"\n[line] a block crossed 10 nodes (9 hops) in {seconds * 1000:.0f} ms")

    @defer.inlineCallbacks
    def test_transfers_gossip_once_and_leave_mempools_when_mined(self):
        from archivas.chain.params import COIN
        from tests.common import ALICE, CAROL

        b = builder()
        nodes = [start_node(self) for _ in range(3)]
        yield defer.ensureDeferred(link(nodes[1], nodes[0]))
        yield defer.ensureDeferred(link(nodes[2], nodes[1]))
        yield defer.ensureDeferred(link(nodes[2], nodes[0]))  # a triangle: echoes would show
        tx = b.transfer(ALICE, CAROL.address, COIN, 0)
        nodes[1].node.submit_transaction(tx)
        yield defer.ensureDeferred(wait_until(lambda: all(tx.hash in n.node.mempool for n in nodes),
                                              "the transfer in every mempool"))
        # Announced by inventory: each link learns it once its INV leaves (2 s or 5 s batches).
        yield defer.ensureDeferred(wait_until(
            lambda: all(tx.hash in p.info.known_txs for n in nodes for p in n.node.peers.ready_peers()),
            "every link knowing the transfer"))
        requests = sum(p.info.messages_out["REQ"] for n in nodes for p in n.node.peers.ready_peers())
        self.assertEqual(requests, 2)  # fetched once by each node that lacked it: no echoes
        block = b.make_block(b.genesis, [tx])
        yield nodes[0].node.receive_block(block)
        yield defer.ensureDeferred(wait_until(lambda: all(n.chain.tip.hash == block.hash for n in nodes),
                                              "the block everywhere"))
        self.assertEqual([len(n.node.mempool) for n in nodes], [0, 0, 0])
        self.assertEqual({n.chain.account(CAROL.address) for n in nodes}, {(COIN, 0)})
