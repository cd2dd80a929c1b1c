"""Canonical bytes and typed field readers shared by every chain object."""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

HASH_HEX_LEN = 64
MAX_INT = 2**63 - 1  # every amount, nonce, height and timestamp fits an SQLite integer


_LOWER_HEX = re.compile(rb"[0-9a-f]*")


class DecodeError(ValueError):
    """A value from outside (peer, client, file) does not have the expected shape."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise DecodeError("duplicate key in an object")
    return doc


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise DecodeError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not JSON")


# One decoder and one encoder for every call (json.loads and json.dumps with options build
# a new one each time: half the cost of a small message). Both keep no state between calls.
_STRICT = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_float=_finite_float,
                           parse_constant=_no_constant)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def strict_loads(data: bytes | str) -> Any:
    """JSON as RFC 8259 has it and nothing more: no NaN or Infinity (nor a float literal
    that overflows to one), no duplicate keys. Raises DecodeError, or ValueError /
    RecursionError from the parser for text that is not JSON at all. (Bytes are read as
    json.loads reads them: UTF-8, or UTF-16/32 by their first bytes.)"""
    if isinstance(data, str):
        if data.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
    elif isinstance(data, (bytes, bytearray)):
        data = data.decode(json.detect_encoding(data), "surrogatepass")
    else:
        raise TypeError(f"the JSON object must be str, bytes or bytearray, not {data.__class__.__name__}")
    return _STRICT.decode(data)


def canonical_json(obj: Any) -> bytes:
    """The one encoding that hashes and signatures are computed over.

    Sorted keys, no spaces, ASCII only; only ints, strings, lists, dicts and null are used
    in chain objects, so the result is the same on every node.
    """
    return _CANONICAL.encode(obj).encode()


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
    return strict_hex(text, name)


def strict_hex(text: str, name: str = "value") -> bytes:
    """Exactly lowercase hex digits, an even number of them (bytes.fromhex alone would also
    take spaces and capitals)."""
    raw = text.encode("ascii", "replace")
    if len(raw) % 2 or not _LOWER_HEX.fullmatch(raw):
        raise DecodeError(f"field {name!r} must be lowercase hex")
    return bytes.fromhex(text)
