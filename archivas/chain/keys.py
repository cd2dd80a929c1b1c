"""Ed25519 keys (pynacl), key files, and bech32 `arcv1...` addresses."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import bech32
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from archivas.chain.encoding import sha256

HRP = "arcv"
KEY_FILE_TYPE = "archivas-ed25519-v1"


class KeyFileError(ValueError):
    """A key file is missing, unreadable or inconsistent."""


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

    # Key files: JSON, mode 0600, holding the seed and, as a check, the public parts.

    def save(self, path: str | os.PathLike[str]) -> None:
        doc = {
            "type": KEY_FILE_TYPE,
            "seed": self.seed.hex(),
            "publicKey": self.public_key.hex(),
            "address": self.address,
        }
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "PrivateKey":
        try:
            doc = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise KeyFileError(f"key file {path} does not exist") from None
        except (OSError, ValueError) as e:
            raise KeyFileError(f"key file {path} is not readable JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("type") != KEY_FILE_TYPE:
            raise KeyFileError(f"key file {path} is not an {KEY_FILE_TYPE} key file")
        try:
            seed = bytes.fromhex(doc["seed"])
            if len(seed) != 32:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise KeyFileError(f"key file {path} has no valid 32-byte seed") from None
        key = cls(seed)
        if doc.get("publicKey") != key.public_key.hex() or doc.get("address") != key.address:
            raise KeyFileError(f"key file {path} is inconsistent: its seed does not give its address")
        return key
