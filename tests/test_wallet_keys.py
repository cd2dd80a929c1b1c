"""Wallet keys: encrypted key files (argon2id + SecretBox) and the plain ones of before,
24-word recovery phrases, passphrase files and prompts, the wallet's refusals in RCHV, and
`archivas-wallet` end to end as real processes against a node on loopback."""

import json
import os
import stat
import sys

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from archivas import walletkeys
from archivas.chain import keys
from archivas.chain.keys import (
    MAX_KEY_FILE_BYTES,
    MAX_MEMLIMIT,
    MAX_PASSPHRASE_BYTES,
    KeyFileError,
    PassphraseNeeded,
    PrivateKey,
    WrongPassphrase,
)
from archivas.chain.params import COIN
from archivas.nodeapi import LocalNodeAPI
from archivas.rpc import NodeRPC, site
from archivas.scripts import wallet
from archivas.walletkeys import PhraseError
from tests.common import ALICE
from tests.netutil import start_node, wait_until
from tests.test_processes import BIN

FAST = "interactive"  # argon2id at 2 passes over 64 MiB: ~0.2 s (the default, moderate, is ~1.5 s)

# Key files as this version's predecessors and this version write them: they must load
# for as long as Archivas reads key files.
PLAIN_V1 = {"type": "archivas-ed25519-v1",
            "seed": "b5e5b4b87cc34b1edd322f90df428941165236117d964dba0d9d4463f690deb9",
            "publicKey": "08fbd91d1c001567b96ebaa70e52075f1fbf2c55354541a8b9f03cf39a7de4ee",
            "address": "arcv10gs5wmzyd9xdkve6v4lwgrkn08sq8j2a9th42x"}
ENCRYPTED_V1 = {"type": "archivas-ed25519-encrypted-v1",
                "kdf": {"name": "argon2id", "salt": "bb4b59bf657283a837d55e9f1db0f2d2", "opslimit": 2,
                        "memlimit": 67108864},
                "cipher": "xsalsa20poly1305",
                "sealedSeed": "534dd39fdbf9a4d946067b67d7e17bb65334eec770c165434357f3f768a57155b0d97f01efca7d"
                              "07eb5c48bb73b408550ffaf04a28c50e9a663240da20f4ec6e7306ee4db6166338",
                "publicKey": "628224ce11a113eb5396ddfd6739aae7fae544c50f885e8d2da79b0c77e2c955",
                "address": "arcv1h6v7qv73s6gfnlmrg9u2k9tthrkgkz9kyyaf68"}
ENCRYPTED_V1_PASSPHRASE = "correct horse battery staple"
NO_TERMINAL = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"  # a new session: no /dev/tty


def write(case, doc_or_text):
    path = case.mktemp()
    with open(path, "w") as f:
        f.write(doc_or_text if isinstance(doc_or_text, str) else json.dumps(doc_or_text))
    return path


class EncryptedKeyFileTests(unittest.TestCase):
    def test_round_trip(self):
        path = self.mktemp()
        key = PrivateKey.generate()
        key.save(path, "s3cret words", FAST)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        text = open(path).read()
        self.assertNotIn(key.seed.hex(), text)
        self.assertTrue(keys.is_encrypted(path))
        self.assertEqual(keys.key_file_address(path), key.address)  # no passphrase needed
        self.assertEqual(keys.key_file_public_key(path), key.public_key)
        self.assertEqual(PrivateKey.load(path, "s3cret words").seed, key.seed)
        self.assertEqual(json.loads(text)["kdf"]["opslimit"], keys.KDF_PRESETS[FAST][0])

    def test_wrong_or_missing_passphrase(self):
        path = self.mktemp()
        PrivateKey.generate().save(path, "right", FAST)
        with self.assertRaisesRegex(WrongPassphrase, f"^wrong passphrase for key file {path}$"):
            PrivateKey.load(path, "wrong")
        with self.assertRaisesRegex(PassphraseNeeded, "is encrypted: a passphrase is needed"):
            PrivateKey.load(path)
        self.assertEqual(PrivateKey.load(path, lambda: "right").address, keys.key_file_address(path))

    def test_files_of_earlier_versions_still_load(self):
        plain = write(self, PLAIN_V1)
        asked = []
        key = PrivateKey.load(plain, lambda: asked.append(True) or "unused")
        self.assertEqual((key.address, asked), (PLAIN_V1["address"], []))  # a plain file asks for nothing
        self.assertEqual(key.seed.hex(), PLAIN_V1["seed"])
        self.assertFalse(keys.is_encrypted(plain))
        encrypted = write(self, ENCRYPTED_V1)
        self.assertEqual(PrivateKey.load(encrypted, ENCRYPTED_V1_PASSPHRASE).address, ENCRYPTED_V1["address"])

    def test_passphrase_is_normalised_and_bounded(self):
        path = self.mktemp()
        PrivateKey.generate().save(path, "caf\u00e9", FAST)  # composed é
        PrivateKey.load(path, "cafe\u0301")  # decomposed: the same passphrase
        for bad, words in (("", "empty"), ("x" * (MAX_PASSPHRASE_BYTES + 1), f"over {MAX_PASSPHRASE_BYTES} bytes")):
            with self.assertRaisesRegex(ValueError, words):
                PrivateKey.generate().save(self.mktemp(), bad, FAST)
        PrivateKey.generate().key_file("x" * MAX_PASSPHRASE_BYTES, FAST)

    def test_altered_files_refused(self):
        def altered(**changes):
            doc = json.loads(json.dumps(ENCRYPTED_V1))
            for name, value in changes.items():
                if name in ("opslimit", "memlimit", "name"):
                    doc["kdf"][name] = value
                else:
                    doc[name] = value
            return write(self, doc)

        sealed = bytearray.fromhex(ENCRYPTED_V1["sealedSeed"])
        sealed[40] ^= 1
        other = PrivateKey.from_secret(b"other")
        cases = (
            (altered(sealedSeed=sealed.hex()), WrongPassphrase, "wrong passphrase"),
            (altered(address=other.address), KeyFileError, "inconsistent"),
            (altered(memlimit=MAX_MEMLIMIT * 2), KeyFileError, "argon2id cost outside"),  # refused before any work
            (altered(opslimit=0), KeyFileError, "argon2id cost outside"),
            (altered(opslimit="2"), KeyFileError, "malformed encrypted seed"),
            (altered(name="scrypt"), KeyFileError, "does not know"),
            (altered(sealedSeed="00" * 10), KeyFileError, "malformed encrypted seed"),
            (altered(type="archivas-ed25519-v9"), KeyFileError, "is not an archivas-ed25519-v1 or"),
            (write(self, " " * (MAX_KEY_FILE_BYTES + 1)), KeyFileError, f"over {MAX_KEY_FILE_BYTES} bytes"),
        )
        for path, error, words in cases:
            with self.assertRaisesRegex(error, words):
                PrivateKey.load(path, ENCRYPTED_V1_PASSPHRASE)
        with self.assertRaisesRegex(KeyFileError, "inconsistent"):
            keys.key_file_address(altered(address=other.address))


class PhraseTests(unittest.TestCase):
    def test_phrase_round_trip_gives_the_same_key(self):
        key = PrivateKey.generate()
        phrase = walletkeys.phrase_of(key)
        self.assertEqual(len(phrase.split(" ")), 24)
        self.assertEqual(walletkeys.key_from_phrase(phrase).seed, key.seed)
        self.assertEqual(walletkeys.key_from_phrase("  " + phrase.upper().replace(" ", "\n  ") + "\n").address,
                         key.address)

    def test_bip39_vector(self):
        # BIP-39's own test vector: 32 zero bytes of entropy.
        self.assertEqual(walletkeys.phrase_of(PrivateKey(bytes(32))), "abandon " * 23 + "art")
        self.assertEqual(walletkeys.key_from_phrase("abandon " * 23 + "art").seed, bytes(32))

    def test_bad_phrases_say_why(self):
        words = walletkeys.phrase_of(PrivateKey.from_secret(b"phrase")).split()
        swapped = words[:]
        swapped[0], swapped[1] = swapped[1], swapped[0]
        if swapped == words:  # the same word twice: swap others
            swapped[0], swapped[2] = swapped[2], swapped[0]
        cases = (
            (" ".join(words[:23]), "has 24 words, this one has 23"),
            (" ".join(words[:6] + ["bitcoinz"] + words[7:]), r"word 7 \('bitcoinz'\) is not in the BIP-39"),
            (" ".join(swapped), "checksum does not match"),
        )
        for text, message in cases:
            with self.assertRaisesRegex(PhraseError, message):
                walletkeys.key_from_phrase(text)


class PassphraseSourceTests(unittest.TestCase):
    def test_passphrase_file_is_its_first_line(self):
        self.assertEqual(walletkeys.read_passphrase_file(write(self, "two words\r\nignored\n")), "two words")
        self.assertEqual(walletkeys.read_passphrase_file(write(self, " spaces kept ")), " spaces kept ")
        for text, words in (("\nsecond", "empty"), ("", "empty"),
                            ("x" * (walletkeys.MAX_PASSPHRASE_FILE_BYTES + 1), "no line ending in its first 4096")):
            with self.assertRaisesRegex(KeyFileError, words):
                walletkeys.read_passphrase_file(write(self, text))
        with self.assertRaisesRegex(KeyFileError, "cannot read passphrase file"):
            walletkeys.read_passphrase_file(self.mktemp())

    def test_phrase_file_is_bounded(self):
        phrase = walletkeys.phrase_of(PrivateKey.from_secret(b"phrase"))
        padded = phrase + " " * (walletkeys.MAX_PHRASE_FILE_BYTES - len(phrase))
        self.assertEqual(walletkeys.read_phrase_file(write(self, padded)), padded)
        with self.assertRaisesRegex(KeyFileError, "phrase file .* is over 4096 bytes"):
            walletkeys.read_phrase_file(write(self, padded + " "))

    def test_prompts(self):
        answers = []
        self.patch(walletkeys, "has_terminal", lambda: True)
        self.patch(walletkeys.getpass, "getpass", lambda prompt: answers.pop(0))
        answers[:] = ["one", "one"]
        self.assertEqual(walletkeys.new_passphrase(None, prompt=True), "one")
        answers[:] = ["one", "two"]
        with self.assertRaisesRegex(KeyFileError, "the two passphrases differ"):
            walletkeys.new_passphrase(None, prompt=True)
        self.assertIsNone(walletkeys.new_passphrase(None, prompt=False))
        path = self.mktemp()
        PrivateKey.generate().save(path, "typed", FAST)
        answers[:] = ["typed"]
        walletkeys.load_key(path)
        # No terminal: one line saying what to do, not a hang on stdin.
        self.patch(walletkeys, "has_terminal", lambda: False)
        with self.assertRaisesRegex(KeyFileError, "is encrypted: give --passphrase-file FILE"):
            walletkeys.load_key(path)


class FakeNode:
    """What `wallet.send` asks of a node, answering from fixed values."""

    def __init__(self, balance):
        self.account = {"address": ALICE.address, "balance": balance, "nonce": 0, "pendingNonce": 0}
        self.submitted = []

    def status(self):
        return defer.succeed({"network": "fastnet"})

    def balance(self, address):
        return defer.succeed(self.account)

    def submit_tx(self, doc):
        self.submitted.append(doc)
        return defer.succeed({"txHash": "00" * 32})


class WalletMessagesTests(unittest.TestCase):
    def send_options(self, amount, fee="0.001"):
        options = wallet.SendOptions()
        options.parseOptions(["--key", "k", "--to", ALICE.address, "--amount", amount, "--fee", fee])
        return options

    def refusal(self, node, amount, fee="0.001"):
        d = defer.ensureDeferred(wallet.send(self.send_options(amount, fee), ALICE, node))
        return str(self.failureResultOf(d, wallet.WalletError).value)

    def test_amounts_in_rchv(self):
        self.assertEqual([wallet.rchv(u) for u in (10000100000, 150000000, 20 * COIN, 1, 0)],
                         ["100.001 RCHV", "1.5 RCHV", "20 RCHV", "0.00000001 RCHV", "0 RCHV"])

    def test_refusals_speak_rchv_and_send_nothing(self):
        node = FakeNode(balance=150_000_000)
        self.assertEqual(self.refusal(node, "100"),
                         "cannot send: needs 100.001 RCHV (amount 100 RCHV + fee 0.001 RCHV), balance is 1.5 RCHV")
        self.assertEqual(self.refusal(node, "1", fee="0.00001"),
                         "fee 0.00001 RCHV is below the minimum on fastnet, 0.001 RCHV")
        self.assertEqual(node.submitted, [])
        self.patch(sys, "stdout", open(os.devnull, "w"))
        self.successResultOf(defer.ensureDeferred(wallet.send(self.send_options("1.499"), ALICE, node)))
        self.assertEqual(node.submitted[0]["amount"], 149_900_000)


class WalletProcessTests(unittest.TestCase):
    """archivas-wallet as a program (no terminal: the passphrase comes from files),
    against a real node on loopback whose RPC is served on the real reactor."""

    timeout = 120

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.h = start_node(self)
        port = reactor.listenTCP(0, site(NodeRPC(LocalNodeAPI(self.h.node)).resource()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        self.passphrase = self.file("passphrase", "wallet test passphrase\n")

    def file(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    async def wallet(self, *argv):
        """(code, stdout lines, stderr) of archivas-wallet in a new session: no terminal."""
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ["-c", NO_TERMINAL, str(BIN / "archivas-wallet"), *argv], env=os.environ)
        return code, out.decode().strip().splitlines(), err.decode()

    @defer.inlineCallbacks
    def test_new_restore_send_balance_with_passphrase_files(self):
        yield defer.ensureDeferred(self._scenario())

    async def _scenario(self):
        mine = os.path.join(self.dir, "mine.key")
        code, out, err = await self.wallet("new", "--out", mine, "--passphrase-file", self.passphrase, "--kdf", FAST)
        self.assertEqual(code, 0, err)
        phrase, address = out[-2], out[-1]
        self.assertIn("encrypted with a passphrase", out[0])
        self.assertEqual(len(phrase.split()), 24)
        self.assertEqual(keys.key_file_address(mine), address)
        self.assertTrue(keys.is_encrypted(mine))

        # The phrase rebuilds the same key, under another passphrase.
        again = os.path.join(self.dir, "again.key")
        other = self.file("other-passphrase", "another one\n")
        code, out, err = await self.wallet("restore", "--out", again, "--phrase-file", self.file("phrase", phrase),
                                           "--passphrase-file", other, "--kdf", FAST)
        self.assertEqual((code, out[-1]), (0, address), err)
        code, out, err = await self.wallet("phrase", "--key", again, "--passphrase-file", other)
        self.assertEqual((code, out), (0, [phrase, address]), err)
        code, out, err = await self.wallet("phrase", "--key", again, "--passphrase-file", self.passphrase)
        self.assertEqual((code, err), (1, f"archivas-wallet: error: wrong passphrase for key file {again}\n"))
        code, out, err = await self.wallet("phrase", "--key", again)
        self.assertEqual(code, 1)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("is encrypted: give --passphrase-file FILE", err)

        # A funded key (ALICE, 1000 RCHV on the test network) restored encrypted, then a
        # transfer through the first of two nodes that answers.
        alice = os.path.join(self.dir, "alice.key")
        code, out, err = await self.wallet("restore", "--out", alice, "--kdf", FAST, "--passphrase-file",
                                           self.passphrase, "--phrase-file",
                                           self.file("alice-phrase", walletkeys.phrase_of(ALICE)))
        self.assertEqual((code, out[-1]), (0, ALICE.address), err)
        dead = "http://127.0.0.1:1"
        code, out, err = await self.wallet("send", "--key", alice, "--passphrase-file", self.passphrase, "--to",
                                           address, "--amount", "1.5", "--node", f"{dead},{self.url}")
        self.assertEqual(code, 0, err)
        tx_hash = bytes.fromhex(out[-1])
        await wait_until(lambda: tx_hash in self.h.node.mempool, "the transfer in the mempool")
        code, out, err = await self.wallet("send", "--key", alice, "--passphrase-file", self.passphrase, "--to",
                                           address, "--amount", "2000", "--node", self.url)
        self.assertEqual((code, err), (1, "archivas-wallet: error: cannot send: needs 2000.001 RCHV (amount 2000 "
                                          "RCHV + fee 0.001 RCHV), balance is 1000 RCHV\n"))
        code, out, err = await self.wallet("balance", "--key", alice, "--node", self.url)  # no passphrase
        self.assertEqual((code, out), (0, [f"{ALICE.address}: 1000.00000000 RCHV (nonce 0)"]), err)
        self.assertEqual(len(self.h.node.mempool), 1)
