"""The transfer indexes (kept with the main chain, rolled back on reorganisations,
migrated from schema 1), corrupt databases refused in one line, the RPC calls built on the
indexes (block by hash, transfer, mempool, address history, sync progress), and the RPC
listener's defences against slow clients (header and body deadlines, a connection cap)
with real sockets."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from archivas.chain.blockchain import Chain
from archivas.chain.consensus import BlockRejected
from archivas.chain.params import COIN
from archivas.chain.storage import DB_FILE, SCHEMA_VERSION, StorageError
from tests.common import ALICE, BOB, CAROL, PARAMS, builder, fixture_blocks, now_ms, open_chain

BIN = Path(sys.executable).parent


def expected_index(chain: Chain) -> tuple[list, list]:
    """The index rows the main chain implies, built from its blocks."""
    txs, addresses = [], []
    for height in range(1, chain.height + 1):
        block = chain.block_at(height)
        assert block is not None
        for i, tx in enumerate(block.transactions):
            txs.append((tx.hash, block.hash, height, i, tx.sender, tx.recipient, tx.amount, tx.fee, tx.nonce))
            for address in {tx.sender, tx.recipient}:
                addresses.append((address, height, i, tx.hash))
    return sorted(txs), sorted(addresses)


def stored_index(chain: Chain) -> tuple[list, list]:
    db = chain.storage.db
    txs = [tuple(bytes(v) if isinstance(v, bytes) else v for v in row)
           for row in db.execute("SELECT * FROM tx_index")]
    addresses = [(a, h, i, bytes(x)) for a, h, i, x in db.execute("SELECT * FROM address_index")]
    return sorted(txs), sorted(addresses)


def load(chain: Chain, blocks) -> None:
    """The shipped chain, trusted (score 0): its proofs are not what these tests check."""
    for block in blocks:
        chain.add_block(block, now_ms(), score=0)


def transfer(key, to, amount, nonce, fee=None):
    return builder().transfer(key, to.address if hasattr(to, "address") else to, amount, nonce, fee)


class Logged:
    """Log events seen while it is installed."""

    def __init__(self, case: unittest.TestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, prefix: str) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if formatEvent(e).startswith(prefix)]


class IndexTests(unittest.TestCase):
    def test_indexes_follow_the_main_chain_through_reorganisations(self):
        b = builder()
        chain = open_chain(self)
        t1 = transfer(ALICE, BOB, 1 * COIN, 0)
        a1 = b.make_block(b.genesis, [t1])
        t2, t3 = transfer(BOB, CAROL, 2 * COIN, 0), transfer(ALICE, CAROL, 3 * COIN, 1)
        a2 = b.make_block(a1, [t2, t3])
        t4 = transfer(ALICE, CAROL, 4 * COIN, 0)  # the other branch spends Alice's nonce 0 otherwise
        b1 = b.make_block(b.genesis, [t4])
        b2, b3 = b.extend(b1, 2)
        a3, a4 = b.extend(a2, 2)
        for block in (a1, a2, b1, b2, b3, a3, a4):
            chain.add_block(block, now_ms())
            self.assertEqual(stored_index(chain), expected_index(chain), f"after height {block.height}")
            if block is b3:  # branch b is the main chain: a's transfers are gone, b's are there
                self.assertEqual(chain.tip.hash, b3.hash)
                self.assertIsNone(chain.storage.transfer(t1.hash))
                self.assertEqual(chain.storage.transfer(t4.hash).block_hash, b1.hash)
                self.assertEqual(chain.storage.address_transfers(BOB.address, 10), ([], False))
        self.assertEqual(chain.tip.hash, a4.hash)  # and back: heavier again
        self.assertIsNone(chain.storage.transfer(t4.hash))
        found = chain.storage.transfer(t3.hash)
        self.assertEqual((found.height, found.position, found.block_hash, found.timestamp),
                         (2, 1, a2.hash, a2.header.timestamp))
        page, more = chain.storage.address_transfers(CAROL.address, 10)
        self.assertEqual([t.hash for t in page], [t3.hash, t2.hash])
        self.assertFalse(more)

    def test_a_refused_branch_leaves_the_indexes_as_they_were(self):
        b = builder()
        chain = open_chain(self)
        a1 = b.make_block(b.genesis, [transfer(ALICE, BOB, COIN, 0)])
        chain.add_block(a1, now_ms())
        before = stored_index(chain)
        # A heavier branch whose second block spends more than Alice has: refused whole.
        c1 = b.make_block(b.genesis, [transfer(ALICE, CAROL, COIN, 0, fee=PARAMS.min_fee + 1)])
        c2 = b.make_block(c1, [transfer(BOB, CAROL, 10**6 * COIN, 0)])
        chain.add_block(c1, now_ms())
        with self.assertRaisesRegex(BlockRejected, "insufficient_balance"):
            chain.add_block(c2, now_ms())
        if chain.tip.hash == a1.hash:
            self.assertEqual(stored_index(chain), before)
        self.assertEqual(stored_index(chain), expected_index(chain))

    def test_a_self_transfer_is_one_entry_of_its_address(self):
        b = builder()
        chain = open_chain(self)
        t = transfer(ALICE, ALICE, COIN, 0)
        chain.add_block(b.make_block(b.genesis, [t]), now_ms())
        page, _ = chain.storage.address_transfers(ALICE.address, 10)
        self.assertEqual([x.hash for x in page], [t.hash])


def schema_1_database(case: unittest.TestCase, blocks: int) -> str:
    """A database as schema 1 left it: schema 2 without the index tables."""
    directory = case.mktemp()
    chain = Chain.open(directory, PARAMS)
    load(chain, fixture_blocks(blocks))
    chain.storage.db.execute("DROP TABLE tx_index")
    chain.storage.db.execute("DROP TABLE address_index")
    chain.storage.set_meta("schema", "1")
    chain.close()
    return directory


class MigrationTests(unittest.TestCase):
    def test_schema_1_is_migrated_on_open_in_one_transaction(self):
        directory = schema_1_database(self, 300)
        logged = Logged(self)
        chain = open_chain(self, directory)
        self.assertEqual(chain.storage.get_meta("schema"), str(SCHEMA_VERSION))
        self.assertEqual(stored_index(chain), expected_index(chain))
        self.assertEqual(chain.storage.transfer_count(), 30)  # the fixture: one every tenth block
        (line,) = logged.lines("[storage] migrated")
        self.assertIn(f"from schema 1 to {SCHEMA_VERSION}: indexed 30 transfers of 300 main-chain blocks", line)
        chain.close()
        logged.events.clear()
        open_chain(self, directory)  # once only
        self.assertEqual(logged.lines("[storage] migrated"), [])

    def test_a_migration_that_fails_leaves_schema_1(self):
        directory = schema_1_database(self, 20)
        db = sqlite3.connect(os.path.join(directory, DB_FILE))
        ten = db.execute("SELECT hash FROM main_chain WHERE height = 10").fetchone()[0]
        doc = json.loads(db.execute("SELECT data FROM blocks WHERE hash = ?", (ten,)).fetchone()[0])
        doc["transactions"][0]["amount"] = "lots"
        db.execute("UPDATE blocks SET data = ? WHERE hash = ?", (json.dumps(doc).encode(), ten))
        db.commit()
        db.close()
        with self.assertRaises(StorageError) as cm:
            Chain.open(directory, PARAMS)
        self.assertIn("block at height 10 does not decode", str(cm.exception))
        db = sqlite3.connect(os.path.join(directory, DB_FILE))
        self.assertEqual(db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0], "1")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        db.close()
        self.assertNotIn("tx_index", tables)

    def test_a_newer_schema_is_refused_in_one_line(self):
        directory = self.mktemp()
        chain = Chain.open(directory, PARAMS)
        chain.storage.set_meta("schema", str(SCHEMA_VERSION + 1))
        chain.close()
        with self.assertRaises(StorageError) as cm:
            Chain.open(directory, PARAMS)
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        self.assertIn(f"has schema {SCHEMA_VERSION + 1}, written by a newer Archivas", message)
        self.assertIn("run that newer archivas-node, or give this one another --db", message)
        chain = open_chain(self, self.mktemp())  # and the lock was released: others still open
        self.assertEqual(chain.height, 0)

    def test_a_missing_or_odd_schema_version_is_corrupt(self):
        for value in (None, "two", "0"):
            with self.subTest(value=value):
                directory = self.mktemp()
                chain = Chain.open(directory, PARAMS)
                if value is None:
                    chain.storage.db.execute("DELETE FROM meta WHERE key = 'schema'")
                else:
                    chain.storage.set_meta("schema", value)
                chain.close()
                with self.assertRaisesRegex(StorageError, "is corrupt .*schema version"):
                    Chain.open(directory, PARAMS)


class CorruptionTests(unittest.TestCase):
    """Every way a database file can be damaged is one StorageError line at open."""

    blocks = 60

    def setUp(self):
        self.directory = self.mktemp()
        chain = Chain.open(self.directory, PARAMS)
        load(chain, fixture_blocks(self.blocks))
        chain.close()  # a checkpoint: everything is in the main file
        self.path = os.path.join(self.directory, DB_FILE)
        self.original = self.path + ".orig"
        shutil.copy(self.path, self.original)

    def restore(self):
        shutil.copy(self.original, self.path)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.remove(self.path + suffix)

    def open_and_read(self):
        """Open, then read every main-chain block and the index (a page that opening did
        not read must not surface later)."""
        chain = Chain.open(self.directory, PARAMS)
        try:
            for height in range(chain.height + 1):
                chain.block_at(height)
            chain.storage.address_transfers(BOB.address, 100)
            chain.accounts()
        finally:
            chain.close()

    def assertOneLine(self, why):
        with self.assertRaises(StorageError) as cm:
            self.open_and_read()
        message = str(cm.exception)
        self.assertNotIn("\n", message, why)
        self.assertIn(self.path, message, why)
        return message

    def test_every_zeroed_page_is_one_line(self):
        page_size = 4096
        pages = os.path.getsize(self.original) // page_size
        self.assertGreater(pages, 40)
        refused = 0
        for page in range(pages):
            self.restore()
            with open(self.path, "r+b") as f:
                f.seek(page * page_size)
                f.write(b"\x00" * page_size)
            try:
                self.open_and_read()  # a page nothing reads (free) may be harmless
            except StorageError as e:
                self.assertNotIn("\n", str(e), f"page {page}")
                self.assertIn("corrupt", str(e), f"page {page}")
                refused += 1
        self.assertGreater(refused, pages * 0.9)

    def test_a_zeroed_page_of_blocks_names_what_to_do(self):
        db = sqlite3.connect(self.original)
        (page,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'blocks'").fetchone()
        db.close()
        with open(self.path, "r+b") as f:
            f.seek((page - 1) * 4096)
            f.write(b"\x00" * 4096)
        message = self.assertOneLine("blocks page")
        self.assertIn("is corrupt", message)
        self.assertIn("restore it from a backup, or move it away and let the node sync again", message)

    def test_a_truncated_file_is_one_line(self):
        size = os.path.getsize(self.original)
        for cut in (10, 4096, size // 2, size - 4096):
            with self.subTest(cut=cut):
                self.restore()
                os.truncate(self.path, cut)
                self.assertOneLine(f"cut at {cut}")

    def test_a_missing_table_is_one_line(self):
        for table in ("tx_index", "address_index", "undo", "accounts"):
            with self.subTest(table=table):
                self.restore()
                db = sqlite3.connect(self.path)
                db.execute(f"DROP TABLE {table}")
                db.commit()
                db.close()
                self.assertIn(f"tables missing: {table}", self.assertOneLine(table))

    def test_the_node_program_says_one_line_and_exits_1(self):
        with open(self.path, "r+b") as f:
            f.seek(5 * 4096)
            f.write(b"\x00" * 4096)
        proc = subprocess.run(
            [str(BIN / "archivas-node"), "--network", "fastnet", "--db", self.directory,
             "--rpc-port", "127.0.0.1:0", "--p2p-port", "127.0.0.1:0"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertTrue(lines[0].startswith("archivas-node: error: database "), lines[0])
        self.assertIn("is corrupt", lines[0])
