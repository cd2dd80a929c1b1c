"""archivas-timelord --node URL [--node URL ...]: prove time on a node's tip over its RPC,
failing over to the next node when one stops answering."""

from __future__ import annotations

import sys
from typing import Optional

from archivas.client import NodeOption
from archivas.scripts.common import LogOptions, VersionedOptions, parse, serve_against_node
from archivas.timelord import Timelord


class Options(NodeOption, LogOptions, VersionedOptions):
    program = "archivas-timelord"

    def postOptions(self) -> None:
        self.check_nodes()
        LogOptions.postOptions(self)


def main(argv: Optional[list[str]] = None) -> None:
    options = parse("archivas-timelord", Options(), sys.argv[1:] if argv is None else argv)
    # serve_against_node takes one string: HttpNodeAPI reads a comma list as several nodes.
    serve_against_node("archivas-timelord", ",".join(options["node"]), Timelord,
                       options["log-level"], options["log-format"])


if __name__ == "__main__":
    main()
