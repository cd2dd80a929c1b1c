"""Assume-valid (chain/assumed.py, protocols/assumevalid.py): a node on a task.Clock syncs
headers-first from one scripted peer serving the fixture chain's first 60 blocks, changed
so that a block below the assumed one (height 40) carries an invalid proof with a right
context and state (its descendants re-linked and re-signed by their farmers).

Must show: that chain syncs only when the assumed hash is on it; with `--assume-valid 0`,
or with an assumed hash that is not on it, it is refused. Also: above the assumed block
every proof is checked; below it the reward, the context and the state still are; the
header chain must still prove the weight asked; a block by gossip or block-by-block sync
is fully verified; the walk's commitments hold the round proper to the same headers.
"""

import dataclasses
import functools

from twisted.internet import task
from twisted.python import usage
from twisted.trial import unittest

from archivas.chain import assumed
from archivas.chain import params as network_params
from archivas.chain.block import Block, genesis_block, sign_header, tx_root
from archivas.chain.blockchain import Chain
from archivas.chain.headerchain import HeaderMismatch, HeaderRun
from archivas.chain.transactions import sign_transfer
from archivas.chain.vdf import Segment
from archivas.node import Node
from archivas.protocols import assumevalid, headersfirst, wire
from archivas.tap import Options
from archivas.testing.chainbuilder import farmer_key
from tests import common
from tests.common import ALICE, BOB, PARAMS, fixture_blocks
from tests.test_protocol import feed
from tests.test_sync import LEGACY, ScriptedPeer
from tests.test_sync_liars import START, drive

HEIGHT = 60
ASSUMED_AT = 40
KEYS = {k.public_key: k for k in (farmer_key(0), farmer_key(1))}


def tampered(blocks, height, change_header=None, change_txs=None, resign=True):
    """`blocks` (heights 1..) with block `height` changed, signed again by its farmer
    unless `resign` is False, and every later block re-linked and signed again (its
    proofs still hold: a child's VDF seed depends on its parent's proofs, not its id)."""
    out = list(blocks[:height - 1])
    for block in blocks[height - 1:]:
        header, txs = block.header, block.transactions
        if out:
            header = dataclasses.replace(header, parent_hash=out[-1].hash)
        sign = True
        if block.height == height:
            if change_txs is not None:
                txs = change_txs(txs)
            if change_header is not None:
                header = change_header(header)
            sign = resign
        if sign:
            header = sign_header(header, KEYS[header.proof_of_space.farmer_public_key])
        out.append(Block(header, txs))
    return out


def bad_vdf(header):
    """A VDF segment whose proof does not verify (its output, which the child's seed uses, kept)."""
    first = header.vdf[0]
    proof = first.proof[:-1] + bytes([first.proof[-1] ^ 1])
    return dataclasses.replace(header, vdf=(Segment(first.output, proof),) + header.vdf[1:])


def bad_farmer_signature(header):
    return dataclasses.replace(header, farmer_signature=bytes([header.farmer_signature[0] ^ 1])
                               + header.farmer_signature[1:])


def bad_transfer_signature(txs):
    tx = txs[0]
    return (dataclasses.replace(tx, signature=bytes([tx.signature[0] ^ 1]) + tx.signature[1:]),) + txs[1:]


def weight_of(blocks):
    """The chain's weight with genesis (forkchoice.block_weight of each block)."""
    return common.weight_of([genesis_block(PARAMS)] + list(blocks))


class Setup:
    """A node (option `assume_valid`, on `params`) and a peer serving `blocks`."""

    def __init__(self, case, blocks, assume_valid=None, params=PARAMS, capabilities=wire.CAPABILITIES):
        self.clock = task.Clock()
        self.clock.advance(START)
        chain = Chain.open(case.mktemp(), params)
        case.addCleanup(chain.close)
        self.node = Node(chain, self.clock, threaded=False, assume_valid=assume_valid)
        self.node.start()
        case.addCleanup(lambda: self.node.stop() and None)
        self.blamed = []  # why the peer was blamed
        misbehaved = self.node.peers.misbehaved

        def record(proto, kind, message, *args, **kwargs):
            self.blamed.append(message)
            return misbehaved(proto, kind, message, *args, **kwargs)

        self.node.peers.misbehaved = record
        self.peer = ScriptedPeer(self, "10.0.0.1", blocks, b"\x01" * 16, weight=weight_of(blocks),
                                 capabilities=capabilities)
        self.blocks = blocks

    def connect(self, direction="inbound", host="10.0.0.1"):
        from tests.test_protocol import Harness

        return Harness.connect(self, direction, host)

    def sync(self, seconds=20.0):
        drive(self, [self.peer], seconds=seconds)
        return self

    def synced(self):
        return self.node.chain.tip.hash == self.blocks[-1].hash

    def stored(self, height):
        return self.node.chain.has_block(self.blocks[height - 1].hash)


class AssumeValidTests(unittest.TestCase):
    def setUp(self):
        self.honest = fixture_blocks(HEIGHT)

    def assert_synced(self, s):
        self.assertTrue(s.synced(), f"not synced: tip at {s.node.chain.tip.height}")
        self.assertEqual(s.node.chain.tip.weight, weight_of(s.blocks))
        self.assertEqual(s.peer.proto.info.misbehaviour, 0)

    def assert_refused(self, s, bad_height, reason):
        self.assertFalse(s.synced())
        self.assertFalse(s.stored(bad_height), "the invalid block was stored")
        self.assertGreater(s.peer.proto.info.misbehaviour, 0, "its sender was not blamed")
        self.assertIn(f"height {bad_height}: {reason}", " ".join(s.blamed))

    # the must-show

    def test_an_invalid_vdf_below_the_assumed_block_syncs_only_when_it_is_assumed(self):
        chain = tampered(self.honest, 20, bad_vdf)
        on_chain = chain[ASSUMED_AT - 1].hash
        not_on_chain = self.honest[ASSUMED_AT - 1].hash  # the honest block 40: not on this chain
        self.assertNotEqual(on_chain, not_on_chain)
        s = Setup(self, chain, on_chain.hex()).sync()
        self.assert_synced(s)
        self.assertEqual(len(s.node._assumed), ASSUMED_AT)  # heights 1..40 taken as assumed
        self.assertEqual(len(s.node._verified), HEIGHT - ASSUMED_AT)  # 41..60 proved
        self.assertEqual(s.node.chain.storage.block_meta(on_chain).score, assumed.ASSUMED_SCORE)
        self.assert_refused(Setup(self, chain, "0").sync(), 20, "bad_vdf")
        self.assert_refused(Setup(self, chain, not_on_chain.hex()).sync(), 20, "bad_vdf")
        self.assert_refused(Setup(self, chain).sync(), 20, "bad_vdf")  # fastnet names none
        # The network's parameter, and --assume-valid 0 over it.
        params = dataclasses.replace(PARAMS, assume_valid=on_chain)
        self.assert_synced(Setup(self, chain, params=params).sync())
        self.assert_refused(Setup(self, chain, "0", params=params).sync(), 20, "bad_vdf")

    def test_bad_farmer_and_transfer_signatures_below_the_assumed_block(self):
        self.assertTrue(self.honest[29].transactions, "the fixture's block 30 carries a transfer")
        chain = tampered(self.honest, 15, bad_farmer_signature, resign=False)
        chain = tampered(chain, 30, change_txs=bad_transfer_signature)
        self.assertEqual(chain[39].hash, self.honest[39].hash)  # neither changes a block id
        self.assert_synced(Setup(self, chain, chain[ASSUMED_AT - 1].hash.hex()).sync())
        self.assert_refused(Setup(self, chain, "0").sync(), 15, "bad_farmer_signature")
        only_transfer = tampered(self.honest, 30, change_txs=bad_transfer_signature)
        s = Setup(self, only_transfer, "0").sync()
        self.assertFalse(s.synced())
        self.assertEqual(s.node.chain.tip.height, 29)  # refused at its body
        self.assertIn("height 30: bad_transaction: transaction 0: bad_signature", " ".join(s.blamed))

    # what is still checked

    def test_above_the_assumed_block_every_proof_is_checked(self):
        # (The fixture's blocks above 40 are at fastnet's floor of 78 iterations, where
        # chiavdf computes the output itself and a Wesolowski proof's bytes do not matter:
        # the farmer's signature stands for the proofs here.)
        chain = tampered(self.honest, ASSUMED_AT + 5, bad_farmer_signature, resign=False)
        s = Setup(self, chain, chain[ASSUMED_AT - 1].hash.hex()).sync()
        self.assert_refused(s, ASSUMED_AT + 5, "bad_farmer_signature")

    def test_below_the_assumed_block_the_reward_context_and_state_are_checked(self):
        def reward(header):
            return dataclasses.replace(header, reward=header.reward + 1)

        def difficulty(header):
            return dataclasses.replace(header, difficulty=header.difficulty + 1)

        def gap(txs):  # a transfer signed right, with a nonce ahead of Alice's account
            tx = txs[0]
            return (sign_transfer(ALICE, PARAMS, BOB.address, tx.amount, tx.fee, tx.nonce + 5),)

        def root(header):
            return dataclasses.replace(header, tx_root=tx_root(gap(self.honest[29].transactions)))

        cases = {  # why the peer is blamed -> its chain
            "height 30: bad_reward": tampered(self.honest, 30, reward),
            "height 30: bad_difficulty": tampered(self.honest, 30, difficulty),
            "height 30: bad_transaction: bad_nonce": tampered(self.honest, 30, root, change_txs=gap),
            "height 30: bad_tx_root": tampered(self.honest, 30, change_txs=gap),  # (checked in the verify pool)
        }
        for why, chain in cases.items():
            s = Setup(self, chain, chain[ASSUMED_AT - 1].hash.hex()).sync()
            self.assertFalse(s.synced(), why)
            self.assertLess(s.node.chain.tip.height, 30, why)  # (a state failure stores it, as invalid)
            self.assertIn(why, " ".join(s.blamed))

    def test_the_header_chain_must_still_prove_the_weight_asked(self):
        chain = tampered(self.honest, 20, bad_vdf)
        params = dataclasses.replace(PARAMS, min_chain_weight=weight_of(chain) + 1)
        s = Setup(self, chain, chain[ASSUMED_AT - 1].hash.hex(), params=params).sync()
        self.assertEqual(s.node.chain.tip.height, 0)  # nothing stored

    def test_headers_let_go_in_presync_and_fetched_again_are_still_assumed(self):
        """A window of 16 headers and a weight proven only at height 50: headers 17..50 are
        kept as presync records, fetched again, and still taken as assumed (block 30's
        transfer signature is bad, block 20's VDF too)."""
        self.patch(headersfirst, "HeaderRun", functools.partial(HeaderRun, window_headers=16))
        chain = tampered(tampered(self.honest, 20, bad_vdf), 30, change_txs=bad_transfer_signature)
        params = dataclasses.replace(PARAMS, min_chain_weight=weight_of(chain[:50]))
        s = Setup(self, chain, chain[ASSUMED_AT - 1].hash.hex(), params=params)
        taken = []
        assume = s.node.assume_header
        s.node.assume_header = lambda header: taken.append(header.height) or assume(header)
        s.sync()
        self.assert_synced(s)
        # Each header up to 40 taken as assumed when checked; those let go (17..40) again
        # when fetched again, so that their bodies are (however many headers came between).
        self.assertEqual(sorted(taken), sorted(list(range(1, ASSUMED_AT + 1)) + list(range(17, ASSUMED_AT + 1))))

    def test_blocks_by_gossip_or_block_by_block_sync_are_fully_verified(self):
        chain = tampered(self.honest, 20, bad_vdf)
        option = chain[ASSUMED_AT - 1].hash.hex()
        s = Setup(self, chain, option, capabilities=LEGACY).sync()  # a peer without headers
        self.assertFalse(s.synced())
        self.assertFalse(s.stored(20))
        self.assertEqual(s.node.chain.tip.height, 19)
        self.assertIn("height 20: bad_vdf", " ".join(s.blamed))
        s.peer.answer()
        d = s.node.receive_block(chain[19], s.peer.proto)  # the same block pushed
        self.assertIsNone(self.successResultOf(d))
        self.assertFalse(s.stored(20))

    def test_a_peer_whose_headers_lack_the_assumed_block_is_not_walked_again(self):
        # (Each round walked up to 1 GiB of its headers again: found in review.)
        from unittest import mock

        walks = []
        scout = assumevalid.scout

        async def counted(*args, **kwargs):
            walks.append(args[0].target)
            return await scout(*args, **kwargs)

        with mock.patch.object(assumevalid, "scout", counted):
            s = Setup(self, self.honest[:50], "ab" * 32).sync()  # a hash on no chain
            self.assertTrue(s.synced())
            s.blocks = s.peer.blocks = self.honest[:HEIGHT]  # the peer moves on: a new claim, a new round
            tip = self.honest[HEIGHT - 1]
            feed(s.peer.proto, wire.Status(tip.height, tip.header.difficulty, tip.hash, weight=weight_of(s.blocks),
                                           genesis_hash=s.node.genesis_hash, network="fastnet", version=1,
                                           capabilities=wire.CAPABILITIES))
            s.sync(seconds=40.0)
        self.assertTrue(s.synced())
        self.assertEqual(len(walks), 1, "walked once for this peer")

    def test_a_stored_assumed_block_is_not_looked_for_again(self):
        chain = tampered(self.honest, 20, bad_vdf)
        s = Setup(self, chain[:ASSUMED_AT], chain[ASSUMED_AT - 1].hash.hex()).sync()
        self.assertTrue(s.synced())
        more = Setup.__new__(Setup)
        more.clock, more.node, more.blocks = s.clock, s.node, chain
        more.peer = ScriptedPeer(more, "10.0.0.2", chain, b"\x02" * 16, weight=weight_of(chain))
        more.sync(seconds=40.0)
        self.assertTrue(more.synced())
        walks = [m for m in more.peer.requests if isinstance(m, wire.GetHeaders)]
        self.assertEqual(len(walks), 1, "the headers were fetched once: no walk")


class AssumedChainTests(unittest.TestCase):
    def setUp(self):
        self.honest = fixture_blocks(HEIGHT)
        self.chain = tampered(self.honest, 20, bad_vdf)
        self.headers = [b.header for b in self.chain]

    def walk(self, headers, budget=assumevalid.SCOUT_BUDGET):
        walk = assumevalid.AssumedChain(self.chain[ASSUMED_AT - 1].hash, PARAMS_GENESIS(), 0, budget)
        walk.take(headers)
        return walk

    def test_covers_the_headers_walked_up_to_the_assumed_block_only(self):
        walk = self.walk(self.headers)
        self.assertEqual(walk.found, ASSUMED_AT)
        self.assertEqual(walk.record_bytes, ASSUMED_AT * assumevalid.COMMITMENT)
        self.assertTrue(all(walk.covers(h) for h in self.headers[:ASSUMED_AT]))
        self.assertFalse(walk.covers(self.headers[ASSUMED_AT]))
        with self.assertRaises(HeaderMismatch):  # another header at a walked height
            walk.covers(self.honest[25].header)

    def test_a_walk_that_breaks_or_runs_out_finds_nothing(self):
        broken = self.walk(self.headers[:10] + self.headers[11:])
        self.assertTrue(broken.broken)
        self.assertIsNone(broken.found)
        self.assertFalse(broken.covers(self.headers[0]))
        short = self.walk(self.headers, budget=10_000)
        self.assertIsNone(short.found)
        self.assertTrue(short.exhausted)


def PARAMS_GENESIS():
    from archivas.chain.block import genesis_block

    return genesis_block(PARAMS).hash


class OptionTests(unittest.TestCase):
    def options(self, *argv):
        o = Options(environ={}, exit_on_error=False)
        o.parseOptions(list(argv))
        return o

    def test_the_option_and_the_parameter(self):
        h = "ab" * 32
        self.assertIsNone(self.options()["assume-valid"])
        self.assertEqual(self.options("--assume-valid", "0")["assume-valid"], "0")
        self.assertEqual(self.options("--assume-valid", h.upper())["assume-valid"], h.upper())
        with self.assertRaises(usage.UsageError):
            self.options("--assume-valid", "12ab")
        params = dataclasses.replace(PARAMS, assume_valid=bytes.fromhex(h))
        self.assertEqual(assumed.resolve(None, params), bytes.fromhex(h))
        self.assertIsNone(assumed.resolve("0", params))
        self.assertEqual(assumed.resolve("cd" * 32, params), bytes.fromhex("cd" * 32))
        self.assertEqual(assumed.resolve(h.upper(), PARAMS), bytes.fromhex(h))
        self.assertIsNone(assumed.resolve(None, PARAMS))
        for name in network_params.NETWORKS:
            self.assertIsNone(network_params.load(name).assume_valid)
        doc = {**_json(network_params.load("fastnet")), "assumeValid": h}
        self.assertEqual(network_params.from_json(doc).assume_valid, bytes.fromhex(h))
        with self.assertRaises(ValueError):
            network_params.from_json({**doc, "assumeValid": "xyz"})


    def test_the_config_file_and_the_service_take_it(self):
        from twisted.internet.testing import MemoryReactorClock

        from archivas.service import node_service

        path = self.mktemp()
        with open(path, "w") as f:
            f.write('assume-valid = "0"\n')
        self.assertEqual(self.options("--config", path)["assume-valid"], "0")
        self.assertEqual(self.options("--config", path, "--assume-valid", "cd" * 32)["assume-valid"], "cd" * 32)
        for option, want in (("cd" * 32, bytes.fromhex("cd" * 32)), ("0", None), (None, None)):
            top = node_service(db=self.mktemp(), network="fastnet", reactor=MemoryReactorClock(), assume_valid=option)
            top.node.chain.close()
            self.assertEqual(top.node.assume_valid, want)


def _json(params):
    import json
    from importlib import resources

    return json.loads(resources.files("archivas.chain").joinpath(f"networks/{params.name}.json").read_text())


class AssumedShapeTests(unittest.TestCase):
    def test_an_assumed_header_gets_the_shape_checks_of_any_header(self):
        # (One function for both: the copy had missed the iterations bounds of block version 2.)
        from archivas.chain.consensus import BlockRejected

        header = fixture_blocks(3)[2].header
        self.assertEqual(assumed.check_header(header, PARAMS), assumed.ASSUMED_SCORE)
        for change, reason in ((dict(vdf_iterations=0), "bad_vdf_iterations"), (dict(version=1), "malformed"),
                               (dict(vdf=()), "no_vdf"), (dict(reward_address="x"), "bad_reward_address")):
            with self.assertRaises(BlockRejected) as refused:
                assumed.check_header(dataclasses.replace(header, **change), PARAMS)
            self.assertEqual(refused.exception.reason, reason)
