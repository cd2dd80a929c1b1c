"""archivas-node: the same flags as `twistd -n archivas-node`, run in the foreground."""

from __future__ import annotations

import sys
from typing import Optional

from archivas.scripts.common import parse


def main(argv: Optional[list[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    # -- `archivas-node status` / `archivas-node peers`: archivas/scripts/status.py --
    if args and args[0] in ("status", "peers"):
        from archivas.scripts import status

        status.main(args)
    # -- end of status / peers --
    # -- `archivas-node snapshot ...` / `archivas-node verify-history`: archivas/scripts/snapshot.py --
    if args and args[0] in ("snapshot", "verify-history"):
        from archivas.scripts import snapshot

        snapshot.main(args)
    # -- end of snapshot / verify-history --
    from archivas.tap import Options  # not imported for the subcommands above (0.7 s)

    parse("archivas-node", Options(), args)  # a bad flag: one line, exit 2, before twistd
    from twisted.scripts.twistd import run

    sys.argv = ["archivas-node", "--nodaemon", "--pidfile=", "archivas-node", *args]
    run()
    from archivas import service

    if service.EXIT_STATUS:  # the node stopped itself for an error it printed (history refused)
        sys.exit(service.EXIT_STATUS)


if __name__ == "__main__":
    main()
