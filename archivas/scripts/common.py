"""What the console scripts share: one-line errors, logging to stdout, running a service."""

from __future__ import annotations

import sys
from typing import Any, Callable, NoReturn

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import globalLogBeginner
from twisted.python import usage


class VersionedOptions(usage.Options):
    """`--version` prints Archivas' version (usage.Options would print Twisted's)."""

    program = "archivas"

    def opt_version(self) -> NoReturn:
        """print the version and exit"""
        import twisted
        from archivas import __version__

        sys.stdout.write(f"{self.program} {__version__} (Twisted {twisted.__version__})\n")
        sys.stdout.flush()
        raise SystemExit(0)


class LogOptions(usage.Options):
    """`--log-level` and `--log-format` of the standalone programs (to stdout; the node
    has the file options too: docs/logging.md)."""

    optParameters = [
        ["log-level", None, "info", "debug, info, warn, error or critical"],
        ["log-format", None, "text", "text, or json (one object a line)"],
    ]

    def postOptions(self) -> None:
        from archivas import logs

        try:
            logs.parse_level(self["log-level"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["log-format"] not in logs.FORMATS:
            raise usage.UsageError(f"log format {self['log-format']!r} is not one of {', '.join(logs.FORMATS)}")


def die(program: str, message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"{program}: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def parse(program: str, options: usage.Options, argv: list[str]) -> usage.Options:
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        die(program, str(e), 2)
    return options


def log_to_stdout(level: str = "info", fmt: str = "text") -> None:
    """The standalone programs' log: stdout, at `level`, Twisted's chatter (factories
    starting, HTTP connection pools) counted as debug (archivas/logs.py)."""
    from archivas import logs

    globalLogBeginner.beginLoggingTo([logs.setup(level, fmt, stdout=sys.stdout).observer], redirectStandardIO=False)


def serve_against_node(program: str, url: str, make: Callable[[Any, Any], service.Service],
                       level: str = "info", fmt: str = "text") -> None:
    """Run `make(api, reactor)`'s service against the node at `url` until interrupted;
    an unreachable node is one line and exit 1."""
    from archivas.client import HttpNodeAPI
    from archivas.nodeapi import ApiError

    log_to_stdout(level, fmt)

    async def main(reactor: Any) -> None:
        api = HttpNodeAPI(url)
        try:
            await api.healthz()
        except ApiError as e:
            die(program, e.message)
        svc = make(api, reactor)
        svc.startService()
        reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
        await defer.Deferred()  # until the reactor is stopped (Ctrl-C, SIGTERM)

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
