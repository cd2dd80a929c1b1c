"""Account state: balances and nonces, and how a block's transfers change them.

A block is applied to a `StateDelta` layered over the stored state, so a rejected block
leaves the base untouched; the delta's `before` values are the undo record that lets a
reorganisation roll the block back exactly.
"""

from __future__ import annotations

from typing import Iterable, Optional, Protocol

from archivas.chain.transactions import Transaction, check_against_account

Account = tuple[int, int]  # (balance in base units, nonce)


class AccountSource(Protocol):
    def get_account(self, address: str) -> Optional[Account]:
        """The stored account, or None if the address never appeared."""


class MemoryState:
    """A dict-backed state: genesis, replays in tests, and simulation."""

    def __init__(self, accounts: Optional[dict[str, Account]] = None) -> None:
        self.accounts: dict[str, Account] = dict(accounts or {})

    def get_account(self, address: str) -> Optional[Account]:
        return self.accounts.get(address)

    def commit(self, delta: "StateDelta") -> None:
        self.accounts.update(delta.changes)

    def total_supply(self) -> int:
        return sum(balance for balance, _ in self.accounts.values())


class StateDelta:
    """Changes over a base state, with the values they replace (the undo record)."""

    def __init__(self, base: AccountSource) -> None:
        self.base = base
        self.changes: dict[str, Account] = {}
        self.before: dict[str, Optional[Account]] = {}
        self._read: dict[str, Optional[Account]] = {}  # base values read so far

    def _base(self, address: str) -> Optional[Account]:
        if address not in self._read:
            self._read[address] = self.base.get_account(address)
        return self._read[address]

    def get_account(self, address: str) -> Optional[Account]:
        if address in self.changes:
            return self.changes[address]
        return self._base(address)

    def account(self, address: str) -> Account:
        return self.get_account(address) or (0, 0)

    def _set(self, address: str, account: Account) -> None:
        if address not in self.before:
            self.before[address] = self._base(address)
        self.changes[address] = account

    def credit(self, address: str, amount: int) -> None:
        balance, nonce = self.account(address)
        self._set(address, (balance + amount, nonce))

    def apply_transaction(self, tx: Transaction) -> None:
        """Nonce and balance checks, then the transfer; raises InvalidTransaction.

        account() and _set() written out: this runs for every transfer of every block a
        node stores (a sync's hot path), and the calls were most of its cost."""
        changes, before, read = self.changes, self.before, self._read
        sender = tx.sender
        current = changes.get(sender)
        changed = current is not None
        if not changed:
            current = read[sender] if sender in read else self._base(sender)
        balance, nonce = current if current is not None else (0, 0)
        check_against_account(tx, balance, nonce)
        if not changed:
            before[sender] = current
        changes[sender] = (balance - tx.amount - tx.fee, nonce + 1)
        recipient = tx.recipient
        current = changes.get(recipient)
        if current is None:
            current = before[recipient] = read[recipient] if recipient in read else self._base(recipient)
        balance, nonce = current if current is not None else (0, 0)
        changes[recipient] = (balance + tx.amount, nonce)


def apply_block_body(
    delta: StateDelta, transactions: Iterable[Transaction], reward_address: str, reward: int
) -> None:
    """The transfers in order, then the farmer's reward (block reward plus fees)."""
    for tx in transactions:
        delta.apply_transaction(tx)
    delta.credit(reward_address, reward)
