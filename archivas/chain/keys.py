"""Ed25519 keys (pynacl), key files (plain or encrypted with a passphrase), and bech32
`arcv1...` addresses.

A key file is JSON, mode 0600. Both kinds carry the public key and the address in clear
(an address is public anyway; reading it needs no passphrase); the seed is either in hex
(`archivas-ed25519-v1`) or sealed (`archivas-ed25519-encrypted-v1`): a key of 32 bytes
derived from the passphrase with argon2id (pynacl's `pwhash`, a random 16-byte salt, the
cost written in the file) opens a SecretBox (XSalsa20-Poly1305, its 24-byte nonce in
front) holding the seed. docs/wallet.md describes both formats.
"""

from __future__ import annotations

import functools
import json
import os
import unicodedata
from pathlib import Path
from typing import Any, Callable, Optional, Union

import bech32
import nacl.pwhash
import nacl.secret
import nacl.utils
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from archivas.chain.encoding import sha256

HRP = "arcv"
KEY_FILE_TYPE = "archivas-ed25519-v1"  # the seed in hex
ENCRYPTED_KEY_FILE_TYPE = "archivas-ed25519-encrypted-v1"  # the seed sealed under a passphrase
KDF_NAME = "argon2id"
CIPHER_NAME = "xsalsa20poly1305"
_ARGON2ID = nacl.pwhash.argon2id
# The cost of deriving the key from the passphrase: (opslimit, memlimit in bytes).
KDF_PRESETS = {
    "interactive": (_ARGON2ID.OPSLIMIT_INTERACTIVE, _ARGON2ID.MEMLIMIT_INTERACTIVE),  # 2, 64 MiB: ~0.2 s
    "moderate": (_ARGON2ID.OPSLIMIT_MODERATE, _ARGON2ID.MEMLIMIT_MODERATE),  # 3, 256 MiB: ~1.5 s
    "sensitive": (_ARGON2ID.OPSLIMIT_SENSITIVE, _ARGON2ID.MEMLIMIT_SENSITIVE),  # 4, 1 GiB: ~9 s
}
DEFAULT_KDF = "moderate"
# What a key file may ask of the reader: no more than the `sensitive` preset, so a
# corrupt or hostile file cannot make it allocate more than 1 GiB.
MAX_OPSLIMIT = _ARGON2ID.OPSLIMIT_SENSITIVE
MAX_MEMLIMIT = _ARGON2ID.MEMLIMIT_SENSITIVE
MAX_PASSPHRASE_BYTES = 1024  # UTF-8, after NFKD normalisation
MAX_KEY_FILE_BYTES = 65536  # a key file is about 600 bytes; anything far larger is not one

Passphrase = Union[str, Callable[[], str], None]


class KeyFileError(ValueError):
    """A key file is missing, unreadable or inconsistent."""


class PassphraseNeeded(KeyFileError):
    """The key file is encrypted and no passphrase was given."""


class WrongPassphrase(KeyFileError):
    """The passphrase does not open the key file (or the file was altered)."""


def passphrase_bytes(passphrase: str) -> bytes:
    """A passphrase as the KDF reads it: NFKD-normalised UTF-8 (the same characters
    typed on any system give the same bytes); ValueError if empty or too long."""
    data = unicodedata.normalize("NFKD", passphrase).encode("utf-8")
    if not data:
        raise ValueError("the passphrase is empty")
    if len(data) > MAX_PASSPHRASE_BYTES:
        raise ValueError(f"the passphrase is over {MAX_PASSPHRASE_BYTES} bytes")
    return data


def _derive(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return _ARGON2ID.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase_bytes(passphrase), salt,
                         opslimit=opslimit, memlimit=memlimit)


def address_hash(public_key: bytes) -> bytes:
    """The 20 bytes an address carries: the start of sha256(public key)."""
    return sha256(public_key)[:20]


def address_of(public_key: bytes) -> str:
    """bech32(hrp `arcv`, first 20 bytes of sha256(public key))."""
    data = bech32.convertbits(address_hash(public_key), 8, 5)
    assert data is not None  # 8-to-5 bit conversion with padding cannot fail
    return bech32.bech32_encode(HRP, data)


@functools.lru_cache(maxsize=65536)
def decode_address(address: str) -> bytes:
    """The 20-byte hash inside an address; ValueError saying why for a bad one.

    Cached: bech32 is pure Python, and the same addresses recur block after block."""
    if not isinstance(address, str) or len(address) > 90:
        raise ValueError("address must be a bech32 string")
    if address != address.lower():
        raise ValueError(f"address {address!r} must be lowercase")
    hrp, data = bech32.bech32_decode(address)
    if hrp is None or data is None:
        raise ValueError(f"address {address!r} is not valid bech32 (bad checksum or characters)")
    if hrp != HRP:
        raise ValueError(f"address {address!r} has prefix {hrp!r}, not {HRP!r}")
    raw = bech32.convertbits(data, 5, 8, False)
    if raw is None or len(raw) != 20:
        raise ValueError(f"address {address!r} does not hold 20 bytes")
    return bytes(raw)


def is_address(address: object) -> bool:
    try:
        decode_address(address)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


class PrivateKey:
    """An Ed25519 signing key with its public key and address."""

    def __init__(self, seed: bytes) -> None:
        self._key = SigningKey(seed)
        self.seed = seed
        self.public_key = bytes(self._key.verify_key)
        self.address = address_of(self.public_key)

    @classmethod
    def generate(cls) -> "PrivateKey":
        return cls(os.urandom(32))

    @classmethod
    def from_secret(cls, secret: bytes) -> "PrivateKey":
        """A deterministic key (tests, fixtures): seed = sha256(secret)."""
        return cls(sha256(secret))

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature

    def __repr__(self) -> str:
        return f"<PrivateKey {self.address}>"

    # Key files: JSON, mode 0600, holding the seed (plain or sealed) and, as a check and
    # for reading without the passphrase, the public key and the address.

    def key_file(self, passphrase: Optional[str] = None, kdf: str = DEFAULT_KDF) -> dict[str, Any]:
        """The key file's document: plain without a passphrase, else encrypted at the
        cost of KDF_PRESETS[kdf]. ValueError for an empty or too long passphrase."""
        if passphrase is None:
            return {"type": KEY_FILE_TYPE, "seed": self.seed.hex(),
                    "publicKey": self.public_key.hex(), "address": self.address}
        opslimit, memlimit = KDF_PRESETS[kdf]
        salt = nacl.utils.random(_ARGON2ID.SALTBYTES)
        sealed = nacl.secret.SecretBox(_derive(passphrase, salt, opslimit, memlimit)).encrypt(self.seed)
        return {
            "type": ENCRYPTED_KEY_FILE_TYPE,
            "kdf": {"name": KDF_NAME, "salt": salt.hex(), "opslimit": opslimit, "memlimit": memlimit},
            "cipher": CIPHER_NAME,
            "sealedSeed": bytes(sealed).hex(),
            "publicKey": self.public_key.hex(),
            "address": self.address,
        }

    def save(self, path: str | os.PathLike[str], passphrase: Optional[str] = None, kdf: str = DEFAULT_KDF) -> None:
        """Write the key file (never over an existing file: FileExistsError)."""
        doc = self.key_file(passphrase, kdf)
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str], passphrase: Passphrase = None) -> "PrivateKey":
        """The key in a key file of either kind. `passphrase` (a string, or a function
        asked only when the file is encrypted) opens an encrypted one: without it,
        PassphraseNeeded; a wrong one, WrongPassphrase. Argon2id takes CPU and memory
        (about 1.5 s at the default cost): call this before the reactor runs or in a thread."""
        doc = read_key_file(path)
        if doc["type"] == KEY_FILE_TYPE:
            try:
                seed = bytes.fromhex(doc["seed"])
                if len(seed) != 32:
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                raise KeyFileError(f"key file {path} has no valid 32-byte seed") from None
        else:
            if passphrase is None:
                raise PassphraseNeeded(f"key file {path} is encrypted: a passphrase is needed")
            seed = _open_sealed(path, doc, passphrase if isinstance(passphrase, str) else passphrase())
        key = cls(seed)
        if doc.get("publicKey") != key.public_key.hex() or doc.get("address") != key.address:
            raise KeyFileError(f"key file {path} is inconsistent: its seed does not give its address")
        return key


def read_key_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A key file's JSON document, of a known type (KeyFileError saying why if not)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as e:
        raise KeyFileError(f"key file {path} is not readable: {e.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"key file {path} is over {MAX_KEY_FILE_BYTES} bytes: not a key file")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise KeyFileError(f"key file {path} is not readable JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("type") not in (KEY_FILE_TYPE, ENCRYPTED_KEY_FILE_TYPE):
        raise KeyFileError(f"key file {path} is not an {KEY_FILE_TYPE} or {ENCRYPTED_KEY_FILE_TYPE} key file")
    return doc


def key_file_public_key(path: str | os.PathLike[str]) -> bytes:
    """The public key a key file of either kind holds, read without its passphrase
    (enough to bind plots to it), checked against the file's address."""
    doc = read_key_file(path)
    try:
        public_key = bytes.fromhex(doc["publicKey"])
    except (KeyError, TypeError, ValueError):
        raise KeyFileError(f"key file {path} has no valid public key") from None
    if len(public_key) != 32 or doc.get("address") != address_of(public_key):
        raise KeyFileError(f"key file {path} is inconsistent: its public key does not give its address")
    return public_key


def key_file_address(path: str | os.PathLike[str]) -> str:
    """The address a key file of either kind holds, read without its passphrase."""
    return address_of(key_file_public_key(path))


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    return read_key_file(path)["type"] == ENCRYPTED_KEY_FILE_TYPE


def _open_sealed(path: str | os.PathLike[str], doc: dict[str, Any], passphrase: str) -> bytes:
    kdf, cipher = doc.get("kdf"), doc.get("cipher")
    if not isinstance(kdf, dict) or kdf.get("name") != KDF_NAME or cipher != CIPHER_NAME:
        raise KeyFileError(f"key file {path} names a KDF or cipher this version does not know "
                           f"(knows {KDF_NAME} and {CIPHER_NAME})")
    try:
        salt = bytes.fromhex(kdf["salt"])
        sealed = bytes.fromhex(doc["sealedSeed"])
        opslimit, memlimit = kdf["opslimit"], kdf["memlimit"]
        if (len(salt) != _ARGON2ID.SALTBYTES or type(opslimit) is not int or type(memlimit) is not int
                or len(sealed) != nacl.secret.SecretBox.NONCE_SIZE + nacl.secret.SecretBox.MACBYTES + 32):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise KeyFileError(f"key file {path} has a malformed encrypted seed") from None
    if not (_ARGON2ID.OPSLIMIT_MIN <= opslimit <= MAX_OPSLIMIT and _ARGON2ID.MEMLIMIT_MIN <= memlimit <= MAX_MEMLIMIT):
        raise KeyFileError(f"key file {path} asks for an argon2id cost outside opslimit {_ARGON2ID.OPSLIMIT_MIN}.."
                           f"{MAX_OPSLIMIT}, memlimit {_ARGON2ID.MEMLIMIT_MIN}..{MAX_MEMLIMIT}")
    try:
        key = _derive(passphrase, salt, opslimit, memlimit)
    except ValueError as e:
        raise WrongPassphrase(f"key file {path}: {e}") from None
    try:
        return nacl.secret.SecretBox(key).decrypt(sealed)
    except CryptoError:
        raise WrongPassphrase(f"wrong passphrase for key file {path}") from None
