"""Canonical bytes and typed field readers shared by every chain object."""

from __future__ import annotations

import hashlib
import json
from typing import Any

HASH_HEX_LEN = 64
MAX_INT = 2**63 - 1  # every amount, nonce, height and timestamp fits an SQLite integer


class DecodeError(ValueError):
    """A value from outside (peer, client, file) does not have the expected shape."""


def canonical_json(obj: Any) -> bytes:
    """The one encoding that hashes and signatures are computed over.

    Sorted keys, no spaces, ASCII only; only ints, strings, lists, dicts and null are used
    in chain objects, so the result is the same on every node.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()


def field(obj: Any, name: str, kind: type) -> Any:
    """Read `name` from a JSON object, insisting on its type (bool is not an int)."""
    if not isinstance(obj, dict):
        raise DecodeError(f"expected an object holding {name!r}")
    if name not in obj:
        raise DecodeError(f"missing field {name!r}")
    value = obj[name]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DecodeError(f"field {name!r} must be an integer")
        if not 0 <= value <= MAX_INT:
            raise DecodeError(f"field {name!r} out of range")
    elif not isinstance(value, kind):
        raise DecodeError(f"field {name!r} must be of type {kind.__name__}")
    return value


def str_field(obj: Any, name: str, max_len: int = 100) -> str:
    text = field(obj, name, str)
    if len(text) > max_len:
        raise DecodeError(f"field {name!r} longer than {max_len} characters")
    return text


def hex_field(obj: Any, name: str, nbytes: int | None = None, max_bytes: int = 4096) -> bytes:
    """Read a lowercase hex field; `nbytes` fixes its length, else at most `max_bytes`."""
    text = field(obj, name, str)
    if len(text) > 2 * max_bytes or (nbytes is not None and len(text) != 2 * nbytes):
        want = f"{nbytes} bytes" if nbytes is not None else f"at most {max_bytes} bytes"
        raise DecodeError(f"field {name!r} must be {want} of hex")
    if text != text.lower():
        raise DecodeError(f"field {name!r} must be lowercase hex")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise DecodeError(f"field {name!r} is not hex") from None
