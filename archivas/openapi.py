"""The RPC described as an OpenAPI 3.1 document, served at `GET /openapi.json`.

Every field the contract names (docs/rpc.md: `/healthz`, `/status`, `/chainTip`,
`/balance`, `/block`, `/peers`, `/submitTx`, errors) is marked required, and so is every
field this node always sends. tests/test_openapi.py runs schemathesis against a live node
with this document: no 500s, and every answer matches it. The explorer's HTML pages (`/`,
`/explorer/...`) and its event stream (`/events`) are web pages, not RPC, and are not in it.
"""

from __future__ import annotations

from typing import Any, Optional

from archivas import __version__
from archivas.chain.block import MAX_PROOF_BYTES
from archivas.chain.vdf import FORM_SIZE
from archivas.nodeapi import HISTORY_LIMIT, MAX_HEIGHT, MAX_HISTORY_LIMIT, MAX_MEMPOOL_LISTED
from archivas.protocols.addrman import MAX_ADDRESS_LENGTH
from archivas.protocols.tls import TLS_PREFIX
from archivas.rpc import BODY_TIMEOUT, HEADER_TIMEOUT, MAX_BODY_BYTES, MAX_CONNECTIONS

JSON = "application/json"
MAX_SEGMENTS = 1024  # maxVdfSegments of both networks
MAX_TRANSACTIONS = 2000  # maxBlockTransactions of both networks


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: dict[str, Any], optional: Optional[dict[str, Any]] = None, closed: bool = False,
         description: Optional[str] = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "object", "required": list(required),
                           "properties": {**required, **(optional or {})}}
    if closed:
        doc["additionalProperties"] = False
    if description:
        doc["description"] = description
    return doc


def _hex(nbytes: Optional[int] = None, max_bytes: Optional[int] = None) -> dict[str, Any]:
    if nbytes is not None:
        return {"type": "string", "pattern": f"^[0-9a-f]{{{2 * nbytes}}}$"}
    return {"type": "string", "pattern": "^([0-9a-f]{2})*$", "maxLength": 2 * (max_bytes or 0)}


def _null(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [schema, {"type": "null"}]}


UINT = {"type": "integer", "minimum": 0}
INT = {"type": "integer"}
NUMBER = {"type": "number"}
STRING = {"type": "string"}
BOOL = {"type": "boolean"}
HASH = _hex(32)
ADDRESS = {"type": "string", "pattern": "^arcv1[02-9ac-hj-np-z]{38}$",
           "description": "bech32, prefix arcv, 20 bytes (the checksum is checked too: 400 when it fails)"}
COUNTS = {"type": "object", "additionalProperties": UINT}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": STRING}, closed=True, description="every 4xx (and the one 500) answer"),
    "Healthz": _obj({"ok": {"const": True}, "height": UINT, "network": STRING}),
    "Sync": _obj({"active": BOOL, "targetHeight": UINT, "blocksPerSecond": _null(NUMBER),
                  "etaSeconds": _null(NUMBER)}),
    "Status": _obj({"height": UINT, "tipHash": HASH, "difficulty": UINT, "weight": UINT, "peers": UINT,
                    "syncing": BOOL, "genesisHash": HASH, "network": STRING, "version": STRING,
                    "mempool": UINT, "peersIn": UINT, "peersOut": UINT, "sync": _ref("Sync")},
                   {"history": _null(_obj({"snapshotHeight": UINT, "validated": BOOL})), "indexHeight": UINT}),
    "ChainTip": _obj({"height": UINT, "hash": HASH, "difficulty": UINT}),
    "Balance": _obj({"address": ADDRESS, "balance": UINT, "nonce": UINT, "pendingNonce": UINT}),
    "Transaction": _obj({"chainId": INT, "from": STRING, "to": STRING, "amount": INT, "fee": INT, "nonce": INT,
                         "publicKey": _hex(32), "signature": _hex(64)}, closed=True,
                        description="a signed transfer (exactly these eight fields)"),
    "ProofOfSpace": _obj({"k": INT, "plotNonce": _hex(32), "farmerPublicKey": _hex(32),
                          "proof": _hex(max_bytes=MAX_PROOF_BYTES)}),
    "Segment": _obj({"output": _hex(FORM_SIZE), "proof": _hex(FORM_SIZE)}),
    "Header": _obj({"version": INT, "height": INT, "parentHash": HASH, "timestamp": INT, "difficulty": INT,
                    "vdfIterations": INT, "discriminantSeed": HASH,
                    "vdf": {"type": "array", "items": _ref("Segment"), "maxItems": MAX_SEGMENTS},
                    "proofOfSpace": _null(_ref("ProofOfSpace")), "rewardAddress": STRING, "reward": INT,
                    "txRoot": HASH, "farmerSignature": _hex(max_bytes=64)}),
    "Block": _obj({"header": _ref("Header"),
                   "transactions": {"type": "array", "items": _ref("Transaction"), "maxItems": MAX_TRANSACTIONS}},
                  {"allocation": {"type": "array", "items": {"type": "array", "prefixItems": [STRING, UINT],
                                                             "minItems": 2, "maxItems": 2}}},
                  description="as in BLOCK_DATA; genesis also carries `allocation`"),
    "IndexedTransfer": _obj({"hash": HASH, "from": ADDRESS, "to": ADDRESS, "amount": UINT, "fee": UINT,
                             "nonce": UINT, "blockHeight": UINT, "blockHash": HASH, "index": UINT,
                             "timestamp": UINT}),
    "TransferStatus": _obj({"hash": HASH, "from": ADDRESS, "to": ADDRESS, "amount": UINT, "fee": UINT,
                            "nonce": UINT, "status": {"enum": ["confirmed", "pending"]},
                            "blockHeight": _null(UINT), "blockHash": _null(HASH), "index": _null(UINT),
                            "timestamp": _null(UINT), "confirmations": UINT},
                           description="pending (in the mempool): blockHeight, blockHash, index and timestamp "
                                       "are null"),
    "Mempool": _obj({"count": UINT, "bytes": UINT, "limit": {"const": MAX_MEMPOOL_LISTED},
                     "transactions": {"type": "array", "maxItems": MAX_MEMPOOL_LISTED, "items": _obj(
                         {"hash": HASH, "from": ADDRESS, "to": ADDRESS, "amount": UINT, "fee": UINT,
                          "nonce": UINT})}}),
    "AddressHistory": _obj({"address": ADDRESS, "balance": UINT, "nonce": UINT,
                            "transactions": {"type": "array", "items": _ref("IndexedTransfer")},
                            "next": _null(UINT)}),
    "Peer": _obj({"address": STRING, "direction": {"enum": ["inbound", "outbound"]}, "height": UINT,
                  "lastSeen": NUMBER},
                 {"slot": STRING, "state": STRING, "weight": UINT, "tipHash": _null(HASH), "connectedSince": NUMBER,
                  "nodeId": _null(STRING), "listenAddress": _null(STRING), "pingMs": _null(NUMBER),
                  "misbehaviour": NUMBER, "messagesIn": COUNTS, "bytesIn": COUNTS, "messagesOut": COUNTS,
                  "bytesOut": COUNTS}),
    "SignagePoints": _obj({"parentHash": HASH, "height": UINT, "difficulty": UINT, "kMin": UINT,
                           "plotFilterBits": UINT,
                           "signagePoints": {"type": "array", "items": _obj({"index": UINT, "challenge": HASH})}}),
    "TemplateRequest": _obj({"parentHash": HASH, "index": {"type": "integer", "minimum": 1},
                             "proofOfSpace": _ref("ProofOfSpace"), "rewardAddress": ADDRESS}),
    "SubmitBlock": _obj({"hash": HASH, "height": UINT, "status": {"enum": ["tip", "side", "known"]}}),
    "VdfJob": _obj({"parentHash": HASH, "seed": HASH, "discriminantSeed": HASH, "discriminantBits": UINT,
                    "iterations": UINT, "segments": UINT, "lastOutput": _hex(FORM_SIZE)}),
    "VdfOutput": _obj({"parentHash": HASH, "index": {"type": "integer", "minimum": 1}, "output": _hex(FORM_SIZE),
                       "proof": _hex(FORM_SIZE)}),
    "Ban": _obj({"subnet": STRING, "until": NUMBER, "reason": STRING}),
    "BanRequest": _obj({"address": {"type": "string", "description": "an IP address or a CIDR subnet"}},
                       {"seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 10 * 365 * 86400},
                        "reason": {"type": "string", "maxLength": 200}}),
    "Readiness": _obj({"ready": BOOL, "height": UINT, "weight": UINT, "syncing": BOOL, "tipAgeSeconds": NUMBER,
                       "maxTipAgeSeconds": NUMBER}, {"error": STRING}),
}

_STATUS_TEXT = {200: "OK", 400: "malformed request or refused", 401: "needs the admin token",
                404: "not found", 409: "no longer fits the node's state", 413: f"body over {MAX_BODY_BYTES} bytes"}


def _answers(ok: Any, *errors: int, ok_text: str = "OK") -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": ok_text, "content": {JSON: {"schema": ok}}}}
    for status in errors:
        out[str(status)] = {"description": _STATUS_TEXT[status], "content": {JSON: {"schema": _ref("Error")}}}
    return out


def _path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _body(schema: Any) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": schema}}}


ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
BLOCK_ID = {"type": "string", "pattern": "^([0-9]{1,18}|[0-9a-fA-F]{64})$"}
ANY_HASH = {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}
SOME_TEXT = {"type": "string", "minLength": 1, "maxLength": 100}
PEER_ADDRESS = {"type": "string", "minLength": 1, "maxLength": MAX_ADDRESS_LENGTH + len(TLS_PREFIX)}


def _paths() -> dict[str, Any]:
    post = (400, 413)
    return {
        "/healthz": {"get": {"operationId": "healthz", "summary": "liveness", "responses": _answers(_ref("Healthz"))}},
        "/readyz": {"get": {
            "operationId": "readyz", "summary": "200 once synced; 503 with the reason until then",
            "responses": {"200": {"description": "ready", "content": {JSON: {"schema": _ref("Readiness")}}},
                          "503": {"description": "not ready (syncing, behind a peer, or a stale tip)",
                                  "content": {JSON: {"schema": _ref("Readiness")}}}}}},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus exposition (docs/metrics.md)",
            "parameters": [{"name": "name[]", "in": "query", "required": False, "explode": True,
                            "schema": {"type": "array", "items": STRING, "maxItems": 64},
                            "description": "only these series"}],
            "responses": {"200": {"description": "the exposition",
                                  "content": {"text/plain": {"schema": STRING},
                                              "application/openmetrics-text": {"schema": STRING}}},
                          "400": {"description": "too many name[] filters",
                                  "content": {JSON: {"schema": _ref("Error")}}}}}},
        "/status": {"get": {"operationId": "status", "summary": "the tip, peers, sync progress, genesis, network",
                            "responses": _answers(_ref("Status"))}},
        "/chainTip": {"get": {"operationId": "chainTip", "responses": _answers(_ref("ChainTip"))}},
        "/balance/{address}": {"get": {
            "operationId": "balance", "parameters": [_path_param("address", ADDRESS, "an arcv1 address")],
            "responses": _answers(_ref("Balance"), 400, 404)}},
        "/block/{id}": {"get": {
            "operationId": "block", "summary": "a main-chain block by height, or any stored block by hash",
            "parameters": [_path_param("id", BLOCK_ID, "a height (decimal, at most 18 digits) or a hash "
                                                      "(64 hex digits)")],
            "responses": _answers(_ref("Block"), 400, 404)}},
        "/tx/{hash}": {"get": {
            "operationId": "transaction", "summary": "a transfer on the main chain or in the mempool",
            "parameters": [_path_param("hash", ANY_HASH, "the transfer's hash")],
            "responses": _answers(_ref("TransferStatus"), 400, 404)}},
        "/mempool": {"get": {"operationId": "mempool",
                             "summary": f"pending transfers: all counted, at most {MAX_MEMPOOL_LISTED} listed",
                             "responses": _answers(_ref("Mempool"))}},
        "/address/{address}": {"get": {
            "operationId": "addressHistory", "summary": "an address's main-chain transfers, newest first, paged",
            "parameters": [
                _path_param("address", ADDRESS, "an arcv1 address"),
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_HISTORY_LIMIT, "default": HISTORY_LIMIT},
                 "description": "transfers on the page (it then finishes its last block)"},
                {"name": "before", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "maximum": MAX_HEIGHT},
                 "description": "only blocks below this height: the previous page's `next`"}],
            "responses": _answers(_ref("AddressHistory"), 400, 404)}},
        "/peers": {
            "get": {"operationId": "peers", "summary": "the connected peers",
                    "responses": _answers({"type": "array", "items": _ref("Peer")})},
            "post": {"operationId": "addPeer", "summary": "keep a connection to host:port", "security": ADMIN,
                     "requestBody": _body(_obj({"address": STRING})),
                     "responses": _answers(_obj({"dialing": STRING}), 400, 401, 413)}},
        "/peers/{address}": {"delete": {
            "operationId": "dropPeer", "summary": "stop dialing an address and close its connections",
            "security": ADMIN, "parameters": [_path_param("address", PEER_ADDRESS, "host:port or tls:host:port")],
            "responses": _answers(_obj({"dropped": STRING, "disconnected": UINT}), 400, 401, 404)}},
        "/bans": {
            "get": {"operationId": "bans", "security": ADMIN,
                    "responses": _answers({"type": "array", "items": _ref("Ban")}, 401)},
            "post": {"operationId": "ban", "security": ADMIN, "requestBody": _body(_ref("BanRequest")),
                     "responses": _answers(_obj({"banned": STRING, "until": _null(NUMBER), "disconnected": UINT}),
                                           400, 401, 413)}},
        "/bans/{subnet}": {"delete": {
            "operationId": "unban", "security": ADMIN,
            "parameters": [_path_param("subnet", SOME_TEXT, "an address or subnet, `/` may be written `_`")],
            "responses": _answers(_obj({"unbanned": STRING}), 400, 401, 404)}},
        "/submitTx": {"post": {"operationId": "submitTx", "requestBody": _body(_ref("Transaction")),
                               "responses": _answers(_obj({"txHash": HASH}), *post)}},
        "/signagePoints": {"get": {"operationId": "signagePoints", "responses": _answers(_ref("SignagePoints"))}},
        "/blockTemplate": {"post": {"operationId": "blockTemplate", "requestBody": _body(_ref("TemplateRequest")),
                                    "responses": _answers(_ref("Block"), *post, 409)}},
        "/submitBlock": {"post": {"operationId": "submitBlock", "requestBody": _body(_ref("Block")),
                                  "responses": _answers(_ref("SubmitBlock"), *post, 409)}},
        "/vdf/job": {"get": {"operationId": "vdfJob", "responses": _answers(_ref("VdfJob"))}},
        "/vdf/output": {"post": {"operationId": "vdfOutput", "requestBody": _body(_ref("VdfOutput")),
                                 "responses": _answers(_obj({"accepted": {"const": True}, "segments": UINT}),
                                                       *post, 409)}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "this document",
                                  "responses": _answers({"type": "object"})}},
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Archivas node RPC",
            "version": __version__,
            "description": (
                "JSON over HTTP on the node's --rpc-port (docs/rpc.md). Hashes and keys are lowercase hex, "
                "addresses bech32 arcv1..., amounts integers in base units (1 RCHV = 100,000,000). Errors are "
                "{\"error\": ...} with a 4xx status. A connection must send its request headers within "
                f"{HEADER_TIMEOUT:g} s and its body within {BODY_TIMEOUT:g} s more (else 408), a body may be "
                f"{MAX_BODY_BYTES} bytes, and at most {MAX_CONNECTIONS} connections are open (past that: 503 "
                "when all are busy)."),
        },
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"adminToken": {
                "type": "http", "scheme": "bearer",
                "description": "the random token the node writes at start to .cookie in its data directory"}},
        },
    }
