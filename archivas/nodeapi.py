"""What clients may ask of a node, as JSON-ready values: the one surface behind the RPC,
the embedded timelord and farmer, and (over HTTP) the standalone programs and wallet.

Client mistakes raise ApiError with a 4xx status and a message; nothing a client sends
reaches a 500.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer

from archivas import __version__
from archivas.chain import keys, vdf
from archivas.chain.block import Block, Header, ProofOfSpace, tx_root
from archivas.chain.blockchain import ADDED_SIDE, ADDED_TIP, KNOWN
from archivas.chain.consensus import BlockRejected
from archivas.chain.encoding import DecodeError, hex_field
from archivas.chain.transactions import InvalidTransaction, Transaction
from archivas.node import Node
from archivas.protocols.addrman import parse_address


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_height(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ApiError(400, f"height must be a non-negative integer, not {text[:30]!r}")
    return int(text)


BAN_SECONDS = 24 * 3600


class LocalNodeAPI:
    def __init__(self, node: Node) -> None:
        self.node = node

    @property
    def chain(self):  # type: ignore[no-untyped-def]
        return self.node.chain

    def healthz(self) -> dict[str, Any]:
        return {"ok": True, "height": self.chain.height, "network": self.node.params.name}

    def status(self) -> dict[str, Any]:
        tip = self.chain.tip
        return {
            "height": tip.height,
            "tipHash": tip.hash.hex(),
            "difficulty": tip.difficulty,
            "weight": tip.weight,
            "peers": len(self.node.peers.ready_peers()),
            "peersIn": self.node.peers.count("inbound"),
            "peersOut": self.node.peers.count("outbound"),
            "syncing": self.node.sync.active,
            "genesisHash": self.node.genesis_hash.hex(),
            "network": self.node.params.name,
            "version": __version__,
            "mempool": len(self.node.mempool),
        }

    def chain_tip(self) -> dict[str, Any]:
        tip = self.chain.tip
        return {"height": tip.height, "hash": tip.hash.hex(), "difficulty": tip.difficulty}

    def balance(self, address: str) -> dict[str, Any]:
        try:
            keys.decode_address(address)
        except ValueError as e:
            raise ApiError(400, f"malformed address: {e}") from None
        balance, nonce = self.chain.account(address)
        pending = self.node.mempool.pending_count(address)
        return {"address": address, "balance": balance, "nonce": nonce, "pendingNonce": nonce + pending}

    def block(self, height: int) -> dict[str, Any]:
        block = self.chain.block_at(height) if height <= self.chain.height else None
        if block is None:
            raise ApiError(404, f"no block at height {height} (tip is {self.chain.height})")
        return block.to_json()

    def peers(self) -> list[dict[str, Any]]:
        out = []
        for proto in self.node.peers.peers:
            info = proto.info
            if info is None:
                continue
            out.append({
                "address": info.address,
                "direction": info.direction,
                "slot": info.slot,
                "state": info.state.value,
                "height": info.height,
                "weight": info.weight,
                "tipHash": info.tip_hash.hex() if info.tip_hash else None,
                "lastSeen": info.last_seen,
                "connectedSince": info.connected_at,
                "nodeId": info.node_id.hex() if info.node_id else None,
                "listenAddress": info.listen_address,
                "pingMs": round(info.last_ping * 1000, 3) if info.last_ping is not None else None,
                "misbehaviour": info.misbehaviour,
                "messagesIn": dict(info.messages_in),
                "bytesIn": dict(info.bytes_in),
                "messagesOut": dict(info.messages_out),
                "bytesOut": dict(info.bytes_out),
            })
        return out

    # operator calls (the RPC asks for the admin token before any of these)

    def bans(self) -> list[dict[str, Any]]:
        return self.node.peers.bans.listing()

    def ban(self, doc: Any) -> dict[str, Any]:
        """{"address": IP or CIDR, "seconds": N (default a day), "reason": text}: the ban is
        stored, survives a restart, and drops the connections it covers."""
        if not isinstance(doc, dict) or not isinstance(doc.get("address"), str):
            raise ApiError(400, 'body must be {"address": "1.2.3.4" or "1.2.0.0/16", "seconds": N}')
        seconds = doc.get("seconds", BAN_SECONDS)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 10 * 365 * 86400:
            raise ApiError(400, "seconds must be a number from 1 to ten years")
        reason = doc.get("reason", "operator")
        if not isinstance(reason, str) or len(reason) > 200:
            raise ApiError(400, "reason must be a short string")
        try:
            subnet = self.node.peers.bans.ban(doc["address"], float(seconds), reason)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        dropped = 0
        for proto in list(self.node.peers.peers):
            if proto.info is not None and self.node.peers.is_banned(proto.info.host):
                proto.disconnect(f"banned by the operator ({subnet})")
                dropped += 1
        return {"banned": subnet, "until": self.node.peers.bans.listing_for(subnet), "disconnected": dropped}

    def unban(self, subnet: str) -> dict[str, Any]:
        try:
            found = self.node.peers.bans.unban(subnet.replace("_", "/"))
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        if not found:
            raise ApiError(404, f"no ban on {subnet}")
        return {"unbanned": subnet}

    def add_peer(self, doc: Any) -> dict[str, Any]:
        """{"address": "host:port"}: kept connected (as a --peers entry) until dropped."""
        if not isinstance(doc, dict) or not isinstance(doc.get("address"), str):
            raise ApiError(400, 'body must be {"address": "host:port"}')
        try:
            parse_address(doc["address"])
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        self.node.peers.dial(doc["address"])
        return {"dialing": doc["address"]}

    def drop_peer(self, address: str) -> dict[str, Any]:
        """Stop dialing `address` and close connections to or from it."""
        self.node.peers.forget(address)
        closed = 0
        for proto in list(self.node.peers.peers):
            info = proto.info
            if info is not None and address in (info.address, proto.dial_address, info.listen_address):
                proto.disconnect("dropped by the operator")
                closed += 1
        return {"dropped": address, "disconnected": closed}

    def submit_tx(self, doc: Any) -> dict[str, Any]:
        try:
            tx = Transaction.from_json(doc)
            tx_hash = self.node.submit_transaction(tx)
        except InvalidTransaction as e:
            raise ApiError(400, str(e)) from None
        return {"txHash": tx_hash.hex()}

    # for the farmer

    def signage_points(self) -> dict[str, Any]:
        """Challenges for a child of the tip: one per VDF segment the node holds."""
        node = self.node
        parent = node.vdf_parent
        seed = self.chain.seed_for_child(parent)
        points = [{"index": i + 1, "challenge": vdf.signage_challenge(seed, s.output).hex()}
                  for i, s in enumerate(node.vdf_segments)]
        return {
            "parentHash": parent.hex(),
            "height": self.chain.tip.height + 1,
            "difficulty": self.chain.next_difficulty(parent),
            "kMin": node.params.k_min,
            "plotFilterBits": node.params.plot_filter_bits,
            "signagePoints": points,
        }

    def block_template(self, doc: Any) -> dict[str, Any]:
        """An unsigned block answering signage point `index` with `proofOfSpace`, for the
        farmer to sign: the node adds its mempool's best transfers and the timestamp."""
        node = self.node
        try:
            parent = hex_field(doc, "parentHash", 32)
            index = doc.get("index") if isinstance(doc, dict) else None
            if isinstance(index, bool) or not isinstance(index, int):
                raise DecodeError("index must be an integer")
            proof = ProofOfSpace.from_json(doc.get("proofOfSpace"))
            reward_address = doc.get("rewardAddress")
            keys.decode_address(reward_address)
        except (DecodeError, ValueError, TypeError) as e:
            raise ApiError(400, f"bad template request: {e}") from None
        if parent != node.vdf_parent:
            raise ApiError(409, "the tip moved on: ask for signage points again")
        if not 1 <= index <= len(node.vdf_segments):
            raise ApiError(409, f"no signage point {index} on the tip (have {len(node.vdf_segments)})")
        parent_meta = self.chain.tip
        txs = tuple(node.mempool.select(node.params.max_block_transactions))
        timestamp = max(node.now_ms(), self._median_floor() + 1)
        header = Header(
            height=parent_meta.height + 1,
            parent_hash=parent,
            timestamp=timestamp,
            difficulty=self.chain.next_difficulty(parent),
            vdf=tuple(node.vdf_segments[:index]),
            proof_of_space=proof,
            reward_address=reward_address,
            reward=node.params.block_reward + sum(tx.fee for tx in txs),
            tx_root=tx_root(txs),
        )
        return Block(header, txs).to_json()

    def _median_floor(self) -> int:
        from archivas.chain.difficulty import median_time

        recent = self.chain.ancestors(self.chain.tip.hash, self.node.params.median_time_blocks)
        return median_time([m.timestamp for m in recent])

    async def submit_block(self, doc: Any) -> dict[str, Any]:
        try:
            block = Block.from_json(doc, self.node.params.max_block_transactions,
                                    self.node.params.max_vdf_segments, allow_allocation=False)
        except DecodeError as e:
            raise ApiError(400, f"malformed block: {e}") from None
        try:
            result = await self.node.receive_block(block)
        except BlockRejected as e:
            raise ApiError(400, f"block rejected: {e}") from None
        if result is None:
            raise ApiError(409, "parent unknown: block held until its parent arrives")
        status = {ADDED_TIP: "tip", ADDED_SIDE: "side", KNOWN: "known"}.get(result.status, result.status)
        return {"hash": block.hash.hex(), "height": block.height, "status": status}

    # for the timelord

    def vdf_job(self) -> dict[str, Any]:
        node = self.node
        last: Optional[vdf.Segment] = node.vdf_segments[-1] if node.vdf_segments else None
        return {
            "parentHash": node.vdf_parent.hex(),
            "seed": self.chain.seed_for_child(node.vdf_parent).hex(),
            "discriminantBits": node.params.discriminant_bits,
            "iterations": node.params.vdf_iterations,
            "segments": len(node.vdf_segments),
            "lastOutput": (last.output if last else vdf.GENERATOR).hex(),
        }

    async def vdf_output(self, doc: Any) -> dict[str, Any]:
        try:
            parent = hex_field(doc, "parentHash", 32)
            index = doc.get("index")
            if isinstance(index, bool) or not isinstance(index, int) or index < 1:
                raise DecodeError("index must be a positive integer")
            segment = vdf.Segment(hex_field(doc, "output", vdf.FORM_SIZE), hex_field(doc, "proof", vdf.FORM_SIZE))
        except (DecodeError, AttributeError) as e:
            raise ApiError(400, f"bad VDF output: {e}") from None
        accepted = await self.node.add_vdf_output(parent, index, segment)
        if not accepted:
            raise ApiError(409, "not accepted: another tip, out of order, or does not verify")
        return {"accepted": True, "segments": len(self.node.vdf_segments)}


def as_deferred(value: Any) -> defer.Deferred:
    """Call results of LocalNodeAPI as Deferreds (some methods are coroutines)."""
    if hasattr(value, "__await__"):
        return defer.ensureDeferred(value)
    return defer.succeed(value)


