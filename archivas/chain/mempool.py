"""The mempool: pending transfers, bounded, fee-ordered and nonce-aware.

Each sender's pending transfers form a gap-free run of nonces starting at the account's
nonce, all affordable together. Blocks take the highest fees first, in nonce order per
sender. When full, the lowest-fee transfer (with the later ones of its sender, which then
could not run) makes room for a better one. After blocks connect or disconnect, the pool
drops what they made invalid and takes back what a reorganisation returned.

Making room is logarithmic: a heap keyed (fee, -nonce, admission order) finds the victim
the old full scan found (lowest fee, then highest nonce, then the earliest admitted),
skipping the incoming sender's own transfers (at most `max_per_sender`, pushed back).
Removal from the heap is lazy; it is rebuilt from the live entries once the stale ones
outnumber the live ones twice over (`COMPACT_SLACK` more for a nearly empty pool), so it
holds at most 3x the pool plus that slack.

With a `transfers` cache (verifycache.VerifiedTransfers) a signature is verified through
it, so a transfer admitted here is remembered as verified and the block that later carries
it does not verify it again.
"""

from __future__ import annotations

import heapq
from typing import Callable, Iterable, Optional, Protocol

from archivas.chain.ledger import Account
from archivas.chain.params import NetworkParams
from archivas.chain.transactions import InvalidTransaction, Transaction, check_stateless, rchv
from archivas.chain.verifycache import VerifiedTransfers

AccountLookup = Callable[[str], Account]


class HasTransactions(Protocol):
    @property
    def transactions(self) -> tuple[Transaction, ...]: ...

MAX_TRANSACTIONS = 5000
MAX_PER_SENDER = 64
COMPACT_SLACK = 64  # stale heap entries always tolerated, so a tiny pool does not rebuild on every drop

_HeapEntry = tuple[int, int, int, Transaction]  # (fee, -nonce, admission sequence, transfer)

MEMPOOL_REASONS = (
    "duplicate",  # already pending
    "nonce_gap",  # a nonce beyond the sender's next free one
    "replacement_fee_too_low",  # same sender and nonce, fee not higher
    "sender_limit",  # MAX_PER_SENDER pending already
    "mempool_full",  # full of transfers paying at least as much
)


class Mempool:
    def __init__(
        self,
        params: NetworkParams,
        max_transactions: int = MAX_TRANSACTIONS,
        max_per_sender: int = MAX_PER_SENDER,
    ) -> None:
        self.params = params
        self.max_transactions = max_transactions
        self.max_per_sender = max_per_sender
        self._by_hash: dict[bytes, Transaction] = {}
        self._by_sender: dict[str, dict[int, Transaction]] = {}
        # Eviction order. An entry is live while _seq holds its sequence for its hash; a
        # transfer dropped (and perhaps admitted again later, with a new sequence) leaves
        # a stale entry behind, discarded when it reaches the top or at compaction.
        self._heap: list[_HeapEntry] = []
        self._seq: dict[bytes, int] = {}
        self._next_seq = 0

    def __len__(self) -> int:
        return len(self._by_hash)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._by_hash

    def get(self, tx_hash: bytes) -> Optional[Transaction]:
        return self._by_hash.get(tx_hash)

    def pending_count(self, sender: str) -> int:
        return len(self._by_sender.get(sender, ()))

    def transactions(self) -> list[Transaction]:
        return list(self._by_hash.values())

    def add(self, tx: Transaction, lookup: AccountLookup, transfers: Optional[VerifiedTransfers] = None) -> None:
        """Admit `tx` or raise InvalidTransaction with a reason saying why not. The
        signature is verified through `transfers` when given (and remembered there)."""
        if tx.hash in self._by_hash:
            raise InvalidTransaction("duplicate", "transaction already pending")
        if transfers is None:
            check_stateless(tx, self.params)
        else:
            check_stateless(tx, self.params, verify_signature=False)
            if not transfers.check(tx):
                raise InvalidTransaction("bad_signature", "signature does not verify")
        balance, nonce = lookup(tx.sender)
        pending = self._by_sender.get(tx.sender, {})
        if tx.nonce < nonce:
            raise InvalidTransaction("bad_nonce", f"nonce {tx.nonce} already used (account at {nonce})")
        next_free = nonce + len(pending)
        if tx.nonce > next_free:
            raise InvalidTransaction("nonce_gap", f"nonce {tx.nonce}, next acceptable is {next_free}")
        replaced = pending.get(tx.nonce)
        if replaced is not None and tx.fee <= replaced.fee:
            raise InvalidTransaction(
                "replacement_fee_too_low", f"fee {rchv(tx.fee)} does not beat the pending fee {rchv(replaced.fee)}"
            )
        if replaced is None and len(pending) >= self.max_per_sender:
            raise InvalidTransaction("sender_limit", f"{self.max_per_sender} transfers already pending")
        spent = sum(t.amount + t.fee for n, t in pending.items() if n < tx.nonce)
        if spent + tx.amount + tx.fee > balance:
            raise InvalidTransaction(
                "insufficient_balance",
                f"needs {rchv(tx.amount + tx.fee)} after {rchv(spent)} pending, balance is {rchv(balance)}",
            )
        if replaced is None and len(self._by_hash) >= self.max_transactions:
            self._make_room(tx)
        if replaced is not None:
            self._forget(replaced)
        self._by_sender.setdefault(tx.sender, {})[tx.nonce] = tx
        self._by_hash[tx.hash] = tx
        seq = self._next_seq
        self._next_seq += 1
        self._seq[tx.hash] = seq
        heapq.heappush(self._heap, (tx.fee, -tx.nonce, seq, tx))
        if replaced is not None:
            self._revalidate_sender(tx.sender, lookup)
        self._maybe_compact()
        tx.encode()  # its canonical JSON made now, not when a block that carries it is encoded (Block.encode)

    def _make_room(self, incoming: Transaction) -> None:
        # Never the incoming sender's own earlier transfers: that would leave a gap. They
        # are set aside while looking (at most max_per_sender of them) and pushed back.
        heap = self._heap
        live = self._seq
        sender = incoming.sender
        skipped: list[_HeapEntry] = []
        victim: Optional[Transaction] = None
        while heap:
            entry = heap[0]
            tx = entry[3]
            if live.get(tx.hash) != entry[2]:
                heapq.heappop(heap)  # stale: dropped since it was pushed
            elif tx.sender == sender:
                skipped.append(heapq.heappop(heap))
            else:
                victim = tx
                break
        evict = victim is not None and victim.fee < incoming.fee
        if evict:
            heapq.heappop(heap)  # the victim's own entry, about to go stale (before the skipped return)
        for entry in skipped:
            heapq.heappush(heap, entry)
        if victim is None or not evict:
            raise InvalidTransaction("mempool_full", f"full, and every pending fee is >= {incoming.fee}")
        self._drop_from(victim.sender, victim.nonce)

    def _forget(self, tx: Transaction) -> None:
        """Out of the hash index; its heap entry goes stale."""
        del self._by_hash[tx.hash]
        del self._seq[tx.hash]

    def _maybe_compact(self) -> None:
        """Rebuild the heap from the live entries once stale ones exceed twice the live."""
        live = len(self._by_hash)
        if len(self._heap) - live > 2 * live + COMPACT_SLACK:
            self._heap = [(t.fee, -t.nonce, self._seq[h], t) for h, t in self._by_hash.items()]
            heapq.heapify(self._heap)

    def heap_size(self) -> int:
        """Entries in the eviction heap, stale ones included (for tests of its bound)."""
        return len(self._heap)

    def _drop_from(self, sender: str, first_nonce: int) -> None:
        """Remove the sender's transfers from `first_nonce` on (they could no longer run)."""
        pending = self._by_sender.get(sender, {})
        for n in [n for n in pending if n >= first_nonce]:
            self._forget(pending.pop(n))
        if not pending:
            self._by_sender.pop(sender, None)

    def _revalidate_sender(self, sender: str, lookup: AccountLookup) -> None:
        """Keep the longest affordable gap-free run from the account's nonce; drop the rest."""
        pending = self._by_sender.get(sender)
        if not pending:
            return
        balance, nonce = lookup(sender)
        for n in [n for n in pending if n < nonce]:
            self._forget(pending.pop(n))
        spent = 0
        expected = nonce
        for n in sorted(pending):
            tx = pending[n]
            spent += tx.amount + tx.fee
            if n != expected or spent > balance:
                self._drop_from(sender, n)
                return
            expected += 1
        if not pending:
            self._by_sender.pop(sender, None)

    def select(self, max_count: int) -> list[Transaction]:
        """Up to `max_count` transfers for a block: highest fee first, nonces in order."""
        heap: list[tuple[int, bytes, str, int]] = []
        for sender, pending in self._by_sender.items():
            first = min(pending)
            heapq.heappush(heap, (-pending[first].fee, pending[first].hash, sender, first))
        out: list[Transaction] = []
        while heap and len(out) < max_count:
            _, _, sender, nonce = heapq.heappop(heap)
            pending = self._by_sender[sender]
            out.append(pending[nonce])
            nxt = pending.get(nonce + 1)
            if nxt is not None:
                heapq.heappush(heap, (-nxt.fee, nxt.hash, sender, nonce + 1))
        return out

    def update_for_blocks(
        self,
        connected: Iterable[HasTransactions],
        disconnected: Iterable[HasTransactions],
        lookup: AccountLookup,
        transfers: Optional[VerifiedTransfers] = None,
    ) -> None:
        """After the tip moved: drop what the connected blocks included or invalidated and
        take back the disconnected blocks' transfers that are still valid (their signatures
        checked through `transfers` when given)."""
        disconnected = list(disconnected)
        touched: set[str] = set()
        for block in connected:
            for tx in block.transactions:
                touched.add(tx.sender)
                old = self._by_sender.get(tx.sender, {}).get(tx.nonce)
                if old is not None:
                    self._drop_one(old)
        # Connecting only spends from the senders it names; rolling back can also take
        # away what other senders had received, so a reorganisation checks everyone.
        for sender in set(self._by_sender) if disconnected else touched:
            self._revalidate_sender(sender, lookup)
        returned = [tx for block in disconnected for tx in block.transactions]
        for tx in sorted(returned, key=lambda t: (t.sender, t.nonce)):
            try:
                self.add(tx, lookup, transfers)
            except InvalidTransaction:
                continue
        self._maybe_compact()

    def _drop_one(self, tx: Transaction) -> None:
        pending = self._by_sender[tx.sender]
        del pending[tx.nonce]
        self._forget(tx)
        if not pending:
            del self._by_sender[tx.sender]
