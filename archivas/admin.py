"""The admin token: a random secret the node writes at start-up to `.cookie` in its data
directory, readable only by its user (as Bitcoin Core's `.cookie`); operator calls on the
RPC send it as `Authorization: Bearer <token>`."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Optional

COOKIE_FILE = ".cookie"


def write_cookie(directory: str | os.PathLike[str]) -> str:
    """A fresh token, written (mode 0600, replacing any older one) and returned."""
    token = secrets.token_hex(32)
    path = Path(directory) / COOKIE_FILE
    tmp = path.with_name(COOKIE_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return token


def read_cookie(directory: str | os.PathLike[str]) -> Optional[str]:
    try:
        return (Path(directory) / COOKIE_FILE).read_text().strip() or None
    except OSError:
        return None


def authorised(header: Optional[bytes], token: Optional[str]) -> bool:
    """The request's Authorization header carries the token (compared in constant time)."""
    if token is None or header is None:
        return False
    scheme, _, given = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token.encode())
