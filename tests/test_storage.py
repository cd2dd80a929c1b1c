"""Opening databases: another network, corruption, a second opener, persistence."""

import os
import sqlite3

from twisted.internet import task
from twisted.python import failure
from twisted.trial import unittest

from archivas.chain import params as network_params
from archivas.chain import storage
from archivas.chain.blockchain import Chain
from archivas.chain.storage import DB_FILE, Storage, StorageError
from archivas.node import CHECKPOINT_SECONDS, Node
from tests.common import PARAMS, builder, now_ms, open_chain


class OpenTests(unittest.TestCase):
    def test_wal_mode(self):
        chain = open_chain(self)
        self.assertEqual(chain.storage.db.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    def test_synchronous_normal_by_default_full_on_request(self):
        # PRAGMA synchronous: 1 is NORMAL (no fsync at a commit under WAL), 2 is FULL.
        self.assertEqual(storage.DEFAULT_SYNC, "normal")
        chain = open_chain(self)
        self.assertEqual(chain.storage.db.execute("PRAGMA synchronous").fetchone()[0], 1)
        full = Chain.open(self.mktemp(), PARAMS, sync="full")
        self.addCleanup(full.close)
        self.assertEqual(full.storage.db.execute("PRAGMA synchronous").fetchone()[0], 2)
        with self.assertRaises(ValueError):
            Storage(self.mktemp(), sync="off")

    def test_storage_opened_and_closed_before_genesis_still_opens(self):
        # Tables and genesis are created in one transaction: a start that stopped before
        # committing genesis leaves nothing behind that a restart would trip over.
        directory = self.mktemp()
        Storage(directory).close()
        chain = open_chain(self, directory)
        self.assertEqual(chain.height, 0)

    def test_database_of_another_network_is_refused(self):
        directory = self.mktemp()
        Chain.open(directory, PARAMS).close()
        with self.assertRaises(StorageError) as cm:
            Chain.open(directory, network_params.load("devnet"))
        self.assertIn("belongs to network fastnet", str(cm.exception))
        # Same network name, other genesis (another allocation): refused as well.
        with self.assertRaisesRegex(StorageError, "genesis"):
            Chain.open(directory, network_params.load("fastnet"))
        Chain.open(directory, PARAMS).close()  # and the lock was released each time

    def test_second_opener_is_refused(self):
        directory = self.mktemp()
        open_chain(self, directory)
        with self.assertRaisesRegex(StorageError, f"in use by pid {os.getpid()}"):
            Chain.open(directory, PARAMS)

    def test_garbage_file_is_refused(self):
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, DB_FILE), "wb") as f:
            f.write(b"this is not sqlite" * 1000)
        with self.assertRaisesRegex(StorageError, "corrupt or not an Archivas database"):
            Chain.open(directory, PARAMS)

    def test_foreign_sqlite_is_refused(self):
        directory = self.mktemp()
        os.makedirs(directory)
        db = sqlite3.connect(os.path.join(directory, DB_FILE))
        db.execute("CREATE TABLE other (x)")
        db.commit()
        db.close()
        with self.assertRaisesRegex(StorageError, "tables missing"):
            Chain.open(directory, PARAMS)

    def test_tip_off_the_main_chain_is_corrupt(self):
        directory = self.mktemp()
        chain = Chain.open(directory, PARAMS)
        for block in builder().extend(builder().genesis, 2):
            chain.add_block(block, now_ms())
        chain.storage.db.execute("DELETE FROM main_chain WHERE height = 2")
        chain.close()
        with self.assertRaisesRegex(StorageError, "corrupt"):
            Chain.open(directory, PARAMS)

    def test_directory_that_cannot_be_made(self):
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        with self.assertRaisesRegex(StorageError, "cannot create database directory"):
            Storage(os.path.join(blocker, "db"))

    def test_failed_transaction_leaves_nothing(self):
        chain = open_chain(self)
        before = chain.accounts()
        with self.assertRaises(RuntimeError):
            with chain.storage.transaction():
                chain.storage.set_accounts({"arcv1x": (5, 0)})
                raise RuntimeError("boom")
        self.assertEqual(chain.accounts(), before)


class CacheBoundTests(unittest.TestCase):
    """The caches' bounds (docs/storage.md, Caches), with small bounds patched in."""

    def test_the_account_cache_drops_clean_entries_past_its_bound(self):
        chain = open_chain(self)
        s = chain.storage
        self.patch(storage, "ACCOUNT_CACHE", 50)
        for i in range(500):
            s.get_account(f"arcv1nobody{i}")
            self.assertLessEqual(len(s._accounts), 50)
        with s.transaction():  # written accounts stay until their commit, then may go
            s.set_accounts({f"arcv1new{i}": (i + 1, 0) for i in range(80)})
            self.assertEqual(s.get_account("arcv1new79"), (80, 0))
            self.assertGreaterEqual(len(s._accounts), 80)
        self.assertLessEqual(len(s._accounts), 50)
        self.assertEqual(s.get_account("arcv1new79"), (80, 0))  # from the table now
        self.assertEqual(len([a for a in chain.accounts() if a.startswith("arcv1new")]), 80)

    def test_the_meta_cache_keeps_at_most_its_bound(self):
        chain = open_chain(self)
        self.patch(storage, "META_CACHE", 8)
        for block in builder().extend(builder().genesis, 20):
            chain.add_block(block, now_ms())
            self.assertLessEqual(len(chain.storage._metas), 8)
        self.assertEqual(chain.height, 20)
        self.assertEqual(len(chain.ancestors(chain.tip.hash, 21)), 21)


class LostTransactionTests(unittest.TestCase):
    def test_a_run_whose_transaction_sqlite_rolled_back_writes_nothing_later(self):
        # Disk full inside a savepoint: SQLite rolls the whole transaction back itself.
        # The run's cached accounts must not then be written outside any transaction.
        s = Storage(self.mktemp())
        self.addCleanup(s.close)
        with s.transaction():
            s.create_schema()
            s.set_meta("tip", "genesis")
        pages = s.db.execute("PRAGMA page_count").fetchone()[0]
        s.db.execute(f"PRAGMA max_page_count={pages + 30}")
        s.begin_run()
        s.set_accounts({"alice": (100, 1)})  # block 1 of the run: in the cache
        s.set_meta("tip", "block1")
        with self.assertRaises(sqlite3.DatabaseError) as raised:  # the disk's error, not a savepoint's
            with s.transaction():  # block 2 fills the disk
                s.db.execute("INSERT INTO undo VALUES (?, ?)", (b"x", "y" * 400_000))
        self.assertIn("full", str(raised.exception))
        s.end_run()  # the run is gone: nothing to commit
        self.assertFalse(s.in_run)
        self.assertEqual(s.db.execute("SELECT * FROM accounts").fetchall(), [])
        self.assertIsNone(s.get_account("alice"))
        self.assertEqual(s.get_meta("tip"), "genesis")


class BackgroundCheckpointTests(unittest.TestCase):
    """checkpoint_in_background: commits stop copying the WAL into the database file (that
    was 13-26 ms of a committing call on the reactor); checkpoint() does it, from any thread."""

    def _write(self, s: Storage, transactions: int) -> None:
        for i in range(transactions):
            with s.transaction():  # 100 KiB each: about 25 pages
                s.db.execute("INSERT OR REPLACE INTO undo VALUES (?, ?)", (b"%d" % i, "u" * 100_000))

    def _wal_pages(self, s: Storage) -> int:
        return s.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]

    def test_commits_leave_the_wal_to_checkpoint(self):
        auto = open_chain(self).storage
        self._write(auto, 60)  # past SQLite's 1,000-page automatic checkpoint
        self.assertLess(self._wal_pages(auto), 1000)  # the commits checkpointed it
        self.assertIsNone(auto.checkpoint())  # not in background mode

        s = open_chain(self).storage
        s.checkpoint_in_background()
        self._write(s, 60)
        pages, done = s.checkpoint()
        self.assertGreater(pages, 1400)  # every transaction's pages still in the WAL
        self.assertEqual(done, pages)  # and now all of them in the database file
        self.assertEqual(s.db.execute("SELECT COUNT(*) FROM undo").fetchone()[0], 60)

    def test_commits_still_checkpoint_past_the_valve(self):
        """Without the background checkpoints keeping up, the WAL stops growing at
        CHECKPOINT_VALVE_PAGES (with no valve it grew to 765 MB in 8 s of a fast writer)."""
        self.patch(storage, "CHECKPOINT_VALVE_PAGES", 200)
        s = open_chain(self).storage
        s.checkpoint_in_background()
        self.assertEqual(s.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0], 200)
        self._write(s, 60)  # 1,500 pages, none checkpointed by s.checkpoint
        self.assertLess(self._wal_pages(s), 200 + 60)
        self.assertLess(os.path.getsize(str(s.path) + "-wal"), (200 + 60) * 4096 + 64 * 1024)

    def test_checkpoints_in_a_thread_beside_commits_and_a_close(self):
        """Real threads: checkpoints in a loop while this thread commits, then close while
        they still run (close waits under the lock); every row is there afterwards."""
        import threading

        directory = self.mktemp()
        chain = Chain.open(directory, PARAMS)
        s = chain.storage
        s.checkpoint_in_background()
        errors, results = [], []

        def loop():
            try:
                while True:
                    result = s.checkpoint()
                    if result is None:  # closed
                        return
                    results.append(result)
            except Exception as e:  # pragma: no cover - what the test looks for
                errors.append(e)

        worker = threading.Thread(target=loop)
        worker.start()
        self._write(s, 40)
        chain.close()
        worker.join(10)
        self.assertFalse(worker.is_alive())
        self.assertEqual(errors, [])
        self.assertTrue(results)
        reopened = open_chain(self, directory)
        self.assertEqual(reopened.storage.db.execute("SELECT COUNT(*) FROM undo").fetchone()[0], 40)

    def test_after_close_there_is_nothing_to_checkpoint_and_no_wal_left(self):
        chain = Chain.open(self.mktemp(), PARAMS)
        s = chain.storage
        s.checkpoint_in_background()
        self._write(s, 10)
        wal = str(s.path) + "-wal"
        self.assertTrue(os.path.exists(wal))
        chain.close()  # the last connection's close checkpoints and removes the WAL
        self.assertIsNone(s.checkpoint())
        self.assertFalse(os.path.exists(wal))
        reopened = open_chain(self, str(s.directory))
        self.assertEqual(reopened.storage.db.execute("SELECT COUNT(*) FROM undo").fetchone()[0], 10)


class _Pool:
    """A reactor thread pool that runs each job when the test says."""

    def __init__(self) -> None:
        self.jobs: list = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.jobs.append((on_result, f, args, kwargs))

    def run_one(self) -> None:
        on_result, f, args, kwargs = self.jobs.pop(0)
        try:
            result = f(*args, **kwargs)
        except Exception:
            on_result(False, failure.Failure())
        else:
            on_result(True, result)


class _ThreadedClock(task.Clock):
    def __init__(self) -> None:
        super().__init__()
        self.pool = _Pool()

    def getThreadPool(self) -> _Pool:
        return self.pool

    def callFromThread(self, f, *args, **kwargs) -> None:
        f(*args, **kwargs)


class NodeCheckpointTests(unittest.TestCase):
    def test_a_threaded_node_checkpoints_in_a_thread_one_at_a_time_and_stops_after_it(self):
        chain = open_chain(self)
        clock = _ThreadedClock()
        node = Node(chain, clock)
        node.start()
        self.assertEqual(chain.storage.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0],
                         storage.CHECKPOINT_VALVE_PAGES)
        clock.advance(0)
        self.assertEqual(clock.pool.jobs, [])
        clock.advance(CHECKPOINT_SECONDS)
        self.assertEqual([job[1] for job in clock.pool.jobs], [chain.storage.checkpoint])
        clock.advance(CHECKPOINT_SECONDS * 3)  # still running: no second one queued
        self.assertEqual(len(clock.pool.jobs), 1)
        clock.pool.run_one()
        clock.advance(CHECKPOINT_SECONDS)
        self.assertEqual(len(clock.pool.jobs), 1)
        stopped = node.stop()  # with a checkpoint in its thread: stop waits for it
        clock.advance(1)
        self.assertNoResult(stopped)
        clock.pool.run_one()
        self.successResultOf(stopped)
        clock.advance(CHECKPOINT_SECONDS * 5)  # none after the stop
        self.assertEqual(clock.pool.jobs, [])

    def test_a_failing_checkpoint_is_logged_once_and_tried_again(self):
        from twisted.logger import globalLogPublisher

        chain = open_chain(self)
        clock = _ThreadedClock()
        node = Node(chain, clock)
        node.start()
        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        calls = []

        def failing():
            calls.append(1)
            raise sqlite3.OperationalError("disk I/O error")

        self.patch(chain.storage, "checkpoint", failing)
        for _ in range(3):
            clock.advance(CHECKPOINT_SECONDS)
            clock.pool.run_one()
        self.assertEqual(len(calls), 3)  # tried every second
        logged = [e for e in events if "checkpoint" in str(e.get("log_format", ""))]
        self.assertEqual(len(logged), 1)  # one traceback, not one a second
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.successResultOf(node.stop())

    def test_an_unthreaded_node_leaves_checkpoints_to_sqlite(self):
        chain = open_chain(self)
        node = Node(chain, task.Clock(), threaded=False)
        node.start()
        self.assertEqual(chain.storage.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0], 1000)
        self.successResultOf(node.stop())
