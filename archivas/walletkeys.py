"""Recovery phrases and passphrases for the programs' key files.

A recovery phrase is the key's 32-byte Ed25519 seed written as 24 words of the BIP-39
English list (the `mnemonic` package: 256 bits of entropy and an 8-bit checksum), so the
phrase gives back exactly the key. It is not a BIP-39 wallet seed: there is no PBKDF2
stretching and no BIP-32 derivation, and other wallets will not derive the same key from it.

Passphrases come from a file (its first line) or from a prompt on the terminal. All of it
is synchronous (argon2id costs CPU): the console scripts call it before the reactor runs.
"""

from __future__ import annotations

import getpass
import os
import sys
from typing import Callable, Optional

from mnemonic import Mnemonic

from archivas.chain import keys
from archivas.chain.keys import KeyFileError, PrivateKey

PHRASE_WORDS = 24  # 256 bits of seed + 8 of checksum, 11 bits a word
MAX_PHRASE_FILE_BYTES = 4096  # 24 words of at most 8 letters fit in 216 bytes
MAX_PASSPHRASE_FILE_BYTES = 4096  # read this much; the passphrase is its first line

_wordlist = Mnemonic("english")


class PhraseError(ValueError):
    """A recovery phrase that does not give a key; the message says why."""


def phrase_of(key: PrivateKey) -> str:
    """The key's recovery phrase: 24 words separated by single spaces."""
    return _wordlist.to_mnemonic(key.seed)


def key_from_phrase(text: str) -> PrivateKey:
    """The key a recovery phrase holds (any case and spacing); PhraseError saying which
    word is wrong, or that the checksum does not match."""
    words = text.lower().split()
    if len(words) != PHRASE_WORDS:
        raise PhraseError(f"a recovery phrase has {PHRASE_WORDS} words, this one has {len(words)}")
    known = set(_wordlist.wordlist)
    for number, word in enumerate(words, 1):
        if word not in known:
            raise PhraseError(f"word {number} ({word[:20]!r}) is not in the BIP-39 English word list")
    try:
        seed = bytes(_wordlist.to_entropy(words))
    except (ValueError, LookupError):
        raise PhraseError("the phrase's checksum does not match: a word is wrong or out of place") from None
    return PrivateKey(seed)


def read_phrase_file(path: str) -> str:
    return _read_small(path, MAX_PHRASE_FILE_BYTES, "phrase file")


def read_passphrase_file(path: str) -> str:
    """The first line of the file, without its line ending; KeyFileError if there is
    none, or it is empty or too long."""
    text = _read_small(path, MAX_PASSPHRASE_FILE_BYTES, "passphrase file", whole=False)
    first = text.split("\n", 1)[0].removesuffix("\r")
    try:
        keys.passphrase_bytes(first)
    except ValueError as e:
        raise KeyFileError(f"passphrase file {path}: {e}") from None
    return first


def _read_small(path: str, limit: int, what: str, whole: bool = True) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise KeyFileError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > limit:
        if whole:
            raise KeyFileError(f"{what} {path} is over {limit} bytes")
        data = data[:limit]
        if b"\n" not in data:
            raise KeyFileError(f"{what} {path} has no line ending in its first {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{what} {path} is not UTF-8 text") from None


def has_terminal() -> bool:
    """Whether a prompt can be answered: a controlling terminal (getpass reads /dev/tty)."""
    try:
        with open("/dev/tty"):
            return True
    except OSError:
        return sys.stdin.isatty()


def ask(prompt: str) -> str:
    """A line typed on the terminal, not echoed; KeyFileError when nobody can answer."""
    if not has_terminal():
        raise KeyFileError("no terminal to ask on: give a file instead")
    try:
        return getpass.getpass(prompt)
    except (EOFError, KeyboardInterrupt):
        raise KeyFileError("no answer to the prompt (no terminal? give a file instead)") from None


def new_passphrase(passphrase_file: Optional[str], prompt: bool) -> Optional[str]:
    """The passphrase to encrypt a new key file with: the file's, or typed twice at the
    prompt; None (a plain key file) when neither is asked for."""
    if passphrase_file is not None:
        return read_passphrase_file(passphrase_file)
    if not prompt:
        return None
    first = ask("passphrase for the new key file: ")
    try:
        keys.passphrase_bytes(first)
    except ValueError as e:
        raise KeyFileError(str(e)) from None
    if ask("the same passphrase again: ") != first:
        raise KeyFileError("the two passphrases differ: nothing written")
    return first


def passphrase_for(path: str | os.PathLike[str], passphrase_file: Optional[str]) -> Callable[[], str]:
    """What PrivateKey.load asks when the file is encrypted: the passphrase file's line,
    or a prompt."""
    if passphrase_file is not None:
        return lambda: read_passphrase_file(passphrase_file)

    def prompt() -> str:
        try:
            return ask(f"passphrase for {path}: ")
        except KeyFileError:
            raise KeyFileError(f"key file {path} is encrypted: give --passphrase-file FILE "
                               "(no terminal to ask for the passphrase on)") from None

    return prompt


def load_key(path: str, passphrase_file: Optional[str] = None) -> PrivateKey:
    """A key file of either kind; an encrypted one opened with the passphrase file or
    a prompt. KeyFileError with a one-line message for every failure."""
    return PrivateKey.load(path, passphrase_for(path, passphrase_file))
