"""archivas-wallet new|send|balance: keys, signed transfers and balances over the RPC."""

from __future__ import annotations

import decimal
import sys
from typing import Any, Optional

from twisted.internet import defer, task
from twisted.python import usage

from archivas.chain import keys
from archivas.chain.keys import KeyFileError, PrivateKey
from archivas.chain.params import COIN
from archivas.chain.transactions import sign_transfer
from archivas.client import HttpNodeAPI
from archivas.nodeapi import ApiError
from archivas.scripts.common import VersionedOptions, die, parse

PROGRAM = "archivas-wallet"


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
    return f"{decimal.Decimal(units) / COIN:.8f}"


class NewOptions(usage.Options):
    optParameters = [["out", None, None, "where to write the new key file"]]

    def postOptions(self) -> None:
        if self["out"] is None:
            raise usage.UsageError("--out is required")


class SendOptions(usage.Options):
    optParameters = [
        ["key", None, None, "the sender's key file"],
        ["to", None, None, "the recipient's arcv1 address"],
        ["amount", None, None, "RCHV to send, e.g. 1.5"],
        ["fee", None, "0.001", "fee in RCHV"],
        ["node", None, "http://localhost:8080", "the node's RPC URL"],
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


class BalanceOptions(usage.Options):
    synopsis = "ADDRESS [--node URL]"
    optParameters = [["node", None, "http://localhost:8080", "the node's RPC URL"]]

    def parseOptions(self, options: Any = None) -> None:
        # `balance ADDR --node URL`: usage stops at the first argument, so the address
        # goes after the options.
        args = list(options or [])
        if args and not args[0].startswith("-"):
            args = args[1:] + [args[0]]
        super().parseOptions(args)

    def parseArgs(self, address: str) -> None:  # type: ignore[override]
        self["address"] = address


class Options(VersionedOptions):
    program = "archivas-wallet"
    subCommands = [
        ["new", None, NewOptions, "make a key file and print its address"],
        ["send", None, SendOptions, "sign and submit a transfer"],
        ["balance", None, BalanceOptions, "show an address's balance"],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("say new, send or balance")


def new(options: NewOptions) -> None:
    key = PrivateKey.generate()
    try:
        key.save(options["out"])
    except FileExistsError:
        die(PROGRAM, f"{options['out']} exists: not overwriting a key file")
    except OSError as e:
        die(PROGRAM, f"cannot write {options['out']}: {e.strerror}")
    print(f"key file: {options['out']}")
    print(key.address)


async def send(options: SendOptions) -> None:
    try:
        key = PrivateKey.load(options["key"])
    except KeyFileError as e:
        die(PROGRAM, str(e))
    api = HttpNodeAPI(options["node"])
    status = await api.status()
    account = await api.balance(key.address)
    from archivas.chain import params as network_params

    params = network_params.load(status["network"])
    tx = sign_transfer(key, params, options["to"], options["amount"], options["fee"], account["pendingNonce"])
    answer = await api.submit_tx(tx.to_json())
    print(f"sent {format_amount(tx.amount)} RCHV to {tx.recipient} (fee {format_amount(tx.fee)}, nonce {tx.nonce})")
    print(answer["txHash"])


async def balance(options: BalanceOptions) -> None:
    answer = await HttpNodeAPI(options["node"]).balance(options["address"])
    print(f"{answer['address']}: {format_amount(answer['balance'])} RCHV (nonce {answer['nonce']})")


def main(argv: Optional[list[str]] = None) -> None:
    options = parse(PROGRAM, Options(), sys.argv[1:] if argv is None else argv)
    if options.subCommand == "new":
        new(options.subOptions)
        return
    action = send if options.subCommand == "send" else balance

    async def run(reactor: Any) -> None:
        try:
            await action(options.subOptions)
        except ApiError as e:
            die(PROGRAM, e.message)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
