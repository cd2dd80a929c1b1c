"""Nodes that do not play fair, for the simulator.

- Silent: accepts connections and never writes a byte (a black hole holding slots).
- Hostile: a real node (so it completes the handshake and proves its key) that lies in
  STATUS (a far higher tip and weight than it has), announces blocks and transfers it never
  serves, serves nothing asked of it, and floods its peers with made-up addresses.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import protocol
from twisted.internet.task import LoopingCall

from archivas.node import Node
from archivas.protocols import wire

LIE_EVERY = 5.0  # seconds between a hostile node's bogus announcements
ADDRESSES_EVERY = 10.0  # seconds between its address floods (peers take 0.1/s, bursts of 1,000)


class _Silent(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass


class SilentFactory(protocol.Factory):
    protocol = _Silent


class HostileNode(Node):
    def __init__(self, *args: Any, rng: random.Random, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rng = rng
        self.lies = 0
        for cls in (wire.GetBlock, wire.GetBlocks, wire.GetHeaders, wire.GetBodies, wire.GetCmpct,
                    wire.GetBlockTxn, wire.Req, wire.GetHashes):
            self._handlers[cls] = lambda proto, message: None  # asked: never answers
        self._lying = LoopingCall(self._lie)
        self._lying.clock = self.reactor
        self._flooding = LoopingCall(self._flood)
        self._flooding.clock = self.reactor

    def start(self) -> None:
        super().start()
        self._lying.start(LIE_EVERY, now=False).addErrback(lambda f: None)
        self._flooding.start(ADDRESSES_EVERY, now=False).addErrback(lambda f: None)

    def stop(self) -> Any:
        for loop in (self._lying, self._flooding):
            if loop.running:
                loop.stop()
        return super().stop()

    def status(self) -> wire.Status:
        real = super().status()
        return wire.Status(
            height=real.height + 1000, difficulty=real.difficulty, tip_hash=self.rng.randbytes(32),
            weight=(real.weight or 0) * 10 + 10_000, genesis_hash=real.genesis_hash, network=real.network,
            version=real.version, capabilities=real.capabilities,
        )

    def _lie(self) -> None:
        height = self.chain.height + 1
        fake = wire.NewBlock(height, self.rng.randbytes(32))
        inv = wire.Inv(tuple(self.rng.randbytes(wire.INV_ID_BYTES) for _ in range(8)))
        for proto in self.peers.ready_peers():
            self.lies += 1
            proto.send(fake)
            if proto.info is not None and proto.info.can("inv") and not proto.info.block_relay_only:
                proto.send(inv)

    def _flood(self) -> None:
        addresses = tuple(f"{self.rng.randrange(1, 224)}.{self.rng.randrange(256)}.{self.rng.randrange(256)}."
                          f"{self.rng.randrange(1, 255)}:9090" for _ in range(wire.MAX_PEERS_LISTED))
        for proto in self.peers.ready_peers():
            if proto.info is not None and proto.info.can("peers") and not proto.info.block_relay_only:
                proto.send(wire.Peers(addresses))
