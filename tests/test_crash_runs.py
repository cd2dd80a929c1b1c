"""Crash recovery of sync's batched import: the crash-recovery child (archivas.testing.
crashchild) imports the same block sequence in runs of 8, each run one transaction with a
savepoint a block (Chain.begin_run/end_run, as Node.import_batch does), and is killed with
SIGKILL at random instants: inside a run's validation, inside its savepoints, inside the
write-back of its accounts or at its COMMIT. Each time the database must reopen
consistent (the checks of test_crash_recovery), hold exactly a whole number of runs, and
a later child must complete the import to the same tip and state as an uninterrupted run.
"""

from __future__ import annotations

import random
from typing import Optional

from tests import test_crash_recovery as base
from tests.test_crash_recovery import DEADLINE_S, _KillAt, _Lines, scenario, start_child

RUN = 8

_statements: Optional[int] = None


def batched_statements() -> int:
    """Writing statements an uninterrupted batched import announces after opening."""
    global _statements
    if _statements is None:
        s = scenario()
        proc = start_child(s.directory / "reference-batched", s.blocks_file, s.network_file,
                           s.directory / "reference-batched-stderr.txt", RUN)
        lines, count, opened = _Lines(proc), 0, False
        try:
            while (line := lines.next()) is not None:
                word = line.split()[0]
                opened = opened or word == "opened"
                count += word == "sql" and opened
        finally:
            proc.wait(timeout=DEADLINE_S)
            assert proc.stdout is not None
            proc.stdout.close()
        assert proc.returncode == 0, proc.returncode
        _statements = count
    return _statements


class BatchedImportCrashTests(base.CrashRecoveryTests):  # (imported as a module: not collected twice)
    run_size = RUN
    # (the per-block tests run in test_crash_recovery.py)
    test_recovery_killed_repeatedly = None  # type: ignore[assignment]
    test_killed_while_creating_the_database = None  # type: ignore[assignment]

    def kill_point(self, rng: random.Random, stored: int) -> _KillAt:
        s = scenario()
        runs_left = -(-(len(s.blocks) - stored) // RUN)
        if stored == len(s.blocks) or rng.random() < 0.25:  # after a run's acknowledgments
            return _KillAt(acks=min(len(s.blocks) - 1, RUN * rng.randint(stored // RUN, stored // RUN + runs_left)))
        return _KillAt(statements=rng.randint(1, batched_statements()))

    def test_killed_at_random_instants(self):
        """A fresh database killed once at a random instant of a batched import, 20 times."""
        self.kill_repeatedly(iterations=20, kills_per_db=(1, 1), complete_every=4)
        self.assertGreaterEqual(self.kills, 16, f"only {self.kills} kills landed (seed {self.seed})")
