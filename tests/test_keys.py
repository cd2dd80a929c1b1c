"""Keys, key files and bech32 addresses."""

import json
import os
import stat

from twisted.trial import unittest

from archivas.chain import keys
from archivas.chain.encoding import sha256
from archivas.chain.keys import KeyFileError, PrivateKey


class AddressTests(unittest.TestCase):
    def test_address_is_bech32_of_hashed_public_key(self):
        key = PrivateKey.from_secret(b"k")
        self.assertTrue(key.address.startswith("arcv1"))
        self.assertEqual(keys.decode_address(key.address), sha256(key.public_key)[:20])

    def test_sign_and_verify(self):
        key = PrivateKey.from_secret(b"k")
        sig = key.sign(b"message")
        self.assertTrue(keys.verify(key.public_key, b"message", sig))
        self.assertFalse(keys.verify(key.public_key, b"messagf", sig))
        self.assertFalse(keys.verify(b"\x00" * 5, b"message", sig))

    def test_malformed_addresses_say_why(self):
        good = PrivateKey.from_secret(b"k").address
        flipped = good[:-1] + ("q" if good[-1] != "q" else "p")
        cases = {
            flipped: "checksum",
            good.upper(): "lowercase",
            good.replace("arcv1", "bc1", 1): "bech32",
            "": "bech32",
            "arcv1" + "q" * 100: "bech32 string",
        }
        for address, words in cases.items():
            with self.assertRaises(ValueError) as cm:
                keys.decode_address(address)
            self.assertIn(words, str(cm.exception), address)
        self.assertFalse(keys.is_address(12))

    def test_other_prefix_refused(self):
        import bech32

        other = bech32.bech32_encode("abcd", bech32.convertbits(b"\x01" * 20, 8, 5))
        with self.assertRaises(ValueError) as cm:
            keys.decode_address(other)
        self.assertIn("prefix", str(cm.exception))

    def test_wrong_length_payload_refused(self):
        import bech32

        short = bech32.bech32_encode("arcv", bech32.convertbits(b"\x01" * 19, 8, 5))
        with self.assertRaises(ValueError) as cm:
            keys.decode_address(short)
        self.assertIn("20 bytes", str(cm.exception))


class KeyFileTests(unittest.TestCase):
    def test_round_trip_with_private_mode(self):
        path = self.mktemp()
        key = PrivateKey.generate()
        key.save(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(PrivateKey.load(path).address, key.address)

    def test_save_never_overwrites(self):
        path = self.mktemp()
        PrivateKey.generate().save(path)
        with self.assertRaises(FileExistsError):
            PrivateKey.generate().save(path)

    def test_bad_files(self):
        missing = self.mktemp()
        with self.assertRaisesRegex(KeyFileError, "does not exist"):
            PrivateKey.load(missing)
        garbage = self.mktemp()
        with open(garbage, "w") as f:
            f.write("{not json")
        with self.assertRaisesRegex(KeyFileError, "not readable JSON"):
            PrivateKey.load(garbage)
        inconsistent = self.mktemp()
        doc = json.loads(json.dumps({"type": keys.KEY_FILE_TYPE, "seed": "11" * 32,
                                     "publicKey": "22" * 32, "address": "x"}))
        with open(inconsistent, "w") as f:
            json.dump(doc, f)
        with self.assertRaisesRegex(KeyFileError, "inconsistent"):
            PrivateKey.load(inconsistent)
        short = self.mktemp()
        with open(short, "w") as f:
            json.dump({**doc, "seed": "11"}, f)
        with self.assertRaisesRegex(KeyFileError, "32-byte seed"):
            PrivateKey.load(short)
