"""HEADERS and BODIES served from the bytes blocks are stored as: the same lines as
encoding the decoded messages, and a stored block that is not canonical refused."""

from twisted.trial import unittest

from archivas.protocols import wire
from tests.common import ALICE, BOB, builder


class StoredLinesTests(unittest.TestCase):
    def setUp(self):
        b = builder()
        first = b.make_block(b.genesis, transactions=[b.transfer(ALICE, BOB.address, 5, 0),
                                                      b.transfer(BOB, ALICE.address, 7, 0)])
        self.blocks = [first] + b.extend(first, 2)

    def test_headers_line_is_the_encoded_message(self):
        raw = [wire.split_stored_block(b.encode())[0] for b in self.blocks]
        want = wire.encode(wire.Headers(tuple(b.header for b in self.blocks), 17, 12345))
        self.assertEqual(wire.headers_line(raw, 17, 12345).line, want)

    def test_bodies_line_is_the_encoded_message(self):
        raw = [(b.hash, wire.split_stored_block(b.encode())[1]) for b in self.blocks]
        want = wire.encode(wire.Bodies(tuple((b.hash, b.transactions) for b in self.blocks)))
        line = wire.bodies_line(raw).line
        self.assertEqual(line, want)
        self.assertEqual(len(wire.decode(line).bodies[0][1]), 2)

    def test_a_block_not_in_canonical_form_is_refused(self):
        for raw in (b'{"transactions":[],"header":{}}', b'{"header":{}}', b"[]"):
            self.assertRaises(ValueError, wire.split_stored_block, raw)
