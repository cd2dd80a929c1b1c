"""Property tests over random block trees: supply, non-negative balances, exact reorgs.

Hypothesis draws a sequence of branches (each on any block built so far, of random
length, farmer, timestamp jitter and transfers); every block goes to one chain, which
reorganises whenever a branch becomes heaviest. After each branch the chain's state must
equal the state from replaying its winning branch from genesis.
"""

import shutil
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from archivas.chain.blockchain import Chain
from archivas.chain.ledger import MemoryState, StateDelta, apply_block_body
from archivas.chain.params import COIN
from archivas.chain.transactions import InvalidTransaction
from tests.common import ALICE, BOB, CAROL, PARAMS, builder, now_ms

KEYS = [ALICE, BOB, CAROL]
GENESIS_SUPPLY = sum(v for _, v in PARAMS.genesis_allocation)

transfer = st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(1, 400 * COIN))
branch = st.fixed_dictionaries({
    "parent": st.integers(0, 10_000),  # index into the blocks built so far (mod)
    "length": st.integers(1, 4),
    "farmer": st.integers(0, 1),
    "jitter": st.integers(-150, 150),
    "transfers": st.lists(transfer, max_size=4),
})


def replay(blocks_by_hash, tip):
    """State after the branch ending at `tip`, replayed from genesis in memory."""
    path = []
    block = tip
    while block.height > 0:
        path.append(block)
        block = blocks_by_hash[block.header.parent_hash]
    state = MemoryState({a: (v, 0) for a, v in PARAMS.genesis_allocation})
    for block in reversed(path):
        delta = StateDelta(state)
        apply_block_body(delta, block.transactions, block.header.reward_address, block.header.reward)
        state.commit(delta)
    return state


class ChainProperties(unittest.TestCase):
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(branch, min_size=1, max_size=6))
    def test_supply_balances_and_reorgs(self, branches):
        b = builder()
        directory = tempfile.mkdtemp()
        chain = Chain.open(directory, PARAMS)
        try:
            built = [b.genesis]
            for spec in branches:
                parent = built[spec["parent"] % len(built)]
                for _ in range(spec["length"]):
                    state = replay(b.blocks, parent)
                    delta = StateDelta(state)
                    txs = []
                    for s, r, amount in spec["transfers"]:
                        tx = b.transfer(KEYS[s], KEYS[r].address, amount, delta.account(KEYS[s].address)[1])
                        try:
                            delta.apply_transaction(tx)
                        except InvalidTransaction:
                            continue  # keep blocks valid: skip what this branch cannot afford
                        txs.append(tx)
                    parent = b.make_block(
                        parent, txs, farmer=spec["farmer"],
                        timestamp=parent.header.timestamp + PARAMS.target_block_time_ms + spec["jitter"],
                    )
                    built.append(parent)
                    chain.add_block(parent, now_ms())
                self.check(chain, b)
        finally:
            chain.close()
            shutil.rmtree(directory)

    def check(self, chain, b):
        accounts = chain.accounts()
        tip_block = chain.block(chain.tip.hash)
        self.assertEqual(accounts, replay(b.blocks, tip_block).accounts)
        self.assertEqual(
            sum(balance for balance, _ in accounts.values()),
            GENESIS_SUPPLY + chain.height * PARAMS.block_reward,
        )
        self.assertTrue(all(balance >= 0 for balance, _ in accounts.values()))
