"""A connection's states and, for each, the table of message types it accepts.

    handshaking --STATUS without "hello"--> seed      (a seed peer: the seven messages)
    handshaking --HELLO, valid HELLO_ACK--> ready     (an Archivas peer: + its extensions)
    any --disconnect--> closed                        (nothing)

Seed messages (types 1-7) are accepted in every open state, as the contract says. In
`handshaking`, HELLO is accepted once the peer's STATUS announced "hello", and HELLO_ACK
once its HELLO came. In `ready`, an extension is accepted when the peer listed its
capability, except that a block-relay-only connection carries no transfers or addresses.
Anything a state does not accept is dropped by the manager, unparsed and counted.
Entering `ready` cancels the handshake timer (manager.READY_TIMEOUT).
"""

from __future__ import annotations

import functools

from archivas.protocols import wire
from archivas.protocols.peer import PeerInfo, PeerState

SEED = frozenset({wire.Ping, wire.Pong, wire.NewBlock, wire.GetBlock, wire.BlockData, wire.GetStatus, wire.Status})
HANDSHAKE = frozenset({wire.Hello, wire.HelloAck})
EXTENSIONS = frozenset(cls for cls in wire.MESSAGES.values() if cls not in SEED and cls not in HANDSHAKE)
NOT_ON_BLOCK_RELAY = frozenset({wire.NewTransaction, wire.Peers, wire.GetPeers, wire.Inv, wire.Req, wire.Res})

HANDSHAKING, SEED_READY, READY, CLOSED = "handshaking", "seed", "ready", "closed"


def name(info: PeerInfo) -> str:
    if info.state is PeerState.CLOSED:
        return CLOSED
    if info.state is PeerState.CONNECTED:
        return HANDSHAKING
    return READY if info.node_id is not None else SEED_READY


def accepted(info: PeerInfo) -> frozenset[type[wire.Message]]:
    """The message types this connection may send us now."""
    if info.state is PeerState.READY and info.node_id is not None:  # (most messages: first)
        return _ready(info.capabilities, info.block_relay_only)
    state = name(info)
    if state == CLOSED:
        return frozenset()
    if state == HANDSHAKING:
        extra: set[type[wire.Message]] = set()
        if info.announced_hello and info.hello is None:
            extra.add(wire.Hello)
        if info.hello is not None:
            extra.add(wire.HelloAck)
        return SEED | extra
    if state == SEED_READY:
        return SEED
    return _ready(info.capabilities, info.block_relay_only)


@functools.lru_cache(maxsize=256)
def _ready(capabilities: frozenset[str], block_relay_only: bool) -> frozenset[type[wire.Message]]:
    """`ready`'s table for these capabilities (asked for every message: computed once)."""
    allowed = {cls for cls in EXTENSIONS if cls.CAPABILITY is not None and cls.CAPABILITY in capabilities}
    if block_relay_only:
        allowed -= NOT_ON_BLOCK_RELAY
    return SEED | allowed
