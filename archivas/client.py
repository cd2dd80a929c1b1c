"""The node's RPC over HTTP (treq): the same calls as LocalNodeAPI, for the standalone
timelord, farmer and wallet, against one node or several.

With several nodes, requests go to the current node (the first that answered); a node
that cannot be reached, does not answer within FAILOVER_TIMEOUT, or answers through a
proxy that cannot reach it (502, 503, 504, or not JSON) moves the request to the next one
at once. While a later node is in use, the earlier ones are asked `/healthz` every
RETRY_SECONDS (`/status`, `/vdf/job`), and the first of them that answers and has caught up
with the node in use (a heavier tip, or the same tip and its signage points) is preferred
again. A signed block goes to every node (`submit_block`), so a farmer
whose node died still gets its block in.

Every call returns a Deferred; a 4xx (or 500) answer fails with ApiError carrying the
node's message; no node reachable fails with ApiError(503, ...). Times come from the
injected reactor, so task.Clock drives every timeout in tests.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence, Union
from urllib.parse import urlsplit

import treq
from twisted.internet import defer
from twisted.logger import Logger

from archivas.nodeapi import ApiError

log = Logger()

DEFAULT_NODE = "http://localhost:8080"
TIMEOUT = 30.0  # one node: nothing to fail over to, so a slow answer is still worth waiting for
FAILOVER_TIMEOUT = 5.0  # several nodes: no answer within this moves the request to the next node
RETRY_SECONDS = 5.0  # while a later node is in use, how often the earlier ones are asked again
CATCH_UP_SEGMENTS = 1  # on the same tip, an earlier node may hold this many VDF segments fewer
MAX_NODES = 16  # --node URLs one program may name
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})  # a proxy in front of a node that is down


class Unavailable(Exception):
    """One node could not be asked: no connection, no answer in time, or a proxy's error."""


def node_urls(values: Union[str, Sequence[str]]) -> list[str]:
    """`--node` values (each may be a comma list) as URLs without a trailing slash, in
    order and without repeats; ValueError saying why for an empty list, a URL that is not
    http(s)://host..., or more than MAX_NODES."""
    if isinstance(values, str):
        values = [values]
    urls: list[str] = []
    for value in values:
        for part in value.split(","):
            url = part.strip().rstrip("/")
            if not url:
                continue
            parts = urlsplit(url)
            if parts.scheme.lower() not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
                raise ValueError(f"node URL {part.strip()!r} must look like http://host:port")
            if url not in urls:
                urls.append(url)
    if not urls:
        raise ValueError("no node URL given")
    if len(urls) > MAX_NODES:
        raise ValueError(f"at most {MAX_NODES} node URLs, not {len(urls)}")
    return urls


def describe(outcome: Any) -> str:
    """An error answer `(code, value)` as the node's message; anything else as text."""
    if isinstance(outcome, tuple):
        code, value = outcome
        message = value.get("error") if isinstance(value, dict) else None
        return message if isinstance(message, str) else f"HTTP {code}"
    return str(outcome) or type(outcome).__name__


class NodeOption:
    """Mixin for usage.Options: `--node URL`, repeatable or a comma list, into
    self["node"] as a list of URLs (DEFAULT_NODE when none is given). Call
    `self.check_nodes()` from postOptions."""

    def opt_node(self, value: str) -> None:
        """a node's RPC URL (default http://localhost:8080); repeat it, or give a comma
        list, for nodes to fail over to"""
        if not hasattr(self, "_nodes"):
            self._nodes: list[str] = []
        self._nodes.append(value)

    def check_nodes(self) -> None:
        from twisted.python import usage

        try:
            self["node"] = node_urls(getattr(self, "_nodes", None) or [DEFAULT_NODE])  # type: ignore[index]
        except ValueError as e:
            raise usage.UsageError(f"--node: {e}") from None


class HttpNodeAPI:
    def __init__(self, url: Union[str, Sequence[str]], http: Any = None, reactor: Any = None,
                 timeout: Optional[float] = None, retry_seconds: float = RETRY_SECONDS) -> None:
        self.urls = node_urls(url)
        self.http = http or treq
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.timeout = timeout if timeout is not None else TIMEOUT if len(self.urls) == 1 else FAILOVER_TIMEOUT
        self.retry_seconds = retry_seconds
        self.current = 0  # index of the node requests go to first
        self._next_retry = 0.0
        self._retrying: Optional[defer.Deferred] = None

    @property
    def url(self) -> str:
        """The node in use now."""
        return self.urls[self.current]

    # One exchange with one node.

    async def _exchange(self, url: str, method: str, path: str, body: Optional[Any]) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            kwargs["headers"] = {b"Content-Type": [b"application/json"]}
        try:
            response = await self.http.request(method, url + path, **kwargs)
            content = await self.http.content(response)
        except defer.CancelledError:
            raise
        except Exception as e:  # twisted's connection errors are not all OSErrors
            raise Unavailable((str(e) or type(e).__name__).rstrip(".")) from None
        if response.code in UNAVAILABLE_STATUSES:
            raise Unavailable(f"HTTP {response.code}")
        try:
            value = json.loads(content)
        except ValueError:
            raise Unavailable(f"answered {response.code} with non-JSON") from None
        return response.code, value

    async def _attempt(self, url: str, method: str, path: str, body: Optional[Any]) -> tuple[int, Any]:
        """`_exchange` cut off after self.timeout seconds of the reactor's clock."""
        d = defer.ensureDeferred(self._exchange(url, method, path, body))
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = self.reactor.callLater(self.timeout, expire)
        try:
            return await d
        except Exception:
            if expired:
                raise Unavailable(f"no answer within {self.timeout:g} s") from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    @staticmethod
    def _answer(code: int, value: Any) -> Any:
        if code >= 400:
            raise ApiError(code, describe((code, value)))
        return value

    # Choosing the node.

    def _use(self, index: int, why: str = "") -> None:
        if index == self.current:
            return
        old = self.urls[self.current]
        if index > self.current:
            log.warn("[client] node {old} unavailable ({why}): using {new}", old=old, why=why, new=self.urls[index])
            self._next_retry = self.reactor.seconds() + self.retry_seconds
        else:
            log.info("[client] node {new} answers again: using it instead of {old}", new=self.urls[index], old=old)
        self.current = index

    def _maybe_retry_earlier(self) -> None:
        """Ask the nodes before the current one (in the background, at most every
        retry_seconds) whether they answer again."""
        if self.current == 0 or self._retrying is not None or self.reactor.seconds() < self._next_retry:
            return
        self._next_retry = self.reactor.seconds() + self.retry_seconds

        async def retry(upto: int) -> None:
            for index in range(upto):
                if await self._caught_up(index) and index < self.current:
                    self._use(index)
                    return

        def done(result: Any) -> Any:
            self._retrying = None
            return result

        self._retrying = defer.ensureDeferred(retry(self.current))
        self._retrying.addErrback(lambda f: log.failure("[client] retrying the first nodes failed", f))
        self._retrying.addBoth(done)

    async def _progress(self, url: str) -> Optional[tuple[int, str, int]]:
        """(weight, tip hash, VDF segments held on the tip) of a node; None if it does
        not answer them."""
        try:
            code, status = await self._attempt(url, "GET", "/status", None)
            if code >= 400 or not isinstance(status, dict):
                return None
            code, job = await self._attempt(url, "GET", "/vdf/job", None)
        except Unavailable:
            return None
        weight, tip = status.get("weight"), status.get("tipHash")
        segments = job.get("segments") if code < 400 and isinstance(job, dict) and job.get("parentHash") == tip else 0
        if type(weight) is not int or not isinstance(tip, str) or type(segments) is not int:
            return None
        return weight, tip, segments

    async def _caught_up(self, index: int) -> bool:
        """Whether node `index` answers and is as far on as the node in use: a heavier
        tip, or the same tip with its signage points (VDF segments) but CATCH_UP_SEGMENTS.
        A node back from a crash has synced its blocks before it holds the segments of the
        tip (they are relayed as they come), so it is preferred from the next block on."""
        theirs = await self._progress(self.urls[index])
        if theirs is None:
            return False
        ours = await self._progress(self.url)
        if ours is None:
            return True
        if theirs[0] > ours[0] or (theirs[1] == ours[1] and theirs[2] >= ours[2] - CATCH_UP_SEGMENTS):
            return True
        log.info("[client] node {url} answers again but is behind {current} (weight {w}, {n} segments on "
                 "{tip}; here {w2}, {n2} on {tip2}): staying on {current}", url=self.urls[index], current=self.url,
                 w=theirs[0], n=theirs[2], tip=theirs[1][:16], w2=ours[0], n2=ours[2], tip2=ours[1][:16])
        return False

    def _unreachable(self, reasons: list[tuple[str, str]]) -> ApiError:
        if len(reasons) == 1:
            url, why = reasons[0]
            return ApiError(503, f"cannot reach the node at {url}: {why}")
        return ApiError(503, "cannot reach any node: " + "; ".join(f"{url}: {why}" for url, why in reasons))

    async def _request(self, method: str, path: str, body: Optional[Any] = None) -> Any:
        """To the current node; on to the next one (in order, wrapping) while unavailable."""
        self._maybe_retry_earlier()
        start, count = self.current, len(self.urls)
        reasons: list[tuple[str, str]] = []
        for step in range(count):
            index = (start + step) % count
            try:
                code, value = await self._attempt(self.urls[index], method, path, body)
            except Unavailable as e:
                reasons.append((self.urls[index], str(e)))
                continue
            if reasons:  # moved on from the nodes before it (not: current changed meanwhile)
                self._use(index, reasons[-1][1])
            return self._answer(code, value)
        raise self._unreachable(reasons)

    async def _everywhere(self, method: str, path: str, body: Any) -> Any:
        """To every node at once. The first success is the answer (the other requests
        go on, logged); if none succeeds, the refusal of the first node in order that
        answered, or 503 when none could be reached."""
        if len(self.urls) == 1:
            return await self._request(method, path, body)
        self._maybe_retry_earlier()
        result: defer.Deferred = defer.Deferred()
        order = [(self.current + step) % len(self.urls) for step in range(len(self.urls))]
        outcomes: dict[int, Any] = {}

        def settle(outcome: Any, index: int) -> None:
            outcomes[index] = outcome
            success = isinstance(outcome, tuple) and outcome[0] < 400
            if result.called:
                if not success:  # a refusal is news; a node down was said when the client left it
                    emit = log.info if isinstance(outcome, tuple) else log.debug
                    emit("[client] {path} to {url}: {why}", path=path, url=self.urls[index], why=describe(outcome))
                return
            if success:
                result.callback(outcome[1])
            elif len(outcomes) == len(self.urls):
                answered = [i for i in order if isinstance(outcomes[i], tuple)]
                if answered:
                    code, value = outcomes[answered[0]]
                    result.errback(ApiError(code, describe((code, value))))
                else:
                    result.errback(self._unreachable([(self.urls[i], describe(outcomes[i])) for i in order]))

        for index in order:
            d = defer.ensureDeferred(self._attempt(self.urls[index], method, path, body))
            d.addCallbacks(settle, lambda f, i=index: settle(f.value, i), callbackArgs=(index,))
            d.addErrback(lambda f: log.failure("[client] {path} to every node", f, path=path))
        return await result

    def _get(self, path: str) -> defer.Deferred:
        return defer.ensureDeferred(self._request("GET", path))

    def _post(self, path: str, body: Any) -> defer.Deferred:
        return defer.ensureDeferred(self._request("POST", path, body))

    def healthz(self) -> defer.Deferred:
        return self._get("/healthz")

    def status(self) -> defer.Deferred:
        return self._get("/status")

    def chain_tip(self) -> defer.Deferred:
        return self._get("/chainTip")

    def balance(self, address: str) -> defer.Deferred:
        return self._get(f"/balance/{address}")

    def block(self, height: int) -> defer.Deferred:
        return self._get(f"/block/{height}")

    def peers(self) -> defer.Deferred:
        return self._get("/peers")

    def submit_tx(self, doc: Any) -> defer.Deferred:
        return self._post("/submitTx", doc)

    def signage_points(self) -> defer.Deferred:
        return self._get("/signagePoints")

    def block_template(self, doc: Any) -> defer.Deferred:
        return self._post("/blockTemplate", doc)

    def submit_block(self, doc: Any) -> defer.Deferred:
        """To every node: a block one node cannot take (it died) still reaches the others."""
        return defer.ensureDeferred(self._everywhere("POST", "/submitBlock", doc))

    def vdf_job(self) -> defer.Deferred:
        return self._get("/vdf/job")

    def vdf_output(self, doc: Any) -> defer.Deferred:
        return self._post("/vdf/output", doc)
