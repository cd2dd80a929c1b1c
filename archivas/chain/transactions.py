"""Signed RCHV transfers: the model, its canonical encoding, and stateless checks."""

from __future__ import annotations

import dataclasses
import functools
import re
import struct
from typing import Any, Optional

from archivas.chain import keys
from archivas.chain.encoding import MAX_INT, DecodeError, canonical_json, field, hex_field, sha256, str_field
from archivas.chain.params import COIN, NetworkParams

TX_DOMAIN = b"archivas-tx-v1\x00"


class InvalidTransaction(ValueError):
    """A transaction that must not enter the mempool or a block.

    `reason` is a stable code (see `REASONS`); the message says the specifics.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


REASONS = (
    "malformed",  # not a transaction object of the right shape
    "wrong_chain",  # signed for another chain id
    "bad_address",  # from or to is not an arcv1 address
    "key_mismatch",  # the public key does not hash to `from`
    "bad_signature",  # the signature does not verify over the canonical encoding
    "non_positive_amount",
    "fee_too_low",
    "bad_nonce",  # not the sender's next nonce
    "insufficient_balance",  # balance below amount + fee
)


@dataclasses.dataclass(frozen=True)
class Transaction:
    chain_id: int
    sender: str
    recipient: str
    amount: int
    fee: int
    nonce: int
    public_key: bytes
    signature: bytes

    def unsigned_json(self) -> dict[str, Any]:
        return {
            "chainId": self.chain_id,
            "from": self.sender,
            "to": self.recipient,
            "amount": self.amount,
            "fee": self.fee,
            "nonce": self.nonce,
            "publicKey": self.public_key.hex(),
        }

    def signing_bytes(self) -> bytes:
        return self._signing_bytes

    @functools.cached_property
    def _signing_bytes(self) -> bytes:
        return TX_DOMAIN + canonical_json(self.unsigned_json())

    @functools.cached_property
    def hash(self) -> bytes:
        # Over the signed content, not the signature: a transaction has one id (computed
        # once: a Transaction is immutable).
        return sha256(self.signing_bytes())

    def to_json(self) -> dict[str, Any]:
        return {**self.unsigned_json(), "signature": self.signature.hex()}

    def encode(self) -> bytes:
        """canonical_json(self.to_json()), made once (a block is encoded from its
        transfers' bytes: Block.encode)."""
        return self._encoded

    @functools.cached_property
    def _encoded(self) -> bytes:
        return canonical_json(self.to_json())

    @functools.cached_property
    def signed_hash(self) -> bytes:
        """sha256 over the signing bytes, the public key and the signature, each with its
        length in front: the whole signed transfer, as `hash` (which leaves the signature
        out) is not. The verified-signature cache's key (chain/verifycache.py), made once."""
        return sha256(*(struct.pack(">I", len(p)) + p for p in (self.signing_bytes(), self.public_key,
                                                                 self.signature)))

    @classmethod
    def from_json(cls, obj: Any) -> "Transaction":
        """Parse a transaction; InvalidTransaction('malformed') for a wrong shape."""
        fast = _well_formed(obj)
        if fast is not None:
            return fast
        try:  # (something is wrong: this path says what)
            if not isinstance(obj, dict) or len(obj) != 8:
                raise DecodeError("a transaction is an object of exactly 8 fields")
            return cls(
                chain_id=field(obj, "chainId", int),
                sender=str_field(obj, "from"),
                recipient=str_field(obj, "to"),
                amount=field(obj, "amount", int),
                fee=field(obj, "fee", int),
                nonce=field(obj, "nonce", int),
                public_key=hex_field(obj, "publicKey", 32),
                signature=hex_field(obj, "signature", 64),
            )
        except DecodeError as e:
            raise InvalidTransaction("malformed", str(e)) from None


_HEX = re.compile("[0-9a-f]*")


def _well_formed(obj: Any) -> Optional[Transaction]:
    """Transaction.from_json's rules in one pass for the common case, a well-formed
    transfer (a sync decodes thousands a second on the reactor); None for anything else,
    which the field-by-field path then refuses with its reason."""
    if type(obj) is not dict or len(obj) != 8:
        return None
    try:
        chain_id, sender, recipient = obj["chainId"], obj["from"], obj["to"]
        amount, fee, nonce, public_key, signature = (obj["amount"], obj["fee"], obj["nonce"], obj["publicKey"],
                                                     obj["signature"])
    except KeyError:
        return None
    for n in (chain_id, amount, fee, nonce):
        if type(n) is not int or not 0 <= n <= MAX_INT:
            return None
    if (type(sender) is not str or type(recipient) is not str or len(sender) > 100 or len(recipient) > 100
            or type(public_key) is not str or len(public_key) != 64 or not _HEX.fullmatch(public_key)
            or type(signature) is not str or len(signature) != 128 or not _HEX.fullmatch(signature)):
        return None
    return Transaction(chain_id, sender, recipient, amount, fee, nonce, bytes.fromhex(public_key),
                       bytes.fromhex(signature))


def sign_transfer(
    key: keys.PrivateKey,
    params: NetworkParams,
    recipient: str,
    amount: int,
    fee: int,
    nonce: int,
) -> Transaction:
    unsigned = Transaction(params.chain_id, key.address, recipient, amount, fee, nonce, key.public_key, b"")
    return dataclasses.replace(unsigned, signature=key.sign(unsigned.signing_bytes()))


def verify_signature(tx: Transaction) -> bool:
    return keys.verify(tx.public_key, tx.signing_bytes(), tx.signature)


def check_stateless(tx: Transaction, params: NetworkParams, verify_signature: bool = True) -> None:
    """Every rule that needs no account state; raises InvalidTransaction. The signature
    (not part of the id) is checked last, and may be left to the caller."""
    if tx.chain_id != params.chain_id:
        raise InvalidTransaction("wrong_chain", f"chain id {tx.chain_id}, this chain is {params.chain_id}")
    decoded = {}
    for role, address in (("from", tx.sender), ("to", tx.recipient)):
        try:
            decoded[role] = keys.decode_address(address)
        except ValueError as e:
            raise InvalidTransaction("bad_address", f"{role}: {e}") from None
    if keys.address_hash(tx.public_key) != decoded["from"]:
        raise InvalidTransaction("key_mismatch", f"public key does not belong to {tx.sender}")
    if tx.amount <= 0:
        raise InvalidTransaction("non_positive_amount", f"amount {rchv(tx.amount)} must be above 0")
    if tx.fee < params.min_fee:
        raise InvalidTransaction("fee_too_low", f"fee {rchv(tx.fee)} below the minimum {rchv(params.min_fee)}")
    if verify_signature and not keys.verify(tx.public_key, tx.signing_bytes(), tx.signature):
        raise InvalidTransaction("bad_signature", "signature does not verify")


def rchv(units: int) -> str:
    """Base units as RCHV, as people read amounts: 100000000 -> "1.00000000 RCHV"."""
    return f"{units // COIN}.{units % COIN:08d} RCHV"


def check_against_account(tx: Transaction, balance: int, nonce: int) -> None:
    """The rules that need the sender's account: nonce and balance."""
    if tx.nonce != nonce:
        raise InvalidTransaction("bad_nonce", f"nonce {tx.nonce}, account expects {nonce}")
    if tx.amount + tx.fee > balance:
        raise InvalidTransaction(
            "insufficient_balance",
            f"needs {rchv(tx.amount + tx.fee)} (amount and fee), balance is {rchv(balance)}",
        )
