"""Compact blocks (in the manner of BIP152): short ids, and rebuilding a block from them.

A compact block is a header, a 48-bit nonce, a 6-byte short id for each transfer (in block
order) and a few transfers in full. The short id is BLAKE2b-48 of the transfer id keyed by
sha256(block hash || nonce)[:16] (BIP152 uses SipHash-2-4 keyed the same way; BLAKE2b is
in the standard library and keyed hashing is its job). The key changes with every block,
so an attacker cannot grind transfers whose short ids collide with another's in advance.

Rebuilding looks each short id up among the transfers the receiver holds (its mempool and
the block's prefilled ones). Ids it lacks (or that match two transfers) are asked for by
index with GET_BLOCK_TXN. A rebuilt block is checked against the header's transaction
root before anything else looks at it: a collision, or a peer that lied, costs one full
fetch, never a wrong block.

Plain synchronous code: no reactor, no peers.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Optional

import attrs

from archivas.chain.block import Block, Header
from archivas.chain.transactions import Transaction
from archivas.protocols import wire


def short_id_key(block_hash: bytes, nonce: int) -> bytes:
    return hashlib.sha256(block_hash + nonce.to_bytes(8, "big")).digest()[:16]


def short_id(key: bytes, tx_id: bytes) -> bytes:
    return hashlib.blake2b(tx_id, key=key, digest_size=wire.SHORT_ID_BYTES).digest()


def make_compact(block: Block, nonce: int, prefill: Iterable[int] = ()) -> wire.CmpctBlock:
    """The compact form of `block`, with the transfers at indexes `prefill` in full."""
    key = short_id_key(block.hash, nonce)
    full = sorted(set(prefill))
    chosen = set(full)
    short = tuple(short_id(key, tx.hash) for i, tx in enumerate(block.transactions) if i not in chosen)
    return wire.CmpctBlock(block.header, nonce, short, tuple((i, block.transactions[i]) for i in full))


@attrs.define(eq=False)
class PartialBlock:
    """A compact block being rebuilt: its slots, filled from the mempool or by BLOCK_TXN."""

    header: Header
    slots: list[Optional[Transaction]]

    @property
    def missing(self) -> tuple[int, ...]:
        return tuple(i for i, tx in enumerate(self.slots) if tx is None)

    def fill(self, txs: tuple[Transaction, ...]) -> bool:
        """The missing slots, in order, from a BLOCK_TXN; False if the count is wrong."""
        missing = self.missing
        if len(txs) != len(missing):
            return False
        for i, tx in zip(missing, txs):
            self.slots[i] = tx
        return True

    def block(self) -> Optional[Block]:
        """The whole block once every slot is filled and the transfers match the header's
        transaction root; None otherwise (a collision, or a lie: fetch it whole)."""
        if any(tx is None for tx in self.slots):
            return None
        block = Block(self.header, tuple(tx for tx in self.slots if tx is not None))
        if block.tx_root != self.header.tx_root:  # (kept on the block: bind_body reads it again)
            return None
        return block


def rebuild(message: wire.CmpctBlock, pool: Iterable[Transaction]) -> PartialBlock:
    """Slots for every transfer of the block: prefilled ones, then each short id matched
    to exactly one transfer of `pool` (none or two: left missing, to be asked for)."""
    key = short_id_key(message.header.hash, message.nonce)
    slots: list[Optional[Transaction]] = [None] * message.count
    prefilled = dict(message.prefilled)
    wanted: dict[bytes, list[int]] = {}
    order = iter(message.short_ids)
    for i in range(message.count):
        if i in prefilled:
            slots[i] = prefilled[i]
        else:
            wanted.setdefault(next(order), []).append(i)
    found: dict[bytes, Optional[Transaction]] = {}
    for candidate in pool:
        sid = short_id(key, candidate.hash)
        if sid in wanted:
            # Two different transfers with one short id: neither is trusted.
            found[sid] = candidate if sid not in found or found[sid] == candidate else None
    for sid, indexes in wanted.items():
        match = found.get(sid)
        if match is not None and len(indexes) == 1:
            slots[indexes[0]] = match
    return PartialBlock(message.header, slots)
