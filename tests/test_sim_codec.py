"""The simulator's shared decoder (archivas/sim/codec.py): the same results as wire's two
decoding steps, made once per distinct line, and never a cached failure."""

from twisted.trial import unittest

from archivas.chain import params as network_params
from archivas.protocols import wire
from archivas.sim.codec import SharedDecoder


class SharedDecoderTests(unittest.TestCase):
    def setUp(self):
        self.limits = wire.Limits.from_params(network_params.load("fastnet"))

    def test_same_results_as_wire_once_per_line(self):
        codec = SharedDecoder()
        line = wire.encode(wire.Inv((b"\x01" * 16, b"\x02" * 16)))
        first = codec.decode_envelope(line)
        self.assertEqual(first, wire.decode_envelope(line))
        message = codec.parse(first, self.limits)
        self.assertEqual(message, wire.parse(wire.decode_envelope(line), self.limits))
        again = codec.decode_envelope(bytes(line))  # equal bytes, another object
        self.assertIs(again, first)
        self.assertIs(codec.parse(again, self.limits), message)
        self.assertEqual((codec.hits, codec.misses), (1, 1))

    def test_other_limits_parse_again(self):
        codec = SharedDecoder()
        envelope = codec.decode_envelope(wire.encode(wire.Ping(5)))
        first = codec.parse(envelope, self.limits)
        tight = wire.Limits(self.limits.max_block_transactions, 1)
        self.assertEqual(codec.parse(envelope, tight), first)
        self.assertIs(codec.parse(envelope, tight), codec.parse(envelope, tight))

    def test_failures_are_raised_every_time_and_not_kept(self):
        codec = SharedDecoder()
        for _ in range(2):
            with self.assertRaises(wire.WireError):
                codec.decode_envelope(b'{"type":1,"type":1}')
        bad = codec.decode_envelope(b'{"type":9,"payload":{"ids":"zz"}}')
        for _ in range(2):
            with self.assertRaises(wire.WireError):
                codec.parse(bad, self.limits)
        self.assertNotIn("_parsed", bad.__dict__)

    def test_bounded_by_two_generations(self):
        codec = SharedDecoder(capacity=2)
        lines = [wire.encode(wire.Ping(i)) for i in range(5)]
        envelopes = [codec.decode_envelope(line) for line in lines]
        self.assertLessEqual(len(codec._new) + len(codec._old), 4)
        self.assertIs(codec.decode_envelope(lines[4]), envelopes[4])
        self.assertIsNot(codec.decode_envelope(lines[0]), envelopes[0])
