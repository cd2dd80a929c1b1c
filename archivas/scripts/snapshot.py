"""`archivas-node snapshot export|load` and `archivas-node verify-history` (docs/snapshots.md).

    archivas-node snapshot export --height H [--db DIR] [--network N] FILE
    archivas-node snapshot load [--db DIR] [--network N] [--assume-snapshot HASH] FILE
    archivas-node verify-history [--db DIR] [--network N] --peers host:port[,...] [--timeout S]

--db and --peers fall back on ARCHIVAS_DB_PATH and ARCHIVAS_PEERS, then the defaults, as
the node's flags do. An operator mistake is one line on stderr and exit 1 (2 for a bad flag).
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn, Optional

from twisted.python import usage

from archivas.chain import params as network_params
from archivas.chain.params import NETWORKS, NetworkParams
from archivas.scripts.common import VersionedOptions, die, parse

PROGRAM = "archivas-node"
VERIFY_TIMEOUT = 24 * 3600.0  # seconds verify-history runs at most by default


class _Common(VersionedOptions):
    program = PROGRAM
    optParameters = [
        ["db", None, None, "database directory [default: $ARCHIVAS_DB_PATH or ./archivas-data]"],
        ["network", None, "devnet", f"network: {' or '.join(NETWORKS)}"],
    ]

    def postOptions(self) -> None:
        if self["network"] not in NETWORKS:
            raise usage.UsageError(f"--network must be one of {', '.join(NETWORKS)}, not {self['network']!r}")
        self["db"] = self["db"] or os.environ.get("ARCHIVAS_DB_PATH") or "./archivas-data"


class ExportOptions(_Common):
    synopsis = "--height H [--db DIR] [--network N] FILE"
    longdesc = ("Write the ledger state at main-chain height H, with the blocks a node needs to follow the "
                "chain from there, to FILE (docs/snapshots.md). The database may be in use by a running node: "
                "it is only read.")
    optParameters = [["height", None, None, "the main-chain height of the state (at least 1, at most the tip)"]]

    def parseArgs(self, file: str) -> None:  # type: ignore[override]
        self["file"] = file

    def postOptions(self) -> None:
        super().postOptions()
        height = self["height"]
        if height is None or not str(height).isdigit():
            raise usage.UsageError("--height H is needed: a main-chain height (a whole number)")
        self["height"] = int(height)


class LoadOptions(_Common):
    synopsis = "[--db DIR] [--network N] [--assume-snapshot HASH] FILE"
    longdesc = ("Make a new database in --db from a snapshot file whose state hash is the one pinned in the "
                "network's parameters, or the one given with --assume-snapshot. The node then follows the "
                "chain from the snapshot's height at once, and validates the history below it in the "
                "background (docs/snapshots.md).")
    optParameters = [["assume-snapshot", None, None, "trust the snapshot whose state hash is HASH (64 hex "
                                                     "digits), instead of the network's pinned one"]]

    def parseArgs(self, file: str) -> None:  # type: ignore[override]
        self["file"] = file


class VerifyOptions(_Common):
    synopsis = "[--db DIR] [--network N] --peers host:port[,...] [--timeout S]"
    longdesc = ("Download blocks 0..H from peers over the peer protocol, validate them in full into a scratch "
                "database, and check they give the state the database was loaded with from a snapshot at H. "
                "Records the result in the database (GET /status: history.validated). A running node does "
                "the same in the background; this is for a node that is stopped (it takes the database).")
    optParameters = [["timeout", None, str(VERIFY_TIMEOUT), "give up after this many seconds"]]

    def __init__(self) -> None:
        super().__init__()
        self["peers"] = []

    def opt_peers(self, value: str) -> None:
        """peer addresses host:port, comma separated; may repeat"""
        self["peers"].extend(p.strip() for p in value.split(",") if p.strip())

    def postOptions(self) -> None:
        super().postOptions()
        if not self["peers"]:
            self["peers"] = [p.strip() for p in os.environ.get("ARCHIVAS_PEERS", "").split(",") if p.strip()]
        if not self["peers"]:
            raise usage.UsageError("--peers host:port is needed: the peers to download the history from")
        from archivas.tap import check_peer

        self["peers"] = [check_peer(p) for p in self["peers"]]
        try:
            self["timeout"] = float(self["timeout"])
        except ValueError:
            raise usage.UsageError(f"--timeout must be seconds, not {self['timeout']!r}") from None


def _params(name: str) -> NetworkParams:
    return network_params.load(name)


def export(argv: list[str]) -> None:
    from archivas.chain.snapshot import SnapshotError, export_snapshot

    options = parse(f"{PROGRAM} snapshot export", ExportOptions(), argv)
    try:
        manifest, digest = export_snapshot(options["db"], _params(options["network"]), options["height"],
                                           options["file"])
    except SnapshotError as e:
        die(PROGRAM, str(e))
    sys.stdout.write(
        f"snapshot of {manifest.network} at height {manifest.height} (block {manifest.block_hash.hex()}): "
        f"{manifest.accounts} accounts, {manifest.blocks} blocks, written to {options['file']}\n"
        f"state hash: {manifest.state_hash.hex()}\n"
        f"sha256:     {digest.hex()} (the file's last line; all lines before it hash to it)\n")


def load(argv: list[str]) -> None:
    from archivas.chain.snapshot import SnapshotError, load_snapshot

    options = parse(f"{PROGRAM} snapshot load", LoadOptions(), argv)
    try:
        manifest = load_snapshot(options["file"], options["db"], _params(options["network"]),
                                 options["assume-snapshot"])
    except SnapshotError as e:
        die(PROGRAM, str(e))
    sys.stdout.write(
        f"loaded the {manifest.network} state at height {manifest.height} (block {manifest.block_hash.hex()}, "
        f"{manifest.accounts} accounts, state hash {manifest.state_hash.hex()}) into {options['db']}: the node "
        f"follows the chain from there; the history below it is validated in the background\n")


def verify_history(argv: list[str]) -> None:
    options = parse(f"{PROGRAM} verify-history", VerifyOptions(), argv)
    from twisted.internet import defer

    from archivas.chain.history import HistoryMismatch
    from archivas.chain.storage import StorageError
    from archivas.scripts.common import log_to_stdout
    from archivas.service import node_service

    outcome: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        try:
            top = node_service(db=options["db"], network=options["network"], rpc="tcp:0:interface=127.0.0.1",
                               p2p="tcp:0:interface=127.0.0.1", peers=options["peers"], reactor=reactor)
        except StorageError as e:
            outcome["error"] = str(e)
            return
        try:
            verifier = top.getServiceNamed("history")
        except KeyError:
            chain = top.node.chain
            if chain.snapshot_base:
                outcome["ok"] = f"history validated already (below the snapshot at height {chain.snapshot_base})"
            else:
                outcome["error"] = f"database {chain.storage.directory} was not loaded from a snapshot: nothing to do"
            chain.close()
            return
        log_to_stdout("info")
        top.startService()
        d = verifier.wait()
        timeout = reactor.callLater(options["timeout"], d.cancel)
        try:
            state_hash = await d
            outcome["ok"] = (f"history validated: blocks 0..{verifier.manifest.height} reproduce the snapshot's "
                             f"state (state hash {state_hash.hex()})")
        except HistoryMismatch as e:
            outcome["error"] = str(e)
        except defer.CancelledError:
            outcome["error"] = (f"history not validated within {options['timeout']:.0f} s"
                                + (f": {verifier.last_error}" if verifier.last_error else ": no peer served it"))
        finally:
            if timeout.active():
                timeout.cancel()
            await top.stopService()

    _react(run)
    if not outcome:
        die(PROGRAM, "interrupted: the history is not validated yet (run verify-history again to go on)")
    if "error" in outcome:
        die(PROGRAM, outcome["error"])
    sys.stdout.write(outcome["ok"] + "\n")


def _react(run: Any) -> None:
    """Run `run(reactor)` to its end on the global reactor (task.react would exit)."""
    from twisted.internet import defer, reactor

    failures: list[Any] = []

    def start() -> None:
        d = defer.ensureDeferred(run(reactor))
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if failures:
        failures[0].raiseException()


def usage_error(message: str) -> NoReturn:
    die(PROGRAM, message, 2)


def main(argv: Optional[list[str]] = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["verify-history"]:
        verify_history(args[1:])
    elif args[:2] == ["snapshot", "export"]:
        export(args[2:])
    elif args[:2] == ["snapshot", "load"]:
        load(args[2:])
    else:
        usage_error("snapshot needs a command: snapshot export --height H FILE, or snapshot load FILE")
    raise SystemExit(0)
