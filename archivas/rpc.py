"""The JSON RPC, served by Klein: thin routes over LocalNodeAPI.

Errors are JSON `{"error": "..."}` with a 4xx status; a request body over MAX_BODY_BYTES
gets 413 without being buffered. Nothing a client sends produces a 500.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from klein import Klein
from twisted.logger import Logger
from twisted.web import resource, server

from archivas.admin import authorised
from archivas.nodeapi import ApiError, LocalNodeAPI, as_deferred, parse_height

log = Logger()

MAX_BODY_BYTES = 2 * 1024 * 1024  # a 1 MiB block as JSON fits


class LimitedRequest(server.Request):
    """Stops buffering a body past MAX_BODY_BYTES; the request then gets 413."""

    max_body = MAX_BODY_BYTES

    def gotLength(self, length: Any) -> None:
        self.received_bytes = 0
        self.too_large = length is not None and length > self.max_body
        super().gotLength(None if self.too_large else length)

    def handleContentChunk(self, data: bytes) -> None:
        self.received_bytes += len(data)
        if self.received_bytes > self.max_body:
            self.too_large = True
        if not self.too_large:
            super().handleContentChunk(data)

    def process(self) -> None:
        if getattr(self, "too_large", False):
            self.setResponseCode(413)
            self.setHeader(b"content-type", b"application/json")
            self.write(json.dumps({"error": f"request body over {self.max_body} bytes"}).encode())
            self.finish()
            return
        super().process()


def site(resource: Any) -> server.Site:
    s = server.Site(resource)
    s.noisy = False
    s.requestFactory = LimitedRequest
    s.displayTracebacks = False
    return s


def _json_body(request: Any) -> Any:
    try:
        return json.loads(request.content.read() or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "request body is not JSON") from None


class Utf8Paths(resource.Resource):
    """Answers a path that is not UTF-8 with a JSON 400 (Klein would answer it in HTML)."""

    isLeaf = True

    def __init__(self, wrapped: Any) -> None:
        super().__init__()
        self.wrapped = wrapped

    def render(self, request: Any) -> Any:
        try:
            b"/".join(request.postpath).decode("utf-8")
        except UnicodeDecodeError:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": "the URL path is not UTF-8"}).encode()
        return self.wrapped.render(request)


class NodeRPC:
    """The routes. Operator routes (bans, adding and dropping peers) need the admin token
    (archivas/admin.py) as `Authorization: Bearer <token>`: 401 without it."""

    app = Klein()

    def __init__(self, api: LocalNodeAPI, admin_token: Optional[str] = None) -> None:
        self.api = api
        self.admin_token = admin_token

    def _operator(self, request: Any) -> None:
        if not authorised(request.getHeader(b"authorization"), self.admin_token):
            request.setHeader(b"www-authenticate", b'Bearer realm="archivas-node"')
            raise ApiError(401, "this call needs the node's admin token (the .cookie file in its data "
                                "directory) as 'Authorization: Bearer <token>'")

    def resource(self) -> Any:
        return Utf8Paths(self.app.resource())

    def _respond(self, request: Any, value: Any, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value).encode()

    @app.handle_errors(ApiError)
    def api_error(self, request: Any, failure: Any) -> bytes:
        error = failure.value
        return self._respond(request, {"error": error.message}, error.status)

    @app.handle_errors(Exception)
    def unexpected(self, request: Any, failure: Any) -> bytes:
        from werkzeug.exceptions import HTTPException

        if isinstance(failure.value, HTTPException):  # Klein's 404 / 405 for unknown routes
            code = failure.value.code or 404
            return self._respond(request, {"error": failure.value.name}, code)
        log.failure("[rpc] internal error on {path}", failure, path=request.path)
        return self._respond(request, {"error": "internal error"}, 500)

    def _call(self, request: Any, value: Any) -> Any:
        return as_deferred(value).addCallback(lambda v: self._respond(request, v))

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: Any) -> Any:
        return self._call(request, self.api.healthz())

    # -- /readyz and /metrics: archivas/metrics.py, docs/metrics.md --
    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: Any) -> Any:
        """200 once the node is synced, 503 with the reason until then."""
        from archivas.metrics import readiness

        doc = readiness(self.api.node)
        return self._respond(request, doc, 200 if doc["ready"] else 503)

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: Any) -> Any:
        from archivas.metrics import scrape

        return scrape(self.api.node.metrics, request)
    # -- end of /readyz and /metrics --

    @app.route("/status", methods=["GET"])
    def status(self, request: Any) -> Any:
        return self._call(request, self.api.status())

    @app.route("/chainTip", methods=["GET"])
    def chain_tip(self, request: Any) -> Any:
        return self._call(request, self.api.chain_tip())

    @app.route("/balance/<string:address>", methods=["GET"])
    def balance(self, request: Any, address: str) -> Any:
        return self._call(request, self.api.balance(address))

    @app.route("/block/<string:height>", methods=["GET"])
    def block(self, request: Any, height: str) -> Any:
        return self._call(request, self.api.block(parse_height(height)))

    @app.route("/peers", methods=["GET"])
    def peers(self, request: Any) -> Any:
        return self._call(request, self.api.peers())

    @app.route("/bans", methods=["GET"])
    def bans(self, request: Any) -> Any:
        self._operator(request)
        return self._call(request, self.api.bans())

    @app.route("/bans", methods=["POST"])
    def ban(self, request: Any) -> Any:
        self._operator(request)
        return self._call(request, self.api.ban(_json_body(request)))

    @app.route("/bans/<path:subnet>", methods=["DELETE"])
    def unban(self, request: Any, subnet: str) -> Any:
        self._operator(request)
        return self._call(request, self.api.unban(subnet))

    @app.route("/peers", methods=["POST"])
    def add_peer(self, request: Any) -> Any:
        self._operator(request)
        return self._call(request, self.api.add_peer(_json_body(request)))

    @app.route("/peers/<string:address>", methods=["DELETE"])
    def drop_peer(self, request: Any, address: str) -> Any:
        self._operator(request)
        return self._call(request, self.api.drop_peer(address))

    @app.route("/submitTx", methods=["POST"])
    def submit_tx(self, request: Any) -> Any:
        return self._call(request, self.api.submit_tx(_json_body(request)))

    @app.route("/signagePoints", methods=["GET"])
    def signage_points(self, request: Any) -> Any:
        return self._call(request, self.api.signage_points())

    @app.route("/blockTemplate", methods=["POST"])
    def block_template(self, request: Any) -> Any:
        return self._call(request, self.api.block_template(_json_body(request)))

    @app.route("/submitBlock", methods=["POST"])
    def submit_block(self, request: Any) -> Any:
        return self._call(request, self.api.submit_block(_json_body(request)))

    @app.route("/vdf/job", methods=["GET"])
    def vdf_job(self, request: Any) -> Any:
        return self._call(request, self.api.vdf_job())

    @app.route("/vdf/output", methods=["POST"])
    def vdf_output(self, request: Any) -> Any:
        return self._call(request, self.api.vdf_output(_json_body(request)))

    # -- the explorer: HTML pages at / and /explorer/..., live updates at /events (archivas/explorer/,
    # docs/explorer.md); it routes the whole path itself --
    @app.route("/", methods=["GET"], endpoint="explorer_overview")
    @app.route("/events", methods=["GET"], endpoint="explorer_events")
    @app.route("/explorer/", methods=["GET"], branch=True, strict_slashes=False, endpoint="explorer_pages")
    def explorer(self, request: Any) -> Any:
        found = getattr(self, "_explorer", None)
        if found is None:
            from archivas.explorer import Explorer

            found = self._explorer = Explorer(self.api)
        return found.resource()
    # -- end of the explorer --
