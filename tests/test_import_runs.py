"""Sync's import of runs (Chain.begin_run/end_run, Node.import_batch): the same state and
indexes as block-by-block adds whatever the run boundaries, reorganisations across them
exact, refused blocks inside a run leaving nothing, and the reactor running between a
run's blocks."""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial import unittest

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


def import_in_runs(blocks: list, boundaries: set[int]) -> tuple[dict, dict, list]:
    """Add `blocks` in runs that start at each index in `boundaries` (and 0), refusals
    noted and passed over; the database's rows, the accounts read through the caches,
    and the refusals."""
    directory = tempfile.mkdtemp(prefix="archivas-runs-")
    chain = Chain.open(directory, PARAMS)
    refused = []
    try:
        for i, block in enumerate(blocks):
            if boundaries and i in boundaries:
                chain.end_run()
            if boundaries and (i == 0 or i in boundaries):
                chain.begin_run()
            try:
                chain.add_block(block, now_ms())
            except BlockRejected as e:
                refused.append((i, e.reason))
        if boundaries:
            chain.end_run()
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
    @given(st.sets(st.integers(1, 64)))
    @example({20, 21})  # a run boundary inside the first reorganisation
    @example(set(range(1, 65)))  # every block its own run
    @example({1000})  # one run for everything
    def test_runs_give_the_state_and_indexes_of_block_by_block(self, boundaries):
        boundaries = {b for b in boundaries if b < len(self.blocks)} or {len(self.blocks) + 1}
        rows, accounts, refused = import_in_runs(self.blocks, boundaries)
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
        self.assertFalse(h.node.chain.storage.in_run)
        self.assertEqual(h.node.chain.height, 12)
