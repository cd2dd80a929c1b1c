"""What the console scripts share: one-line errors, logging to stdout, running a service."""

from __future__ import annotations

import sys
from typing import Any, Callable, NoReturn

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python import usage


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


def log_to_stdout() -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)


def run_service(build: Callable[[Any], defer.Deferred]) -> None:
    """Run until interrupted: `build(reactor)` returns (a Deferred of) a started service."""

    async def main(reactor: Any) -> None:
        svc: service.Service = await defer.ensureDeferred(build(reactor))
        done: defer.Deferred = defer.Deferred()
        reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
        await done  # until the reactor is stopped (Ctrl-C, SIGTERM)

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
