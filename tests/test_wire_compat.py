"""The original Go implementation as a seed peer, and the gate on extensions.

`fixtures/go_seed_lines.jsonl` holds lines the original project's p2p package (first
commit, built unchanged with Debian's Go 1.19) wrote: every hash a `[32]byte`, which Go's
JSON writes as 32 integers. Its later releases' types 0 and 8-14 are built here from its
`p2p/protocol.go` structs, field for field, as its encoder writes them.
"""

import json
import os
import time

from twisted.trial import unittest

from archivas.chain.vdf import Segment
from archivas.protocols import compact, wire
from archivas.protocols import peer as peer_module
from archivas.protocols.peer import PeerState
from tests.common import ALICE, CAROL, builder
from tests.test_protocol import Harness, feed, handshake, hello, sent

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "go_seed_lines.jsonl")


def go_lines() -> dict[str, bytes]:
    with open(FIXTURES) as f:
        return {doc["name"]: doc["line"].encode() for doc in map(json.loads, f)}


def go_array(value: bytes) -> str:
    return json.dumps(list(value), separators=(",", ":"))


def go_status(height: int, difficulty: int, tip: bytes) -> bytes:
    return b'{"type":7,"payload":{"height":%d,"difficulty":%d,"tipHash":%s}}' % (
        height, difficulty, go_array(tip).encode())


def go_new_block(height: int, block_hash: bytes) -> bytes:
    return b'{"type":3,"payload":{"height":%d,"hash":%s}}' % (height, go_array(block_hash).encode())


def go_block_data(height: int, block) -> bytes:
    # Go embeds blockData as json.RawMessage: the block's JSON as its handler returned it.
    return b'{"type":5,"payload":{"height":%d,"blockData":%s}}' % (height, block.encode())


def go_later_types() -> dict[int, bytes]:
    """One line of each of the original's later types (p2p/protocol.go, newest)."""
    genesis = go_array(bytes(range(32)))
    return {
        0: ('{"type":0,"payload":{"genesisHash":%s,"chainID":"archivas-betanet-1","networkID":102,'
            '"protocolVersion":2,"networkIDLegacy":"archivas-devnet-v4","protocolVersionStr":"1.1.1",'
            '"difficultyParamsID":"v1","nodeVersion":"v1.2.0","nodeName":"seed1"}}' % genesis).encode(),
        8: b'{"type":8,"payload":{"addrs":["10.9.8.7:9090","10.9.8.6:9090"],"seenAt":1764000000,'
           b'"netId":"archivas-devnet-v4"}}',
        9: b'{"type":9,"payload":{"type":"block","hashes":["' + b"ab" * 32 + b'"]}}',
        10: b'{"type":10,"payload":{"type":"tx","hashes":["' + b"cd" * 32 + b'"]}}',
        11: b'{"type":11,"payload":{"type":"tx","data":{"from":"arcv1xyz","amount":5}}}',
        12: b'{"type":12,"payload":{"txHash":"' + b"ef" * 32 + b'","txData":{"from":"arcv1xyz","to":"arcv1abc",'
            b'"amount":1000,"fee":100,"nonce":0}}}',
        13: b'{"type":13,"payload":{"fromHeight":1,"maxBlocks":512}}',
        14: b'{"type":14,"payload":{"fromHeight":1,"count":0,"blocks":[],"tipHeight":100,"eof":false}}',
    }


def raw_sent(transport) -> list[dict]:
    lines = [line for line in transport.value().split(b"\n") if line]
    transport.clear()
    return [json.loads(line) for line in lines]


class GoSeedPeerTests(unittest.TestCase):
    def setUp(self):
        b = builder()
        self.blocks = b.extend(b.genesis, 4)
        self.h = Harness(self, self.blocks[:2])

    def go_peer(self, direction="inbound", host="10.1.1.1"):
        proto, transport = self.h.connect(direction, host)
        return proto, transport

    def test_fixture_status_and_new_block_parse(self):
        lines = go_lines()
        status = wire.decode(lines["STATUS"])
        self.assertEqual((status.height, status.difficulty, status.tip_hash), (5, 3, bytes(range(32))))
        self.assertEqual(status.hash_style, wire.ARRAY)
        announce = wire.decode(lines["NEW_BLOCK"])
        self.assertEqual((announce.height, announce.hash), (6, bytes(range(32, 64))))
        self.assertIsInstance(wire.decode(lines["GET_STATUS"]), wire.GetStatus)
        self.assertIsInstance(wire.decode(lines["PONG"]), wire.Pong)  # its own clock, an integer

    def test_go_status_makes_it_ready_and_it_is_answered_in_arrays(self):
        for direction in ("inbound", "outbound"):
            proto, transport = self.go_peer(direction, host=f"10.1.1.{2 if direction == 'inbound' else 3}")
            self.assertEqual(raw_sent(transport), [{"type": 6, "payload": {}}])  # GET_STATUS at once
            proto.dataReceived(go_status(2, self.blocks[1].header.difficulty, self.blocks[1].hash) + b"\n")
            self.assertIs(proto.info.state, PeerState.READY, direction)
            proto.dataReceived(go_lines()["GET_STATUS"] + b"\n")
            (status,) = raw_sent(transport)
            self.assertEqual(status["type"], 7)
            self.assertEqual(status["payload"]["tipHash"], list(self.blocks[1].hash))
            self.assertEqual(proto.info.misbehaviour, 0)

    def test_hex_seed_peer_still_gets_hex(self):
        proto, transport = self.go_peer()
        feed(proto, wire.Status(2, 1, self.blocks[1].hash))
        feed(proto, wire.GetStatus())
        (status,) = [m for m in raw_sent(transport) if m["type"] == 7]
        self.assertEqual(status["payload"]["tipHash"], self.blocks[1].hash.hex())

    def test_new_blocks_are_announced_to_it_in_arrays(self):
        proto, transport = self.go_peer()
        proto.dataReceived(go_status(2, 1, self.blocks[1].hash) + b"\n")
        raw_sent(transport)
        self.h.node.receive_block(self.blocks[2])
        (announce,) = raw_sent(transport)
        self.assertEqual(announce, {"type": 3, "payload": {"height": 3, "hash": list(self.blocks[2].hash)}})

    def test_its_new_block_is_fetched_and_its_chain_synced(self):
        """It announces (arrays), the node asks GET_BLOCK, it answers BLOCK_DATA: the node
        follows it to its tip, and it is never penalised."""
        proto, transport = self.go_peer()
        proto.dataReceived(go_status(2, 1, self.blocks[1].hash) + b"\n")
        raw_sent(transport)
        proto.dataReceived(go_new_block(4, self.blocks[3].hash) + b"\n")
        for _ in range(20):  # the peer answers every GET_BLOCK from its chain
            requests = [m for m in raw_sent(transport) if m["type"] == 4]
            if not requests:
                break
            for request in requests:
                height = request["payload"]["height"]
                proto.dataReceived(go_block_data(height, self.blocks[height - 1]) + b"\n")
        self.assertEqual(self.h.node.chain.tip.hash, self.blocks[3].hash)
        self.assertEqual(proto.info.misbehaviour, 0)

    def test_sync_from_a_go_peer_ahead(self):
        """A Go STATUS far ahead starts a sync that walks back over GET_BLOCK."""
        b = builder()
        chain = self.blocks + b.extend(self.blocks[-1], 36)
        proto, transport = self.go_peer()
        proto.dataReceived(go_status(len(chain), 1, chain[-1].hash) + b"\n")
        for _ in range(200):
            self.h.clock.advance(0)  # (the import yields to the reactor between blocks)
            requests = [m for m in raw_sent(transport) if m["type"] == 4]
            if not requests:
                break
            for request in requests:
                height = request["payload"]["height"]
                if 1 <= height <= len(chain):
                    proto.dataReceived(go_block_data(height, chain[height - 1]) + b"\n")
        self.assertEqual(self.h.node.chain.tip.hash, chain[-1].hash)
        self.assertEqual(proto.info.misbehaviour, 0)

    def test_its_later_types_cost_it_nothing(self):
        proto, transport = self.go_peer()
        proto.dataReceived(go_status(2, 1, self.blocks[1].hash) + b"\n")
        raw_sent(transport)
        before = (self.h.node.chain.tip, len(self.h.node.mempool))
        for kind, line in go_later_types().items():
            with self.subTest(kind=kind):
                proto.dataReceived(line + b"\n")
                self.assertEqual(proto.info.misbehaviour, 0)
                self.assertFalse(transport.disconnecting)
                self.assertEqual(raw_sent(transport), [])
        self.assertEqual((self.h.node.chain.tip, len(self.h.node.mempool)), before)
        self.assertEqual(self.h.node.peers.dialers, {})
        self.assertEqual(sum(self.h.node.peers.dropped_counts.values()), 8)
        # PING after all that: still answered.
        proto.dataReceived(b'{"type":1,"payload":{"timestamp":1764000000}}\n')
        self.assertEqual(raw_sent(transport), [{"type": 2, "payload": {"timestamp": 1764000000}}])


class GateTests(unittest.TestCase):
    """Every extension type, before the handshake and after it without the capability,
    changes nothing: tip, mempool, peers dialed, bytes written back."""

    def setUp(self):
        b = builder()
        self.blocks = b.extend(b.genesis, 3)
        self.h = Harness(self, self.blocks[:2])
        tx = b.transfer(ALICE, CAROL.address, 5, 0)
        self.extensions = {
            wire.Peers: wire.Peers(("10.7.7.7:9090", "10.7.7.8:9090")),
            wire.NewTransaction: wire.NewTransaction(tx),
            wire.GetBlocks: wire.GetBlocks(1, 2),
            wire.Blocks: wire.Blocks(3, (self.blocks[2],)),
            wire.Hello: hello(genesis=self.h.node.genesis_hash),
            wire.VdfOutput: wire.VdfOutput(self.blocks[1].hash, 1, Segment(b"\x08" + b"\x00" * 99, b"\x00" * 100)),
            wire.GetPeers: wire.GetPeers(),
            wire.GetHashes: wire.GetHashes(0, 2),
            wire.Hashes: wire.Hashes(0, (self.h.node.genesis_hash,)),
            wire.PushBlock: wire.PushBlock(self.blocks[2]),
            wire.HelloAck: wire.HelloAck(b"\x01" * 64),
            wire.GetHeaders: wire.GetHeaders((self.h.node.genesis_hash,), 10),
            wire.Headers: wire.Headers((self.blocks[2].header,)),
            wire.GetBodies: wire.GetBodies((self.blocks[1].hash,)),
            wire.Bodies: wire.Bodies(((self.blocks[2].hash, ()),)),
            wire.Inv: wire.Inv((tx.hash[:16],)),
            wire.Req: wire.Req((tx.hash[:16],)),
            wire.Res: wire.Res((tx,)),
            wire.SendCmpct: wire.SendCmpct(True),
            wire.CmpctBlock: compact.make_compact(self.blocks[2], 7),
            wire.GetBlockTxn: wire.GetBlockTxn(self.blocks[1].hash, (0,)),
            wire.BlockTxn: wire.BlockTxn(self.blocks[2].hash, ()),
            wire.GetCmpct: wire.GetCmpct(self.blocks[1].hash),
        }
        extension_types = {cls for cls in wire.MESSAGES.values() if cls.TYPE not in wire.SEED_TYPES}
        self.assertEqual(set(self.extensions), extension_types)

    def state(self):
        node = self.h.node
        return (node.chain.tip.hash, len(node.mempool), dict(node.peers.dialers), dict(node.peers._dialing),
                len(node.peers.book))

    def check_nothing_changes(self, proto, transport, messages):
        before = self.state()
        for message in messages:
            with self.subTest(message=message.NAME):
                feed(proto, message)
                self.assertEqual(transport.value(), b"")
                self.assertEqual(self.state(), before)
                self.assertEqual(proto.info.misbehaviour, 0)

    def test_before_the_handshake(self):
        proto, transport = self.h.connect()
        sent(transport)
        self.check_nothing_changes(proto, transport,
                                   [m for cls, m in self.extensions.items() if cls is not wire.Hello])
        self.assertIs(proto.info.state, PeerState.CONNECTED)

    def test_seed_peer_that_sends_extensions(self):
        proto, transport = self.h.connect()
        feed(proto, wire.Status(2, 1, self.blocks[1].hash))  # ready as a seed peer
        sent(transport)
        self.check_nothing_changes(proto, transport, list(self.extensions.values()))

    def test_after_the_handshake_without_the_capability(self):
        proto, transport = self.h.connect()
        handshake(proto, node_id=b"\x05" * 16, genesis=self.h.node.genesis_hash, capabilities=())
        self.assertIs(proto.info.state, PeerState.READY)
        sent(transport)
        self.check_nothing_changes(proto, transport, list(self.extensions.values()))

    def test_with_the_capability_they_are_acted_on(self):
        """The control: the same PUSH_BLOCK from a handshaked peer that announced "push"."""
        proto, transport = self.h.connect()
        handshake(proto, genesis=self.h.node.genesis_hash)
        feed(proto, self.extensions[wire.PushBlock])
        self.assertEqual(self.h.node.chain.tip.hash, self.blocks[2].hash)


class FramingTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)

    def test_before_the_handshake_a_line_is_cut_at_the_small_cap(self):
        proto, transport = self.h.connect()
        proto.dataReceived(b"x" * (peer_module.HANDSHAKE_LINE_BYTES + 1))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.h.node.peers.misbehaviour_counts.get("line_too_long"), 1)

    def test_a_line_under_the_small_cap_is_read(self):
        proto, transport = self.h.connect()
        sent(transport)
        proto.dataReceived(b"x" * (peer_module.HANDSHAKE_LINE_BYTES - 1) + b"\n")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(dict(self.h.node.peers.misbehaviour_counts), {"bad_json": 1})  # read, not cut

    def test_after_the_handshake_a_trickled_4_mib_line_costs_little(self):
        """A block padded (with JSON whitespace) to just under 4 MiB, 256 bytes a write:
        framed in well under a second of CPU, and the block taken."""
        block = builder().make_block(builder().genesis)
        proto, transport = self.h.connect()
        handshake(proto, genesis=self.h.node.genesis_hash)
        sent(transport)
        head = b'{"type":5,"payload":{"height":1,"blockData":' + block.encode()
        line = head + b" " * (peer_module.MAX_LINE_BYTES - len(head) - 8) + b"}}\n"
        self.assertLess(len(line), peer_module.MAX_LINE_BYTES)
        started = time.process_time()
        for i in range(0, len(line), 256):
            proto.dataReceived(line[i:i + 256])
        spent = time.process_time() - started
        self.assertEqual(self.h.node.chain.tip.hash, block.hash)  # the whole line arrived, once
        self.assertFalse(transport.disconnecting)
        self.assertLess(spent, 1.0, f"{spent:.2f} s of CPU to frame and take one trickled 4 MiB line")

    def test_many_messages_in_one_write_and_one_split_across_writes(self):
        proto, transport = self.h.connect()
        sent(transport)
        proto.dataReceived(b"".join(wire.encode(wire.Ping(i)) + b"\n" for i in range(50)))
        self.assertEqual(sent(transport), [wire.Pong(i) for i in range(50)])
        line = wire.encode(wire.Ping(99)) + b"\n"
        for byte in line:
            proto.dataReceived(bytes([byte]))
        self.assertEqual(sent(transport), [wire.Pong(99)])
