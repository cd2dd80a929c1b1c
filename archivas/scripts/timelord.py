"""archivas-timelord --node URL: prove time on a node's tip over its RPC."""

from __future__ import annotations

import sys
from typing import Optional

from archivas.scripts.common import VersionedOptions, parse, serve_against_node
from archivas.timelord import Timelord


class Options(VersionedOptions):
    program = "archivas-timelord"
    optParameters = [["node", None, "http://localhost:8080", "the node's RPC URL"]]


def main(argv: Optional[list[str]] = None) -> None:
    options = parse("archivas-timelord", Options(), sys.argv[1:] if argv is None else argv)
    serve_against_node("archivas-timelord", options["node"], Timelord)


if __name__ == "__main__":
    main()
