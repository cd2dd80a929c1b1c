"""The OpenAPI document (GET /openapi.json) against a live node: schemathesis generates
requests for every operation (schema-valid and schema-violating ones), sends them over
loopback to a real Node's RPC on the real reactor, and runs all its checks on the answers
(no 500s, documented status codes and content types, answers matching the schemas,
violating requests refused, the admin token required). Then real answers for things that
exist (a confirmed and a pending transfer, a block by hash, a page of history, a peer)
are checked against the same document, since random hashes rarely hit one.

Operator calls get the admin token. POST /peers is left out: it dials whatever address
it is given, and a test must not dial the internet. Where the schema cannot say what is
valid (a bech32 checksum, a signature, a proof, an IP address), a schema-valid request may
be refused with 400, so `positive_data_acceptance` is not run on those operations; every
other check is. /readyz is documented as 503 while not ready (the test node's tip is
old), so `not_a_server_error` is not run on it.
"""

from __future__ import annotations

import json
import os
import random
import traceback

import hypothesis
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from archivas.chain.params import COIN
from archivas.nodeapi import LocalNodeAPI
from archivas.openapi import document
from archivas.rpc import NodeRPC, site
from tests.common import ALICE, BOB, CAROL, builder
from tests.netutil import start_node, wait_until

TOKEN = "a" * 64
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}  # per operation
FEWER = {"POST /submitBlock": 10}  # a whole block of hex strings takes Hypothesis ~0.3 s to draw
LEFT_OUT = {"POST /peers"}
NOT_A_SCHEMA = {"GET /balance/{address}", "GET /address/{address}", "POST /submitTx", "POST /blockTemplate",
                "POST /submitBlock", "POST /vdf/output", "POST /bans", "DELETE /bans/{subnet}",
                "DELETE /peers/{address}"}
SEED = int(os.environ.get("ARCHIVAS_SCHEMATHESIS_SEED") or random.randrange(2**32))


def excluded_checks(label: str) -> list:
    out = []
    if label in NOT_A_SCHEMA:
        out.append(positive_data_acceptance)
    if label == "GET /readyz":
        out.append(not_a_server_error)
    return out


def run_operation(operation, base_url: str, mode: GenerationMode) -> None:
    """Hypothesis over one operation in one mode (in a thread: it blocks on requests)."""
    label = operation.label
    method, path = label.split(" ", 1)
    session = requests.Session()
    secured = "security" in document()["paths"][path][method.lower()]
    headers = {"Authorization": f"Bearer {TOKEN}"} if secured else None

    examples = min(EXAMPLES[mode], FEWER.get(label, EXAMPLES[mode]))

    @hypothesis.seed(SEED)
    @hypothesis.settings(max_examples=examples, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck),
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        case.call_and_validate(base_url=base_url, session=session, headers=headers,
                               excluded_checks=excluded_checks(label), timeout=10)

    try:
        check()
    finally:
        session.close()


class OpenAPITests(unittest.TestCase):
    timeout = 240

    def setUp(self):
        b = builder()
        self.confirmed = b.transfer(ALICE, BOB.address, 2 * COIN, 0)
        self.blocks = [b.make_block(b.genesis, [self.confirmed, b.transfer(BOB, CAROL.address, COIN, 0)])]
        self.blocks += b.extend(self.blocks[0], 2)
        self.handle = start_node(self, blocks=self.blocks)
        self.node = self.handle.node
        self.api = LocalNodeAPI(self.node)
        self.factory = site(NodeRPC(self.api, TOKEN).resource())
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.closed_connections)
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        # a peer, so /peers lists one
        self.peer = start_node(self)
        self.peer.node.peers.dial(self.handle.address)

    async def closed_connections(self):
        """Cut what the HTTP clients left open, and wait until the RPC has none."""
        for proto in list(self.factory.protocols):
            proto.transport.abortConnection()
        await wait_until(lambda: self.factory.open_connections == 0, "the RPC connections to close", 10)

    def schema(self):
        return schemathesis.openapi.from_dict(document())

    @defer.inlineCallbacks
    def test_every_operation_against_a_live_node(self):
        doc = yield threads.deferToThread(lambda: requests.get(self.url + "/openapi.json", timeout=10).json())
        self.assertEqual(doc, json.loads(json.dumps(document())))
        schema = self.schema()
        operations = [op.ok() for op in schema.get_all_operations()]
        labels = {op.label for op in operations}
        self.assertEqual(len(labels), len(document()["paths"]) + 2)  # /peers and /bans have two methods each
        failures = []
        for operation in operations:
            if operation.label in LEFT_OUT:
                continue
            method, path = operation.label.split(" ", 1)
            spec = document()["paths"][path][method.lower()]
            for mode in EXAMPLES:
                if mode is GenerationMode.NEGATIVE and not (spec.get("parameters") or spec.get("requestBody")):
                    continue  # nothing a request could get wrong
                try:
                    yield threads.deferToThread(run_operation, operation, self.url, mode)
                except (Exception, BaseExceptionGroup) as e:  # every failure is reported together below
                    failures.append(f"{operation.label} ({mode.value}): {type(e).__name__}: {e}\n"
                                    + "".join(traceback.format_exception_only(type(e), e))[:3000])
        self.assertFalse(failures, f"schemathesis seed {SEED} (ARCHIVAS_SCHEMATHESIS_SEED replays it):\n\n"
                         + "\n\n".join(failures))
        self.assertEqual(self.node.chain.height, 3, "the generated requests changed the chain")

    @defer.inlineCallbacks
    def test_real_answers_match_the_document(self):
        yield defer.ensureDeferred(wait_until(lambda: bool(self.api.peers()), "the peer to connect"))
        pending = builder().transfer(CAROL, ALICE.address, COIN // 2, 0)
        self.node.submit_transaction(pending)
        schema = self.schema()
        block = self.blocks[0]
        cases = [
            ("/tx/{hash}", "GET", {"path_parameters": {"hash": self.confirmed.hash.hex()}}, 200),
            ("/tx/{hash}", "GET", {"path_parameters": {"hash": pending.hash.hex()}}, 200),
            ("/block/{id}", "GET", {"path_parameters": {"id": block.hash.hex()}}, 200),
            ("/block/{id}", "GET", {"path_parameters": {"id": "0"}}, 200),
            ("/address/{address}", "GET", {"path_parameters": {"address": BOB.address}, "query": {"limit": 1}}, 200),
            ("/address/{address}", "GET", {"path_parameters": {"address": BOB.address},
                                           "query": {"limit": 1, "before": 1}}, 200),
            ("/balance/{address}", "GET", {"path_parameters": {"address": ALICE.address}}, 200),
            ("/mempool", "GET", {}, 200),
            ("/peers", "GET", {}, 200),
            ("/status", "GET", {}, 200),
            ("/bans", "POST", {"body": {"address": "203.0.113.0/24", "seconds": 60, "reason": "test"},
                               "headers": {"Authorization": f"Bearer {TOKEN}"}}, 200),
            ("/bans", "GET", {"headers": {"Authorization": f"Bearer {TOKEN}"}}, 200),
            ("/bans/{subnet}", "DELETE", {"path_parameters": {"subnet": "203.0.113.0_24"},
                                          "headers": {"Authorization": f"Bearer {TOKEN}"}}, 200),
            ("/submitTx", "POST", {"body": pending.to_json()}, 200),
        ]

        def call_all():
            out = []
            for path, method, kwargs, status in cases:
                case = schema[path][method].Case(**kwargs)
                response = case.call_and_validate(base_url=self.url, timeout=10)
                out.append((path, method, response.status_code, status, response.json()))
            return out

        answers = yield threads.deferToThread(call_all)
        for path, method, got, want, body in answers:
            self.assertEqual(got, want, (path, method, body))
        by_path = {(p, m, i): body for i, (p, m, _, _, body) in enumerate(answers)}
        self.assertEqual(by_path[("/tx/{hash}", "GET", 0)]["status"], "confirmed")
        self.assertEqual(by_path[("/tx/{hash}", "GET", 1)]["status"], "pending")
        self.assertEqual(len(by_path[("/address/{address}", "GET", 4)]["transactions"]), 2)  # one block, both
        self.assertEqual(len(by_path[("/peers", "GET", 8)]), 1)

    def test_the_contract_fields_are_required(self):
        schemas = document()["components"]["schemas"]
        contract = {
            "Healthz": {"ok"},
            "Status": {"height", "tipHash", "difficulty", "weight", "peers", "syncing", "genesisHash", "network",
                       "version", "sync"},
            "Sync": {"active", "targetHeight", "blocksPerSecond", "etaSeconds"},
            "ChainTip": {"height", "hash", "difficulty"},
            "Balance": {"address", "balance", "nonce"},
            "Peer": {"address", "direction", "height", "lastSeen"},
            "Error": {"error"},
            "Block": {"header", "transactions"},
            "TransferStatus": {"hash", "from", "to", "amount", "fee", "nonce", "status", "blockHeight", "blockHash",
                               "timestamp"},
            "Mempool": {"count", "bytes", "transactions"},
            "AddressHistory": {"address", "balance", "nonce", "transactions"},
            "IndexedTransfer": {"hash", "from", "to", "amount", "fee", "blockHeight", "timestamp"},
        }
        for name, fields in contract.items():
            self.assertLessEqual(fields, set(schemas[name]["required"]), name)
        submit = document()["paths"]["/submitTx"]["post"]["responses"]
        self.assertEqual(submit["200"]["content"]["application/json"]["schema"]["required"], ["txHash"])
        self.assertIn("400", submit)
        self.assertIn("404", document()["paths"]["/block/{id}"]["get"]["responses"])
        self.assertIn("400", document()["paths"]["/balance/{address}"]["get"]["responses"])

