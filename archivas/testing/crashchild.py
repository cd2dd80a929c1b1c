"""The child of the crash-recovery test: commits blocks in a tight loop until it is killed.

    python -m archivas.testing.crashchild DBDIR BLOCKSFILE NETWORKJSON [RUN]

NETWORKJSON holds {"network": name, "allocation": {address: amount}}; BLOCKSFILE one block
(`Block.to_json`) a line, parents before children. The child opens the chain in DBDIR and
offers every block, in file order, to `Chain.add_block`; with RUN, in runs of RUN blocks,
each run in one transaction as sync imports them (`Chain.begin_run`/`end_run`). It
prints, flushing each line:

    sql <VERB>                  before each writing SQLite statement (BEGIN, CREATE,
                                INSERT, ..., COMMIT; executemany too), so a test can
                                kill it at a chosen point inside a commit
    opened <tip>                once the chain is open
    committed <index> <height> <hash> <status> <tip>
                                after add_block has returned: status `tip`, `side`, or
                                `known` for a block an earlier, killed run had stored.
                                This line is the acknowledgment: the block must survive
                                any later kill. (With RUN, a run's lines come once its
                                commit has returned, each with the tip after its block.)
    done                        at the end, after closing the chain

Anything unexpected exits non-zero with the reason on stderr.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from typing import Any

from archivas.chain import params as network_params
from archivas.chain.block import Block
from archivas.chain.blockchain import ADDED_SIDE, ADDED_TIP, KNOWN, Chain

_QUIET = ("SELECT", "PRAGMA")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _TracedConnection:
    """A sqlite3 connection that announces each writing statement before running it."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        verb = sql.split(None, 1)[0].upper()
        if verb not in _QUIET:
            _say(f"sql {verb}")
        return self._connection.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:
        _say(f"sql {sql.split(None, 1)[0].upper()}")
        return self._connection.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def _traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
    return _TracedConnection(sqlite3.connect(*args, **kwargs))  # type: ignore[return-value]


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        sys.stderr.write("usage: python -m archivas.testing.crashchild DBDIR BLOCKSFILE NETWORKJSON [RUN]\n")
        return 2
    db_dir, blocks_file, network_file = argv[:3]
    run = int(argv[3]) if len(argv) == 4 else 0
    with open(network_file) as f:
        network = json.load(f)
    params = network_params.load(network["network"]).with_allocation(network["allocation"])
    with open(blocks_file) as f:
        blocks = [Block.from_json(json.loads(line)) for line in f if line.strip()]

    chain = Chain.open(db_dir, params, connect=_traced_connect)
    _say(f"opened {chain.tip.hash.hex()}")
    step = run or 1
    for first in range(0, len(blocks), step):
        if run:
            chain.begin_run()
        lines = []
        for index in range(first, min(first + step, len(blocks))):
            block = blocks[index]
            now_ms = max(int(time.time() * 1000), block.header.timestamp)
            result = chain.add_block(block, now_ms)
            if result.status not in (ADDED_TIP, ADDED_SIDE, KNOWN):
                sys.stderr.write(f"block {index} at height {block.height}: unexpected status {result.status}\n")
                return 1
            lines.append(f"committed {index} {block.height} {block.hash.hex()} {result.status} {chain.tip.hash.hex()}")
        if run:
            chain.end_run()
        for line in lines:
            _say(line)
    chain.close()
    _say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
