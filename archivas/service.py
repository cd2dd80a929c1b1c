"""The node's service tree, for twistd, the console script, and embedding.

`node_service(...)` opens the database and returns a MultiService: the node (peer manager,
verification threads), the peer listener, the RPC listener, one dialer per configured peer,
and optionally an embedded timelord and farmer. Another Twisted application attaches it
with `setServiceParent(application)`.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any, Callable, Optional, Sequence

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from archivas.admin import write_cookie
from archivas.chain import params as network_params
from archivas.chain.blockchain import Chain
from archivas.chain.keys import PrivateKey
from archivas.chain.snapshot import history_failed, history_validated
from archivas.chain.storage import DEFAULT_SYNC, StorageError
from archivas.farmer.farming import Farmer
from archivas.farmer.plots import load_plots
from archivas.history import HistoryVerifier
from archivas.logs import LogSetup
from archivas.node import Node
from archivas.nodeapi import LocalNodeAPI
from archivas.protocols import tls
from archivas.protocols.banlist import BanList
from archivas.protocols.identity import NodeIdentity
from archivas.protocols.manager import endpoint_description
from archivas.rpc import NodeRPC, site
from archivas.timelord import Timelord

log = Logger()

# Connections a listener accepts in one reactor turn. Twisted's TCP port starts at 100 and
# adds 20 each turn that fills its quota, with no ceiling: in a flood of connections the
# ones closed to make room (rpc.GuardedSite, the peer manager's eviction) still hold their
# descriptors until the next turn, so the process briefly held the cap plus a batch that
# kept growing (433 descriptors for a cap of 256, under load).
ACCEPTS_PER_TURN = 32


def bound_accepts(port: Any, most: int = ACCEPTS_PER_TURN) -> None:
    """Keep `port` (a Twisted TCP port; anything else is left alone) from accepting more
    than `most` connections per reactor turn."""
    if not hasattr(port, "numberAccepts") or not hasattr(port, "doRead"):
        return
    accept = port.doRead

    def doRead() -> Any:
        port.numberAccepts = max(1, min(port.numberAccepts, most))
        return accept()
    port.doRead = doRead
    port.numberAccepts = min(port.numberAccepts, most)


class ListenError(Exception):
    """A listening address cannot be used (in use, not allowed, malformed)."""


class ListeningService(service.Service):
    """Listens on an endpoint description when started. TCP listening happens at once, so
    a port in use fails startService itself (ListenError) rather than later in a log."""

    def __init__(self, reactor: Any, description: str, factory: Any, what: str,
                 on_listening: Optional[Callable[[Any], None]] = None, endpoint: Any = None) -> None:
        self.reactor = reactor
        self.description = endpoint_description(description)
        self.endpoint = endpoint  # instead of the description (a TLS listener with the node's certificate)
        self.factory = factory
        self.what = what
        self.on_listening = on_listening
        self.port: Any = None

    def startService(self) -> None:
        try:
            endpoint = self.endpoint or endpoints.serverFromString(self.reactor, self.description)
            d = endpoint.listen(self.factory)
        except (ValueError, TypeError, KeyError) as e:
            raise ListenError(f"cannot listen for {self.what} on {self.description!r}: {e}") from None
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            raise ListenError(f"cannot listen for {self.what} on {self.description}: "
                              f"{outcome[0].getErrorMessage()}")
        super().startService()
        if outcome:
            self._listening(outcome[0])
        else:
            d.addCallback(self._listening)

    def _listening(self, port: Any) -> None:
        self.port = port
        bound_accepts(port)
        address = port.getHost()
        where = (f"{address.host}:{address.port}" if hasattr(address, "port")
                 else getattr(address, "name", None) or str(address))  # a UNIX socket's path
        log.info("[{what}] listening on {where}", what=self.what, where=where)
        if self.on_listening is not None:
            self.on_listening(port)

    def stopService(self) -> Optional[defer.Deferred]:  # type: ignore[override]
        super().stopService()
        if self.port is None:
            return None
        return defer.maybeDeferred(self.port.stopListening)


class NodeService(service.Service):
    """Starts and stops the node; closes its database last."""

    name: Optional[str] = "node"  # type: ignore[assignment]  # Twisted types it None

    def __init__(self, node: Node) -> None:
        self.node = node

    def startService(self) -> None:
        super().startService()
        tip = self.node.chain.tip
        log.info("[node] {network} node at height {h} (tip {t}), database {db}",
                 network=self.node.params.name, h=tip.height, t=tip.hash.hex()[:16],
                 db=str(self.node.chain.storage.directory))
        self.node.start()

    def stopService(self) -> defer.Deferred:  # type: ignore[override]
        super().stopService()
        d = self.node.stop()
        d.addBoth(lambda _: self.node.chain.close())
        return d


class NodeMultiService(service.MultiService):
    """The node's tree; `node` and `api` are there for embedding code and tests."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node
        self.api = LocalNodeAPI(node)
        self.fatal_error: Optional[str] = None  # why the node stopped itself (history_failed)

    def history_failed(self, message: str) -> None:
        """verify-history found that the snapshot's state is not the chain's: the node stops
        (as Bitcoin Core does), since every balance it would serve may be wrong. An embedding
        application sees the service stop and `fatal_error` set."""
        self.fatal_error = message
        log.error("[history] the node stops: its state is not the chain's ({db})", db=self.node.chain.storage.path)
        self.stop_for_error(message)

    def stop_for_error(self, message: str) -> None:
        if self.running:
            d = defer.maybeDeferred(self.stopService)
            d.addErrback(lambda f: log.failure("[history] stopping the node failed", f))


def node_service(
    db: str = "./archivas-data",
    network: str = "devnet",
    rpc: str = "127.0.0.1:8080",
    p2p: str = ":9090",
    peers: Sequence[str] = (),
    timelord: bool = False,
    farm: Optional[str] = None,
    farmer_key: Optional[str] = None,
    reactor: Any = None,
    operator: bool = False,
    whitelist: Sequence[str] = (),
    p2p_tls: bool = False,
    assume_valid: Optional[str] = None,
    db_sync: str = DEFAULT_SYNC,
) -> NodeMultiService:
    """Build an Archivas node as a MultiService. Opens (or creates) the database now, so
    a locked, corrupt or foreign database raises StorageError here. `operator=True` (twistd,
    the console script) turns a listening failure at start into one line and exit 1.
    `assume_valid`: a block hash (hex) whose ancestors headers-first sync takes without
    their proofs, "0" for none, None for the network's (chain/assumed.py). `db_sync`:
    SQLite's synchronous setting, "normal" or "full" (chain/storage.py, docs/storage.md)."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    params = network_params.load(network)
    chain = Chain.open(db, params, sync=db_sync)
    try:
        failed = history_failed(chain.storage)
        if failed is not None:  # recorded by verify-history (docs/snapshots.md)
            raise StorageError(f"database {chain.storage.path} was loaded from a snapshot whose history was "
                               f"refused ({failed}): move it away and sync from genesis or load another snapshot")
        directory = chain.storage.directory
        certificate = tls.load_or_create_certificate(directory) if p2p_tls or any(
            p.startswith(tls.TLS_PREFIX) for p in peers) else None
        node = Node(chain, reactor, NodeIdentity.load_or_create(directory),
                    whitelist=whitelist, bans=BanList(reactor.seconds, chain.storage),
                    book_path=str(directory / "peers.json"), tls_certificate=certificate,
                    assume_valid=assume_valid)
        node.peers.bootstrap = list(params.bootstrap_peers)
        admin_token = write_cookie(directory)
        top = (OperatorNodeService if operator else NodeMultiService)(node)
        top.setName("archivas-node")
        NodeService(node).setServiceParent(top)
        if chain.snapshot_base and history_validated(chain.storage) is None:
            HistoryVerifier(node, on_failed=top.history_failed).setServiceParent(top)  # docs/snapshots.md

        def p2p_listening(port: Any) -> None:
            node.peers.listen_port = port.getHost().port

        tls_endpoint = None
        if p2p_tls:
            assert certificate is not None
            described = endpoint_description(p2p)
            parts = dict(part.split("=", 1) for part in described.split(":")[2:] if "=" in part)
            if not described.startswith("tcp:"):
                raise ValueError(f"--p2p-tls needs a TCP listen address, not {p2p!r}")
            tls_endpoint = tls.server_endpoint(reactor, int(described.split(":")[1]),
                                               parts.get("interface", ""), certificate)
        p2p_service = ListeningService(reactor, p2p, node.peers.inbound_factory, "p2p", p2p_listening,
                                       endpoint=tls_endpoint)
        p2p_service.setName("p2p")
        p2p_service.setServiceParent(top)
        rpc_service = ListeningService(reactor, rpc, site(NodeRPC(top.api, admin_token).resource(), reactor), "rpc")
        rpc_service.setName("rpc")
        rpc_service.setServiceParent(top)
        for address in peers:
            node.peers.client_service(address).setServiceParent(top)
        if timelord:
            Timelord(top.api, reactor).setServiceParent(top)
        if farm is not None:
            if farmer_key is None:
                raise ValueError("farming needs a farmer key")
            Farmer(top.api, load_plots(farm), PrivateKey.load(farmer_key), reactor).setServiceParent(top)
        return top
    except BaseException:
        chain.close()
        raise


class OperatorNodeService(NodeMultiService):
    """For twistd and the console script: an operator mistake at start (a port in use)
    is one line on stderr and a non-zero exit, not a traceback. With `log_setup` (the tap
    sets it from --log-level, --log-format, --log-file), the Application twistd attaches
    this service to gets that observer as its ILogObserver, which twistd's logger then
    uses instead of its own (unless twistd is given --logger)."""

    log_setup: Optional[LogSetup] = None

    def setServiceParent(self, parent: Any) -> None:
        if self.log_setup is not None and isinstance(parent, Componentized):
            self.log_setup.attach(parent, self.node.reactor)
        super().setServiceParent(parent)

    def startService(self) -> None:
        try:
            super().startService()
        except ListenError as e:
            fail(str(e))

    def stop_for_error(self, message: str) -> None:
        """The one line on stderr, the reactor stopped (which stops the services), and exit
        status 1 (EXIT_STATUS)."""
        global EXIT_STATUS
        sys.stderr.write(f"archivas-node: error: {message}\n")
        sys.stderr.flush()
        EXIT_STATUS = 1
        atexit.register(_exit_with_status)  # twistd itself exits 0 after its reactor stops
        reactor = self.node.reactor
        reactor.callLater(0, lambda: reactor.stop() if reactor.running else None)


EXIT_STATUS = 0  # non-zero once the node stopped itself for an error (the console script exits with it)


def _exit_with_status() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_STATUS)


def fail(message: str) -> None:
    sys.stderr.write(f"archivas-node: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(1)


__all__ = ["node_service", "NodeMultiService", "ListenError"]
