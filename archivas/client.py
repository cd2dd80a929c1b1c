"""The node's RPC over HTTP (treq): the same calls as LocalNodeAPI, for the standalone
timelord, farmer and wallet. Every call returns a Deferred; a 4xx/5xx answer fails with
ApiError carrying the node's error message."""

from __future__ import annotations

import json
from typing import Any, Optional

import treq
from twisted.internet import defer

from archivas.nodeapi import ApiError

TIMEOUT = 30.0


class HttpNodeAPI:
    def __init__(self, url: str, http: Any = None) -> None:
        self.url = url.rstrip("/")
        self.http = http or treq

    async def _request(self, method: str, path: str, body: Optional[Any] = None) -> Any:
        kwargs: dict[str, Any] = {"timeout": TIMEOUT}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            kwargs["headers"] = {b"Content-Type": [b"application/json"]}
        try:
            response = await self.http.request(method, self.url + path, **kwargs)
            content = await self.http.content(response)
        except (ConnectionError, OSError, defer.CancelledError) as e:
            raise ApiError(503, f"cannot reach the node at {self.url}: {e}") from None
        except Exception as e:  # twisted's connection errors are not all OSErrors
            raise ApiError(503, f"cannot reach the node at {self.url}: {e}") from None
        try:
            value = json.loads(content)
        except ValueError:
            raise ApiError(502, f"the node at {self.url} answered {response.code} with non-JSON") from None
        if response.code >= 400:
            message = value.get("error") if isinstance(value, dict) else None
            raise ApiError(response.code, message or f"HTTP {response.code}")
        return value

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
        return self._post("/submitBlock", doc)

    def vdf_job(self) -> defer.Deferred:
        return self._get("/vdf/job")

    def vdf_output(self, doc: Any) -> defer.Deferred:
        return self._post("/vdf/output", doc)
