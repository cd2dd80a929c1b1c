"""Real nodes on loopback TCP: the seed's walk-through and partitions."""

from twisted.internet import defer
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
