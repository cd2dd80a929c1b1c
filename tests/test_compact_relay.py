"""Compact block relay (BIP152-style) and transfer relay by inventory (INV/REQ/RES), on one
node with scripted peers (StringTransport, task.Clock)."""

from twisted.trial import unittest

from archivas.chain.block import Block
from archivas.node import HIGH_BANDWIDTH_PEERS, PARTIAL_TIMEOUT
from archivas.protocols import compact, txrelay, wire
from tests.common import ALICE, BOB, CAROL, builder
from tests.test_protocol import Harness, feed, handshake, sent


def inv(tx):
    return wire.inv_id(tx.hash)


REQUESTS = (wire.GetBlockTxn, wire.GetBlocks, wire.GetBlock, wire.GetCmpct)


def ready_peer(h, n, direction="outbound", capabilities=wire.CAPABILITIES):
    proto, transport = h.connect(direction, host=f"10.0.{n}.1")
    handshake(proto, node_id=bytes([n]) * 16, genesis=h.node.genesis_hash, capabilities=capabilities)
    sent(transport)
    return proto, transport


class CompactBlockTests(unittest.TestCase):
    def setUp(self):
        b = builder()
        self.base = b.extend(b.genesis, 2)
        self.txs = [b.transfer(ALICE, CAROL.address, 10 + i, i) for i in range(3)]
        self.block = b.make_block(self.base[-1], transactions=self.txs)
        self.h = Harness(self, self.base)
        self.peer, self.transport = ready_peer(self.h, 7)

    def gossip(self, txs):
        """The peer announces `txs` by INV, the node asks, the peer answers."""
        feed(self.peer, wire.Inv(tuple(inv(tx) for tx in txs)))
        asked = [m for m in sent(self.transport) if isinstance(m, wire.Req)]
        self.assertEqual([set(m.ids) for m in asked], [{inv(tx) for tx in txs}])
        feed(self.peer, wire.Res(tuple(txs)))
        for tx in txs:
            self.assertIn(tx.hash, self.h.node.mempool)

    def test_all_transfers_gossiped_first_no_round_trip(self):
        self.gossip(self.txs)
        feed(self.peer, compact.make_compact(self.block, 99))
        self.assertEqual(self.h.node.chain.tip.hash, self.block.hash)
        self.assertEqual([m for m in sent(self.transport) if isinstance(m, REQUESTS)], [])
        self.assertEqual(self.h.node.compact_stats["rebuilt"], 1)

    def test_unknown_transfers_cost_exactly_one_round_trip(self):
        self.gossip(self.txs[:1])
        feed(self.peer, compact.make_compact(self.block, 5))
        requests = [m for m in sent(self.transport) if isinstance(m, REQUESTS)]
        self.assertEqual(requests, [wire.GetBlockTxn(self.block.hash, (1, 2))])
        self.assertNotEqual(self.h.node.chain.tip.hash, self.block.hash)
        feed(self.peer, wire.BlockTxn(self.block.hash, tuple(self.txs[1:])))
        self.assertEqual(self.h.node.chain.tip.hash, self.block.hash)
        self.assertEqual([m for m in sent(self.transport) if isinstance(m, REQUESTS)], [])

    def test_prefilled_transfers_need_no_mempool(self):
        feed(self.peer, compact.make_compact(self.block, 5, prefill=range(3)))
        self.assertEqual(self.h.node.chain.tip.hash, self.block.hash)
        self.assertEqual([m for m in sent(self.transport) if isinstance(m, REQUESTS)], [])

    def test_a_lie_in_block_txn_fetches_the_block_whole(self):
        """Transfers that do not match the header's root: no block made of them; the block
        is fetched whole (and the real one taken)."""
        other = builder().transfer(BOB, CAROL.address, 77, 0)
        feed(self.peer, compact.make_compact(self.block, 5))
        sent(self.transport)
        feed(self.peer, wire.BlockTxn(self.block.hash, (self.txs[0], other, self.txs[2])))
        self.assertNotEqual(self.h.node.chain.tip.hash, self.block.hash)
        requests = [m for m in sent(self.transport) if isinstance(m, REQUESTS)]
        self.assertEqual(requests, [wire.GetBlocks(self.block.height, 1)])
        feed(self.peer, wire.Blocks(self.block.height, (self.block,), self.block.height, True))
        self.assertEqual(self.h.node.chain.tip.hash, self.block.hash)

    def test_wrong_count_in_block_txn_is_misbehaviour(self):
        feed(self.peer, compact.make_compact(self.block, 5))
        sent(self.transport)
        feed(self.peer, wire.BlockTxn(self.block.hash, (self.txs[1],)))
        self.assertGreater(self.peer.info.misbehaviour, 0)
        self.assertNotEqual(self.h.node.chain.tip.hash, self.block.hash)

    def test_unasked_block_txn_changes_nothing(self):
        other, other_transport = ready_peer(self.h, 8)
        feed(self.peer, compact.make_compact(self.block, 5))
        feed(other, wire.BlockTxn(self.block.hash, tuple(self.txs[1:])))  # not asked of it
        self.assertNotEqual(self.h.node.chain.tip.hash, self.block.hash)
        self.assertEqual(other.info.misbehaviour, 0)

    def test_a_short_id_collision_in_the_mempool_is_asked_for(self):
        """Two mempool transfers with one short id: neither is used; that slot is asked for."""
        partial = compact.rebuild(compact.make_compact(self.block, 5), [])
        self.assertEqual(partial.missing, (0, 1, 2))
        message = compact.make_compact(self.block, 5)
        forged = wire.CmpctBlock(message.header, message.nonce,
                                 (message.short_ids[0], message.short_ids[0], message.short_ids[2]))
        partial = compact.rebuild(forged, self.txs)
        self.assertEqual(partial.missing, (0, 1))  # the same id twice: not trusted for either slot

    def test_a_peer_that_never_sends_the_missing_transfers_delays_nothing(self):
        """A compact block whose sender never answers GET_BLOCK_TXN: another peer's
        compact block of it is rebuilt in parallel (up to MAX_PARTIAL_SOURCES), and the
        first complete one is taken."""
        staller = self.peer
        honest, honest_transport = ready_peer(self.h, 8)
        feed(staller, compact.make_compact(self.block, 5))
        self.assertEqual([type(m) for m in sent(self.transport) if isinstance(m, REQUESTS)], [wire.GetBlockTxn])
        feed(honest, compact.make_compact(self.block, 6))
        self.assertEqual([m for m in sent(honest_transport) if isinstance(m, REQUESTS)],
                         [wire.GetBlockTxn(self.block.hash, (0, 1, 2))])
        feed(honest, wire.BlockTxn(self.block.hash, tuple(self.txs)))
        self.assertEqual(self.h.node.chain.tip.hash, self.block.hash)
        self.assertEqual(self.h.node._partials, {})
        feed(staller, wire.BlockTxn(self.block.hash, tuple(self.txs)))  # too late: ignored
        self.assertEqual(staller.info.misbehaviour, 0)

    def test_rebuilds_of_one_block_are_bounded(self):
        from archivas.node import MAX_PARTIAL_SOURCES

        peers = [ready_peer(self.h, 20 + n) for n in range(MAX_PARTIAL_SOURCES + 1)]
        for n, (proto, _) in enumerate(peers):
            feed(proto, compact.make_compact(self.block, n))
        asked = [sum(1 for m in sent(t) if isinstance(m, wire.GetBlockTxn)) for _, t in peers]
        self.assertEqual(asked, [1] * MAX_PARTIAL_SOURCES + [0])
        self.assertEqual(len(self.h.node._partials[self.block.hash]), MAX_PARTIAL_SOURCES)

    def test_partial_blocks_are_bounded_and_time_out(self):
        feed(self.peer, compact.make_compact(self.block, 5))
        sent(self.transport)
        self.h.clock.advance(PARTIAL_TIMEOUT + 0.1)
        self.assertEqual([m for m in sent(self.transport) if isinstance(m, REQUESTS)],
                         [wire.GetBlocks(self.block.height, 1)])
        self.assertEqual(self.h.node._partials, {})

    def test_a_compact_block_on_an_unknown_parent_is_fetched_the_ordinary_way(self):
        b = builder()
        child = b.make_block(self.block)
        feed(self.peer, compact.make_compact(child, 5))
        requests = [m for m in sent(self.transport) if isinstance(m, REQUESTS)]
        self.assertEqual(len(requests), 1)
        self.assertIsInstance(requests[0], (wire.GetBlocks, wire.GetBlock))
        self.assertEqual(self.h.node._partials, {})


class HighBandwidthTests(unittest.TestCase):
    def setUp(self):
        b = builder()
        self.base = b.extend(b.genesis, 2)
        self.h = Harness(self, self.base)

    def test_outbound_compact_peers_are_asked_for_high_bandwidth_at_first(self):
        for n in range(HIGH_BANDWIDTH_PEERS + 1):
            proto, transport = self.h.connect("outbound", host=f"10.0.{n}.1")
            handshake(proto, node_id=bytes([n + 1]) * 16, genesis=self.h.node.genesis_hash)
            asked = [m for m in sent(transport) if isinstance(m, wire.SendCmpct)]
            self.assertEqual(asked, [wire.SendCmpct(True)] if n < HIGH_BANDWIDTH_PEERS else [])
        self.assertEqual(len(self.h.node.high_bandwidth), HIGH_BANDWIDTH_PEERS)

    def test_relay_compact_to_high_bandwidth_announce_to_others(self):
        fast, fast_transport = ready_peer(self.h, 1)
        slow, slow_transport = ready_peer(self.h, 2)
        old, old_transport = ready_peer(self.h, 3, capabilities=tuple(c for c in wire.CAPABILITIES if c != "cmpct"))
        feed(fast, wire.SendCmpct(True))
        block = builder().make_block(self.base[-1])
        self.h.node.receive_block(block)
        self.assertEqual([type(m) for m in sent(fast_transport) if not isinstance(m, wire.Inv)], [wire.CmpctBlock])
        self.assertEqual(sent(slow_transport), [wire.NewBlock(block.height, block.hash)])
        # PUSH_BLOCK is written from the block's stored bytes: the very line encode makes.
        self.assertEqual(old_transport.value(), wire.encode(wire.PushBlock(block)) + b"\n")
        self.assertEqual([type(m) for m in sent(old_transport)], [wire.PushBlock])
        feed(slow, wire.GetCmpct(block.hash))
        reply = sent(slow_transport)
        self.assertEqual(len(reply), 1)
        self.assertEqual(reply[0].header.hash, block.hash)

    def test_an_announcement_from_a_compact_peer_is_asked_as_compact_once(self):
        a, a_transport = ready_peer(self.h, 1)
        b_, b_transport = ready_peer(self.h, 2)
        block = builder().make_block(self.base[-1])
        feed(a, wire.NewBlock(block.height, block.hash))
        feed(b_, wire.NewBlock(block.height, block.hash))
        self.assertEqual(sent(a_transport), [wire.GetCmpct(block.hash)])
        self.assertEqual(sent(b_transport), [])  # already asked of a

    def test_the_peer_that_delivers_first_becomes_high_bandwidth(self):
        peers = [ready_peer(self.h, n) for n in range(1, 5)]
        parent = self.base[-1]
        for n, (proto, _) in enumerate(peers):
            block = builder().make_block(parent)
            feed(proto, compact.make_compact(block, n))
            self.assertEqual(self.h.node.chain.tip.hash, block.hash)
            parent = block
        self.assertEqual(self.h.node.high_bandwidth, [p for p, _ in reversed(peers[1:])])
        first_transport = peers[0][1]
        self.assertIn(wire.SendCmpct(False), sent(first_transport))


class InventoryTests(unittest.TestCase):
    def setUp(self):
        b = builder()
        self.base = b.extend(b.genesis, 2)
        self.h = Harness(self, self.base)
        self.tx = b.transfer(ALICE, CAROL.address, 10, 0)

    def test_admitted_transfers_are_announced_in_batches_not_pushed(self):
        inv_peer, inv_transport = ready_peer(self.h, 1, direction="inbound")
        old, old_transport = ready_peer(self.h, 2, capabilities=tuple(c for c in wire.CAPABILITIES if c != "inv"))
        second = builder().transfer(ALICE, CAROL.address, 11, 1)
        self.h.node.submit_transaction(self.tx)
        self.h.node.submit_transaction(second)
        self.assertEqual(sent(inv_transport), [])
        self.assertEqual([type(m) for m in sent(old_transport)], [wire.NewTransaction, wire.NewTransaction])
        self.h.clock.advance(txrelay.TICK)
        self.assertEqual(sent(inv_transport), [wire.Inv((inv(self.tx), inv(second)))])
        third = builder().transfer(ALICE, CAROL.address, 12, 2)
        fourth = builder().transfer(ALICE, CAROL.address, 13, 3)
        self.h.node.submit_transaction(third)
        self.h.node.submit_transaction(fourth)
        feed(inv_peer, wire.Inv((inv(third),)))  # it announced one meanwhile: not announced back
        sent(inv_transport)
        self.h.clock.advance(txrelay.TICK)
        self.assertEqual(sent(inv_transport), [])  # an inbound peer's INVs are 5 s apart
        self.h.clock.advance(txrelay.INBOUND_INTERVAL)
        self.assertEqual(sent(inv_transport), [wire.Inv((inv(fourth),))])
        feed(inv_peer, wire.Req((inv(second), b"\x00" * 16)))
        self.assertEqual(sent(inv_transport), [wire.Res((second,))])

    def test_an_announcer_that_never_answers_is_passed_over(self):
        silent, silent_transport = ready_peer(self.h, 1)
        honest, honest_transport = ready_peer(self.h, 2)
        feed(silent, wire.Inv((inv(self.tx),)))
        feed(honest, wire.Inv((inv(self.tx),)))
        self.assertEqual(sent(silent_transport), [wire.Req((inv(self.tx),))])
        self.assertEqual(sent(honest_transport), [])  # one at a time
        self.h.clock.advance(txrelay.REQUEST_TIMEOUT + 1)
        self.assertEqual(sent(honest_transport), [wire.Req((inv(self.tx),))])
        feed(honest, wire.Res((self.tx,)))
        self.assertIn(self.tx.hash, self.h.node.mempool)

    def test_an_inbound_announcer_is_asked_only_after_outbound_ones_had_their_chance(self):
        inbound, inbound_transport = ready_peer(self.h, 1, direction="inbound")
        outbound, outbound_transport = ready_peer(self.h, 2)
        feed(inbound, wire.Inv((inv(self.tx),)))
        self.assertEqual(sent(inbound_transport), [])  # not yet: an outbound peer may announce it
        self.h.clock.advance(1)
        feed(outbound, wire.Inv((inv(self.tx),)))
        self.assertEqual(sent(outbound_transport), [wire.Req((inv(self.tx),))])
        feed(outbound, wire.Res((self.tx,)))
        self.assertIn(self.tx.hash, self.h.node.mempool)
        self.h.clock.advance(txrelay.NONPREFERRED_DELAY)
        self.assertEqual(sent(inbound_transport), [])  # asked of the outbound one already
        other = builder().transfer(ALICE, CAROL.address, 11, 1)
        feed(inbound, wire.Inv((inv(other),)))  # only inbound peers have this one
        self.h.clock.advance(txrelay.NONPREFERRED_DELAY + 1)
        self.assertEqual(sent(inbound_transport), [wire.Req((inv(other),))])

    def test_an_answer_without_the_transfer_goes_to_the_next_announcer_at_once(self):
        liar, liar_transport = ready_peer(self.h, 1)
        honest, honest_transport = ready_peer(self.h, 2)
        feed(liar, wire.Inv((inv(self.tx),)))
        feed(honest, wire.Inv((inv(self.tx),)))
        feed(liar, wire.Res(()))
        self.assertEqual(sent(honest_transport), [wire.Req((inv(self.tx),))])

    def test_unasked_transfers_are_not_admitted(self):
        peer, _ = ready_peer(self.h, 1)
        feed(peer, wire.Res((self.tx,)))
        self.assertNotIn(self.tx.hash, self.h.node.mempool)

    def test_known_transfers_are_not_asked_for(self):
        self.h.node.submit_transaction(self.tx)
        peer, transport = ready_peer(self.h, 1)
        feed(peer, wire.Inv((inv(self.tx),)))
        self.assertEqual([m for m in sent(transport) if isinstance(m, wire.Req)], [])

    def test_a_lost_peer_hands_its_asks_to_the_next_announcer(self):
        first, _ = ready_peer(self.h, 1)
        second, second_transport = ready_peer(self.h, 2)
        feed(first, wire.Inv((inv(self.tx),)))
        feed(second, wire.Inv((inv(self.tx),)))
        first.disconnect("test")
        first.connectionLost(None)
        self.assertEqual(sent(second_transport), [wire.Req((inv(self.tx),))])

    def test_bounds(self):
        relay = txrelay.TxRelay(self.h.clock, lambda p, m: None, lambda i: False)
        relay.announce(b"x" * 16, ["p"] * 1)
        for i in range(txrelay.MAX_QUEUED_PER_PEER + 10):
            relay.announce(i.to_bytes(16, "big"), ["p"])
        self.assertEqual(len(relay._queues["p"]), txrelay.MAX_QUEUED_PER_PEER)
        relay.inv_received("q", [i.to_bytes(16, "big") for i in range(txrelay.MAX_IN_FLIGHT_PER_PEER + 5)])
        self.assertEqual(relay.asked_of("q"), txrelay.MAX_IN_FLIGHT_PER_PEER)
        for start in range(0, txrelay.MAX_TRACKED + 100, 1000):
            relay.inv_received("r", [(start + i).to_bytes(16, "big") for i in range(1000)])
        self.assertLessEqual(relay.tracked(), txrelay.MAX_TRACKED)


class WireTests(unittest.TestCase):
    def test_packed_ids_are_checked(self):
        for payload in ({"txs": "not base64!"}, {"txs": "AAAA"}, {"txs": ""}, {"txs": 5}):
            with self.assertRaises(wire.WireError):
                wire.decode(b'{"type":9,"payload":%s}' % repr(payload).replace("'", '"').encode())
        too_many = wire.encode(wire.Inv(tuple(i.to_bytes(16, "big") for i in range(wire.MAX_INV + 1))))
        with self.assertRaises(wire.WireError):
            wire.decode(too_many)

    def test_compact_block_shape(self):
        block = builder().make_block(builder().genesis, transactions=[builder().transfer(ALICE, BOB.address, 5, 0)])
        line = wire.encode(compact.make_compact(block, 3))
        self.assertLess(len(line), len(block.encode()))
        message = wire.decode(line)
        self.assertEqual(compact.rebuild(message, block.transactions).block(), Block(block.header, block.transactions))


class StoredBytesTests(unittest.TestCase):
    """Blocks are served from the bytes they are stored as: the very lines encode writes."""

    def test_lines_equal_encoded_messages(self):
        b = builder()
        blocks = b.extend(b.genesis, 2)
        raws = [blk.encode() for blk in blocks]
        self.assertEqual(wire.block_data_line(1, raws[0]).line, wire.encode(wire.BlockData(1, blocks[0])))
        for eof in (True, False):
            self.assertEqual(wire.blocks_line(1, raws, 2, eof).line,
                             wire.encode(wire.Blocks(1, tuple(blocks), 2, eof)))
        self.assertEqual(wire.blocks_line(5, [], 2, False).line, wire.encode(wire.Blocks(5, (), 2, False)))
        self.assertEqual(wire.push_block_line(raws[1]).line, wire.encode(wire.PushBlock(blocks[1])))

    def test_a_node_serves_what_it_stored_without_decoding(self):
        b = builder()
        blocks = b.extend(b.genesis, 3)
        h = Harness(self, blocks)
        peer, transport = ready_peer(h, 9)
        h.node.chain.storage.block = None  # decoding a stored block would fail now
        feed(peer, wire.GetBlocks(1, 3))
        self.assertEqual(sent(transport), [wire.Blocks(1, tuple(blocks), 3, True)])
        feed(peer, wire.GetBlock(2))
        self.assertEqual(sent(transport), [wire.BlockData(2, blocks[1])])


class ServingBoundsTests(unittest.TestCase):
    def test_compact_requests_are_answered_near_the_tip_only(self):
        from archivas.node import COMPACT_SERVE_DEPTH

        b = builder()
        blocks = b.extend(b.genesis, COMPACT_SERVE_DEPTH + 3)
        h = Harness(self, blocks)
        peer, transport = ready_peer(h, 9)
        feed(peer, wire.GetCmpct(blocks[0].hash))  # 12 below the tip: not served compactly
        feed(peer, wire.GetBlockTxn(blocks[0].hash, (0,)))
        self.assertEqual(sent(transport), [])
        feed(peer, wire.GetCmpct(blocks[-1].hash))
        reply = sent(transport)
        self.assertEqual([m.header.hash for m in reply], [blocks[-1].hash])
        h.node.chain.storage.block = None  # asked again: served from the recent blocks, not decoded
        feed(peer, wire.GetCmpct(blocks[-1].hash))
        self.assertEqual(len(sent(transport)), 1)

    def test_a_junk_compact_header_costs_its_sender_before_any_rebuild(self):
        import dataclasses

        b = builder()
        base = b.extend(b.genesis, 2)
        block = b.make_block(base[-1])
        h = Harness(self, base)
        peer, transport = ready_peer(h, 9)
        forged = dataclasses.replace(block.header, farmer_signature=b"\x01" * 64)
        calls = []
        original = compact.rebuild
        compact.rebuild = lambda *a: calls.append(a) or original(*a)
        self.addCleanup(setattr, compact, "rebuild", original)
        feed(peer, wire.CmpctBlock(forged, 1, ()))
        self.assertEqual(calls, [])
        self.assertGreater(peer.info.misbehaviour, 0)
        self.assertEqual(sent(transport), [])


class VdfOrderTests(unittest.TestCase):
    def test_segments_ahead_of_their_turn_are_held_and_taken_in_order(self):
        """Segments 3, 2 then 1 (a burst relayed faster than each is checked): all three
        are taken, in order, and the block that carries them checks none again."""
        from archivas.chain.block import child_discriminant_seed, child_origin

        b = builder()
        base = b.extend(b.genesis, 2)
        h = Harness(self, base)
        peer, _ = ready_peer(h, 9)
        seed = child_discriminant_seed(base[-1].header, h.node.params)
        origin = child_origin(base[-1].header, h.node.params)
        segments, start = [], origin
        for _ in range(3):
            segments.append(b._segment(seed, start, h.node.vdf_iterations))
            start = segments[-1].output
        for index in (3, 2, 1):
            feed(peer, wire.VdfOutput(base[-1].hash, index, segments[index - 1]))
        self.assertEqual(h.node.vdf_segments, segments)
        self.assertEqual(peer.info.misbehaviour, 0)
        for i, segment in enumerate(segments):
            previous = origin if i == 0 else segments[i - 1].output
            self.assertIn((seed, previous, segment, h.node.params.discriminant_bits, h.node.vdf_iterations),
                          h.node.verified_segments)


class LiarTests(unittest.TestCase):
    def test_a_peer_claiming_a_far_higher_tip_does_not_stop_relay_of_new_blocks(self):
        """A liar's STATUS starts a sync round toward it; a new block (made just now) that
        arrives meanwhile is still relayed: its age, not anyone's claim, says it is news."""
        b = builder()
        base = b.extend(b.genesis, 2)
        h = Harness(self, base)
        liar, _ = ready_peer(h, 1)
        honest, _ = ready_peer(h, 2)
        watcher, watcher_transport = ready_peer(h, 3)
        feed(liar, wire.Status(base[-1].height + 1000, 1, b"\x05" * 32, weight=10**9,
                               genesis_hash=h.node.genesis_hash, network="fastnet", version=wire.PROTOCOL_VERSION,
                               capabilities=wire.CAPABILITIES))
        self.assertTrue(h.node.sync.active)
        block = b.make_block(base[-1], timestamp=int(h.clock.seconds() * 1000))
        sent(watcher_transport)
        feed(honest, wire.PushBlock(block))
        self.assertEqual(h.node.chain.tip.hash, block.hash)
        relayed = [m for m in sent(watcher_transport) if isinstance(m, (wire.NewBlock, wire.CmpctBlock))]
        self.assertEqual(len(relayed), 1)

    def test_segments_too_far_ahead_are_not_held(self):
        from archivas.chain import vdf
        from archivas.node import MAX_VDF_AHEAD

        b = builder()
        base = b.extend(b.genesis, 2)
        h = Harness(self, base)
        peer, _ = ready_peer(h, 9)
        segment = vdf.Segment(b"\x08" + b"\x00" * 99, b"\x00" * 100)
        for index in (2, MAX_VDF_AHEAD, MAX_VDF_AHEAD + 1, MAX_VDF_AHEAD + 5):
            feed(peer, wire.VdfOutput(base[-1].hash, index, segment))
        self.assertEqual(sorted(h.node._vdf_ahead), [2, MAX_VDF_AHEAD])


class HeaderCacheTests(unittest.TestCase):
    def test_recent_headers_are_kept_within_their_bounds(self):
        from archivas.chain import blockchain

        b = builder()
        blocks = b.extend(b.genesis, 6)
        h = Harness(self, blocks)
        chain = h.node.chain
        chain._headers.clear()
        chain._header_bytes = 0
        self.addCleanup(setattr, blockchain, "HEADER_CACHE", blockchain.HEADER_CACHE)
        blockchain.HEADER_CACHE = 3
        for block in blocks:
            self.assertEqual(chain.header(block.hash), block.header)
        self.assertEqual(list(chain._headers), [blk.hash for blk in blocks[-3:]])
        blockchain.HEADER_CACHE = 100
        self.addCleanup(setattr, blockchain, "HEADER_CACHE_BYTES", blockchain.HEADER_CACHE_BYTES)
        blockchain.HEADER_CACHE_BYTES = 2 * blockchain._header_bytes(blocks[0].header)
        for block in blocks:
            chain.header(block.hash)
        self.assertLessEqual(chain._header_bytes, blockchain.HEADER_CACHE_BYTES)
        self.assertEqual(chain._header_bytes, sum(blockchain._header_bytes(x) for x in chain._headers.values()))
        self.assertIsNone(chain.header(b"\x00" * 32))
