"""The JSON RPC, served by Klein: thin routes over LocalNodeAPI.

Errors are JSON `{"error": "..."}` with a 4xx status; a request body over MAX_BODY_BYTES
gets 413 without being buffered. Nothing a client sends produces a 500. The listener
(`site()`) holds at most MAX_CONNECTIONS connections and closes one whose request headers
(or body) do not arrive in time, so slow clients cannot take the node's file descriptors.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from klein import Klein
from twisted.internet import protocol
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.web import resource, server

from archivas.admin import authorised
from archivas.nodeapi import HISTORY_LIMIT, ApiError, LocalNodeAPI, as_deferred, is_hash, parse_height

log = Logger()

MAX_BODY_BYTES = 2 * 1024 * 1024  # a 1 MiB block as JSON fits
MAX_CONNECTIONS = 256  # open RPC connections; past it, one waiting longest for headers is closed, else 503
HEADER_TIMEOUT = 10.0  # seconds from connecting (or the previous answer) to a request's last header line
BODY_TIMEOUT = 30.0  # seconds from the headers to the body's last byte (2 MiB at 70 KB/s)
ABORT_GRACE = 2.0  # seconds a closed connection may take to flush before it is cut
# A request's line and headers together, at most (Twisted's own cap is 16 KiB, past which
# it writes 400 and closes at once: with the rest of the request still arriving, the
# kernel then resets the connection and the client never reads the answer). Past this,
# the node answers 400 itself (JSON, as every refusal), half-closes, and reads and drops what still comes for up to
# ABORT_GRACE seconds, so the answer arrives.
MAX_HEAD_BYTES = 15 * 1024
REFUSAL_LOG_SECONDS = 10.0  # at most one log line this often about refused or evicted connections


class LimitedRequest(server.Request):
    """Stops buffering a body past MAX_BODY_BYTES; the request then gets 413."""

    max_body = MAX_BODY_BYTES

    def _guard(self) -> Optional["_GuardedConnection"]:
        transport = getattr(self.channel, "transport", None)
        return transport if isinstance(transport, _GuardedConnection) else None

    def gotLength(self, length: Any) -> None:
        guard = self._guard()  # every header line arrived: the body's deadline starts
        if guard is not None:
            guard.headers_received()
        self.received_bytes = 0
        self.too_large = length is not None and length > self.max_body
        super().gotLength(None if self.too_large else length)

    def finish(self) -> None:
        guard = self._guard()  # before the channel reads a pipelined next request
        if guard is not None:
            guard.answered()
        super().finish()

    def handleContentChunk(self, data: bytes) -> None:
        self.received_bytes += len(data)
        if self.received_bytes > self.max_body:
            self.too_large = True
        if not self.too_large:
            super().handleContentChunk(data)

    def process(self) -> None:
        guard = self._guard()
        if guard is not None:
            guard.request_received()
        if getattr(self, "too_large", False):
            self.setResponseCode(413)
            self.setHeader(b"content-type", b"application/json")
            self.write(json.dumps({"error": f"request body over {self.max_body} bytes"}).encode())
            self.finish()
            return
        super().process()


class _GuardedConnection(policies.ProtocolWrapper):
    """One RPC connection: waiting for a request's headers (HEADER_TIMEOUT), then for its
    body (BODY_TIMEOUT), then busy until it is answered; then waiting again (keep-alive).
    A deadline that passes answers 408 and closes."""

    factory: "GuardedSite"

    def __init__(self, factory: Any, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self.waiting_since: Optional[float] = None  # waiting for headers since (reactor time)
        self.closed = False
        self._deadline: Any = None
        self._abort: Any = None
        self._head_bytes: Optional[int] = 0  # bytes of the request head so far (None: head done)
        self._head_tail = b""
        self._draining = False

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        self._wait_for_headers()

    def _arm(self, seconds: Optional[float], what: str) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None if seconds is None or self.closed else \
            self.factory.reactor.callLater(seconds, self.timed_out, what)

    def dataReceived(self, data: bytes) -> None:
        if self._draining:
            return  # after a 431: read and dropped until the client closes or the grace ends
        if self._head_bytes is not None:
            # Until the blank line that ends the head (looked for in this chunk, with the
            # last 3 bytes of the one before, where it may have begun).
            window = self._head_tail + data
            end = window.find(b"\r\n\r\n")
            head = len(data) if end < 0 else end + 4 - len(self._head_tail)
            self._head_bytes += head
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()
                return
            self._head_tail = window[-3:]
            if end >= 0:
                self._head_bytes = None  # the rest is body (or a pipelined request: counted at its turn)
        super().dataReceived(data)

    def _refuse_head(self) -> None:
        self._draining = True
        self.waiting_since = None
        self._arm(None, "")
        transport: Any = self.transport
        transport.write(_error_response(400, f"request line and headers over {MAX_HEAD_BYTES} bytes"))
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()
        else:
            transport.loseConnection()
        self._abort = self.factory.reactor.callLater(ABORT_GRACE, transport.abortConnection)

    def _wait_for_headers(self) -> None:
        self._head_bytes, self._head_tail = 0, b""
        self.waiting_since = self.factory.reactor.seconds()
        self._arm(self.factory.header_timeout, f"request headers not received within {self.factory.header_timeout:g} s")

    def headers_received(self) -> None:
        self.waiting_since = None
        self._arm(self.factory.body_timeout, f"request body not received within {self.factory.body_timeout:g} s")

    def request_received(self) -> None:
        self.waiting_since = None
        self._arm(None, "")

    def answered(self) -> None:
        if not self.closed:
            self._wait_for_headers()

    def timed_out(self, why: str) -> None:
        self._deadline = None
        self.factory.timed_out += 1
        self.close(408, why)

    def close(self, status: int, why: str) -> None:
        """Answer `status` with `why` (a JSON error) and close; cut it if it does not go."""
        if self.closed or self.disconnecting:
            return
        self.waiting_since = None
        self._arm(None, "")
        transport: Any = self.transport
        transport.write(_error_response(status, why))
        self.loseConnection()
        self._abort = self.factory.reactor.callLater(ABORT_GRACE, transport.abortConnection)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self.waiting_since = None
        self._arm(None, "")
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        super().connectionLost(reason)


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable"}


def _error_response(status: int, why: str) -> bytes:
    body = json.dumps({"error": why}).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, _REASONS[status], len(body)) + body)


class _Refused(protocol.Protocol):
    """A connection past MAX_CONNECTIONS while every open one is busy: 503, closed."""

    def __init__(self, why: str) -> None:
        self.why = why

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(_error_response(503, self.why))
        self.transport.loseConnection()


class GuardedSite(policies.WrappingFactory):
    """The RPC's listening factory: the Klein site behind per-connection deadlines and a
    cap on open connections. At the cap, a new connection closes the one that has waited
    longest for request headers (a slow or idle client), or is answered 503 when every
    open connection is busy with a request."""

    protocol = _GuardedConnection  # type: ignore[assignment]
    noisy = False

    def __init__(self, site: server.Site, reactor: Any, max_connections: int = MAX_CONNECTIONS,
                 header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT) -> None:
        super().__init__(site)
        self.site = site
        self.reactor = reactor
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.evicted = 0  # closed to make room, since start
        self.refused = 0  # answered 503, since start
        self.timed_out = 0  # closed by a deadline, since start
        self._closing: set[_GuardedConnection] = set()
        self._logged_at: Optional[float] = None
        self._logged_counts = (0, 0)

    @property
    def open_connections(self) -> int:
        return len(self.protocols)

    def buildProtocol(self, addr: Any) -> Any:
        live = [p for p in self.protocols if not p.closed and not p.disconnecting]
        if len(live) >= self.max_connections:
            waiting = [p for p in live if p.waiting_since is not None]
            if not waiting:
                self.refused += 1
                self._log_refusals()
                return _Refused(f"the node has {self.max_connections} RPC connections busy: try again shortly")
            victim = min(waiting, key=lambda p: p.waiting_since or 0.0)
            self.evicted += 1
            victim.close(408, f"closed to make room: {self.max_connections} RPC connections open")
            self._log_refusals()
        return super().buildProtocol(addr)

    def _log_refusals(self) -> None:
        now = self.reactor.seconds()
        if self._logged_at is not None and now - self._logged_at < REFUSAL_LOG_SECONDS:
            return
        evicted, refused = self.evicted - self._logged_counts[0], self.refused - self._logged_counts[1]
        self._logged_at, self._logged_counts = now, (self.evicted, self.refused)
        log.warn("[rpc] {max} connections open: closed {evicted} waiting for headers and refused {refused} "
                 "since the last such line", max=self.max_connections, evicted=evicted, refused=refused)


def site(resource: Any, reactor: Any = None, max_connections: int = MAX_CONNECTIONS,
         header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT) -> GuardedSite:
    """The RPC's factory: `resource` in a Site (JSON 413 past MAX_BODY_BYTES, no
    tracebacks) behind GuardedSite's deadlines and connection cap."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    s = server.Site(resource, reactor=reactor)
    s.noisy = False
    s.requestFactory = LimitedRequest
    s.displayTracebacks = False
    return GuardedSite(s, reactor, max_connections, header_timeout, body_timeout)


def _query_int(request: Any, name: str) -> Optional[int]:
    """A query parameter given at most once, as decimal digits (at most 18), or None."""
    values = (request.args or {}).get(name.encode(), [])
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, f"{name} given {len(values)} times")
    text = values[0].decode("utf-8", "replace")
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ApiError(400, f"{name} must be a non-negative integer, not {text[:30]!r}")
    return int(text)


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
            allowed = getattr(failure.value, "valid_methods", None)
            if code == 405 and allowed:  # RFC 9110: a 405 lists the methods the route takes
                request.setHeader(b"allow", ", ".join(sorted(allowed)).encode())
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
        """A height (decimal) or a block hash (64 hex digits)."""
        if is_hash(height):
            return self._call(request, self.api.block_by_hash(height))
        return self._call(request, self.api.block(parse_height(height)))

    # -- the transfer indexes, the mempool and the OpenAPI document (docs/rpc.md) --
    @app.route("/tx/<string:tx_hash>", methods=["GET"])
    def transaction(self, request: Any, tx_hash: str) -> Any:
        return self._call(request, self.api.transaction(tx_hash))

    @app.route("/mempool", methods=["GET"])
    def mempool(self, request: Any) -> Any:
        return self._call(request, self.api.mempool())

    @app.route("/address/<string:address>", methods=["GET"])
    def address_history(self, request: Any, address: str) -> Any:
        limit = _query_int(request, "limit")
        before = _query_int(request, "before")
        return self._call(request, self.api.address_history(
            address, HISTORY_LIMIT if limit is None else limit, before))

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: Any) -> Any:
        from archivas.openapi import document

        return self._respond(request, document())
    # -- end of the transfer indexes, the mempool and the OpenAPI document --

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
