"""Crash recovery: a node killed (SIGKILL) while committing blocks reopens consistent.

A child process (`archivas.testing.crashchild`) commits a fixed sequence of blocks: a
main run with transfers, a heavier competing branch, a return to the first branch, and a
deep reorganisation onto a third branch. It acknowledges each block on stdout once
`add_block` has returned, and announces each writing SQL statement before running it. The
test kills it with SIGKILL at a random point: right after a random acknowledgment, or
right after a random statement of the commits still to come (often inside a
reorganisation). Then it opens the database in-process and checks:

- it opens; its main chain runs contiguously from genesis to the tip, each main block
  with its undo record;
- the stored accounts equal a replay of the main chain from the genesis allocation;
- the stored blocks are a prefix of the sequence that holds every acknowledged block and
  at most the one being committed at the kill, and the tip is the one an uninterrupted
  run has after exactly those blocks;
- a later run on the same database (in one test, itself killed again several times)
  carries on to the same final tip and state as an uninterrupted run.

A last test kills the child while it creates a fresh database, on its first start.

Each failure message names the run's seed; ARCHIVAS_CRASH_SEED=<seed> replays the same
choices (where a kill lands still depends on timing).
"""

from __future__ import annotations

import atexit
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from twisted.trial import unittest

import archivas
from archivas.chain import forkchoice
from archivas.chain.block import Block
from archivas.chain.blockchain import ADDED_SIDE, ADDED_TIP, KNOWN, Chain
from archivas.chain.keys import PrivateKey
from archivas.chain.ledger import MemoryState, StateDelta, apply_block_body
from archivas.chain.params import COIN
from archivas.chain.storage import StorageError
from tests.common import ALICE, BOB, CAROL, PARAMS, builder

DAVE = PrivateKey.from_secret(b"dave")
ERIN = PrivateKey.from_secret(b"erin")
FRANK = PrivateKey.from_secret(b"frank")

DEADLINE_S = 60.0  # for any one line from the child


def replay(blocks: list[Block]) -> dict[str, tuple[int, int]]:
    """The accounts after applying `blocks` (heights 1.. in order) to the genesis allocation."""
    state = MemoryState({address: (amount, 0) for address, amount in PARAMS.genesis_allocation})
    for blk in blocks:
        delta = StateDelta(state)
        apply_block_body(delta, blk.transactions, blk.header.reward_address, blk.header.reward)
        state.commit(delta)
    return state.accounts


class _Lines:
    """Lines from a child's stdout, each waited for until a deadline (select, no sleeps)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buffer = b""
        self.eof = False

    def next(self) -> Optional[str]:
        """The next whole line, or None at the end of the output."""
        deadline = time.monotonic() + DEADLINE_S
        while b"\n" not in self.buffer:
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no output from the child within {DEADLINE_S:.0f} s")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 65536)
                self.eof = not chunk
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


class _Run:
    """What one child run printed."""

    def __init__(self) -> None:
        self.opened = False
        self.statements = 0  # writing statements announced, in all
        self.statements_open = 0  # ... since the chain was open
        self.acked: list[int] = []  # acknowledged block indices, in order
        self.done = False
        self.killed = False


class _KillAt:
    """When to kill: after `acks` acknowledgments, or after `statements` announced
    statements (counted from the start, or from the `opened` line when `after_open`)."""

    def __init__(self, acks: Optional[int] = None, statements: Optional[int] = None, after_open: bool = True):
        self.acks, self.statements, self.after_open = acks, statements, after_open

    def reached(self, run: _Run) -> bool:
        if self.acks is not None:
            return len(run.acked) >= self.acks
        assert self.statements is not None
        if self.after_open:
            return run.opened and run.statements_open >= self.statements
        return run.statements >= self.statements

    def __str__(self) -> str:
        if self.acks is not None:
            return f"after {self.acks} acknowledgments"
        return f"at statement {self.statements} since " + ("opening" if self.after_open else "start")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(archivas.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def start_child(db: Path, blocks_file: Path, network_file: Path, stderr_path: Path, run: int = 0) -> subprocess.Popen:
    """The child; `run` > 0 imports in runs of that many blocks, one transaction each."""
    with open(stderr_path, "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "archivas.testing.crashchild",
             str(db), str(blocks_file), str(network_file)] + ([str(run)] if run else []),
            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, env=child_env(), bufsize=0,
        )


class _Scenario:
    """The blocks the child commits, in order, and what an uninterrupted run makes of them."""

    def __init__(self) -> None:
        b = builder()
        self.genesis = b.genesis

        def pay(key: PrivateKey, to: PrivateKey, coins: int, nonce: int):
            return b.transfer(key, to.address, coins * COIN, nonce)

        # Branch A from genesis (test farmer 0), with transfers that create accounts
        # (CAROL, DAVE) which a rollback must delete again.
        a_txs = {
            3: [pay(ALICE, BOB, 7, 0)],
            8: [pay(ALICE, CAROL, 10, 1)],
            15: [pay(BOB, CAROL, 3, 0)],
            22: [pay(ALICE, BOB, 4, 2), pay(ALICE, CAROL, 2, 3)],
            25: [pay(CAROL, ALICE, 2, 0)],
            28: [pay(BOB, DAVE, 1, 1)],
            32: [pay(ALICE, BOB, 1, 4)],
        }
        # Branch B forks at A20 (farmer 1), spending the same nonces differently.
        b_txs = {
            22: [pay(ALICE, ERIN, 5, 2)],
            24: [pay(CAROL, BOB, 1, 0)],
            27: [pay(BOB, ERIN, 2, 1)],
            30: [pay(ERIN, ALICE, 1, 0)],
        }
        # Branch C forks at B25 (farmer 0).
        c_txs = {
            26: [pay(ALICE, FRANK, 3, 3)],
            29: [pay(ERIN, BOB, 1, 0)],
            33: [pay(FRANK, CAROL, 1, 0)],
        }

        def run(parent: Block, heights: range, farmer: int, txs: dict[int, list]) -> list[Block]:
            out = []
            for height in heights:
                parent = b.make_block(parent, transactions=txs.get(height, ()), farmer=farmer)
                assert parent.height == height
                out.append(parent)
            return out

        a = run(self.genesis, range(1, 31), 0, a_txs)  # A1..A30
        branch_b = run(a[19], range(21, 32), 1, b_txs)  # B21..B31: heavier than A30
        a_more = run(a[29], range(31, 34), 0, a_txs)  # A31..A33: back to A
        branch_c = run(branch_b[4], range(26, 35), 0, c_txs)  # C26..C34: 13 rolled back
        self.blocks: list[Block] = a + branch_b + a_more + branch_c
        self.final_main = a[:20] + branch_b[:5] + branch_c

        self.directory = Path(tempfile.mkdtemp(prefix="archivas-crash-scenario-"))
        atexit.register(shutil.rmtree, self.directory, True)
        self.blocks_file = self.directory / "blocks.jsonl"
        with open(self.blocks_file, "w") as f:
            for blk in self.blocks:
                f.write(json.dumps(blk.to_json()) + "\n")
        self.network_file = self.directory / "network.json"
        network = {"network": PARAMS.name, "allocation": dict(PARAMS.genesis_allocation)}
        self.network_file.write_text(json.dumps(network))
        self._reference_run()

    def _reference_run(self) -> None:
        """An uninterrupted child run: the tip after each block, the statements of the
        database's creation and of each block, and where the chain reorganises."""
        db = self.directory / "reference"
        proc = start_child(db, self.blocks_file, self.network_file, self.directory / "reference-stderr.txt")
        lines = _Lines(proc)
        self.create_statements = 0
        self.writes: list[int] = []
        self.tip_after: list[bytes] = []
        count = 0
        try:
            while (line := lines.next()) is not None:
                word = line.split()[0]
                if word == "sql":
                    count += 1
                elif word == "opened":
                    self.create_statements, count = count, 0
                elif word == "committed":
                    self.writes.append(count)
                    self.tip_after.append(bytes.fromhex(line.split()[5]))
                    count = 0
        finally:
            code = proc.wait(timeout=DEADLINE_S)
            proc.stdout.close()
        stderr = (self.directory / "reference-stderr.txt").read_text(errors="replace")
        assert code == 0 and len(self.tip_after) == len(self.blocks), \
            f"reference run failed ({code}):\n{stderr}"
        assert self.tip_after[-1] == self.final_main[-1].hash
        # a reorganisation is a tip change to a block that is not a child of the old tip
        self.reorg_at = [
            i for i in range(1, len(self.blocks))
            if self.tip_after[i] != self.tip_after[i - 1]
            and self.blocks[i].header.parent_hash != self.tip_after[i - 1]
        ]
        assert len(self.reorg_at) >= 3, self.reorg_at  # to B, back to A, onto C
        chain = Chain.open(db, PARAMS)
        try:
            self.final_accounts = chain.accounts()
        finally:
            chain.close()
        assert self.final_accounts == replay(self.final_main)


_scenario: Optional[_Scenario] = None


def scenario() -> _Scenario:
    global _scenario
    if _scenario is None:
        _scenario = _Scenario()
    return _scenario


class CrashRecoveryTests(unittest.TestCase):
    run_size = 0  # > 0: the child imports in runs of this many blocks (test_crash_runs.py)

    def setUp(self) -> None:
        self.scenario = scenario()
        self.work = Path(tempfile.mkdtemp(prefix="archivas-crash-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        seed_text = os.environ.get("ARCHIVAS_CRASH_SEED")
        self.seed = int(seed_text) if seed_text else random.SystemRandom().getrandbits(32)
        self.rng = random.Random(self.seed)
        self.kills = 0  # kills that landed while the child was still running

    # the child

    def run_child(self, db: Path, kill_at: Optional[_KillAt], where: str) -> _Run:
        """Run the child on `db`, SIGKILL it at `kill_at` (None: let it finish), and read
        everything it printed: a line written before the kill is an acknowledgment too."""
        s = self.scenario
        stderr_path = self.work / "child-stderr.txt"
        proc = start_child(db, s.blocks_file, s.network_file, stderr_path, self.run_size)
        run = _Run()
        lines = _Lines(proc)
        try:
            while (line := lines.next()) is not None:
                self.take(line, run, where)
                if kill_at is not None and kill_at.reached(run):
                    proc.send_signal(signal.SIGKILL)  # (nothing if it has just exited)
                    kill_at = None  # and drain what it wrote before
        except BaseException:
            proc.kill()
            raise
        finally:
            code = proc.wait(timeout=DEADLINE_S)
            proc.stdout.close()
        if code == -signal.SIGKILL:
            run.killed = not run.done  # (a kill that came after `done` hit the exit only)
        else:
            stderr = stderr_path.read_text(errors="replace")[-4000:]
            self.assertEqual(code, 0, f"{where}: the child failed\n{stderr}")
            self.assertTrue(run.done, f"{where}: the child exited 0 without finishing")
        return run

    def take(self, line: str, run: _Run, where: str) -> None:
        s = self.scenario
        word, *rest = line.split()
        if word == "sql":
            run.statements += 1
            run.statements_open += run.opened
        elif word == "opened":
            self.assertFalse(run.opened, f"{where}: opened twice")
            run.opened = True
        elif word == "done":
            self.assertEqual(len(run.acked), len(s.blocks), f"{where}: done early")
            run.done = True
        else:
            self.assertEqual(word, "committed", f"{where}: {line!r}")
            self.assertTrue(run.opened, where)
            index, height, block_hash, status, tip = rest
            i = int(index)
            self.assertEqual(i, len(run.acked), f"{where}: acknowledgments out of order: {line!r}")
            blk = s.blocks[i]
            self.assertEqual((int(height), block_hash), (blk.height, blk.hash.hex()), f"{where}: {line!r}")
            self.assertIn(status, (ADDED_TIP, ADDED_SIDE, KNOWN), f"{where}: {line!r}")
            if status != KNOWN:  # (a known block leaves the tip where an earlier run put it)
                self.assertEqual(tip, s.tip_after[i].hex(), f"{where}: the tip after block {i} is not "
                                                            "that of an uninterrupted run")
            run.acked.append(i)

    # the checks

    def check(self, db: Path, length_before: int, run: _Run, where: str) -> int:
        """Open `db` after a run and check it; returns how many blocks of the sequence it holds."""
        s = self.scenario
        try:
            chain = Chain.open(db, PARAMS)
        except StorageError as e:
            self.fail(f"{where}: the database does not reopen: {e}")
        try:
            # the main chain: contiguous from genesis to the tip, each block with its undo record
            tip = chain.tip
            self.assertEqual(chain.storage.main_hash(0), s.genesis.hash, where)
            self.assertEqual(chain.storage.main_height(), tip.height,
                             f"{where}: the main chain runs past the tip")
            main: list[Block] = []
            below = s.genesis.hash
            for height in range(1, tip.height + 1):
                blk = chain.block_at(height)
                self.assertIsNotNone(blk, f"{where}: the main chain has a hole at height {height}")
                self.assertEqual(blk.header.parent_hash, below,
                                 f"{where}: main block {height} is not on {height - 1}")
                chain.storage.undo(blk.hash)  # raises if missing
                main.append(blk)
                below = blk.hash
            self.assertEqual(below, tip.hash, f"{where}: the main chain does not end at the tip")

            # the state: the main chain replayed from genesis
            self.assertEqual(chain.accounts(), replay(main),
                             f"{where}: the stored state is not a replay of the main chain")

            # the blocks: a prefix of the sequence (genesis aside) that keeps every
            # acknowledged block, and at most the one being committed at the kill
            stored = [i for i, blk in enumerate(s.blocks) if chain.has_block(blk.hash)]
            length = len(stored)
            self.assertEqual(stored, list(range(length)),
                             f"{where}: the stored blocks are not a prefix: {stored}")
            self.assertEqual(chain.storage.block_count(), length + 1, f"{where}: unknown blocks stored")
            acked = len(run.acked)
            self.assertGreaterEqual(length, max(acked, length_before),
                                    f"{where}: acknowledged blocks lost: {length} stored, {acked} "
                                    f"acknowledged by this run, {length_before} stored before it")
            in_flight = max(1, self.run_size)  # the block, or the run, being committed
            self.assertLessEqual(length, max(acked + in_flight, length_before),
                                 f"{where}: {length} blocks stored, more than the {in_flight} in flight after "
                                 f"{acked} acknowledgments ({length_before} stored before)")
            if self.run_size:
                self.assertTrue(length % self.run_size == 0 or length == len(s.blocks),
                                f"{where}: {length} blocks stored: not a run boundary (runs of {self.run_size})")

            # the tip: the one an uninterrupted run has after exactly these blocks
            expected = s.tip_after[length - 1] if length else s.genesis.hash
            self.assertEqual(tip.hash, expected,
                             f"{where}: tip {tip.height} {tip.hash.hex()[:16]} is not the tip of an "
                             f"uninterrupted run after {length} blocks")
            for i in range(length):
                meta = chain.storage.block_meta(s.blocks[i].hash)
                self.assertFalse(meta.invalid, f"{where}: block {i} is marked invalid")
                self.assertFalse(forkchoice.is_better(meta, tip), f"{where}: block {i} beats the tip")
                self.assertGreaterEqual(tip.weight, meta.weight, where)
            return length
        finally:
            chain.close()

    def check_complete(self, db: Path, length: int, where: str) -> None:
        """A run to the end after the kills: the same result as an uninterrupted run."""
        s = self.scenario
        run = self.run_child(db, None, where)
        self.check(db, length, run, where)
        chain = Chain.open(db, PARAMS)
        try:
            self.assertEqual(chain.tip.hash, s.tip_after[-1], where)
            self.assertEqual(chain.accounts(), s.final_accounts, where)
        finally:
            chain.close()

    def kill_point(self, rng: random.Random, stored: int) -> _KillAt:
        """Where to kill a child on a database that holds `stored` blocks of the sequence:
        right after a random acknowledgment (so in the next block's validation), right
        after the COMMIT statement of a random block, or right after a random writing
        statement of the commits to come, often one of a reorganisation."""
        s = self.scenario
        if stored == len(s.blocks):  # an earlier kill came after the last commit
            return _KillAt(acks=rng.randint(0, len(s.blocks) - 1))
        roll = rng.random()
        if roll < 0.25:
            return _KillAt(acks=rng.randint(stored, len(s.blocks) - 1))
        if roll < 0.4:  # at the COMMIT of a block (its last statement)
            j = rng.randint(stored, len(s.blocks) - 1)
            return _KillAt(statements=sum(s.writes[stored:j + 1]))
        reorgs = [i for i in s.reorg_at if i >= stored]
        if roll < 0.6 and reorgs:
            j = rng.choice(reorgs)
            return _KillAt(statements=sum(s.writes[stored:j]) + rng.randint(1, s.writes[j]))
        return _KillAt(statements=rng.randint(1, sum(s.writes[stored:])))

    def kill_repeatedly(self, iterations: int, kills_per_db: tuple[int, int], complete_every: int) -> None:
        for iteration in range(iterations):
            seed = self.rng.getrandbits(32)
            rng = random.Random(seed)
            db = self.work / f"db{iteration}"
            stored = 0  # blocks of the sequence in the database
            for k in range(rng.randint(*kills_per_db)):
                kill_at = self.kill_point(rng, stored)
                where = f"[seed {self.seed}: iteration {iteration} (seed {seed}), kill {k + 1} {kill_at}]"
                run = self.run_child(db, kill_at, where)
                stored = self.check(db, stored, run, where)
                self.kills += run.killed
            if iteration % complete_every == 0:
                where = f"[seed {self.seed}: iteration {iteration} (seed {seed}), completion]"
                self.check_complete(db, stored, where)

    def test_killed_at_random_instants(self):
        """A fresh database killed once at a random point of its commits, 24 times over."""
        self.kill_repeatedly(iterations=24, kills_per_db=(1, 1), complete_every=3)
        self.assertGreaterEqual(self.kills, 20, f"only {self.kills} kills landed (seed {self.seed})")

    def test_recovery_killed_repeatedly(self):
        """A database killed, reopened by a new child that is killed again, several times."""
        self.kill_repeatedly(iterations=6, kills_per_db=(4, 6), complete_every=1)
        self.assertGreaterEqual(self.kills, 20, f"only {self.kills} kills landed (seed {self.seed})")

    def test_killed_while_creating_the_database(self):
        """A node killed during its first start, while it creates its database, restarts."""
        s = self.scenario
        for iteration in range(8):
            db = self.work / f"db{iteration}"
            kill_at = _KillAt(statements=1 + iteration % s.create_statements, after_open=False)
            where = f"[creation, iteration {iteration}, kill {kill_at}]"
            run = self.run_child(db, kill_at, where)
            stored = self.check(db, 0, run, where)
            self.check_complete(db, stored, f"[creation, iteration {iteration}, completion]")
