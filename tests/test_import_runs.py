"""Sync's import of runs (Chain.begin_run/end_run, Node.import_batch): the same state and
indexes as block-by-block adds whatever the run boundaries, reorganisations across them
exact, refused blocks inside a run leaving nothing, and the reactor running between a
run's blocks."""

from __future__ import annotations

import shutil
import tempfile
from typing import Optional

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from archivas import node as node_module
from archivas.chain.blockchain import Chain
from archivas.chain.consensus import BlockRejected
from archivas.chain.storage import Storage
from tests.common import ALICE, BOB, PARAMS, builder, now_ms
from tests.test_crash_recovery import scenario
from tests.test_protocol import Harness

TABLES = ("meta", "blocks", "main_chain", "accounts", "undo", "tx_index", "address_index")

_sequence: list = []


def sequence() -> list:
    """The crash scenario's blocks (a main run, a heavier branch, back, a deep reorg onto a
    third branch); then a heavier branch whose third block spends a used nonce (the
    reorganisation onto it rolls back five blocks, applies two, and must undo all of it);
    then such a block on the tip, and its child."""
    if not _sequence:
        s = scenario()
        b = builder()

        def spent_nonce():
            return b.transfer(ALICE, BOB.address, 1, 0)

        fork = s.final_main[-6]
        branch = b.extend(fork, 2, farmer=1)
        branch.append(b.make_block(branch[-1], transactions=[spent_nonce()], farmer=1))
        branch += b.extend(branch[-1], 5, farmer=1)
        tip = s.final_main[-1]
        bad = b.make_block(tip, transactions=[spent_nonce()])
        _sequence.extend(s.blocks + branch + [bad, b.make_block(bad)])
    return _sequence


def dump(storage: Storage) -> dict:
    return {t: storage.db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in TABLES}


def import_in_runs(blocks: list, boundaries: set[int], outside_from: Optional[int] = None,
                   step: int = 5, runs_from: int = 0) -> tuple[dict, dict, list]:
    """Add `blocks` in runs that start at each index in `boundaries` (and `runs_from`:
    those before it one by one), refusals noted and passed over; from index
    `outside_from` on, one by one outside any run,
    before the transfer indexes the runs left behind catch up (`step` blocks at a time);
    the database's rows, the accounts read through the caches, and the refusals."""
    directory = tempfile.mkdtemp(prefix="archivas-runs-")
    chain = Chain.open(directory, PARAMS)
    refused = []
    in_run = False
    try:
        for i, block in enumerate(blocks):
            if in_run and (i in boundaries or i == outside_from):
                chain.end_run()
                in_run = False
            if (boundaries and (i == runs_from or i in boundaries) and i >= runs_from
                    and (outside_from is None or i < outside_from)):
                chain.begin_run()
                in_run = True
            try:
                chain.add_block(block, now_ms())
            except BlockRejected as e:
                refused.append((i, e.reason))
        if in_run:
            chain.end_run()
        while chain.catch_up_index(step):
            pass
        assert chain.storage.index_behind() is None
        accounts = chain.accounts()
        return dump(chain.storage), accounts, refused
    finally:
        chain.close()
        shutil.rmtree(directory, True)


class RunImportTests(unittest.TestCase):
    def setUp(self) -> None:
        self.blocks = sequence()
        if not hasattr(RunImportTests, "reference"):
            RunImportTests.reference = import_in_runs(self.blocks, set())

    def test_reference_refuses_the_bad_block_and_its_child(self):
        _, _, refused = self.reference
        n = len(self.blocks)
        self.assertEqual([reason for _, reason in refused[:1]], ["bad_transaction"])  # the branch, when heavier
        self.assertTrue(all(reason == "invalid_ancestor" for _, reason in refused[1:-2]), refused)
        self.assertEqual(refused[-2:], [(n - 2, "bad_transaction"), (n - 1, "invalid_ancestor")])

    @settings(max_examples=12, deadline=None)
    @given(st.sets(st.integers(1, 64)), st.one_of(st.none(), st.integers(1, 64)), st.integers(0, 30))
    @example({20, 21}, None, 0)  # a run boundary inside the first reorganisation
    @example(set(range(1, 65)), None, 0)  # every block its own run
    @example({1000}, None, 0)  # one run for everything
    @example({5}, 12, 0)  # the indexes stop at block 0; blocks 12 on (reorganisations) come outside a run
    @example({27}, 30, 25)  # indexed to 25, runs to 30, then a reorganisation to 20 (outside runs) while they lag
    def test_runs_give_the_state_and_indexes_of_block_by_block(self, boundaries, outside_from, runs_from):
        """Runs leave the transfer indexes behind (a sync does not wait on them); once they
        catch up they are the block-by-block ones, also when blocks came outside a run
        (reorganisations among them) while they lagged."""
        boundaries = {b for b in boundaries if b < len(self.blocks)} or {len(self.blocks) + 1}
        rows, accounts, refused = import_in_runs(self.blocks, boundaries, outside_from, runs_from=runs_from)
        want_rows, want_accounts, want_refused = self.reference
        self.assertEqual(refused, want_refused)
        self.assertEqual(accounts, want_accounts)
        for table in TABLES:
            self.assertEqual(rows[table], want_rows[table], f"table {table} differs (runs at {sorted(boundaries)})")


class ImportYieldsTests(unittest.TestCase):
    def test_a_call_scheduled_during_an_import_runs_before_the_run_ends(self):
        h = Harness(self)
        blocks = builder().extend(builder().genesis, 12)
        seen = []
        h.node.on_tip.append(lambda block: block.height == 1 and h.clock.callLater(
            0, lambda: seen.append((h.node.chain.height, h.node.chain.storage.in_run))))
        d = defer.ensureDeferred(h.node.import_batch(blocks))
        for _ in range(100):
            if d.called:
                break
            h.clock.advance(0)
        self.assertEqual(self.successResultOf(d), 12)
        self.assertEqual(len(seen), 1)
        height, in_run = seen[0]
        self.assertLess(height, 12, "the call waited for the whole run")
        self.assertTrue(in_run, "the run was committed block by block")
        self.assertTrue(h.node.chain.storage.in_run)  # left open for the next batch (RUN_LINGER)
        h.clock.advance(node_module.RUN_LINGER)
        self.assertFalse(h.node.chain.storage.in_run)
        self.assertEqual(h.node.chain.height, 12)


def imported(case, h, blocks) -> int:
    """import_batch(blocks) run to its end on the harness's clock (no time passing)."""
    d = defer.ensureDeferred(h.node.import_batch(blocks))
    for _ in range(10 * len(blocks) + 10):
        if d.called:
            break
        h.clock.advance(0)
    return case.successResultOf(d)


class LingeringRunTests(unittest.TestCase):
    """Sync imports what has arrived, often a block or two a batch: each batch's run stays
    open RUN_LINGER seconds for the next to join, so a sync commits once per RUN_BLOCKS
    blocks, not once a batch; the run commits when it is full, when the linger is over and
    when the node stops."""

    def setUp(self):
        self.h = Harness(self)
        self.commits = []
        storage = self.h.node.chain.storage
        commit = storage._commit

        def counted():
            self.commits.append(self.h.node.chain.height)
            commit()

        storage._commit = counted

    def test_batches_join_one_run_that_commits_when_the_linger_is_over(self):
        blocks = builder().extend(builder().genesis, 9)
        for i in range(0, 9, 3):
            self.assertEqual(imported(self, self.h, blocks[i:i + 3]), 3)
            self.h.clock.advance(node_module.RUN_LINGER / 2)  # the next batch comes in time
        self.assertEqual(self.commits, [])
        self.assertTrue(self.h.node.chain.storage.in_run)
        self.h.clock.advance(node_module.RUN_LINGER / 2)
        self.assertEqual(self.commits, [9])
        self.assertFalse(self.h.node.chain.storage.in_run)

    def test_a_full_run_commits_at_once(self):
        blocks = builder().extend(builder().genesis, node_module.RUN_BLOCKS + 2)
        self.assertEqual(imported(self, self.h, blocks[:2]), 2)
        self.assertEqual(imported(self, self.h, blocks[2:node_module.RUN_BLOCKS]), node_module.RUN_BLOCKS - 2)
        self.assertEqual(self.commits, [node_module.RUN_BLOCKS])
        self.assertFalse(self.h.node.chain.storage.in_run)

    def test_stopping_the_node_commits_the_open_run(self):
        blocks = builder().extend(builder().genesis, 4)
        imported(self, self.h, blocks)
        self.assertEqual(self.commits, [])
        self.h.node.stop()
        self.assertEqual(self.commits, [4])
        self.assertFalse(self.h.node.chain.storage.in_run)
        self.h.clock.advance(node_module.RUN_LINGER)  # the cancelled linger does nothing more
        self.assertEqual(self.commits, [4])

    def test_a_run_fed_a_block_at_a_time_commits_once_it_is_run_max_seconds_old(self):
        """A peer trickling a block every 0.2 s (inside the linger each time) cannot hold
        the transaction open for 64 blocks: the run commits once RUN_MAX_SECONDS old."""
        blocks = builder().extend(builder().genesis, 8)
        step = node_module.RUN_LINGER * 0.8
        for block in blocks:
            imported(self, self.h, [block])
            self.h.clock.advance(step)
        first = self.commits[0]  # the height of the first commit: the batch that found the run old enough
        self.assertGreaterEqual((first - 1) * step, node_module.RUN_MAX_SECONDS - 1e-9)
        self.assertLess((first - 2) * step, node_module.RUN_MAX_SECONDS - 1e-9)

    def test_a_failed_lingering_commit_leaves_the_node_on_the_stored_tip(self):
        """Disk full at the lingering commit: the run rolls back, the node forgets the
        headers it held of it and follows the stored tip, and the same blocks import again."""
        import sqlite3

        chain, node = self.h.node.chain, self.h.node
        genesis = chain.tip.hash
        blocks = builder().extend(builder().genesis, 3)
        imported(self, self.h, blocks)
        self.assertEqual(node.vdf_parent, blocks[-1].hash)
        storage = chain.storage
        write_back = storage._write_back

        def full_disk():
            raise sqlite3.OperationalError("database or disk is full")

        storage._write_back = full_disk
        self.h.clock.advance(node_module.RUN_LINGER)
        self.assertFalse(storage.in_run)
        self.assertEqual((chain.height, node.vdf_parent), (0, genesis))
        self.assertIsNone(chain.header(blocks[0].hash))
        self.assertFalse(chain.has_block(blocks[-1].hash))
        storage._write_back = write_back
        self.assertEqual(imported(self, self.h, blocks), 3)
        self.h.clock.advance(node_module.RUN_LINGER)
        self.assertEqual(chain.height, 3)

    def test_without_a_linger_every_batch_commits(self):
        self.h.node.run_linger = 0
        blocks = builder().extend(builder().genesis, 4)
        imported(self, self.h, blocks[:2])
        imported(self, self.h, blocks[2:])
        self.assertEqual(self.commits, [2, 4])


class IndexCatchUpTests(unittest.TestCase):
    """A sync's runs leave the transfer indexes behind; the node lets them catch up, a
    few blocks a reactor turn, once no sync is active, and a sync that starts pauses it."""

    def test_the_indexes_catch_up_after_the_sync_and_pause_while_one_runs(self):
        from archivas import node as node_module
        from archivas.nodeapi import LocalNodeAPI

        b = builder()
        blocks, parent = [], b.genesis
        for nonce in range(5 * node_module.INDEX_STEP_BLOCKS):  # more than a read catches up (32)
            parent = b.make_block(parent, transactions=[b.transfer(ALICE, BOB.address, 1, nonce)])
            blocks.append(parent)
        h = Harness(self)
        storage = h.node.chain.storage
        d = defer.ensureDeferred(h.node.import_batch(blocks))
        for _ in range(500):
            if d.called:
                break
            h.clock.advance(0)
        self.assertEqual(self.successResultOf(d), len(blocks))
        self.assertEqual(storage.index_behind(), 0)  # nothing indexed: the sync did not wait on it
        self.assertIsNone(storage.transfer(blocks[0].transactions[0].hash))  # (too far behind for a read)
        api = LocalNodeAPI(h.node)
        self.assertEqual(api.status()["indexHeight"], 0)
        h.node.sync.active = True  # a sync round is on: the indexes wait
        h.node.catch_up_index()
        h.clock.advance(0)
        self.assertEqual(storage.index_behind(), 0)
        h.node.sync.active = False
        steps = []
        catch_up = h.node.chain.catch_up_index

        def step(limit):
            steps.append(catch_up(limit))
            h.node.sync.active = len(steps) == 1  # a round starts after the first step
            return steps[-1]

        h.node.chain.catch_up_index = step
        h.node.sync_ended()  # (as a round ends) one step; then the next round pauses it
        h.clock.advance(0)
        step_blocks = node_module.INDEX_STEP_BLOCKS
        self.assertEqual((steps, storage.index_behind()), ([step_blocks], step_blocks))
        h.node.sync.active = False
        h.node.sync_ended()  # the rest, a reactor turn a step
        h.clock.advance(0)
        self.assertEqual(steps, [node_module.INDEX_STEP_BLOCKS] * 5)
        self.assertIsNone(storage.index_behind())
        self.assertEqual(api.status()["indexHeight"], len(blocks))
        found = storage.transfer(blocks[0].transactions[0].hash)
        self.assertIsNotNone(found)
        self.assertEqual(found.height, 1)
        self.assertEqual(storage.transfer_count(), len(blocks))

    def test_a_failed_step_does_not_stop_later_catch_ups(self):
        from archivas import node as node_module

        b = builder()
        blocks, parent = [], b.genesis
        for nonce in range(5 * node_module.INDEX_STEP_BLOCKS):
            parent = b.make_block(parent, transactions=[b.transfer(ALICE, BOB.address, 1, nonce)])
            blocks.append(parent)
        h = Harness(self)
        d = defer.ensureDeferred(h.node.import_batch(blocks))
        for _ in range(500):
            if d.called:
                break
            h.clock.advance(0)
        self.successResultOf(d)
        catch_up = h.node.chain.catch_up_index
        failures = []

        def full_disk(limit):
            if not failures:
                failures.append(limit)
                raise OSError("disk full")
            return catch_up(limit)

        h.node.chain.catch_up_index = full_disk
        h.node.sync_ended()  # the first step fails (logged) ...
        h.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(h.node.chain.storage.index_behind(), 0)
        h.node.sync_ended()  # ... and the next round's end catches up all the same
        h.clock.advance(0)
        self.assertIsNone(h.node.chain.storage.index_behind())
