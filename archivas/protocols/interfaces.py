"""The seams between the peer layer and the chain: what `archivas/protocols/` may ask of
the node, declared here so that the peer layer never imports it (not even for types).
The node implements them; `Node.__init__` (and so `service.node_service`) wires them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence

from twisted.internet.defer import Deferred

from archivas.chain.block import Block, Header
from archivas.chain.params import NetworkParams

if TYPE_CHECKING:
    from archivas.protocols import wire
    from archivas.protocols.peer import PeerProtocol


class Tip(Protocol):
    @property
    def height(self) -> int: ...
    @property
    def hash(self) -> bytes: ...
    @property
    def weight(self) -> int: ...


class ChainView(Protocol):
    """Read-only: the network, the tip, the main chain."""

    @property
    def params(self) -> NetworkParams: ...
    @property
    def genesis_hash(self) -> bytes: ...
    def status(self) -> "wire.Status": ...
    def tip(self) -> Tip: ...
    def has_block(self, block_hash: bytes) -> bool: ...
    def main_hash(self, height: int) -> Optional[bytes]: ...
    def block(self, block_hash: bytes) -> Optional[Block]: ...
    def header(self, block_hash: bytes) -> Optional[Header]: ...
    def meta(self, block_hash: bytes) -> Any:
        """A stored block's hash, height, weight, timestamp, difficulty, segments and VDF
        iterations (or None)."""
    def ancestors(self, block_hash: bytes, count: int) -> Sequence[Any]:
        """Up to `count` stored blocks ending at `block_hash`, oldest first (as `meta`)."""
    def locator(self) -> tuple[bytes, ...]:
        """Main-chain hashes from the tip back, denser near it, genesis last."""


class BlockSink(Protocol):
    """Where blocks from peers go (validated there, in the node's pipeline)."""

    def receive_block(self, block: Block, source: Optional["PeerProtocol"] = None) -> Deferred[Any]: ...
    async def import_batch(self, blocks: list[Block],
                           sources: Optional[Sequence[Optional["PeerProtocol"]]] = None,
                           scores: Optional[Sequence[int]] = None,
                           checks: Optional[Sequence[Deferred[Any]]] = None) -> int: ...
    def check_body(self, block: Block, score: int) -> Deferred[Any]:
        """The body checks (signatures) of a block whose header sync took with `score`, in
        the verify pool: fires with the score or fails with BlockRejected. Started when the
        body arrives and given to import_batch (`checks`), so checking overlaps storing."""
    def verify_header(self, header: Header, parent: Header) -> Deferred[Any]:
        """A header's proofs (in threads); fires with its score or fails with BlockRejected."""
    @property
    def assume_valid(self) -> Optional[bytes]:
        """The assumed block hash in effect (chain/assumed.py), None when there is none."""
    def assume_header(self, header: Header) -> int:
        """A header found below the assumed block (protocols/assumevalid.py): its shape
        only, its proofs taken as valid and its body's signatures too; its score."""
    def relay_block(self, block: Block) -> None: ...
    def sync_ended(self) -> None:
        """A sync round is over (whatever its outcome): work it held back may go on."""


class PeerEvents(Protocol):
    """What the peer manager tells the node: chain messages (already gated and parsed),
    and peers becoming ready, changing or leaving."""

    def message_received(self, proto: "PeerProtocol", message: "wire.Message") -> None: ...
    def peer_updated(self, proto: "PeerProtocol") -> None: ...
    def peer_lost(self, proto: "PeerProtocol") -> None: ...
