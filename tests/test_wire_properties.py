"""The decoder under any input: a typed message or the codec's own WireError, nothing
else; and what it refuses on purpose (whitespace in hex, NaN, duplicate keys, lists past
the consensus limits). Everything a node writes is strict JSON that decodes back to the
same message. (bench/fuzz_wire.py runs the same at a million lines.)"""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from archivas.chain.encoding import canonical_json, strict_loads
from archivas.protocols import wire
from tests.common import builder

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=70))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)), max_leaves=25)
field_names = st.sampled_from(["height", "hash", "tipHash", "difficulty", "timestamp", "blockData", "addrs",
                               "txHash", "txData", "fromHeight", "maxBlocks", "blocks", "count", "start",
                               "hashes", "nodeId", "genesisHash", "network", "capabilities", "listenPort",
                               "protocolVersion", "parentHash", "index", "output", "proof", "seenAt", "eof"])
payloads = st.dictionaries(field_names, json_values, max_size=6)
kinds = st.one_of(st.sampled_from(sorted(set(wire.MESSAGES) | wire.RESERVED_TYPES)), st.integers(-5, 70000))


def check_line(line: bytes) -> None:
    try:
        message = wire.decode(line)
    except wire.WireError as e:
        assert e.reason in ("bad_json", "bad_shape", "unknown_type", "bad_payload"), e.reason
        return
    assert isinstance(message, wire.Message)
    for style in (wire.HEX, wire.ARRAY):
        out = wire.encode(message, style)
        strict_loads(out)  # what we write is strict JSON
        assert wire.decode(out) == message


class DecoderProperties(unittest.TestCase):
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=300))
    def test_any_bytes(self, line):
        check_line(line)

    @settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(kinds, payloads)
    def test_any_envelope(self, kind, payload):
        try:
            line = json.dumps({"type": kind, "payload": payload}, allow_nan=True).encode()
        except (ValueError, OverflowError):
            return
        check_line(line)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def test_mutations_of_valid_lines(self, data):
        line = bytearray(data.draw(st.sampled_from(VALID_LINES)))
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(line) - 1))
            op = data.draw(st.sampled_from(["flip", "drop", "insert"]))
            if op == "flip":
                line[at] = data.draw(st.integers(0, 255))
            elif op == "drop":
                del line[at]
            else:
                line[at:at] = data.draw(st.sampled_from([b" ", b"NaN", b'"', b",", b"[", b"}", b"-1", b"1e999"]))
        check_line(bytes(line))


def _valid_lines() -> list[bytes]:
    b = builder()
    block = b.make_block(b.genesis)
    tx = b.transfer(b.farmers[0][0], b.farmers[1][0].address, 5, 0)
    messages = [wire.Ping(1), wire.NewBlock(1, block.hash), wire.GetBlock(3), wire.Status(1, 2, block.hash, 3),
                wire.BlockData(1, block), wire.NewTransaction(tx), wire.GetBlocks(1, 2), wire.Peers(("1.2.3.4:9",)),
                wire.Hashes(0, (block.hash,)), wire.GetHashes(0, 4)]
    return [wire.encode(m, style) for m in messages for style in (wire.HEX, wire.ARRAY)]


VALID_LINES = _valid_lines()


class Refusals(unittest.TestCase):
    def refused(self, line: bytes, reason: str) -> None:
        with self.assertRaises(wire.WireError) as cm:
            wire.decode(line)
        self.assertEqual(cm.exception.reason, reason, line[:80])

    def test_whitespace_and_capitals_in_hex(self):
        for bad in (" " * 64, "ab" * 31 + " a", "AB" * 32, "\nb" * 32, "0x" + "ab" * 31):
            self.refused(json.dumps({"type": 3, "payload": {"height": 1, "hash": bad}}).encode(), "bad_payload")
        node_id = {"network": "fastnet", "genesisHash": "ab" * 32, "protocolVersion": 2, "nodeId": " " * 32,
                   "listenPort": 1, "capabilities": []}
        self.refused(json.dumps({"type": 100, "payload": node_id}).encode(), "bad_payload")

    def test_hash_arrays_are_exact(self):
        good = list(range(32))
        self.assertEqual(wire.decode(json.dumps({"type": 3, "payload": {"height": 1, "hash": good}}).encode()).hash,
                         bytes(good))
        for bad in (good[:31], good + [0], [256] + good[1:], [-1] + good[1:], [True] + good[1:], [1.0] + good[1:]):
            self.refused(json.dumps({"type": 3, "payload": {"height": 1, "hash": bad}}).encode(), "bad_payload")

    def test_nan_infinity_and_overflowing_floats(self):
        for number in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
            self.refused(b'{"type": 1, "payload": {"timestamp": %s}}' % number, "bad_json")

    def test_duplicate_keys(self):
        self.refused(b'{"type": 1, "type": 2, "payload": {}}', "bad_json")
        self.refused(b'{"type": 4, "payload": {"height": 1, "height": 2}}', "bad_json")

    def test_lists_past_the_consensus_limits(self):
        b = builder()
        block = b.make_block(b.genesis).to_json()
        tx = b.transfer(b.farmers[0][0], b.farmers[1][0].address, 5, 0).to_json()
        big = dict(block, transactions=[tx] * (wire.DEFAULT_LIMITS.max_block_transactions + 1))
        self.refused(json.dumps({"type": 5, "payload": {"height": 1, "blockData": big}}).encode(), "bad_payload")
        segments = block["header"]["vdf"] * (wire.DEFAULT_LIMITS.max_vdf_segments + 1)
        long_vdf = dict(block, header=dict(block["header"], vdf=segments))
        self.refused(json.dumps({"type": 5, "payload": {"height": 1, "blockData": long_vdf}}).encode(),
                     "bad_payload")
        with_allocation = dict(block, allocation=[["arcv1x", 5]])
        self.refused(json.dumps({"type": 5, "payload": {"height": 1, "blockData": with_allocation}}).encode(),
                     "bad_payload")

    def test_tx_hash_must_match(self):
        b = builder()
        tx = b.transfer(b.farmers[0][0], b.farmers[1][0].address, 5, 0)
        line = json.dumps({"type": 12, "payload": {"txHash": "00" * 32, "txData": tx.to_json()}}).encode()
        self.refused(line, "bad_payload")


class PayloadJsonProperties(unittest.TestCase):
    """A message's payload_json (INV's and REQ's written directly) is canonical_json of its
    payload, byte for byte."""

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(min_size=wire.INV_ID_BYTES, max_size=wire.INV_ID_BYTES), min_size=1, max_size=40),
           st.sampled_from([wire.Inv, wire.Req]))
    def test_inventory(self, ids, cls):
        message = cls(tuple(ids))
        for style in (wire.HEX, wire.ARRAY):
            self.assertEqual(message.payload_json(style), canonical_json(message.payload(style)))
        self.assertEqual(wire.decode(wire.encode(message)), message)

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)),
                    min_size=0, max_size=5))
    def test_res_from_the_transfers_bytes(self, figures):
        b = builder()
        txs = tuple(b.transfer(b.farmers[0][0], b.farmers[1][0].address, amount, nonce, fee)
                    for amount, fee, nonce in figures)
        message = wire.Res(txs)
        for style in (wire.HEX, wire.ARRAY):
            self.assertEqual(message.payload_json(style), canonical_json(message.payload(style)))
        self.assertEqual(wire.decode(wire.encode(message)), message)
