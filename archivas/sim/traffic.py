"""Transfers in the simulator: real signed transfers from funded accounts, at a steady rate.

`accounts(n)` are deterministic keys funded in the simulated network's genesis. Transfers
arrive as a Poisson process (`per_block` per block time on average), each submitted to a
random honest node as a wallet would (its RPC), from the next account whose previous
transfer that node has already seen mined: an account never has two transfers in flight,
so no node refuses one for a nonce gap.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from archivas.chain.keys import PrivateKey
from archivas.chain.params import COIN, NetworkParams
from archivas.chain.transactions import InvalidTransaction, Transaction, sign_transfer

FUNDS = 1_000 * COIN  # each account's genesis balance


def accounts(n: int) -> list[PrivateKey]:
    return [PrivateKey.from_secret(b"archivas-sim-account-%d" % i) for i in range(n)]


class Traffic:
    def __init__(self, clock: Any, rng: random.Random, params: NetworkParams, keys: Sequence[PrivateKey],
                 nodes: Sequence[Any], per_block: float, block_time: float) -> None:
        self.clock = clock
        self.rng = rng
        self.params = params
        self.keys = list(keys)
        self.nodes = list(nodes)
        self.rate = per_block / block_time if per_block > 0 else 0.0
        self.running = False
        self._next = 0
        self._nonce = [0] * len(self.keys)
        self.submitted: list[tuple[float, Transaction, Any]] = []  # (time, transfer, node it went to)
        self.skipped = 0

    def start(self) -> None:
        if self.rate > 0:
            self.running = True
            self.clock.callLater(self.rng.expovariate(self.rate), self._one)

    def stop(self) -> None:
        self.running = False

    def _one(self) -> None:
        if not self.running:
            return
        self.clock.callLater(self.rng.expovariate(self.rate), self._one)
        up = [n for n in self.nodes if n.up]
        if not up:
            return
        target = up[self.rng.randrange(len(up))]
        chain = target.node.chain
        for _ in range(len(self.keys)):
            i = self._next
            self._next = (self._next + 1) % len(self.keys)
            key = self.keys[i]
            if chain.account(key.address)[1] != self._nonce[i] or target.node.mempool.pending_count(key.address):
                continue  # its last transfer is not mined yet where we would send this one
            to = self.keys[(i + 1) % len(self.keys)].address
            tx = sign_transfer(key, self.params, to, 1 + self.rng.randrange(1000), self.params.min_fee,
                               self._nonce[i])
            try:
                target.node.submit_transaction(tx)
            except InvalidTransaction:
                self.skipped += 1
                return
            self._nonce[i] += 1
            self.submitted.append((self.clock.seconds(), tx, target))
            return
        self.skipped += 1
