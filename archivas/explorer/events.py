"""Server-sent events (`GET /events`): the node's new tips pushed to open explorer pages.

At most MAX_CLIENTS streams at once (one more is answered 503). Each stream is a push
producer on its HTTP connection: when Twisted's transport buffer for it fills (the client
is not reading), the client is dropped at once rather than buffered for. Tips are sent at
most every MIN_INTERVAL seconds (a sync connects hundreds of blocks a second: the event
then carries the latest state once); a `status` event every STATUS_SECONDS keeps idle
streams alive and brings peers, mempool and sync progress up to date. Times come from the
injected reactor.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

MAX_CLIENTS = 64
MIN_INTERVAL = 0.25  # seconds between two tip events
STATUS_SECONDS = 5.0  # a status event (and keep-alive) this often while a stream is open
RETRY_MS = 3000  # what the browser waits before reconnecting a stream that closed


def encode(event: str, data: Any) -> bytes:
    """One SSE message. JSON never holds a raw newline, so one `data:` line suffices."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@implementer(IPushProducer)
class Client:
    """One open stream: an HTTP request left unfinished."""

    def __init__(self, hub: "EventHub", request: Any) -> None:
        self.hub = hub
        self.request = request
        self.done: defer.Deferred = defer.Deferred(lambda _: hub.remove(self))
        self.open = True
        self.sent = 0

    def send(self, data: bytes) -> None:
        if self.open:
            self.sent += len(data)
            self.request.write(data)

    # IPushProducer: the connection calls these

    def pauseProducing(self) -> None:
        """Its transport buffer is full: it is not reading fast enough. Dropped (after
        this call returns: it comes from inside a write)."""
        if self.open:
            self.hub.drop(self, "its connection backed up")

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.hub.remove(self)


class EventHub:
    """The open streams and what they are sent. `snapshot()` gives the first event of a
    new stream (the whole strip); `changes()` what changed since the last tip event."""

    def __init__(self, reactor: Any, snapshot: Callable[[], Any], changes: Callable[[], Any],
                 status: Callable[[], Any], max_clients: int = MAX_CLIENTS,
                 min_interval: float = MIN_INTERVAL, status_seconds: float = STATUS_SECONDS,
                 stopped: Callable[[], bool] = lambda: False) -> None:
        self.reactor = reactor
        self.snapshot = snapshot
        self.changes = changes
        self.status = status
        self.max_clients = max_clients
        self.min_interval = min_interval
        self.status_seconds = status_seconds
        self.stopped = stopped
        self.clients: list[Client] = []
        self.dropped = 0
        self.refused = 0
        self.events = 0
        self._last_tip = -1e18
        self._pending: Any = None
        self._status_loop: Optional[LoopingCall] = None

    def subscribe(self, request: Any) -> defer.Deferred:
        """Open a stream on `request`: fires (with b"") when the hub ends it; cancelling
        it (Klein does, when the client goes) removes the client."""
        if len(self.clients) >= self.max_clients:
            self.refused += 1
            raise TooManyClients(self.max_clients)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")  # a proxy in front must not buffer it
        first = encode("tip", self.snapshot())  # before it is counted: snapshot() may ask who else listens
        client = Client(self, request)
        self.clients.append(client)
        request.registerProducer(client, True)
        request.notifyFinish().addBoth(lambda _: self.remove(client))
        client.send(f"retry: {RETRY_MS}\n\n".encode())
        client.send(first)
        self._start_status()
        return client.done

    def remove(self, client: Client) -> None:
        """The client went (or its stream was cancelled): forget it."""
        if client in self.clients:
            self.clients.remove(client)
        if client.open:
            client.open = False
            try:
                client.request.unregisterProducer()
            except Exception:  # the channel may be gone already
                pass
        if not self.clients:
            self._idle()

    def drop(self, client: Client, why: str) -> None:
        """End a client's stream and close its connection."""
        if not client.open:
            return
        self.dropped += 1
        log.info("[rpc] event stream dropped: {why}", why=why)
        self.remove(client)
        self.reactor.callLater(0, self._end, client)  # not from inside the write that paused it

    def _end(self, client: Client) -> None:
        if not client.done.called:
            client.done.callback(b"")  # Klein finishes the response
        _abort(client.request)

    def close_all(self) -> None:
        for client in list(self.clients):
            self.drop(client, "the explorer is closing")

    def tip_changed(self) -> None:
        """The node has a new tip: send it on the next reactor turn (not inside the node's
        block handling), or once MIN_INTERVAL has passed since the last tip event; later
        tips meanwhile ride on that one."""
        if not self.clients or self._pending is not None:
            return
        wait = max(0.0, self._last_tip + self.min_interval - self.reactor.seconds())
        self._pending = self.reactor.callLater(wait, self._send_tip)

    def _send_tip(self) -> None:
        self._pending = None
        self._last_tip = self.reactor.seconds()
        if not self.clients:
            return
        try:
            data = encode("tip", self.changes())
        except Exception:
            log.failure("[rpc] explorer tip event failed")
            return
        self.broadcast(data)

    def broadcast(self, data: bytes) -> None:
        self.events += 1
        for client in list(self.clients):
            client.send(data)

    def _start_status(self) -> None:
        if self._status_loop is None:
            self._status_loop = LoopingCall(self._status_tick)
            self._status_loop.clock = self.reactor
            self._status_loop.start(self.status_seconds, now=False).addErrback(
                lambda f: log.failure("[rpc] explorer status events failed", f))

    def _status_tick(self) -> None:
        if self.stopped():
            self.close_all()
            return
        if self.clients:
            try:
                data = encode("status", self.status())
            except Exception:
                log.failure("[rpc] explorer status event failed")
                return
            self.broadcast(data)

    def _idle(self) -> None:
        """No stream open: no timers left behind."""
        if self._status_loop is not None:
            if self._status_loop.running:
                self._status_loop.stop()
            self._status_loop = None
        if self._pending is not None:
            if self._pending.active():
                self._pending.cancel()
            self._pending = None


class TooManyClients(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} event streams at once: close another explorer page and retry")
        self.limit = limit


def _abort(request: Any) -> None:
    transport = getattr(request.channel, "transport", None) if getattr(request, "channel", None) else None
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    elif not getattr(request, "finished", True):
        request.loseConnection()
