"""archivas-timelord --node URL: prove time on a node's tip over its RPC."""

from __future__ import annotations

import sys
from typing import Any, Optional

from twisted.python import usage

from archivas.client import HttpNodeAPI
from archivas.nodeapi import ApiError
from archivas.scripts.common import die, log_to_stdout, parse, run_service
from archivas.timelord import Timelord


class Options(usage.Options):
    optParameters = [["node", None, "http://localhost:8080", "the node's RPC URL"]]


def main(argv: Optional[list[str]] = None) -> None:
    options = parse("archivas-timelord", Options(), sys.argv[1:] if argv is None else argv)
    log_to_stdout()

    async def build(reactor: Any) -> Timelord:
        api = HttpNodeAPI(options["node"])
        try:
            await api.healthz()
        except ApiError as e:
            die("archivas-timelord", e.message)
        timelord = Timelord(api, reactor)
        timelord.startService()
        return timelord

    run_service(build)


if __name__ == "__main__":
    main()
