"""archivas-wallet new|restore|phrase|send|balance: key files (plain or encrypted with a
passphrase), their 24-word recovery phrases, signed transfers and balances over the RPC
of one node or several (docs/wallet.md)."""

from __future__ import annotations

import decimal
import sys
from typing import Any, Optional

from twisted.internet import defer, task
from twisted.python import usage

from archivas import walletkeys
from archivas.chain import keys
from archivas.chain import params as network_params
from archivas.chain.keys import DEFAULT_KDF, KDF_PRESETS, KeyFileError, PrivateKey
from archivas.chain.params import COIN
from archivas.chain.transactions import sign_transfer
from archivas.client import HttpNodeAPI, NodeOption
from archivas.nodeapi import ApiError
from archivas.scripts.common import VersionedOptions, die, parse

PROGRAM = "archivas-wallet"


class WalletError(Exception):
    """What the wallet refuses to do, said in one line."""


def parse_amount(text: str, name: str, allow_zero: bool = False) -> int:
    """RCHV with up to 8 decimals to base units."""
    try:
        value = decimal.Decimal(text)
    except decimal.InvalidOperation:
        raise usage.UsageError(f"--{name} {text!r} is not a number") from None
    if not value.is_finite() or value < 0 or (value == 0 and not allow_zero):
        raise usage.UsageError(f"--{name} must be {'>= 0' if allow_zero else '> 0'}")
    units = value * COIN
    if units != units.to_integral_value():
        raise usage.UsageError(f"--{name} has more than 8 decimals")
    if units >= 2**62:
        raise usage.UsageError(f"--{name} is too large")
    return int(units)


def format_amount(units: int) -> str:
    """Base units with all 8 decimals: 150000000 -> "1.50000000"."""
    return f"{decimal.Decimal(units) / COIN:.8f}"


def rchv(units: int) -> str:
    """Base units as people write RCHV, no trailing zeros: 10000100000 -> "100.001 RCHV"."""
    value = (decimal.Decimal(units) / COIN).normalize()
    return f"{value:f} RCHV"


class _KdfOption:
    def check_kdf(self) -> None:
        if self["kdf"] not in KDF_PRESETS:  # type: ignore[index]
            raise usage.UsageError(f"--kdf must be one of {', '.join(KDF_PRESETS)}")


class NewOptions(_KdfOption, usage.Options):
    optFlags = [["encrypt", None, "encrypt the key file with a passphrase typed at a prompt (twice)"]]
    optParameters = [
        ["out", None, None, "where to write the new key file"],
        ["passphrase-file", None, None, "encrypt with the first line of this file (implies --encrypt)"],
        ["kdf", None, DEFAULT_KDF, f"argon2id cost for the passphrase: {', '.join(KDF_PRESETS)}"],
    ]

    def postOptions(self) -> None:
        if self["out"] is None:
            raise usage.UsageError("--out is required")
        self.check_kdf()


class RestoreOptions(NewOptions):
    optParameters = [
        ["phrase-file", None, None, "read the 24 words from this file instead of a prompt"],
    ]


class PhraseOptions(usage.Options):
    optParameters = [
        ["key", None, None, "the key file"],
        ["passphrase-file", None, None, "its passphrase, if encrypted (else a prompt asks)"],
    ]

    def postOptions(self) -> None:
        if self["key"] is None:
            raise usage.UsageError("--key is required")


class SendOptions(NodeOption, usage.Options):
    optParameters = [
        ["key", None, None, "the sender's key file"],
        ["passphrase-file", None, None, "its passphrase, if encrypted (else a prompt asks)"],
        ["to", None, None, "the recipient's arcv1 address"],
        ["amount", None, None, "RCHV to send, e.g. 1.5"],
        ["fee", None, "0.001", "fee in RCHV"],
    ]

    def postOptions(self) -> None:
        for name in ("key", "to", "amount"):
            if self[name] is None:
                raise usage.UsageError(f"--{name} is required")
        try:
            keys.decode_address(self["to"])
        except ValueError as e:
            raise usage.UsageError(f"--to: {e}") from None
        self["amount"] = parse_amount(self["amount"], "amount")
        self["fee"] = parse_amount(self["fee"], "fee", allow_zero=True)
        self.check_nodes()


class BalanceOptions(NodeOption, usage.Options):
    synopsis = "ADDRESS | --key KEYFILE [--node URL ...]"
    optParameters = [["key", None, None, "show the balance of this key file's address (no passphrase needed)"]]

    def parseOptions(self, options: Any = None) -> None:
        # `balance ADDR --node URL`: usage stops at the first argument, so the address
        # goes after the options.
        args = list(options or [])
        if args and not args[0].startswith("-"):
            args = args[1:] + [args[0]]
        super().parseOptions(args)

    def parseArgs(self, address: Optional[str] = None) -> None:  # type: ignore[override]
        self["address"] = address

    def postOptions(self) -> None:
        if (self["address"] is None) == (self["key"] is None):
            raise usage.UsageError("give an ADDRESS or --key KEYFILE")
        self.check_nodes()


class Options(VersionedOptions):
    program = "archivas-wallet"
    subCommands = [
        ["new", None, NewOptions, "make a key file; print its recovery phrase and address"],
        ["restore", None, RestoreOptions, "make a key file from a 24-word recovery phrase"],
        ["phrase", None, PhraseOptions, "print a key file's recovery phrase"],
        ["send", None, SendOptions, "sign and submit a transfer"],
        ["balance", None, BalanceOptions, "show an address's balance"],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("say new, restore, phrase, send or balance")


def _write(key: PrivateKey, options: NewOptions) -> None:
    passphrase = walletkeys.new_passphrase(options["passphrase-file"], options["encrypt"])
    try:
        key.save(options["out"], passphrase, options["kdf"])
    except FileExistsError:
        raise WalletError(f"{options['out']} exists: not overwriting a key file") from None
    except OSError as e:
        raise WalletError(f"cannot write {options['out']}: {e.strerror}") from None
    how = (f"encrypted with a passphrase, argon2id {options['kdf']}" if passphrase is not None
           else "not encrypted: --encrypt or --passphrase-file protects it")
    print(f"key file: {options['out']} ({how})")


def new(options: NewOptions) -> None:
    key = PrivateKey.generate()
    _write(key, options)
    print(f"recovery phrase ({walletkeys.PHRASE_WORDS} words; whoever has them has the key: "
          "write them down, keep them offline):")
    print(walletkeys.phrase_of(key))
    print(key.address)


def restore(options: RestoreOptions) -> None:
    if options["phrase-file"] is not None:
        text = walletkeys.read_phrase_file(options["phrase-file"])
    else:
        text = walletkeys.ask(f"recovery phrase ({walletkeys.PHRASE_WORDS} words): ")
    try:
        key = walletkeys.key_from_phrase(text)
    except walletkeys.PhraseError as e:
        raise WalletError(f"recovery phrase: {e}") from None
    _write(key, options)
    print(key.address)


def phrase(options: PhraseOptions) -> None:
    key = walletkeys.load_key(options["key"], options["passphrase-file"])
    print(walletkeys.phrase_of(key))
    print(key.address)


async def send(options: SendOptions, key: PrivateKey, api: Any) -> dict[str, Any]:
    """Check the transfer against the node's network and the sender's balance, sign it
    and submit it. WalletError (amounts in RCHV) when it cannot go through."""
    status = await api.status()
    if status.get("network") not in network_params.NETWORKS:
        raise WalletError(f"the node is on network {str(status.get('network'))[:40]!r}, which this wallet "
                          f"does not know ({', '.join(network_params.NETWORKS)})")
    params = network_params.load(status["network"])
    amount, fee = options["amount"], options["fee"]
    if fee < params.min_fee:
        raise WalletError(f"fee {rchv(fee)} is below the minimum on {params.name}, {rchv(params.min_fee)}")
    account = await api.balance(key.address)
    if amount + fee > account["balance"]:
        raise WalletError(f"cannot send: needs {rchv(amount + fee)} (amount {rchv(amount)} + fee {rchv(fee)}), "
                          f"balance is {rchv(account['balance'])}")
    tx = sign_transfer(key, params, options["to"], amount, fee, account["pendingNonce"])
    answer = await api.submit_tx(tx.to_json())
    print(f"sent {format_amount(tx.amount)} RCHV to {tx.recipient} (fee {format_amount(tx.fee)}, nonce {tx.nonce})")
    print(answer["txHash"])
    return dict(answer)


async def balance(options: BalanceOptions, api: Any) -> None:
    address = options["address"] or keys.key_file_address(options["key"])
    answer = await api.balance(address)
    print(f"{answer['address']}: {format_amount(answer['balance'])} RCHV (nonce {answer['nonce']})")


def main(argv: Optional[list[str]] = None) -> None:
    options = parse(PROGRAM, Options(), sys.argv[1:] if argv is None else argv)
    command, sub = options.subCommand, options.subOptions
    key: Optional[PrivateKey] = None
    try:
        if command == "new":
            return new(sub)
        if command == "restore":
            return restore(sub)
        if command == "phrase":
            return phrase(sub)
        if command == "send":
            key = walletkeys.load_key(sub["key"], sub["passphrase-file"])  # before the reactor: argon2id is slow
        elif sub["key"] is not None:
            keys.key_file_address(sub["key"])  # a bad key file is one line, before any request
    except (WalletError, KeyFileError) as e:
        die(PROGRAM, str(e))

    async def run(reactor: Any) -> None:
        api = HttpNodeAPI(sub["node"], reactor=reactor)
        try:
            if key is not None:
                await send(sub, key, api)
            else:
                await balance(sub, api)
        except ApiError as e:
            die(PROGRAM, e.message)
        except WalletError as e:
            die(PROGRAM, str(e))

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
