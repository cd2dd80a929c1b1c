"""What the node's log shows, in which form, and where it goes.

One observer does it all: Twisted's chatter (factories starting and stopping, ports opening
and closing, HTTP access lines, ClientService's retry notices) is demoted to debug, events
below the chosen level are dropped (twisted.logger's FilteringLogObserver with a
LogLevelFilterPredicate), and what is left is written as classic text or as one JSON
object a line, to a stream, a size-rotated file (twisted.python.logfile.LogFile) or syslog.
See docs/logging.md.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import datetime, timezone
from typing import IO, Any, Callable, Optional

import attrs
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from twisted.python import logfile
from zope.interface import implementer

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "warning": LogLevel.warn,
          "error": LogLevel.error, "critical": LogLevel.critical}
FORMATS = ("text", "json")
DEFAULT_LEVEL = "info"
DEFAULT_FORMAT = "text"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024  # a log file is rotated when it reaches 10 MiB
MIN_MAX_BYTES = 1024  # --log-max-bytes at least 1 KiB
MAX_MAX_BYTES = 1 << 40  # and at most 1 TiB
DEFAULT_KEEP = 5  # rotated files kept: PATH.1 (the newest) to PATH.5
MAX_KEEP = 100

# Chatter: events at info from these namespaces (and their children) count as debug.
CHATTER_NAMESPACES = (
    "twisted.python.log",  # what is written to log.logfile: twisted.web's HTTP access lines
    "log_legacy",  # legacy log.msg: "Site starting on 8080", "(TCP Port 8080 Closed)"
    "twisted.application._client_service",  # ClientService: "Scheduling retry 3 to connect ..."
)
# ... and events of these formats, from whichever namespace (a factory's own class).
CHATTER_FORMATS = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})


def parse_level(text: str) -> LogLevel:
    try:
        return LEVELS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"log level {text!r} is not one of debug, info, warn, error, critical") from None


def parse_size(text: str) -> int:
    """Bytes, optionally with a binary suffix: 4096, 512K, 10M, 1G (KiB, MiB, GiB)."""
    raw = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(raw[-1:], 1)
    digits = raw[:-1] if scale > 1 else raw
    if not digits.isdigit():
        raise ValueError(f"{text!r} is not a size in bytes (e.g. 10485760, 512K, 10M)")
    value = int(digits) * scale
    if not MIN_MAX_BYTES <= value <= MAX_MAX_BYTES:
        raise ValueError(f"{text!r} must be between {MIN_MAX_BYTES} bytes and 1 TiB")
    return value


def is_chatter(event: LogEvent) -> bool:
    if event.get("log_level") != LogLevel.info:
        return False  # a warning or an error is never chatter, wherever it comes from
    if event.get("log_format") in CHATTER_FORMATS:
        return True
    namespace = str(event.get("log_namespace", ""))
    return any(namespace == n or namespace.startswith(n + ".") for n in CHATTER_NAMESPACES)


@implementer(ILogObserver)
@attrs.define
class Demoting:
    """Hands events to `observer`, chatter relabelled as debug (so it is filtered as, and
    reads as, debug)."""

    observer: ILogObserver

    def __call__(self, event: LogEvent) -> None:
        self.observer(dict(event, log_level=LogLevel.debug) if is_chatter(event) else event)


def filtered(observer: ILogObserver, level: LogLevel) -> ILogObserver:
    """`observer`, seeing only events at `level` or above, chatter counted as debug."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    return Demoting(FilteringLogObserver(observer, [predicate]))


def iso_time(seconds: Optional[float]) -> Optional[str]:
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def json_line(event: LogEvent) -> str:
    """One JSON object a line: time (UTC, ms), level, namespace, text; and failure (the
    traceback) when the event carries one."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": iso_time(event.get("log_time")),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "text": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["failure"] = failure.getTraceback()
        except Exception:  # a failure that cannot be formatted still leaves its line
            record["failure"] = repr(failure)
    return json.dumps(record, ensure_ascii=False, default=repr) + "\n"


def stream_observer(stream: IO[Any], fmt: str) -> ILogObserver:
    if fmt == "json":
        return FileLogObserver(stream, json_line)
    return textFileLogObserver(stream)


def open_rotating(path: str, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP) -> logfile.LogFile:
    """PATH rotated to PATH.1 when it reaches `max_bytes` (counted in characters written),
    PATH.1 to PATH.2 ..., at most `keep` rotated files. Raises OSError."""
    full = os.path.abspath(path)
    return logfile.LogFile(os.path.basename(full), os.path.dirname(full), rotateLength=max_bytes,
                           maxRotatedFiles=keep)


@attrs.define
class LogSetup:
    """The observer for one process, and the rotating file it writes (if any)."""

    observer: ILogObserver
    file: Optional[logfile.LogFile] = None
    destination: str = "stdout"

    def attach(self, application: Any, reactor: Any = None) -> None:
        """Make this twistd's observer (the `.tac` idiom: twistd's logger uses an
        application's ILogObserver component unless --logger is given), and let SIGUSR1
        rotate our file as it does twistd's."""
        application.setComponent(ILogObserver, self.observer)
        if self.file is not None and not signal.getsignal(signal.SIGUSR1):
            target = self.file
            if reactor is None:
                from twisted.internet import reactor as default_reactor

                reactor = default_reactor

            def rotate(signum: int, frame: Any) -> None:
                reactor.callFromThread(target.rotate)

            signal.signal(signal.SIGUSR1, rotate)


def setup(level: str = DEFAULT_LEVEL, fmt: str = DEFAULT_FORMAT, path: Optional[str] = None,
          max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP,
          twistd: Optional[Any] = None, stdout: Optional[IO[Any]] = None) -> LogSetup:
    """The node's observer. Where it writes: `path` (our --log-file) if given; else what
    twistd's own options say (`twistd` is its ServerOptions: --logfile PATH or `-`,
    --syslog, or twistd.log for a daemon); else stdout. Raises OSError if the file
    cannot be opened."""
    minimum = parse_level(level)
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    out = sys.stdout if stdout is None else stdout
    options: Callable[[str, Any], Any] = twistd.get if twistd is not None else (lambda key, default: default)
    twistd_file = options("logfile", None) or None
    if path is None and twistd_file is None and options("syslog", False):
        from twisted.python import syslog

        legacy: Any = syslog.SyslogObserver(options("prefix", "twisted")).emit
        return LogSetup(filtered(LegacyLogObserverWrapper(legacy), minimum), destination="syslog")
    if path is None and twistd_file == "-":
        return LogSetup(filtered(stream_observer(out, fmt), minimum))
    if path is None and twistd_file is None and twistd is not None and not options("nodaemon", False):
        twistd_file = "twistd.log"  # twistd's own default for a daemon
    target = path or twistd_file
    if target is None:
        return LogSetup(filtered(stream_observer(out, fmt), minimum))
    file = open_rotating(target, max_bytes, keep)
    stream: Any = file  # a LogFile: write() and flush(), what the observers use
    return LogSetup(filtered(stream_observer(stream, fmt), minimum), file, os.path.abspath(target))


def check_log_file(path: str) -> None:
    """Raises ValueError unless `path` can be a log file (its directory exists and is
    writable, and it is not a directory)."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory")
    if not os.path.isdir(directory):
        raise ValueError(f"directory {directory} does not exist")
    if not os.access(directory, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{path} is not writable")


__all__ = ["setup", "filtered", "json_line", "is_chatter", "parse_level", "parse_size", "LogSetup"]
