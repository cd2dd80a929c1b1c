"""The three-node walk-through with real processes (fastnet): a transfer sent through B is
mined and seen with the same balances on A, B and C; B killed with SIGKILL catches up."""

import signal

import pytest_twisted

from archivas.chain.params import COIN
from tests.integration.conftest import TRANSFER
from tests.processes import run, wait_for


@pytest_twisted.ensureDeferred
async def test_transfer_through_b_gives_one_tip_and_same_balances(three_nodes, farmer, transfer):
    bob, nodes = transfer, three_nodes
    for node in nodes.all:
        assert (await node.get(f"/balance/{bob}"))["balance"] == TRANSFER, node.name

    async def same_state():
        tips = {(await n.tip() or {}).get("hash") for n in nodes.all}
        if len(tips) != 1:
            return False
        balances = {(await n.get(f"/balance/{farmer.address}"))["balance"] for n in nodes.all}
        return len(balances) == 1

    await wait_for(same_state, "one tip and the same balances on A, B and C")
    out, err, code = await run("archivas-wallet", "balance", bob, "--node", nodes.c.url)
    assert (code, out.strip()) == (0, f"{bob}: 1.50000000 RCHV (nonce 0)")


@pytest_twisted.ensureDeferred
async def test_b_killed_with_sigkill_catches_up(three_nodes, transfer):
    bob, a, b = transfer, three_nodes.a, three_nodes.b
    # B killed with SIGKILL while A adds 10 blocks; restarted on its database.
    b.kill(signal.SIGKILL)
    killed_at = (await a.tip())["height"]

    async def a_ten_more():
        return (await a.tip())["height"] >= killed_at + 10

    await wait_for(a_ten_more, "A ten blocks further")
    b.start()

    async def b_caught_up():
        tb, ta = await b.tip(), await a.tip()
        return tb is not None and tb["height"] >= ta["height"] - 1 and tb["height"] >= killed_at + 10

    await wait_for(b_caught_up, "B caught up after its restart")
    with open(b.log) as f:
        assert "Synced to tip" in f.read()
    assert (await b.get(f"/balance/{bob}"))["balance"] == int(1.5 * COIN)
