"""`twistd archivas-node` and `archivas-node`: command-line options and makeService.

Every setting comes from, in order of precedence: the flag, the environment
(ARCHIVAS_RPC_PORT, ARCHIVAS_P2P_PORT, ARCHIVAS_PEERS, ARCHIVAS_DB_PATH), the TOML file
given with --config (see conf/node.toml), then the default. The log settings (--log-level,
--log-format, --log-file, --log-max-bytes, --log-keep) build the process's log observer,
which makeService hands to twistd (docs/logging.md).
"""

from __future__ import annotations

import os
import sys
import tomllib
from typing import Any, Mapping, Optional

from twisted.internet import endpoints
from twisted.python import usage

from archivas import logs
from archivas.chain import assumed
from archivas.chain.keys import KeyFileError, PrivateKey
from archivas.chain.params import NETWORKS
from archivas.chain.storage import DEFAULT_SYNC, SYNC_MODES, StorageError
from archivas.protocols.addrman import parse_address
from archivas.protocols.manager import endpoint_description, whitelist_networks
from archivas.protocols.tls import TLS_PREFIX
from archivas.scripts.common import VersionedOptions
from archivas.service import NodeMultiService, OperatorNodeService, fail, node_service

DEFAULTS: dict[str, Any] = {
    "rpc-port": "127.0.0.1:8080",
    "p2p-port": ":9090",
    "db": "./archivas-data",
    "db-sync": DEFAULT_SYNC,
    "network": "devnet",
    "peers": [],
    "timelord": False,
    "farm": None,
    "farmer-key": None,
    "whitelist": [],
    "p2p-tls": False,
    "assume-valid": None,
    "log-level": logs.DEFAULT_LEVEL,
    "log-format": logs.DEFAULT_FORMAT,
    "log-file": None,
    "log-max-bytes": logs.DEFAULT_MAX_BYTES,
    "log-keep": logs.DEFAULT_KEEP,
}
LOG_SETTINGS = ("log-level", "log-format", "log-file", "log-max-bytes", "log-keep")
ENVIRONMENT = {
    "rpc-port": "ARCHIVAS_RPC_PORT",
    "p2p-port": "ARCHIVAS_P2P_PORT",
    "peers": "ARCHIVAS_PEERS",
    "db": "ARCHIVAS_DB_PATH",
}


def split_peers(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def check_peer(address: str) -> str:
    """`host:port` (a name, resolved at every connection attempt), `1.2.3.4:port` or
    `[v6]:port`."""
    try:
        parse_address(address[len(TLS_PREFIX):] if address.startswith(TLS_PREFIX) else address)
    except ValueError as e:
        raise usage.UsageError(f"peer {address!r} is not host:port, 1.2.3.4:port or [::1]:port ({e})") from None
    return address


def check_listen(name: str, description: str) -> str:
    text = endpoint_description(str(description))
    if text.startswith("tcp:"):
        port = text.split(":")[1]
        if not port.isdigit() or not 0 <= int(port) < 65536:
            raise usage.UsageError(f"--{name}: {description!r} is not a port or listen address")
    try:
        from twisted.internet import reactor

        endpoints.serverFromString(reactor, text)  # parses only; nothing listens yet
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError(f"--{name}: {description!r} is not a listen address ({e})") from None
    return str(description)


class Options(VersionedOptions):
    program = "archivas-node"
    synopsis = "[options]"
    longdesc = ("Run an Archivas node: validate, store and gossip blocks, serve the JSON RPC, "
                "and optionally prove time (--timelord) and farm plots (--farm).")
    optParameters = [
        ["rpc-port", None, None, "RPC listen address: 8080, :8080, 127.0.0.1:8080 or an endpoint string "
                                 "[default: 127.0.0.1:8080, local only; :8080 opens it to other hosts]"],
        ["p2p-port", None, None, "peer-to-peer listen address, same forms [default: :9090]"],
        ["db", None, None, "database directory [default: ./archivas-data]"],
        ["db-sync", None, None, "when the database reaches the disk: normal (at checkpoints; a power loss may "
                                "lose the last blocks, refetched from peers) or full (an fsync every block) "
                                f"[default: {DEFAULT_SYNC}] (docs/storage.md)"],
        ["network", None, None, f"network: {' or '.join(NETWORKS)} [default: devnet]"],
        ["config", None, None, "TOML configuration file (see conf/node.toml)"],
        ["farm", None, None, "farm the plots in this directory"],
        ["farmer-key", None, None, "key file of the farmer (with --farm)"],
        ["assume-valid", None, None, "a block hash: headers-first sync takes its ancestors without checking "
                                     "their proofs and signatures (docs/consensus.md, Assume-valid); 0 "
                                     "verifies everything [default: the network's, none on devnet and fastnet]"],
        ["log-level", None, None, "debug, info, warn, error or critical [default: info]; Twisted's "
                                  "factory, port, retry and HTTP access lines count as debug"],
        ["log-format", None, None, "text, or json (one object a line: time, level, namespace, text) "
                                   "[default: text]"],
        ["log-file", None, None, "log to this file, rotated by size (over twistd's --logfile) "
                                 "[default: stdout, or twistd's --logfile]"],
        ["log-max-bytes", None, None, "rotate the log file at this size: bytes, or 512K, 10M, 1G "
                                      "[default: 10M; at least 1K, at most 1T]"],
        ["log-keep", None, None, f"rotated log files kept, 1 to {logs.MAX_KEEP} [default: {logs.DEFAULT_KEEP}]"],
    ]
    optFlags = [["timelord", None, "run a timelord in the node"],
                ["p2p-tls", None, "peers connect to the p2p port over TLS (a certificate per node, bound to "
                                  "its node key in the handshake); dial such peers as tls:host:port"]]

    def __init__(self, environ: Optional[Mapping[str, str]] = None, exit_on_error: bool = True) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self.exit_on_error = exit_on_error
        self._peer_flags: list[str] = []
        self._whitelist_flags: list[str] = []
        self["peers"] = None
        self["whitelist"] = None

    def opt_peers(self, value: str) -> None:
        """peer addresses host:port or [v6]:port, comma separated; may repeat"""
        self._peer_flags.extend(split_peers(value))

    def opt_whitelist(self, value: str) -> None:
        """an address or CIDR network whose peers are never discouraged or evicted; may repeat"""
        self._whitelist_flags.extend(split_peers(value))

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if not self.exit_on_error:
                raise
            sys.stderr.write(f"archivas-node: error: {e}\n")
            raise SystemExit(2) from None

    def postOptions(self) -> None:
        file_settings = self._read_config(self["config"]) if self["config"] else {}
        flags = {k: self[k] for k in ("rpc-port", "p2p-port", "db", "db-sync", "network", "farm", "farmer-key",
                                      "assume-valid", *LOG_SETTINGS)}
        flags["peers"] = self._peer_flags or None
        flags["whitelist"] = self._whitelist_flags or None
        flags["timelord"] = True if self["timelord"] else None
        flags["p2p-tls"] = True if self["p2p-tls"] else None
        for key, default in DEFAULTS.items():
            value = flags.get(key)
            if value is None and key in ENVIRONMENT and self.environ.get(ENVIRONMENT[key]):
                raw = self.environ[ENVIRONMENT[key]]
                value = split_peers(raw) if key == "peers" else raw
            if value is None:
                value = file_settings.get(key)
            self[key] = default if value is None else value
        self._validate()

    def _read_config(self, path: str) -> dict[str, Any]:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as e:
            raise usage.UsageError(f"cannot read config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise usage.UsageError(f"config file {path} is not valid TOML: {e}") from None
        unknown = sorted(set(doc) - set(DEFAULTS))
        if unknown:
            raise usage.UsageError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
        kinds: dict[str, Any] = {"peers": list, "whitelist": list, "timelord": bool, "p2p-tls": bool,
                                 "log-max-bytes": (str, int), "log-keep": int}
        for key, value in doc.items():
            want = kinds.get(key, (str, int) if key.endswith("port") else str)
            if not isinstance(value, want) or isinstance(value, bool) and want is not bool:
                raise usage.UsageError(f"config file {path}: {key} has the wrong type")
        return {k: (str(v) if k.endswith("port") else v) for k, v in doc.items()}

    def _validate(self) -> None:
        if self["network"] not in NETWORKS:
            raise usage.UsageError(f"--network must be one of {', '.join(NETWORKS)}, not {self['network']!r}")
        if self["db-sync"] not in SYNC_MODES:
            raise usage.UsageError(f"--db-sync must be one of {', '.join(SYNC_MODES)}, not {self['db-sync']!r}")
        self["rpc-port"] = check_listen("rpc-port", self["rpc-port"])
        self["p2p-port"] = check_listen("p2p-port", self["p2p-port"])
        self["peers"] = [check_peer(p) for p in self["peers"]]
        try:
            self["whitelist"] = whitelist_networks(self["whitelist"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["farm"] is not None:
            if self["farmer-key"] is None:
                raise usage.UsageError("--farm needs --farmer-key")
            if not os.path.isdir(self["farm"]):
                raise usage.UsageError(f"--farm: {self['farm']} is not a directory")
        if self["farmer-key"] is not None:
            try:
                PrivateKey.load(self["farmer-key"])
            except KeyFileError as e:
                raise usage.UsageError(f"--farmer-key: {e}") from None
        if self["assume-valid"] is not None:
            value = str(self["assume-valid"]).strip()
            if value != assumed.DISABLED:
                try:
                    assumed.parse_hash(value)
                except ValueError as e:
                    raise usage.UsageError(f"--assume-valid: {e}") from None
            self["assume-valid"] = value
        self._validate_logging()

    def _validate_logging(self) -> None:
        try:
            logs.parse_level(self["log-level"])
        except ValueError as e:
            raise usage.UsageError(f"--log-level: {e}") from None
        if self["log-format"] not in logs.FORMATS:
            raise usage.UsageError(f"--log-format must be one of {', '.join(logs.FORMATS)}, not {self['log-format']!r}")
        try:
            self["log-max-bytes"] = logs.parse_size(self["log-max-bytes"])
        except ValueError as e:
            raise usage.UsageError(f"--log-max-bytes: {e}") from None
        keep = str(self["log-keep"])
        if not keep.isdigit() or not 1 <= int(keep) <= logs.MAX_KEEP:
            raise usage.UsageError(f"--log-keep must be a whole number from 1 to {logs.MAX_KEEP}, not {keep!r}")
        self["log-keep"] = int(keep)
        if self["log-file"] is not None:
            try:
                logs.check_log_file(self["log-file"])
            except ValueError as e:
                raise usage.UsageError(f"--log-file: {e}") from None


def log_setup(config: Options) -> logs.LogSetup:
    """The observer the settings ask for; under twistd, twistd's own --logfile, --syslog and
    --nodaemon (the parent options) decide where it writes when --log-file does not."""
    try:
        return logs.setup(config["log-level"], config["log-format"], config["log-file"],
                          config["log-max-bytes"], config["log-keep"], twistd=getattr(config, "parent", None))
    except OSError as e:
        fail(f"cannot open the log file: {e.strerror} ({e.filename})")
        raise  # not reached: fail() exits


def makeService(config: Options, reactor: Any = None) -> NodeMultiService:
    setup = log_setup(config)
    try:
        top = node_service(
            db=config["db"], network=config["network"], rpc=config["rpc-port"], p2p=config["p2p-port"],
            peers=config["peers"], timelord=config["timelord"], farm=config["farm"],
            farmer_key=config["farmer-key"], reactor=reactor, operator=True, whitelist=config["whitelist"],
            p2p_tls=config["p2p-tls"], assume_valid=config["assume-valid"], db_sync=config["db-sync"],
        )
    except (StorageError, KeyFileError) as e:
        fail(str(e))
        raise  # not reached: fail() exits
    if isinstance(top, OperatorNodeService):
        top.log_setup = setup  # twistd's Application takes it as its log observer
    return top
