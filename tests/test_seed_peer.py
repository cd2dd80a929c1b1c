"""A peer that speaks only the seed's seven messages, over a plain socket, and peers that
send bad input: the node answers the first exactly as SPEC §2 says, and shrugs off the
second while serving everyone else with its chain unchanged."""

import json
import socket

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests.common import builder
from tests.netutil import start_node, wait_until


class PlainPeer:
    """A blocking socket speaking newline-delimited JSON (run its calls in a thread)."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
        self.buffer = b""

    def send(self, kind: int, payload=None) -> None:
        self.send_raw(json.dumps({"type": kind, "payload": payload or {}}).encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self, kind: int) -> dict:
        """The next message of type `kind` (others, such as the node's GET_STATUS, skipped)."""
        while True:
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed by the node")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\n", 1)
            message = json.loads(line)
            if message["type"] == kind:
                return message["payload"]

    def closed(self) -> bool:
        """True once the node has closed the connection (reads until EOF)."""
        try:
            while self.sock.recv(65536):
                pass
        except (ConnectionError, socket.timeout):
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def in_thread(f, *args):
    return threads.deferToThread(f, *args)


class SeedOnlyPeer(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_seed_messages_are_served(self):
        b = builder()
        blocks = b.extend(b.genesis, 3)
        node = start_node(self, blocks=blocks)
        peer = yield in_thread(PlainPeer, node.port.getHost().port)
        self.addCleanup(peer.close)

        yield in_thread(peer.send, 6)  # GET_STATUS, before any handshake
        status = yield in_thread(peer.receive, 7)
        self.assertEqual((status["height"], status["tipHash"]), (3, blocks[-1].hash.hex()))
        self.assertEqual(status["difficulty"], blocks[-1].header.difficulty)

        yield in_thread(peer.send, 1, {"timestamp": 1700000000})
        pong = yield in_thread(peer.receive, 2)
        self.assertEqual(pong, {"timestamp": 1700000000})

        yield in_thread(peer.send, 4, {"height": 2})
        data = yield in_thread(peer.receive, 5)
        self.assertEqual(data["height"], 2)
        self.assertEqual(data["blockData"], blocks[1].to_json())

        # An unknown height: no answer, no disconnect (a PING still gets its PONG).
        yield in_thread(peer.send, 4, {"height": 99})
        yield in_thread(peer.send, 1, {"timestamp": 5})
        self.assertEqual((yield in_thread(peer.receive, 2)), {"timestamp": 5})

        # NEW_BLOCK for an unknown block above the tip: the node asks GET_BLOCK for it.
        new = b.make_block(blocks[-1])
        yield in_thread(peer.send, 3, {"height": 4, "hash": new.hash.hex()})
        request = yield in_thread(peer.receive, 4)
        self.assertEqual(request, {"height": 4})
        yield in_thread(peer.send, 5, {"height": 4, "blockData": new.to_json()})
        yield defer.ensureDeferred(wait_until(lambda: node.chain.height == 4, "the announced block applied"))
        self.assertEqual(node.chain.tip.hash, new.hash)


class BadInput(unittest.TestCase):
    """Each case: a bad peer (its own loopback address, so a ban does not touch the good
    peer), then a good peer that is still served, and the chain as it was."""

    timeout = 120
    CASES = {
        "malformed line": [b"{this is not json\n"] * 12,
        "unknown type": [b'{"type": 99, "payload": {}}\n'] * 25,
        "wrong shapes": [b'{"type": 4, "payload": {"height": "two"}}\n', b'[1, 2]\n',
                         b'{"type": 3, "payload": {"height": 1, "hash": "zz"}}\n',
                         b'{"type": "1"}\n', b'{"type": 5, "payload": []}\n'] * 3,
        "oversized line": [b"x" * (5 * 1024 * 1024)],
        "flood": [b'{"type": 1, "payload": {"timestamp": 1}}\n'] * 3000,
    }

    @defer.inlineCallbacks
    def test_bad_input_changes_nothing(self):
        b = builder()
        node = start_node(self, blocks=b.extend(b.genesis, 2))
        port = node.port.getHost().port
        before = (node.chain.tip, node.chain.accounts())
        for i, (name, lines) in enumerate(self.CASES.items()):
            bad = yield in_thread(PlainPeer, port, f"127.0.0.{10 + i}")
            self.addCleanup(bad.close)
            for line in lines:
                try:
                    yield in_thread(bad.send_raw, line)
                except OSError:
                    break  # the node already hung up on it
            yield defer.ensureDeferred(self.assert_still_serving(port, name))
            self.assertEqual((node.chain.tip, node.chain.accounts()), before, name)
        counts = node.node.peers.misbehaviour_counts
        for reason in ("bad_json", "unknown_type", "bad_shape", "bad_payload", "line_too_long", "rate_limit"):
            self.assertGreater(counts.get(reason, 0), 0, reason)
        # Every bad peer was dropped (and the good ones closed their side). They are local
        # (loopback): dropped, never discouraged, so other nodes on this host stay reachable.
        yield defer.ensureDeferred(wait_until(lambda: node.node.peers.count("inbound") == 0, "no peers left"))
        self.assertEqual(len(node.node.peers.discouraged), 0)

    async def assert_still_serving(self, port, name):
        good = await in_thread(PlainPeer, port)
        try:
            await in_thread(good.send, 6)
            status = await in_thread(good.receive, 7)
            self.assertEqual(status["height"], 2, name)
        finally:
            good.close()

    @defer.inlineCallbacks
    def test_invalid_block_is_refused_and_the_sender_dropped(self):
        import dataclasses

        b = builder()
        base = b.extend(b.genesis, 2)
        node = start_node(self, blocks=base)
        port = node.port.getHost().port
        before = (node.chain.tip, node.chain.accounts())
        bad_block = b.make_block(base[-1], tamper=lambda h: dataclasses.replace(h, reward=h.reward + 1))
        bad = yield in_thread(PlainPeer, port, "127.0.0.30")
        self.addCleanup(bad.close)
        # 50 points each: the second one bans. The resent block is known invalid and
        # is not verified again.
        yield in_thread(bad.send, 5, {"height": 3, "blockData": bad_block.to_json()})
        yield defer.ensureDeferred(wait_until(lambda: node.node.rejected_blocks == 1, "the first refusal"))
        yield in_thread(bad.send, 5, {"height": 3, "blockData": bad_block.to_json()})
        self.assertTrue((yield in_thread(bad.closed)))
        self.assertEqual((node.chain.tip, node.chain.accounts()), before)
        self.assertFalse(node.node.peers.is_discouraged("127.0.0.30"))  # local: dropped only
        self.assertEqual(node.node.rejected_blocks, 1)
        self.assertEqual(node.node.peers.misbehaviour_counts["invalid_block"], 2)
        yield defer.ensureDeferred(self.assert_still_serving(port, "invalid block"))
        # An operator's ban refuses it at once when it comes back.
        node.node.peers.bans.ban("127.0.0.30", 600)
        again = yield in_thread(PlainPeer, port, "127.0.0.30")
        self.addCleanup(again.close)
        self.assertTrue((yield in_thread(again.closed)))


class HostileRelay(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_forged_copy_first_then_the_real_block(self):
        """Over real sockets: a relayer sends the fresh block with one farmer-signature
        character changed (the same id), then two honest peers send the real block. The
        real one becomes the tip; only the relayer is penalised."""
        import dataclasses

        b = builder()
        base = b.extend(b.genesis, 2)
        node = start_node(self, blocks=base)
        port = node.port.getHost().port
        real = b.make_block(base[-1])
        sig = real.header.farmer_signature.hex()
        forged_sig = bytes.fromhex(("1" if sig[0] != "1" else "2") + sig[1:])
        forged = dataclasses.replace(real, header=dataclasses.replace(real.header, farmer_signature=forged_sig))
        relayer = yield in_thread(PlainPeer, port, "127.0.0.40")
        self.addCleanup(relayer.close)
        yield in_thread(relayer.send, 5, {"height": 3, "blockData": forged.to_json()})
        yield defer.ensureDeferred(wait_until(lambda: node.node.rejected_blocks == 1, "the forged copy refused"))
        honest = []
        for host in ("127.0.0.41", "127.0.0.42"):
            peer = yield in_thread(PlainPeer, port, host)
            self.addCleanup(peer.close)
            honest.append(peer)
            yield in_thread(peer.send, 7, {"height": 2, "difficulty": 1, "tipHash": base[-1].hash.hex()})
            yield in_thread(peer.send, 5, {"height": 3, "blockData": real.to_json()})
        yield defer.ensureDeferred(wait_until(lambda: node.chain.tip.hash == real.hash, "the real block as tip"))
        scores = {p.info.host: p.info.misbehaviour for p in node.node.peers.peers if p.info}
        self.assertEqual((scores.get("127.0.0.41"), scores.get("127.0.0.42")), (0, 0))
        self.assertGreater(scores.get("127.0.0.40", 0), 0)
        self.assertFalse(node.node.peers.is_banned("127.0.0.41"))


class GoStylePeer(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_array_hashes_over_a_socket(self):
        """The original Go peer's own lines (tests/fixtures): its STATUS makes it a ready
        seed peer, it is answered in arrays, and new blocks are announced to it."""
        from tests.test_wire_compat import go_status

        b = builder()
        blocks = b.extend(b.genesis, 3)
        node = start_node(self, blocks=blocks[:2])
        peer = yield in_thread(PlainPeer, node.port.getHost().port)
        self.addCleanup(peer.close)
        yield in_thread(peer.send_raw, go_status(2, 1, blocks[1].hash) + b"\n")
        yield in_thread(peer.send_raw, b'{"type":6,"payload":{}}\n')
        status = yield in_thread(peer.receive, 7)
        self.assertEqual(status["tipHash"], list(blocks[1].hash))
        yield node.node.receive_block(blocks[2])
        announce = yield in_thread(peer.receive, 3)
        self.assertEqual(announce, {"height": 3, "hash": list(blocks[2].hash)})
        (proto,) = node.node.peers.ready_peers()
        self.assertEqual(proto.info.misbehaviour, 0)
