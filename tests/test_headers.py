"""Headers-first pieces on their own: the header run (context, weight, presync records),
header replies sized in bytes, and cheap header refusals before costly ones."""

from __future__ import annotations

import dataclasses

from twisted.trial import unittest

from archivas import node as node_module
from archivas.chain.block import genesis_block
from archivas.chain.consensus import BlockRejected, check_header
from archivas.chain.headerchain import RECORD, HeaderMismatch, HeaderRun, Point
from archivas.node import MAX_HEADERS_REPLY_BYTES
from archivas.protocols import wire
from archivas.protocols.peer import MAX_LINE_BYTES
from tests.common import PARAMS, counted_rows, fixture_blocks, weight_of
from tests.test_protocol import Harness, feed, handshake, sent


def run_from_genesis(threshold: int, window: int) -> HeaderRun:
    genesis = genesis_block(PARAMS)
    fork = Point(genesis.hash, 0, weight_of([genesis]), genesis.header)
    return HeaderRun(PARAMS, fork, [genesis.header], threshold, window_headers=window)


def scored(run: HeaderRun, headers) -> None:
    assert run.check_context(headers, 2**62) == len(headers)
    for header in headers:
        run.add_checked(header, header.height)  # a stand-in score


class HeaderRunTests(unittest.TestCase):
    def setUp(self):
        self.headers = [b.header for b in fixture_blocks(60)]

    def test_weight_is_proven_only_by_headers(self):
        thirty = weight_of([genesis_block(PARAMS)] + self.headers[:30])
        run = run_from_genesis(threshold=thirty, window=100)
        scored(run, self.headers[:29])
        self.assertFalse(run.proven)
        scored(run, self.headers[29:30])
        self.assertTrue(run.proven)
        self.assertEqual(run.last.weight, thirty)

    def test_context_rules_refuse_a_header_that_does_not_follow(self):
        run = run_from_genesis(threshold=2, window=100)
        scored(run, self.headers[:5])
        wrong_difficulty = dataclasses.replace(self.headers[5], difficulty=7)
        with self.assertRaises(BlockRejected) as cm:
            run.check_context([wrong_difficulty], 2**62)
        self.assertEqual(cm.exception.reason, "bad_difficulty")
        # some that pass, then one that does not: the passing count
        self.assertEqual(run.check_context(list(self.headers[5:8]) + [wrong_difficulty], 2**62), 3)
        with self.assertRaises(BlockRejected):
            run.check_context([self.headers[9]], 2**62)  # skips a height
        future = run.check_context  # a header too far ahead of the clock
        with self.assertRaises(BlockRejected) as cm:
            future([self.headers[5]], self.headers[5].timestamp - PARAMS.max_future_ms - 1)
        self.assertEqual(cm.exception.reason, "timestamp_in_future")

    def test_presync_past_the_window_keeps_records_and_takes_them_back(self):
        run = run_from_genesis(threshold=weight_of([genesis_block(PARAMS)] + self.headers[:50]), window=10)
        scored(run, self.headers[:40])
        self.assertEqual(len(run.window), 10)
        self.assertTrue(run.compact and not run.proven)
        self.assertEqual(run.record_bytes, 30 * RECORD)  # 48 bytes a header let go
        self.assertEqual(run.fetch_after().height, 40)  # go on proving
        scored(run, self.headers[40:50])
        self.assertTrue(run.proven)
        self.assertEqual(run.fetch_after().height, 10)  # now fetch what was let go
        run.stored(10)  # the window's bodies went in
        tampered = dataclasses.replace(self.headers[10], farmer_signature=b"\x00" * 64)
        with self.assertRaises(HeaderMismatch):
            run.is_known(tampered)  # another signature: not what it sent before
        with self.assertRaises(HeaderMismatch):
            run.is_known(self.headers[11])  # not the next one
        for header in self.headers[10:20]:
            self.assertTrue(run.is_known(header))
            entry = run.add_known(header)
            self.assertEqual(entry.score, header.height)  # the score recorded, proofs not checked again
        self.assertEqual(run.end.height, 20)
        self.assertEqual(run.entry(20).weight, weight_of([genesis_block(PARAMS)] + self.headers[:20]))
        self.assertFalse(run.is_known(self.headers[50]))  # past the last checked: a new header


class CheapestFirstTests(unittest.TestCase):
    def test_a_forged_signature_is_refused_before_the_proofs_are_checked(self):
        from archivas.chain import vdf

        blocks = fixture_blocks(2)
        forged = dataclasses.replace(blocks[1].header, farmer_signature=b"\x01" * 64)
        calls = []
        real = vdf.verify_chain
        self.patch(vdf, "verify_chain", lambda *a: calls.append(a) or real(*a))
        with self.assertRaises(BlockRejected) as cm:
            check_header(forged, blocks[0].header, PARAMS)
        self.assertEqual(cm.exception.reason, "bad_farmer_signature")
        self.assertEqual(calls, [])
        self.assertIsInstance(check_header(blocks[1].header, blocks[0].header, PARAMS), int)
        self.assertEqual(len(calls), 1)


class ReplySizeTests(unittest.TestCase):
    def test_a_headers_reply_is_sized_in_bytes(self):
        blocks = fixture_blocks(1200)
        h = Harness(self)
        for block in blocks:  # the shipped chain, trusted: its proofs are not what is tested here
            h.node.chain.add_block(block, 2**62, score=0)
        proto, transport = h.connect()
        handshake(proto, genesis=h.node.genesis_hash)
        transport.clear()
        storage, read = h.node.chain.storage, []
        self.patch(storage, "main_block_prefixes", counted_rows(storage.main_block_prefixes, read))
        feed(proto, wire.GetHeaders((h.node.genesis_hash,), wire.MAX_HEADERS))
        line = transport.value().strip()
        reply = wire.decode(line)
        self.assertIsInstance(reply, wire.Headers)
        self.assertLess(len(reply.headers), 1200)  # 1,200 fastnet headers are over 1 MiB
        self.assertEqual(len(read), len(reply.headers) + 1)  # the blocks read stop at the byte limit
        self.assertGreater(len(reply.headers), 500)
        self.assertLessEqual(len(line), MAX_HEADERS_REPLY_BYTES + 64 * 1024)
        self.assertLess(len(line), MAX_LINE_BYTES)
        self.assertEqual([x.height for x in reply.headers], list(range(1, len(reply.headers) + 1)))
        self.assertEqual((reply.tip_height, reply.tip_weight), (1200, h.node.chain.tip.weight))
        # a locator of another chain's blocks only: nothing
        transport.clear()
        feed(proto, wire.GetHeaders((b"\x05" * 32,), 10))
        self.assertEqual(wire.decode(transport.value().strip()).headers, ())


    def test_headers_are_served_from_block_prefixes_and_whole_blocks_alike(self):
        """The reply is cut from the first HEADER_PREFIX_BYTES of each stored block; a header
        longer than that comes from the whole block. Either way it is the stored header,
        byte for byte, in height order from the locator's block on."""
        blocks = fixture_blocks(40)
        h = Harness(self)
        for block in blocks:
            h.node.chain.add_block(block, 2**62, score=0)
        expected = [wire.split_stored_block(block.encode())[0] for block in blocks[10:30]]
        lengths = sorted(len(x) for x in expected)
        replies = []
        proto, transport = h.connect()
        handshake(proto, genesis=h.node.genesis_hash)
        # every header in the prefix; the prefix cutting through some headers; through all
        for prefix in (node_module.HEADER_PREFIX_BYTES, lengths[len(lengths) // 2] + len(b'{"header":'), 64):
            self.patch(node_module, "HEADER_PREFIX_BYTES", prefix)
            transport.clear()
            feed(proto, wire.GetHeaders((blocks[9].hash, h.node.genesis_hash), 20))
            line = transport.value().strip()
            self.assertEqual(line, wire.headers_line(expected, 40, h.node.chain.tip.weight).line)
            replies.append(wire.decode(line))
        self.assertEqual([x.height for x in replies[0].headers], list(range(11, 31)))
        self.assertEqual(replies[0].headers[0], blocks[10].header)

    def test_a_prefix_that_ends_inside_the_header_gives_none(self):
        raw = fixture_blocks(2)[1].encode()
        header, _ = wire.split_stored_block(raw)
        self.assertIsNone(wire.stored_header(raw[:len(header)]))
        self.assertEqual(wire.stored_header(raw[:len(header) + 40]), header)
        with self.assertRaises(ValueError):
            wire.stored_header(b'{"transactions":[]}')


class VerifyQueueTests(unittest.TestCase):
    def test_a_block_that_extends_the_tip_waits_behind_few_background_checks(self):
        """Sync's checks enter the thread pool's queue at most two per verify thread at a
        time; a block from a peer is queued at once, ahead of the rest of a sync batch."""
        h = Harness(self)
        node = h.node
        queued = []

        class Pool:
            def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
                queued.append((f, args, onResult))

            def stop(self):
                pass

        node.threaded, node.threadpool = True, Pool()
        h.clock.callFromThread = lambda f, *args, **kwargs: f(*args, **kwargs)  # the "thread" answers at once
        background = [node._in_thread(lambda i=i: i, background="headers") for i in range(10)]
        urgent = node._in_thread(lambda: "tip")
        self.assertEqual(len(queued), 4 + 1)  # two background checks a thread, then the urgent one
        self.assertEqual(queued[-1][0](), "tip")
        for f, args, on_result in list(queued[:2]):
            on_result(True, f(*args))  # two finish: two more background checks may enter
        self.assertEqual(len(queued), 7)
        results = []
        urgent.addCallback(results.append)
        queued[4][2](True, queued[4][0]())
        self.assertEqual(results, ["tip"])
        for d in background:
            d.addErrback(lambda f: None)


class StallTests(unittest.TestCase):
    def test_a_body_request_that_holds_up_the_window_is_asked_of_another_peer(self):
        """A second peer on the same chain takes body requests and never answers: past
        STALL_SECONDS the front of the window is asked of the target instead, long before
        the staller's request would time out, and the staller leaves the round."""
        from archivas.protocols import headersfirst
        from tests.test_sync import ScriptedPeer

        blocks = fixture_blocks(200)
        rounds = []
        real = headersfirst.HeadersFirstRound.go

        async def go(round_):
            rounds.append(round_)
            return await real(round_)

        self.patch(headersfirst.HeadersFirstRound, "go", go)
        h = Harness(self)
        target = ScriptedPeer(h, "10.0.0.1", blocks, b"\x01" * 16, weight=10**6)
        staller = ScriptedPeer(h, "10.0.0.2", blocks, b"\x02" * 16, weight=10**6)
        start = h.clock.seconds()
        while h.node.chain.height < 200 and h.clock.seconds() - start < 30:
            target.answer()
            for message in sent(staller.transport):
                if isinstance(message, wire.GetHeaders):  # answers headers, holds bodies
                    feed(staller.proto, wire.Headers(staller.headers_after(message.locator, message.count),
                                                     200, 10**6))
            h.clock.advance(0.25)
        self.assertEqual(h.node.chain.tip.hash, blocks[-1].hash)
        self.assertGreaterEqual(sum(r.stalls for r in rounds), 1)
        self.assertLess(h.clock.seconds() - start, 10)
        self.assertEqual(staller.proto.info.misbehaviour, 0)  # slowness costs no score
