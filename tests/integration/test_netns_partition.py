"""A network partition between real hosts (docs/testing-netns.md): five `archivas-node`
processes (fastnet), each in its own Linux network namespace with its own address
(10.231.0.1-5), in a full mesh over a switched LAN. Hosts 0-2 are on the core switch,
hosts 3-4 on a second switch joined to the core by one uplink.

Hosts 0 and 1 run a timelord and farm a plot each (the heavier side); host 3 runs its own
timelord and farms one plot, host 4 only follows it (the lighter side). The uplink goes
down (`ip link set core-sw1 down`) while both sides farm; transfers are sent on the
heavier side through host 1, and one on the lighter side through host 4. When every node
has dropped its peers on the other side, both sides are several blocks past the cut and the
heavier one leads, the uplink comes back. Within a deadline the five nodes agree on one
tip, on the chain that was heavier (its tip at the restore is on it, the lighter side's is
not), every transfer host 1 acknowledged is in a block of that chain, and so is the
lighter side's (its sender was funded before the cut: after the reorganisation it goes
back to the mempool and is mined again), with the recipients' balances the same on all five.

Needs root (network namespaces need CAP_NET_ADMIN): skipped otherwise; as root any
failure to build the namespaces fails the test, never skips it.
"""

import os
import shutil
import signal
import subprocess
import time
import types

import pytest
import pytest_twisted
from twisted.internet import defer, utils

from archivas.chain.block import Block
from archivas.chain.keys import PrivateKey
from archivas.chain.params import COIN
from archivas.protocols.manager import PEER_TIMEOUT, PING_INTERVAL
from archivas.testing.chainbuilder import farmer_key, shared_plots
from tests.integration.conftest import cleanups
from tests.integration.netns import Network, require_root_and_ip
from tests.processes import BIN, wait_for

RPC_PORT, P2P_PORT = 8080, 9090  # the same on every host: each has its own loopback and address
SWITCH_OF = (0, 0, 0, 1, 1)  # host -> switch; switch 1's uplink is the cut
HEAVY, LIGHT = (0, 1, 2), (3, 4)
FARMS = {0: 0, 1: 2, 3: 1}  # host -> test farmer whose key and shared plot it farms
# Two timelords on the heavier side: at fastnet's difficulty floor nearly every plot wins at
# every signage point, so the pace of blocks (and of weight) is set by how soon the next VDF
# segment comes, not by space (docs/testing-netns.md).
TIMELORDS = (0, 1, 3)
HEAVY_SENDER, HEAVY_VIA = 0, 1  # farmer 0 (host 0) pays, through host 1's RPC and wallet
LIGHT_SENDER, LIGHT_VIA = 3, 4  # farmer 1 (host 3) pays, through host 4
BEYOND = 5  # "several blocks": each side this far past the cut before the restore
LEAD = 5  # and the heavier side this much weight ahead of the lighter (5 blocks at difficulty 1)
AMOUNT, FEE = "1.5", "0.001"
AMOUNT_UNITS = int(1.5 * COIN)
FUNDED = 10 * COIN  # each sender has this much on the common chain before the cut


class Host:
    """`archivas-node` in host i: RPC on the host's loopback, P2P on its LAN address, the
    other four hosts as --peers."""

    def __init__(self, net, i, directory, extra=()):
        self.net, self.i, self.name = net, i, f"host{i}"
        self.log = os.path.join(directory, f"host{i}.log")
        peers = ",".join(f"{a}:{P2P_PORT}" for j, a in enumerate(net.addresses) if j != i)
        self.args = ["--network", "fastnet", "--db", os.path.join(directory, f"host{i}-data"),
                     "--rpc-port", f"127.0.0.1:{RPC_PORT}", "--p2p-port", f"{net.addresses[i]}:{P2P_PORT}",
                     "--peers", peers, *extra]
        self.proc = None

    def start(self):
        with open(self.log, "ab") as log:
            self.proc = self.net.popen(self.i, [str(BIN / "archivas-node"), *self.args],
                                       stdout=log, stderr=subprocess.STDOUT)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    async def get(self, path):
        """(status, JSON) from the node's RPC, asked from inside its namespace."""
        return await self.net.http(self.i, RPC_PORT, path)

    async def ok(self, path):
        status, doc = await self.get(path)
        assert status == 200, f"{self.name} GET {path}: {status} {doc}"
        return doc

    async def status(self):
        try:
            status, doc = await self.get("/status")
        except Exception:
            return None
        return doc if status == 200 else None

    async def block_hash(self, height):
        return Block.from_json(await self.ok(f"/block/{height}")).hash.hex()


async def statuses(hosts):
    return await defer.gatherResults([defer.ensureDeferred(h.status()) for h in hosts])


def tail(path, lines=8):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"({e})"


async def wait(lan, check, what, deadline):
    """wait_for, and on a timeout each node's status and the end of its log."""
    try:
        await wait_for(check, what, deadline)
    except AssertionError as e:
        report = [str(e)]
        for host, s in zip(lan.hosts, await statuses(lan.hosts)):
            brief = s and {k: s.get(k) for k in ("height", "tipHash", "weight", "peers", "syncing", "mempool")}
            exited = "" if host.proc.poll() is None else f", exited with {host.proc.returncode}"
            report.append(f"--- {host.name} ({host.net.addresses[host.i]}{exited}): {brief}\n{tail(host.log)}")
        raise AssertionError("\n".join(report)) from None


@pytest.fixture
def lan(request, tmp_path):
    """The five hosts, their namespaces and nodes started (not yet waited for); all of it
    is removed at the end, also when the test or this fixture fails half way."""
    require_root_and_ip()
    net = Network(len(SWITCH_OF), switch_of=SWITCH_OF)
    request.addfinalizer(net.cleanup)  # first in, last out: after the nodes are killed
    net.create()  # NetnsError (an AssertionError with the command's error) fails the test
    plots = shared_plots(max(FARMS.values()) + 1)  # [(farmer_key(j), its plot)], made once a process
    hosts = []
    for i in range(len(SWITCH_OF)):
        extra = []
        if i in TIMELORDS:
            extra.append("--timelord")
        if i in FARMS:
            key, plot = plots[FARMS[i]]
            plot_dir = tmp_path / f"host{i}-plots"
            plot_dir.mkdir()
            os.symlink(plot.path, plot_dir / plot.path.name)
            key.save(str(tmp_path / f"host{i}-farmer.key"))
            extra += ["--farm", str(plot_dir), "--farmer-key", str(tmp_path / f"host{i}-farmer.key")]
        hosts.append(Host(net, i, str(tmp_path), extra))
    for host in hosts:
        cleanups(request).addCleanup(host.kill)
        host.start()
    return types.SimpleNamespace(net=net, hosts=hosts, dir=tmp_path)


def farmer_of(host):
    return farmer_key(FARMS[host])


async def send(lan, sender, via, to):
    """The wallet CLI in host `via`, paying from the farmer key of host `sender`:
    (acknowledged, tx hash or None, output)."""
    ip, *prefix = lan.net.exec_prefix(via)
    argv = [*prefix, str(BIN / "archivas-wallet"), "send", "--key", str(lan.dir / f"host{sender}-farmer.key"),
            "--to", to, "--amount", AMOUNT, "--fee", FEE, "--node", f"http://127.0.0.1:{RPC_PORT}"]
    out, err, code = await utils.getProcessOutputAndValue(shutil.which(ip), argv, env=os.environ)
    out, err = out.decode(), err.decode()
    last = out.strip().splitlines()[-1] if out.strip() else ""
    acknowledged = code == 0 and len(last) == 64
    return acknowledged, (last if acknowledged else None), out + err


async def confirmed_on(hosts, transfers):
    """Every transfer confirmed (in a block of the main chain) on every one of the hosts."""
    for host in hosts:
        for tx in transfers:
            status, doc = await host.get(f"/tx/{tx}")
            if status != 200 or doc["status"] != "confirmed":
                return False
    return True


def peer_hosts(peers, net):
    """The hosts (indexes) a /peers answer is connected to."""
    return {net.addresses.index(p["address"].rsplit(":", 1)[0]) for p in peers
            if p["address"].rsplit(":", 1)[0] in net.addresses}


async def connected(hosts, net):
    """For each host, the hosts it has a connection with (none if its RPC does not answer)."""
    async def of(host):
        try:
            status, doc = await host.get("/peers")
        except Exception:
            return set()
        return peer_hosts(doc, net) if status == 200 else set()

    return await defer.gatherResults([defer.ensureDeferred(of(h)) for h in hosts])


@pytest_twisted.ensureDeferred
async def test_partition_heals_onto_the_heavier_chain_with_its_transfers(lan):
    hosts, net = lan.hosts, lan.net
    side = {i: (HEAVY if i in HEAVY else LIGHT) for i in range(len(hosts))}
    started = time.monotonic()
    marks = {}

    # 1. The mesh is up and farming in the namespaces: every node connected to the other
    #    four, one tip everywhere, and both senders have earned enough for their transfers.
    async def mesh_on_one_tip():
        st = await statuses(hosts)
        if not all(s and s["height"] >= 3 for s in st) or len({s["tipHash"] for s in st}) != 1:
            return False
        if any(len(c) != len(hosts) - 1 for c in await connected(hosts, net)):
            return False
        for sender in (HEAVY_SENDER, LIGHT_SENDER):
            status, account = await hosts[0].get(f"/balance/{farmer_of(sender).address}")
            if status != 200 or account["balance"] < FUNDED:
                return False
        return True

    await wait(lan, mesh_on_one_tip, "five nodes in a full mesh on one tip, both senders funded", 60)
    marks["mesh up"] = time.monotonic() - started

    # 2. The cut: switch 1's uplink down. Hosts 3 and 4 still reach each other.
    net.uplink_down(1)
    cut_at = time.monotonic()
    assert net.link_state("core-sw1") == "DOWN"
    cut_height = max(s["height"] for s in await statuses(hosts) if s)

    # 3. Transfers while both sides farm: three on the heavier side through host 1, one on
    #    the lighter side through host 4. Those acknowledged (a hash printed) are noted.
    acknowledged, light_acknowledged, refused = {}, {}, []
    plan = [(HEAVY_SENDER, HEAVY_VIA, acknowledged)] * 3 + [(LIGHT_SENDER, LIGHT_VIA, light_acknowledged)]
    for sender, via, noted in plan:
        to = PrivateKey.generate().address
        ok, tx, output = await send(lan, sender, via, to)
        if ok:
            noted[tx] = to
        else:
            refused.append((via, to, output))
    assert acknowledged, f"host {HEAVY_VIA} acknowledged none of the transfers: {refused}"

    # 4. The partition noticed: a peer silent for PEER_TIMEOUT is dropped, so each node ends
    #    up connected only to its own side (and must find the others again later).
    async def sides_apart():
        return all(c <= set(side[i]) - {i} for i, c in enumerate(await connected(hosts, net)))

    await wait(lan, sides_apart, "every node connected only to its own side",
               PEER_TIMEOUT + PING_INTERVAL + 20)
    marks["peers dropped"] = time.monotonic() - cut_at

    # 5. Both sides farmed on their own well past the cut; the heavier side confirmed its
    #    transfers and leads in weight.
    async def both_sides_beyond():
        st = await statuses(hosts)
        if not all(s and s["height"] >= cut_height + BEYOND for s in st):
            return False
        if st[HEAVY[0]]["weight"] < st[LIGHT[0]]["weight"] + LEAD:
            return False
        return await confirmed_on([hosts[HEAVY_VIA]], acknowledged)

    await wait(lan, both_sides_beyond, f"both sides {BEYOND} blocks past the cut at {cut_height}, the "
               f"heavier {LEAD} ahead in weight and its transfers confirmed on it", 60)
    # One more, sent last: most likely still in host 1's mempool when the uplink comes back.
    late_to = PrivateKey.generate().address
    ok, late_tx, output = await send(lan, HEAVY_SENDER, HEAVY_VIA, late_to)
    if ok:
        acknowledged[late_tx] = late_to
    else:
        refused.append((HEAVY_VIA, late_to, output))

    st = await statuses(hosts)
    assert all(st), "a node stopped answering during the cut"
    for i in HEAVY[1:] + LIGHT[1:]:  # each side on its own chain, the other nodes with it or close
        assert abs(st[i]["height"] - st[side[i][0]]["height"]) <= 3, (i, st[i], st[side[i][0]])
    heavy_tip, light_tip = st[HEAVY[0]], st[LIGHT[0]]
    assert heavy_tip["weight"] > light_tip["weight"], (heavy_tip, light_tip)
    # The sides really split: different blocks just past the cut.
    heavy_next = await hosts[HEAVY[0]].block_hash(cut_height + 1)
    light_next = await hosts[LIGHT[0]].block_hash(cut_height + 1)
    assert heavy_next != light_next, "the two sides have the same block after the cut: no partition"
    marks["cut"] = time.monotonic() - cut_at

    # 6. The uplink back up: one tip on the heavier chain, every acknowledged transfer in it.
    net.uplink_up(1)
    restored_at = time.monotonic()
    every = {**acknowledged, **light_acknowledged}

    async def healed():
        st = await statuses(hosts)
        if not all(st) or len({s["tipHash"] for s in st}) != 1:
            return False
        if st[0]["height"] < heavy_tip["height"]:
            return False
        marks.setdefault("one tip", time.monotonic() - restored_at)
        for host in hosts:
            if await host.block_hash(heavy_tip["height"]) != heavy_tip["tipHash"]:
                return False
        return await confirmed_on(hosts, every)

    await wait(lan, healed, "one tip on every node, on the heavier chain, with every acknowledged transfer", 60)
    marks["healed"] = time.monotonic() - restored_at

    for host in hosts:
        assert await host.block_hash(heavy_tip["height"]) == heavy_tip["tipHash"], host.name
        assert await host.block_hash(light_tip["height"]) != light_tip["tipHash"], host.name
        for tx, to in every.items():
            doc = await host.ok(f"/tx/{tx}")
            assert doc["status"] == "confirmed" and doc["to"] == to, (host.name, doc)
            assert await host.block_hash(doc["blockHeight"]) == doc["blockHash"], (host.name, doc)
            assert (await host.ok(f"/balance/{to}"))["balance"] == AMOUNT_UNITS, (host.name, to)

    # The sides meet again: each node reconnected to at least one node of the other side.
    async def sides_rejoined():
        return all(c - set(side[i]) for i, c in enumerate(await connected(hosts, net)))

    await wait(lan, sides_rejoined, "every node connected to the other side again", 30)
    marks["rejoined"] = time.monotonic() - restored_at

    tip = await hosts[0].ok("/chainTip")
    first = Block.from_json(await hosts[0].ok("/block/1")).header.timestamp
    last = Block.from_json(await hosts[0].ok(f"/block/{tip['height']}")).header.timestamp
    print(f"netns partition: cut at height {cut_height}; heavier side at {heavy_tip['height']} "
          f"(weight {heavy_tip['weight']}), lighter at {light_tip['height']} (weight {light_tip['weight']}); "
          f"transfers acknowledged: {len(acknowledged)} heavier side, {len(light_acknowledged)} lighter; "
          f"refused {refused}; mean block time {(last - first) / max(1, tip['height'] - 1):.0f} ms "
          f"over {tip['height']} blocks; " + ", ".join(f"{k} {v:.1f} s" for k, v in marks.items())
          + f"; total {time.monotonic() - started:.1f} s; stale namespaces removed first: {net.stale_removed}")
