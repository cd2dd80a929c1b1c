"""The explorer and dashboard: server-rendered pages over LocalNodeAPI, a little JS and
CSS from the package (no CDN), and the node's new tips pushed over `GET /events`.

Pages are rendered on the reactor thread: they read the chain's SQLite connection, which
the reactor thread also writes (the JSON RPC reads it the same way), and each takes a few
milliseconds (bench/explorer_pages.py). A page for a bad or unknown name is a 4xx with
the reason: HTML for a browser, `{"error": ...}` for any other client.
"""

from __future__ import annotations

import collections
import hashlib
import json
import time
from importlib import resources
from typing import Any, Callable, Optional
from urllib.parse import quote

import jinja2
from klein import Klein
from twisted.logger import Logger
from twisted.web import resource
from twisted.web.http import unquote

from archivas import __version__
from archivas.chain import keys
from archivas.chain.block import Block
from archivas.chain.encoding import canonical_json
from archivas.chain.transactions import Transaction
from archivas.explorer import summary
from archivas.explorer.events import MAX_CLIENTS, EventHub, TooManyClients
from archivas.nodeapi import ApiError, parse_height

log = Logger()

STRIP_BLOCKS = 20  # recent blocks on the overview (and in its live strip)
BLOCK_TX_ROWS = 100  # transfers per block page (?page=N for the rest)
MEMPOOL_ROWS = 100  # pending transfers per mempool page (?page=N), highest fee first, of those /mempool lists
HISTORY_ROWS = 50  # transfers per address page asked of address_history (?before= its `next` for older ones)
HISTORY_SHOWN = 200  # at most this many shown of a page (which ends with the whole of its last block)
PENDING_ROWS = 100  # an address's pending transfers shown (the mempool may hold 5,000 to one address)
ROW_CACHE = 512  # block rows kept by hash (blocks never change; the strip re-reads none)
BLOCK_CACHE = 8  # decoded blocks kept for their pages (a full block: ~1 MB, ~25 ms to decode)
MAX_QUERY = 200  # characters of a search (or any query value) read

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml"}


class PageError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("archivas.explorer", "templates"),
        autoescape=True,  # every template is HTML: everything a node or a peer says is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(rchv=summary.rchv, short=summary.short, utc=summary.utc, age=summary.age,
                       size=summary.size)
    env.globals["static"] = static_url
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)  # compiled once, here, rather than on some page's first view
    return env


def _load_static() -> dict[str, tuple[bytes, str, str]]:
    """name -> (content, content type, version) for every file in static/, read once."""
    out = {}
    for entry in resources.files("archivas.explorer").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            content = entry.read_bytes()
            out[entry.name] = (content, STATIC_TYPES[suffix], hashlib.sha256(content).hexdigest()[:12])
    return out


_ENV: Optional[jinja2.Environment] = None
_STATIC: dict[str, tuple[bytes, str, str]] = {}


def environment() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        _ENV = _environment()
    return _ENV


def static_files() -> dict[str, tuple[bytes, str, str]]:
    if not _STATIC:
        _STATIC.update(_load_static())
    return _STATIC


def static_url(name: str) -> str:
    return f"/explorer/static/{name}?v={static_files()[name][2]}"


def _hex32(text: str, message: str) -> str:
    """64 hex digits, lowercased; else PageError(400, message + what was given)."""
    value = text.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise PageError(400, f"{message}, not {text[:80]!r}")
    return value


def _query(request: Any, name: str) -> Optional[str]:
    values = request.args.get(name.encode())
    if not values:
        return None
    try:
        return values[0][:MAX_QUERY * 4].decode("utf-8")[:MAX_QUERY]
    except UnicodeDecodeError:
        raise PageError(400, f"the {name!r} parameter is not UTF-8") from None


def _query_int(request: Any, name: str) -> Optional[int]:
    """A non-negative integer of at most 19 digits (a history cursor reaches 2^62), or None."""
    text = _query(request, name)
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise PageError(400, f"{name} must be a non-negative integer, not {text[:30]!r}")
    return int(text)


def _tx_row(tx: Transaction) -> dict[str, Any]:
    return {"hash": tx.hash.hex(), "from": tx.sender, "to": tx.recipient, "amount": tx.amount,
            "fee": tx.fee, "nonce": tx.nonce}


class ExplorerRoot(resource.Resource):
    """Hands the whole path to the explorer's routes (wherever the RPC mounted it)."""

    isLeaf = True

    def __init__(self, explorer: "Explorer") -> None:
        super().__init__()
        self.wrapped = explorer.app.resource()

    def render(self, request: Any) -> Any:
        request.prepath = []
        request.postpath = [unquote(p) for p in request.path[1:].split(b"/")]
        return self.wrapped.render(request)


class Explorer:
    """The pages and the event stream of one node (`api` is its LocalNodeAPI)."""

    app = Klein()

    def __init__(self, api: Any, reactor: Any = None, max_clients: int = MAX_CLIENTS) -> None:
        self.api = api
        self.node = api.node
        self.params = self.node.params
        self.reactor = reactor if reactor is not None else self.node.reactor
        self.env = environment()
        self._rows: collections.OrderedDict[bytes, dict[str, Any]] = collections.OrderedDict()
        self._blocks: collections.OrderedDict[bytes, Block] = collections.OrderedDict()  # block pages' blocks
        self._sent: dict[int, str] = {}  # height -> hash of the strip as the last tip event left it
        self._netspace: tuple[Optional[str], Any] = (None, None)
        self.hub = EventHub(self.reactor, self._snapshot, self._changes, self._live_status,
                            max_clients=max_clients, stopped=lambda: bool(self.node.stopped))
        self.node.on_tip.append(self._on_tip)
        self._resource = ExplorerRoot(self)

    def resource(self) -> resource.Resource:
        return self._resource

    def _on_tip(self, block: Block) -> None:
        """From the node's block handling: the new tip's row from the block in hand (the
        strip then decodes nothing), and a tip event scheduled. Never raises into the node."""
        try:
            self._remember_row(block.hash, summary.block_row(block))
            self.hub.tip_changed()
        except Exception:
            log.failure("[rpc] explorer on_tip failed")

    def _remember_row(self, block_hash: bytes, row: dict[str, Any]) -> None:
        self._rows[block_hash] = row
        self._rows.move_to_end(block_hash)
        while len(self._rows) > ROW_CACHE:
            self._rows.popitem(last=False)

    # data: LocalNodeAPI, with fallbacks for calls a node may not have yet

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method: Optional[Callable[..., Any]] = getattr(self.api, name, None)
        return None if method is None else method(*args, **kwargs)

    def row(self, block_hash: bytes) -> Optional[dict[str, Any]]:
        """The strip's row for a stored block (cached by hash)."""
        cached = self._rows.get(block_hash)
        if cached is not None:
            self._rows.move_to_end(block_hash)
            return cached
        block = self.node.block(block_hash)
        if block is None:
            return None
        row = summary.block_row(block)
        self._remember_row(block_hash, row)
        return row

    def strip(self, tip_height: int) -> list[dict[str, Any]]:
        rows = []
        for height in range(tip_height, max(-1, tip_height - STRIP_BLOCKS), -1):
            block_hash = self.node.main_hash(height)
            row = self.row(block_hash) if block_hash is not None else None
            if row is not None:
                rows.append(row)
        return rows

    def _estimate(self, tip_hash: str) -> Any:
        """(netspace, mean block seconds) over the last NETSPACE_WINDOW blocks, per tip."""
        if self._netspace[0] != tip_hash:
            window = self.node.ancestors(bytes.fromhex(tip_hash), summary.NETSPACE_WINDOW)
            self._netspace = (tip_hash, (summary.netspace(window, self.params),
                                         summary.mean_block_seconds(window)))
        return self._netspace[1]

    def overview(self) -> dict[str, Any]:
        status = self.api.status()
        peers = self.api.peers()
        space, block_seconds = self._estimate(status["tipHash"])
        return {
            "status": status,
            "sync": summary.sync_progress(status, peers),
            "netspace": space,
            "blockSeconds": block_seconds,
            "targetSeconds": self.params.target_block_time_ms / 1000,
            "peersIn": status.get("peersIn", sum(1 for p in peers if p.get("direction") == "inbound")),
            "peersOut": status.get("peersOut", sum(1 for p in peers if p.get("direction") != "inbound")),
            "mempool": status.get("mempool", len(self.node.mempool)),
        }

    def _live_status(self) -> dict[str, Any]:
        """What an open page updates in place (the `status` event, and the `tip` event's)."""
        o = self.overview()
        status, space = o["status"], o["netspace"]
        return {
            "height": status["height"], "tipHash": status["tipHash"], "difficulty": status["difficulty"],
            "weight": status["weight"], "peers": status.get("peers", 0), "peersIn": o["peersIn"],
            "peersOut": o["peersOut"], "mempool": o["mempool"], "sync": o["sync"],
            "netspace": space.text if space is not None else "",
            "blockSeconds": round(o["blockSeconds"], 3) if o["blockSeconds"] is not None else None,
            "now": self.reactor.seconds(),
        }

    def _snapshot(self) -> dict[str, Any]:
        """A new stream's first event: the whole strip. With no other stream open, tip
        events count their changes from this one."""
        status = self._live_status()
        rows = self.strip(status["height"])
        if not self.hub.clients:
            self._sent = {r["height"]: r["hash"] for r in rows}
        return {"status": status, "blocks": rows, "strip": STRIP_BLOCKS}

    def _changes(self) -> dict[str, Any]:
        """The tip event: the strip's rows that differ from the last event's."""
        status = self._live_status()
        rows = self.strip(status["height"])
        changed = [r for r in rows if self._sent.get(r["height"]) != r["hash"]]
        self._sent = {r["height"]: r["hash"] for r in rows}
        return {"status": status, "blocks": changed, "strip": STRIP_BLOCKS}

    def block_of(self, ref: str) -> Block:
        """The stored block a page names, by height (main chain) or hash (any valid one),
        as the RPC's /block answers them: read from storage once, not decoded again from
        the RPC's JSON, and the last BLOCK_CACHE kept (its pages of transfers, its viewers)."""
        tip = self.node.chain.height
        if ref.isascii() and ref.isdigit():
            try:
                height = parse_height(ref)
            except ApiError as e:
                raise PageError(e.status, e.message) from None
            block_hash = self.node.main_hash(height) if height <= tip else None
            if block_hash is None:
                raise PageError(404, f"no block at height {height} (tip is {tip})")
        else:
            block_hash = bytes.fromhex(_hex32(ref, "a block is named by its height (digits) or its hash "
                                                   "(64 hex digits)"))
            meta = self.node.meta(block_hash)
            if meta is None or meta.invalid:
                raise PageError(404, f"no block {block_hash.hex()}")
        block = self._blocks.get(block_hash)
        if block is not None:
            self._blocks.move_to_end(block_hash)
            return block
        block = self.node.block(block_hash)
        if block is None:
            raise PageError(404, f"no block {block_hash.hex()}")
        self._blocks[block_hash] = block
        while len(self._blocks) > BLOCK_CACHE:
            self._blocks.popitem(last=False)
        return block

    def transaction_doc(self, ref: str) -> dict[str, Any]:
        tx_hash = _hex32(ref, "a transfer hash is 64 hex digits")
        doc = self._call("transaction", tx_hash)
        if doc is None:  # a node without transaction(): its mempool only
            tx = self.node.mempool.get(bytes.fromhex(tx_hash))
            if tx is None:
                raise PageError(404, f"no transfer {tx_hash} in the mempool (this node cannot look up mined ones)")
            doc = {**_tx_row(tx), "status": "pending", "blockHeight": None, "blockHash": None, "timestamp": None}
        return doc

    def mempool_doc(self) -> dict[str, Any]:
        """api.mempool() as it is (highest fee first); a node without it: its pool here."""
        doc = self._call("mempool")
        if doc is None:
            txs = sorted(self.node.mempool.transactions(), key=lambda t: (-t.fee, t.sender, t.nonce))
            doc = {"count": len(txs), "bytes": sum(len(canonical_json(t.to_json())) for t in txs),
                   "transactions": [_tx_row(t) for t in txs]}
        return {"count": doc.get("count", 0), "bytes": doc.get("bytes"),
                "transactions": list(doc.get("transactions") or [])}

    # responses

    def _page(self, request: Any, template: str, status: int = 200, **context: Any) -> bytes:
        started = getattr(request, "explorer_started", None) or time.perf_counter()
        tip = self.node.chain.tip
        html = self.env.get_template(template).render(
            network=self.params.name, version=__version__, tip_height=tip.height, **context)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"server-timing", f"page;dur={(time.perf_counter() - started) * 1000:.2f}".encode())
        return html.encode()

    @app.handle_errors(PageError, ApiError, TooManyClients)
    def refused(self, request: Any, failure: Any) -> bytes:
        error = failure.value
        status = 503 if isinstance(error, TooManyClients) else error.status
        return self._error(request, status, str(error.message if hasattr(error, "message") else error))

    @app.handle_errors(Exception)
    def unexpected(self, request: Any, failure: Any) -> bytes:
        from werkzeug.exceptions import HTTPException

        if isinstance(failure.value, HTTPException):  # no such page, or not GET
            code = failure.value.code or 404
            return self._error(request, code, "no such page" if code == 404 else failure.value.name)
        log.failure("[rpc] explorer page {path} failed", failure, path=request.path)
        return self._error(request, 500, "internal error")

    def _error(self, request: Any, status: int, message: str) -> bytes:
        accept = request.getHeader(b"accept") or b""
        if b"text/html" in accept:
            try:
                return self._page(request, "error.html", status, code=status, message=message)
            except Exception:
                log.failure("[rpc] explorer error page failed")
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"error": message}).encode()

    def _headers(self, request: Any) -> None:
        request.explorer_started = time.perf_counter()
        request.setHeader(b"content-security-policy", CSP.encode())
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"x-frame-options", b"DENY")

    # routes (full paths: the RPC mounts the explorer at /, /events and /explorer/)

    @app.route("/", methods=["GET"])
    @app.route("/explorer/", methods=["GET"], strict_slashes=False, endpoint="overview_page_alias")
    def overview_page(self, request: Any) -> bytes:
        self._headers(request)
        overview = self.overview()
        return self._page(request, "overview.html", overview=overview,
                          blocks=self.strip(overview["status"]["height"]), now=self.reactor.seconds())

    @app.route("/explorer/block/<string:ref>", methods=["GET"])
    def block_page(self, request: Any, ref: str) -> bytes:
        self._headers(request)
        block = self.block_of(ref)
        tip = self.node.chain.tip
        main_hash = self.node.main_hash(block.height)
        main = main_hash == block.hash
        next_hash = self.node.main_hash(block.height + 1) if main else None
        page = _query_int(request, "page") or 0
        pages = max(1, -(-len(block.transactions) // BLOCK_TX_ROWS))
        if page >= pages:
            raise PageError(404, f"block {block.height} has {pages} page(s) of transfers")
        shown = block.transactions[page * BLOCK_TX_ROWS:(page + 1) * BLOCK_TX_ROWS]
        return self._page(
            request, "block.html", block=block, header=block.header.to_json(), row=summary.block_row(block, main),
            main=main, confirmations=tip.height - block.height + 1 if main else 0,
            next_hash=next_hash.hex() if next_hash else None, txs=[_tx_row(t) for t in shown],
            page=page, pages=pages, first=page * BLOCK_TX_ROWS, now=self.reactor.seconds(),
            allocation=[{"address": a, "amount": v} for a, v in block.allocation])

    @app.route("/explorer/tx/<string:ref>", methods=["GET"])
    def tx_page(self, request: Any, ref: str) -> bytes:
        self._headers(request)
        doc = self.transaction_doc(ref)
        height = doc.get("blockHeight")
        confirmations = self.node.chain.tip.height - height + 1 if isinstance(height, int) else 0
        return self._page(request, "tx.html", tx=doc, confirmations=confirmations, now=self.reactor.seconds())

    @app.route("/explorer/address/<string:address>", methods=["GET"])
    def address_page(self, request: Any, address: str) -> bytes:
        self._headers(request)
        try:
            account = self.api.balance(address)
        except ApiError as e:
            raise PageError(e.status, e.message) from None
        before = _query_int(request, "before")
        history = self._call("address_history", address, limit=HISTORY_ROWS, before=before)
        mine = sorted((t for t in self.node.mempool.transactions() if address in (t.sender, t.recipient)),
                      key=lambda t: (t.sender, t.nonce))
        pending = [_tx_row(t) for t in mine[:PENDING_ROWS]]
        rows = list(history.get("transactions") or []) if history is not None else None
        older = history.get("next") if history is not None else None  # the cursor of the next page
        # A history page ends with the whole of its last block: up to 2,000 transfers of one
        # address in one block. Past HISTORY_SHOWN the rest is on that block's page.
        cut = None
        if rows is not None and len(rows) > HISTORY_SHOWN:
            last = rows[HISTORY_SHOWN - 1]
            cut = {"more": len(rows) - HISTORY_SHOWN, "height": last.get("blockHeight"),
                   "hash": last.get("blockHash")}
            rows = rows[:HISTORY_SHOWN]
        return self._page(request, "address.html", account=account, history=rows, pending=pending,
                          pending_total=len(mine), before=before, older=older, cut=cut, address=address,
                          now=self.reactor.seconds())

    @app.route("/explorer/mempool", methods=["GET"])
    def mempool_page(self, request: Any) -> bytes:
        self._headers(request)
        doc = self.mempool_doc()
        listed = doc["transactions"]
        page = _query_int(request, "page") or 0
        pages = max(1, -(-len(listed) // MEMPOOL_ROWS))
        if page >= pages:
            raise PageError(404, f"the mempool listing has {pages} page(s)")
        return self._page(request, "mempool.html", mempool=doc, listed=len(listed), page=page, pages=pages,
                          rows=listed[page * MEMPOOL_ROWS:(page + 1) * MEMPOOL_ROWS])

    @app.route("/explorer/peers", methods=["GET"])
    def peers_page(self, request: Any) -> bytes:
        self._headers(request)
        now = self.reactor.seconds()
        peers = [summary.peer_row(p, now) for p in self.api.peers()]
        peers.sort(key=lambda p: (p.get("direction") != "outbound", str(p.get("address"))))
        return self._page(request, "peers.html", peers=peers, tip=self.node.chain.tip)

    @app.route("/explorer/search", methods=["GET"])
    def search(self, request: Any) -> bytes:
        """A height, a block or transfer hash, or an address: redirected to its page."""
        self._headers(request)
        q = (_query(request, "q") or "").strip()
        if not q:
            raise PageError(400, "search for a block height, a block or transfer hash, or an arcv1 address")
        if q.isascii() and q.isdigit():
            target = f"/explorer/block/{q}"
        elif keys.is_address(q.lower()):
            target = f"/explorer/address/{q.lower()}"
        else:
            value = _hex32(q, "search for a block height, a block or transfer hash (64 hex digits) or an arcv1 "
                              "address")
            if self.node.chain.has_block(bytes.fromhex(value)):
                target = f"/explorer/block/{value}"
            else:
                target = f"/explorer/tx/{value}"
        request.setResponseCode(303)
        request.setHeader(b"location", quote(target).encode())
        return b""

    @app.route("/explorer/static/<string:name>", methods=["GET"])
    def static(self, request: Any, name: str) -> bytes:
        found = static_files().get(name)
        if found is None:
            raise PageError(404, f"no static file {name[:80]!r}")
        content, content_type, _ = found
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"cache-control", b"public, max-age=86400")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return content

    @app.route("/events", methods=["GET"])
    def events(self, request: Any) -> Any:
        """Server-sent events: `tip` (status and the strip rows that changed) when the tip
        moves, `status` every few seconds."""
        return self.hub.subscribe(request)
