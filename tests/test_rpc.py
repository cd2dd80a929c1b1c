"""The JSON RPC (SPEC §3): every route through its Klein resource with StubTreq (no
sockets), malformed input, the timelord and farmer flows, the HTTP client against the real
resource, and the body limit on a loopback listener."""

import dataclasses
import json

import bech32
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from archivas import __version__
from archivas.chain import vdf
from archivas.chain.block import Block, child_discriminant_seed, child_origin, child_seed, sign_header
from archivas.chain.iterations import EPOCH_BLOCKS
from archivas.chain.params import COIN
from archivas.chain.transactions import sign_transfer
from archivas.client import HttpNodeAPI
from archivas.farmer.plots import best_win
from archivas.nodeapi import ApiError, LocalNodeAPI
from archivas.protocols import wire
from archivas.rpc import MAX_BODY_BYTES, NodeRPC, site
from tests.common import ALICE, BOB, CAROL, PARAMS, builder
from tests.test_protocol import Harness, feed, handshake

SPEC_STATUS_FIELDS = {"height", "tipHash", "difficulty", "weight", "peers", "syncing", "genesisHash",
                      "network", "version"}
POST_ROUTES = ("/submitTx", "/blockTemplate", "/submitBlock", "/vdf/output")
ODD_BODIES = (
    b"", b"[]", b"{}", b"null", b"1", b"-1", b"true", b'"text"', b"1" * 5000, b"1e999", b"NaN",
    b"[" * 50 + b"]" * 50, b'{"a": ' * 50 + b"1" + b"}" * 50, b"\xff\xfe\x00garbage", b"{", b"\x00",
    json.dumps({"parentHash": 5, "index": "1", "proofOfSpace": [], "rewardAddress": None}).encode(),
    json.dumps({"header": [], "transactions": {}}).encode(),
    json.dumps({"header": {"vdf": [1, 2]}, "transactions": [None]}).encode(),
    json.dumps({"parentHash": "00" * 32, "index": 10**30, "output": "zz" * 100, "proof": "00"}).encode(),
)
_NO_BODY = object()


class RPCCase(unittest.TestCase):
    """A node on a task.Clock (threaded=False) with `preload` builder blocks, and its RPC
    resource behind StubTreq: every request completes synchronously."""

    preload = 0

    def setUp(self):
        b = builder()
        self.blocks = b.extend(b.genesis, self.preload)
        self.h = Harness(self, self.blocks)
        self.node = self.h.node
        self.api = LocalNodeAPI(self.node)
        self.resource = NodeRPC(self.api).resource()
        self.http = StubTreq(self.resource)

    def request(self, method, path, body=_NO_BODY, raw=None):
        """(status, decoded JSON answer); every answer, error or not, is JSON."""
        data = raw if raw is not None else None if body is _NO_BODY else json.dumps(body).encode()
        d = self.http.request(method, "http://node" + path, data=data)
        d.addCallback(lambda r: self.http.content(r).addCallback(lambda content: (r, content)))
        self.http.flush()
        response, content = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"], path)
        return response.code, json.loads(content)

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body=_NO_BODY, raw=None):
        return self.request("POST", path, body, raw)

    def assertError(self, answer, status, *fragments):
        code, doc = answer
        self.assertEqual(code, status, doc)
        self.assertEqual(list(doc), ["error"])
        self.assertIsInstance(doc["error"], str)
        for fragment in fragments:
            self.assertIn(fragment, doc["error"])

    def ok(self, answer):
        code, doc = answer
        self.assertEqual(code, 200, doc)
        return doc

    # the standalone timelord and farmer, over the RPC

    def timelord_step(self):
        """One VDF segment on the tip: /vdf/job, compute, /vdf/output."""
        job = self.ok(self.get("/vdf/job"))
        segment = vdf.prove_segment(bytes.fromhex(job["discriminantSeed"]), bytes.fromhex(job["lastOutput"]),
                                    job["discriminantBits"], job["iterations"])
        answer = self.post("/vdf/output", {"parentHash": job["parentHash"], "index": job["segments"] + 1,
                                           "output": segment.output.hex(), "proof": segment.proof.hex()})
        return job, segment, answer

    def find_win(self, max_segments=20):
        """Segments until a test plot wins a signage point: (signage points, point, win)."""
        plots = [plot for _, plot in builder().farmers]
        for _ in range(max_segments):
            self.ok(self.timelord_step()[2])
            points = self.ok(self.get("/signagePoints"))
            point = points["signagePoints"][-1]
            win = best_win(plots, bytes.fromhex(point["challenge"]), points["difficulty"], points["kMin"],
                           points["plotFilterBits"])
            if win is not None:
                return points, point, win
        self.fail(f"no test plot won within {max_segments} segments")

    def template_request(self, points, point, win, reward_address=None):
        return {"parentHash": points["parentHash"], "index": point["index"], "proofOfSpace": win.proof.to_json(),
                "rewardAddress": reward_address or CAROL.address}

    def signed_block(self, template, win):
        """What the farmer does locally: sign the template's header with its plot's key."""
        block = Block.from_json(template)
        key = builder().keys_by_pk[win.proof.farmer_public_key]
        return Block(sign_header(block.header, key), block.transactions)

    def farm(self, reward_address=None):
        """signagePoints -> blockTemplate -> sign -> the signed block (not yet submitted)."""
        points, point, win = self.find_win()
        template = self.ok(self.post("/blockTemplate", self.template_request(points, point, win, reward_address)))
        return points, point, win, self.signed_block(template, win)


class ReadTests(RPCCase):
    preload = 2

    def test_healthz(self):
        self.assertEqual(self.ok(self.get("/healthz")), {"ok": True, "height": 2, "network": "fastnet"})

    def test_status_has_every_spec_field(self):
        status = self.ok(self.get("/status"))
        self.assertLessEqual(SPEC_STATUS_FIELDS, set(status))
        tip = self.node.chain.tip
        self.assertEqual(
            {k: status[k] for k in SPEC_STATUS_FIELDS},
            {"height": 2, "tipHash": self.blocks[-1].hash.hex(), "difficulty": tip.difficulty,
             "weight": tip.weight, "peers": 0, "syncing": False, "genesisHash": builder().genesis.hash.hex(),
             "network": "fastnet", "version": __version__},
        )
        self.assertEqual(status["mempool"], 0)

    def test_chain_tip(self):
        tip = {"height": 2, "hash": self.blocks[-1].hash.hex(), "difficulty": self.node.chain.tip.difficulty}
        self.assertEqual(self.ok(self.get("/chainTip")), tip)

    def test_balances_from_genesis(self):
        for key, balance in ((ALICE, 1000 * COIN), (BOB, 500 * COIN), (CAROL, 0)):
            self.assertEqual(self.ok(self.get(f"/balance/{key.address}")),
                             {"address": key.address, "balance": balance, "nonce": 0, "pendingNonce": 0})

    def test_malformed_address_is_400(self):
        good = ALICE.address
        other_prefix = bech32.bech32_encode("bc", bech32.bech32_decode(good)[1])
        short = bech32.bech32_encode("arcv", bech32.convertbits(b"\x01" * 19, 8, 5))
        flipped = good[:-1] + ("q" if good[-1] != "q" else "p")
        for address in ("xyz", good.upper(), flipped, other_prefix, short, good + "q" * 80, "%00", "%E2%82%AC"):
            with self.subTest(address=address):
                self.assertError(self.get(f"/balance/{address}"), 400, "malformed address")

    def test_block_at_height(self):
        self.assertEqual(self.ok(self.get("/block/0")), builder().genesis.to_json())
        for block in self.blocks:
            self.assertEqual(self.ok(self.get(f"/block/{block.height}")), block.to_json())
        self.assertEqual(Block.from_json(self.ok(self.get("/block/2"))), self.blocks[1])

    def test_block_above_tip_is_404(self):
        for height in ("3", "1000", "9" * 18):
            with self.subTest(height=height):
                self.assertError(self.get(f"/block/{height}"), 404, "no block at height", "tip is 2")

    def test_block_height_not_an_integer_is_400(self):
        for height in ("abc", "-1", "1.5", "0x1", "1e3", "9" * 19, "%201", "1%00", "%E2%82%AC"):
            with self.subTest(height=height):
                self.assertError(self.get(f"/block/{height}"), 400, "height must be a non-negative integer")

    def test_block_height_with_unicode_digit_is_400(self):
        # '²' and '①' are str.isdigit() but int() refuses them.
        for height in ("%C2%B2", "%E2%91%A0"):
            with self.subTest(height=height):
                self.assertError(self.get(f"/block/{height}"), 400, "height must be a non-negative integer")

    def test_peers(self):
        self.assertEqual(self.ok(self.get("/peers")), [])
        proto, _ = self.h.connect(host="10.0.0.7")
        handshake(proto, node_id=b"\x05" * 16, genesis=self.node.genesis_hash)
        from tests.test_protocol import peer_identity

        feed(proto, wire.Ping(5))
        (peer,) = self.ok(self.get("/peers"))
        counters = {k: peer.pop(k) for k in ("messagesIn", "bytesIn", "messagesOut", "bytesOut")}
        self.assertEqual(
            peer,
            {"address": "10.0.0.7:40000", "direction": "inbound", "slot": "inbound", "state": "ready",
             "height": 0, "weight": 0, "tipHash": "00" * 32, "lastSeen": self.h.clock.seconds(),
             "connectedSince": self.h.clock.seconds(), "nodeId": peer_identity(b"\x05" * 16).node_id.hex(),
             "listenAddress": "10.0.0.7:9999", "pingMs": None, "misbehaviour": 0},
        )
        self.assertEqual(counters["messagesIn"], {"STATUS": 1, "HELLO": 1, "HELLO_ACK": 1, "PING": 1})
        self.assertEqual(counters["messagesOut"]["PONG"], 1)
        self.assertGreater(counters["bytesOut"]["HELLO"], 100)
        status = self.ok(self.get("/status"))
        self.assertEqual((status["peers"], status["peersIn"], status["peersOut"]), (1, 1, 0))


class SubmitTxTests(RPCCase):
    def test_valid_transfer_enters_the_mempool(self):
        tx = builder().transfer(ALICE, CAROL.address, 5 * COIN, 0)
        self.assertEqual(self.ok(self.post("/submitTx", tx.to_json())), {"txHash": tx.hash.hex()})
        self.assertIn(tx.hash, self.node.mempool)
        self.assertEqual(self.ok(self.get(f"/balance/{ALICE.address}"))["pendingNonce"], 1)
        self.assertEqual(self.ok(self.get("/status"))["mempool"], 1)
        # the same transfer again is answered with its hash, and is still there once
        self.assertEqual(self.ok(self.post("/submitTx", tx.to_json())), {"txHash": tx.hash.hex()})
        self.assertEqual(len(self.node.mempool), 1)

    def test_body_not_json(self):
        for raw in (b"{", b"not json", b"\xff\xfe\xfd", b"1" * 5000):
            with self.subTest(raw=raw[:10]):
                self.assertError(self.post("/submitTx", raw=raw), 400, "request body is not JSON")

    def test_wrong_shape(self):
        doc = builder().transfer(ALICE, CAROL.address, 1, 0).to_json()
        shapes = [None, [], 7, "tx", {}, {**doc, "extra": 1}, {k: v for k, v in doc.items() if k != "fee"},
                  {**doc, "amount": "1"}, {**doc, "amount": True}, {**doc, "amount": 2**64},
                  {**doc, "publicKey": "zz" * 32}, {**doc, "signature": doc["signature"].upper()}]
        for shape in shapes:
            with self.subTest(shape=shape):
                self.assertError(self.post("/submitTx", shape), 400, "malformed")
        self.assertEqual(len(self.node.mempool), 0)

    def test_each_refusal_names_its_reason(self):
        b = builder()
        good = b.transfer(ALICE, CAROL.address, 1, 0)
        forged = {**good.to_json(), "signature": ("00" * 64)}
        other_chain = dataclasses.replace(PARAMS, chain_id=PARAMS.chain_id + 1)
        cases = [
            (forged, "bad_signature"),
            ({**good.to_json(), "amount": 2}, "bad_signature"),
            (b.transfer(CAROL, ALICE.address, 1, 0).to_json(), "insufficient_balance"),
            (b.transfer(BOB, CAROL.address, 500 * COIN, 0).to_json(), "insufficient_balance"),
            (b.transfer(ALICE, CAROL.address, 1, 5).to_json(), "nonce_gap"),
            (b.transfer(ALICE, CAROL.address, 1, 0, fee=1).to_json(), "fee_too_low"),
            (b.transfer(ALICE, CAROL.address, 0, 0).to_json(), "non_positive_amount"),
            (sign_transfer(ALICE, other_chain, CAROL.address, 1, PARAMS.min_fee, 0).to_json(), "wrong_chain"),
            ({**good.to_json(), "to": "arcv1nope"}, "bad_address"),
            ({**good.to_json(), "publicKey": BOB.public_key.hex()}, "key_mismatch"),
        ]
        for doc, reason in cases:
            with self.subTest(reason=reason):
                self.assertError(self.post("/submitTx", doc), 400, reason)
        self.assertEqual(len(self.node.mempool), 0)


class TimelordTests(RPCCase):
    def test_job_output_and_signage_point(self):
        genesis = builder().genesis
        seed = child_seed(genesis.header, PARAMS)
        dseed, origin = child_discriminant_seed(genesis.header, PARAMS), child_origin(genesis.header, PARAMS)
        job = self.ok(self.get("/vdf/job"))
        self.assertEqual(job, {"parentHash": genesis.hash.hex(), "seed": seed.hex(), "discriminantSeed": dseed.hex(),
                               "discriminantBits": PARAMS.discriminant_bits, "iterations": PARAMS.vdf_iterations,
                               "segments": 0, "lastOutput": origin.hex()})
        self.assertNotEqual(origin, vdf.GENERATOR)
        self.assertEqual(self.ok(self.get("/signagePoints"))["signagePoints"], [])

        segment = vdf.prove_segment(dseed, origin, PARAMS.discriminant_bits, PARAMS.vdf_iterations)
        output = {"parentHash": job["parentHash"], "index": 1, "output": segment.output.hex(),
                  "proof": segment.proof.hex()}
        self.assertEqual(self.ok(self.post("/vdf/output", output)), {"accepted": True, "segments": 1})
        self.assertEqual(self.node.vdf_segments, [segment])

        points = self.ok(self.get("/signagePoints"))
        self.assertEqual(points, {
            "parentHash": genesis.hash.hex(), "height": 1, "difficulty": PARAMS.initial_difficulty,
            "kMin": PARAMS.k_min, "plotFilterBits": PARAMS.plot_filter_bits,
            "signagePoints": [{"index": 1, "challenge": vdf.signage_challenge(seed, segment.output).hex()}],
        })
        job = self.ok(self.get("/vdf/job"))
        self.assertEqual((job["segments"], job["lastOutput"]), (1, segment.output.hex()))
        # the same segment again is out of order now
        self.assertError(self.post("/vdf/output", output), 409, "not accepted")

    def test_refused_outputs(self):
        job = self.ok(self.get("/vdf/job"))
        dseed = bytes.fromhex(job["discriminantSeed"])
        segment = vdf.prove_segment(dseed, bytes.fromhex(job["lastOutput"]), PARAMS.discriminant_bits,
                                    PARAMS.vdf_iterations)
        # the same work from the generator (where version 3 started) or in another epoch's
        # group: valid Wesolowski proofs, of other work
        from_generator = vdf.prove_segment(dseed, vdf.GENERATOR, PARAMS.discriminant_bits, PARAMS.vdf_iterations)
        other = b"\x05" * 32
        other_group = vdf.prove_segment(other, vdf.origin(other, bytes.fromhex(job["seed"]), PARAMS.discriminant_bits),
                                        PARAMS.discriminant_bits, PARAMS.vdf_iterations)
        good = {"parentHash": job["parentHash"], "index": 1, "output": segment.output.hex(),
                "proof": segment.proof.hex()}
        malformed = [[], {}, {**good, "index": 0}, {**good, "index": True}, {**good, "index": "1"},
                     {**good, "output": segment.output.hex()[:-2]}, {**good, "proof": "zz" * 100},
                     {**good, "parentHash": "00"}, {k: v for k, v in good.items() if k != "proof"}]
        for doc in malformed:
            with self.subTest(doc=doc):
                self.assertError(self.post("/vdf/output", doc), 400, "bad VDF output")
        unacceptable = [{**good, "parentHash": "11" * 32}, {**good, "index": 2}, {**good, "index": 10**30},
                        {**good, "proof": "00" * 100}, {**good, "output": "00" * 100},
                        {**good, "output": vdf.GENERATOR.hex(), "proof": vdf.GENERATOR.hex()},
                        {**good, "output": from_generator.output.hex(), "proof": from_generator.proof.hex()},
                        {**good, "output": other_group.output.hex(), "proof": other_group.proof.hex()}]
        for doc in unacceptable:
            with self.subTest(doc=doc):
                self.assertError(self.post("/vdf/output", doc), 409, "not accepted")
        self.assertEqual(self.node.vdf_segments, [])
        self.assertEqual(self.ok(self.post("/vdf/output", good))["segments"], 1)


class RetargetedIterationsTests(RPCCase):
    preload = 2 * EPOCH_BLOCKS  # block 9 is the first whose iterations retarget

    def test_job_output_and_template_use_the_tips_iterations(self):
        want = self.node.chain.next_iterations(self.node.chain.tip.hash)
        self.assertNotEqual(want, PARAMS.vdf_iterations)
        job = self.ok(self.get("/vdf/job"))
        self.assertEqual(job["iterations"], want)
        # a segment of the initial iterations proves other work: refused
        stale = vdf.prove_segment(bytes.fromhex(job["discriminantSeed"]), bytes.fromhex(job["lastOutput"]),
                                  PARAMS.discriminant_bits, PARAMS.vdf_iterations)
        self.assertError(self.post("/vdf/output", {"parentHash": job["parentHash"], "index": 1,
                                                   "output": stale.output.hex(), "proof": stale.proof.hex()}),
                         409, "not accepted")
        self.assertEqual(self.node.vdf_segments, [])
        _, _, _, block = self.farm()
        self.assertEqual(block.header.vdf_iterations, want)
        self.assertEqual(self.ok(self.post("/submitBlock", block.to_json()))["status"], "tip")


class FarmerTests(RPCCase):
    def test_farm_a_block_over_the_rpc(self):
        tx = builder().transfer(ALICE, CAROL.address, 3 * COIN, 0)
        self.ok(self.post("/submitTx", tx.to_json()))
        points, point, win = self.find_win()
        template = self.ok(self.post("/blockTemplate", self.template_request(points, point, win)))

        header = template["header"]
        self.assertEqual(header["farmerSignature"], "")  # the node never signs: the farmer does
        self.assertEqual((header["height"], header["parentHash"], header["difficulty"], header["rewardAddress"]),
                         (1, points["parentHash"], points["difficulty"], CAROL.address))
        self.assertEqual(header["proofOfSpace"], win.proof.to_json())
        self.assertEqual(len(header["vdf"]), point["index"])
        self.assertEqual(header["reward"], PARAMS.block_reward + tx.fee)
        self.assertEqual(template["transactions"], [tx.to_json()])
        self.assertEqual(header["timestamp"], int(self.h.clock.seconds() * 1000))

        block = self.signed_block(template, win)
        self.assertEqual(self.ok(self.post("/submitBlock", block.to_json())),
                         {"hash": block.hash.hex(), "height": 1, "status": "tip"})
        self.assertEqual(self.node.chain.height, 1)
        self.assertEqual(self.ok(self.get("/chainTip"))["hash"], block.hash.hex())
        self.assertEqual(self.ok(self.get("/block/1")), block.to_json())
        self.assertEqual(len(self.node.mempool), 0)
        self.assertEqual(self.ok(self.get(f"/balance/{CAROL.address}"))["balance"],
                         PARAMS.block_reward + tx.fee + tx.amount)
        self.assertEqual(self.ok(self.get(f"/balance/{ALICE.address}"))["nonce"], 1)
        # the next height starts from no signage points, on the new tip
        points = self.ok(self.get("/signagePoints"))
        self.assertEqual((points["parentHash"], points["height"], points["signagePoints"]), (block.hash.hex(), 2, []))
        self.assertEqual(self.ok(self.get("/vdf/job"))["parentHash"], block.hash.hex())
        # a second block on top, and a resubmission is "known"
        _, _, _, second = self.farm()
        self.assertEqual(self.ok(self.post("/submitBlock", second.to_json()))["status"], "tip")
        self.assertEqual(self.ok(self.post("/submitBlock", second.to_json()))["status"], "known")
        self.assertEqual(self.ok(self.get("/status"))["height"], 2)

    def test_tampered_block_is_400_with_the_reason(self):
        _, _, win, block = self.farm()
        key = builder().keys_by_pk[win.proof.farmer_public_key]
        later = dataclasses.replace(block.header, timestamp=block.header.timestamp + 1)
        richer = sign_header(dataclasses.replace(block.header, reward=block.header.reward + 1), key)
        no_vdf = sign_header(dataclasses.replace(block.header, vdf=()), key)
        # the real last output (the proof of space wins its challenge) with a garbage proof
        bad_segment = vdf.Segment(block.header.vdf[-1].output, b"\x02" * vdf.FORM_SIZE)
        garbage_vdf = sign_header(dataclasses.replace(block.header, vdf=block.header.vdf[:-1] + (bad_segment,)), key)
        cases = [(later, "bad_farmer_signature"), (richer, "bad_reward"), (no_vdf, "no_vdf"),
                 (garbage_vdf, "bad_vdf")]
        for header, reason in cases:
            with self.subTest(reason=reason):
                answer = self.post("/submitBlock", Block(header, block.transactions).to_json())
                self.assertError(answer, 400, "block rejected", reason)
        self.assertEqual(self.node.chain.height, 0)
        self.assertEqual(self.ok(self.post("/submitBlock", block.to_json()))["status"], "tip")

    def test_rejected_block_sent_again_is_still_400(self):
        _, _, _, block = self.farm()
        tampered = Block(dataclasses.replace(block.header, timestamp=block.header.timestamp + 1), block.transactions)
        self.assertError(self.post("/submitBlock", tampered.to_json()), 400, "bad_farmer_signature")
        self.assertError(self.post("/submitBlock", tampered.to_json()), 400, "block rejected")

    def test_malformed_block_is_400(self):
        _, _, _, block = self.farm()
        doc = block.to_json()
        cases = [[], {}, {"transactions": []}, {**doc, "header": []},
                 {**doc, "header": {**doc["header"], "height": -1}},
                 {**doc, "header": {**doc["header"], "vdf": "none"}},
                 {**doc, "header": {**doc["header"], "parentHash": "00"}},
                 {**doc, "transactions": [{"from": ALICE.address}]},
                 {**doc, "allocation": "all of it"}]
        for case in cases:
            with self.subTest(case=case if not isinstance(case, dict) else sorted(case)):
                self.assertError(self.post("/submitBlock", case), 400, "malformed block")
        self.assertEqual(self.node.chain.height, 0)

    def test_block_on_an_unknown_parent_is_409(self):
        b = builder()
        second = b.extend(b.genesis, 2)[1]
        self.assertError(self.post("/submitBlock", second.to_json()), 409, "parent unknown")
        self.assertEqual(self.node.chain.height, 0)

    def test_template_for_a_stale_parent_is_409(self):
        points, point, win, block = self.farm()
        self.ok(self.post("/submitBlock", block.to_json()))
        stale = self.template_request(points, point, win)
        self.assertError(self.post("/blockTemplate", stale), 409, "the tip moved on")

    def test_template_for_a_missing_signage_point_is_409(self):
        points, point, win = self.find_win()
        for index in (0, -1, point["index"] + 1, 10**30):
            with self.subTest(index=index):
                request = {**self.template_request(points, point, win), "index": index}
                self.assertError(self.post("/blockTemplate", request), 409, "no signage point")

    def test_malformed_template_request_is_400(self):
        points, point, win = self.find_win()
        good = self.template_request(points, point, win)
        cases = [[], {}, {**good, "parentHash": "xyz"}, {**good, "index": "1"}, {**good, "index": True},
                 {**good, "index": None}, {**good, "proofOfSpace": None},
                 {**good, "proofOfSpace": {**good["proofOfSpace"], "k": "18"}},
                 {**good, "rewardAddress": "arcv1nope"}, {**good, "rewardAddress": 5},
                 {k: v for k, v in good.items() if k != "rewardAddress"}]
        for case in cases:
            with self.subTest(case=case):
                self.assertError(self.post("/blockTemplate", case), 400, "bad template request")


class RobustnessTests(RPCCase):
    def test_unknown_route_is_404_json(self):
        for path in ("/nope", "/balance/", "/block/", "/block/1/extra", "/vdf", "/status/"):  # "/" is the explorer
            with self.subTest(path=path):
                self.assertError(self.get(path), 404, "Not Found")

    def test_wrong_method_is_405_json(self):
        cases = [("POST", "/status"), ("POST", "/healthz"), ("GET", "/submitTx"), ("PUT", "/blockTemplate"),
                 ("DELETE", "/block/0"), ("GET", "/vdf/output"), ("POST", "/vdf/job"), ("PATCH", "/peers")]
        for method, path in cases:
            with self.subTest(method=method, path=path):
                self.assertError(self.request(method, path), 405, "Method Not Allowed")

    def test_odd_input_never_yields_a_500(self):
        for path in POST_ROUTES:
            for raw in ODD_BODIES:
                with self.subTest(path=path, body=raw[:20]):
                    code, doc = self.post(path, raw=raw)
                    self.assertIn(code, (400, 409), doc)
                    self.assertIsInstance(doc["error"], str)
        for path in ("/balance/" + "a" * 5000, "/block/" + "1" * 5000, "/balance/arcv1%0A", "/block/%00",
                     "/chainTip?x=%FF", "/status?height=1", "/peers?"):
            with self.subTest(path=path[:30]):
                code, _ = self.get(path)
                self.assertLess(code, 500)
        self.assertEqual(self.node.chain.height, 0)
        self.assertEqual(len(self.node.mempool), 0)

    def test_deeply_nested_json_is_400(self):
        for path in POST_ROUTES:
            with self.subTest(path=path):
                self.assertError(self.post(path, raw=b"[" * 100_000), 400, "request body is not JSON")

    def test_non_utf8_path_is_400_json(self):
        for path in ("/balance/%FF", "/block/%C3%28"):
            with self.subTest(path=path):
                self.assertError(self.get(path), 400)


class ClientTests(RPCCase):
    """archivas.client.HttpNodeAPI against the real resource, through StubTreq."""

    preload = 1

    def setUp(self):
        super().setUp()
        self.client = HttpNodeAPI("http://node/", http=self.http)

    def call(self, d):
        self.http.flush()
        return self.successResultOf(d)

    def call_fails(self, d):
        self.http.flush()
        return self.failureResultOf(d, ApiError).value

    def test_reads_match_the_local_api(self):
        self.assertEqual(self.call(self.client.status()), self.api.status())
        self.assertEqual(self.call(self.client.healthz()), self.api.healthz())
        self.assertEqual(self.call(self.client.chain_tip()), self.api.chain_tip())
        self.assertEqual(self.call(self.client.block(1)), self.blocks[0].to_json())
        self.assertEqual(self.call(self.client.balance(BOB.address))["balance"], 500 * COIN)
        self.assertEqual(self.call(self.client.peers()), [])
        self.assertEqual(self.call(self.client.signage_points()), self.api.signage_points())

    def test_errors_are_api_errors_with_status_and_message(self):
        error = self.call_fails(self.client.balance("xyz"))
        self.assertEqual(error.status, 400)
        self.assertTrue(error.message.startswith("malformed address"), error.message)
        error = self.call_fails(self.client.block(5))
        self.assertEqual((error.status, error.message), (404, "no block at height 5 (tip is 1)"))
        error = self.call_fails(self.client.submit_tx({"amount": 1}))
        self.assertEqual(error.status, 400)
        self.assertIn("malformed", error.message)
        error = self.call_fails(self.client.block_template({"parentHash": "00" * 32, "index": 1,
                                                            "proofOfSpace": None, "rewardAddress": CAROL.address}))
        self.assertEqual(error.status, 400)

    def test_transfer_and_timelord_through_the_client(self):
        tx = builder().transfer(BOB, CAROL.address, COIN, 0)
        self.assertEqual(self.call(self.client.submit_tx(tx.to_json())), {"txHash": tx.hash.hex()})
        self.assertIn(tx.hash, self.node.mempool)
        job = self.call(self.client.vdf_job())
        segment = vdf.prove_segment(bytes.fromhex(job["discriminantSeed"]), bytes.fromhex(job["lastOutput"]),
                                    job["discriminantBits"], job["iterations"])
        output = {"parentHash": job["parentHash"], "index": 1, "output": segment.output.hex(),
                  "proof": segment.proof.hex()}
        self.assertEqual(self.call(self.client.vdf_output(output)), {"accepted": True, "segments": 1})
        error = self.call_fails(self.client.vdf_output(output))
        self.assertEqual(error.status, 409)
        self.assertEqual(len(self.call(self.client.signage_points())["signagePoints"]), 1)

    def test_farm_through_the_client(self):
        points, point, win = self.find_win()
        template = self.call(self.client.block_template(self.template_request(points, point, win)))
        block = self.signed_block(template, win)
        answer = self.call(self.client.submit_block(block.to_json()))
        self.assertEqual(answer, {"hash": block.hash.hex(), "height": 2, "status": "tip"})
        tampered = Block(dataclasses.replace(block.header, reward=1), block.transactions)  # not signed again
        error = self.call_fails(self.client.submit_block(tampered.to_json()))
        self.assertEqual(error.status, 400)
        self.assertIn("bad_farmer_signature", error.message)  # the cheapest check comes first


@implementer(IBodyProducer)
class _UnknownLengthBody:
    """A body sent chunked (no Content-Length)."""

    length = UNKNOWN_LENGTH

    def __init__(self, data, chunk=256 * 1024):
        self.data, self.chunk = data, chunk

    def startProducing(self, consumer):
        for i in range(0, len(self.data), self.chunk):
            consumer.write(self.data[i:i + self.chunk])
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class BodyLimitTests(unittest.TestCase):
    """LimitedRequest is the Site's requestFactory, which StubTreq bypasses: a real
    listener on loopback."""

    def setUp(self):
        self.h = Harness(self)
        resource = NodeRPC(LocalNodeAPI(self.h.node)).resource()
        port = reactor.listenTCP(0, site(resource), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    async def post(self, path, data):
        response = await self.http.post(self.url + path, data=data, timeout=30)
        content = await response.content()
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        return response.code, json.loads(content)

    @defer.inlineCallbacks
    def test_body_over_the_limit_is_413(self):
        for path in POST_ROUTES:
            code, doc = yield defer.ensureDeferred(self.post(path, b"x" * (MAX_BODY_BYTES + 1)))
            self.assertEqual((code, doc), (413, {"error": f"request body over {MAX_BODY_BYTES} bytes"}), path)

    @defer.inlineCallbacks
    def test_chunked_body_over_the_limit_is_413(self):
        body = _UnknownLengthBody(b" " * (MAX_BODY_BYTES + 1))
        code, doc = yield defer.ensureDeferred(self.post("/submitTx", body))
        self.assertEqual((code, doc), (413, {"error": f"request body over {MAX_BODY_BYTES} bytes"}))

    @defer.inlineCallbacks
    def test_body_at_the_limit_reaches_the_route(self):
        body = b" " * (MAX_BODY_BYTES - 2) + b"{}"
        code, doc = yield defer.ensureDeferred(self.post("/submitTx", body))
        self.assertEqual(code, 400)
        self.assertIn("malformed", doc["error"])
        code, doc = yield defer.ensureDeferred(self.post("/submitTx", _UnknownLengthBody(body)))
        self.assertEqual(code, 400)
        self.assertIn("malformed", doc["error"])
