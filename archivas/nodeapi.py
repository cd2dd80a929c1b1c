"""What clients may ask of a node, as JSON-ready values: the one surface behind the RPC,
the embedded timelord and farmer, and (over HTTP) the standalone programs and wallet.

Client mistakes raise ApiError with a 4xx status and a message; nothing a client sends
reaches a 500.
"""

from __future__ import annotations

import collections
from typing import Any, Optional

from twisted.internet import defer

from archivas import __version__
from archivas.chain import keys, vdf
from archivas.chain.block import Block, Header, ProofOfSpace, tx_root
from archivas.chain.blockchain import ADDED_SIDE, ADDED_TIP, KNOWN
from archivas.chain.consensus import BlockRejected
from archivas.chain.encoding import DecodeError, canonical_json, hex_field
from archivas.chain.snapshot import history_validated
from archivas.chain.storage import IndexedTransfer
from archivas.chain.transactions import InvalidTransaction, Transaction
from archivas.node import Node
from archivas.protocols.addrman import parse_address
from archivas.protocols.tls import TLS_PREFIX


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_height(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ApiError(400, f"height must be a non-negative integer, not {text[:30]!r}")
    return int(text)


def is_hash(text: str) -> bool:
    """64 hex digits (either case): a block or transfer hash, not a height."""
    return len(text) == 64 and text.isascii() and all(c in "0123456789abcdefABCDEF" for c in text)


def parse_hash(text: Any, what: str = "hash") -> bytes:
    if not isinstance(text, str) or not is_hash(text):
        shown = text[:30] if isinstance(text, str) else text
        raise ApiError(400, f"{what} must be 64 hex digits, not {shown!r}")
    return bytes.fromhex(text)


BAN_SECONDS = 24 * 3600
HISTORY_LIMIT = 50  # transfers on an address_history page unless `limit` says otherwise
MAX_HISTORY_LIMIT = 500  # `limit` at most (a page then finishes its last block: maxBlockTransactions - 1 more)
MAX_HEIGHT = 10**18 - 1  # `before` at most (18 digits, as a height in a path)
MAX_MEMPOOL_LISTED = 500  # transfers /mempool lists (highest fee first); count and bytes cover all
SYNC_RATE_WINDOW = 30.0  # seconds of tip heights behind /status's blocksPerSecond
SYNC_SAMPLE_SECONDS = 1.0  # at most one (time, height) sample a second
SYNC_SAMPLES = 64  # samples kept (more than the window holds at one a second)
SYNC_MIN_SPAN = 1.0  # seconds of samples needed before a rate is given (null before)


class LocalNodeAPI:
    def __init__(self, node: Node) -> None:
        self.node = node
        # (reactor time, tip height) at most once a second, for the sync rate and ETA
        self._tips: collections.deque[tuple[float, int]] = collections.deque(maxlen=SYNC_SAMPLES)
        self._tips.append((node.reactor.seconds(), node.chain.height))
        node.on_tip.append(self._tip_moved)
        # transfer -> (hash, canonical size) of what the mempool held at the last listing
        self._tx_facts: dict[Transaction, tuple[bytes, int]] = {}

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
            "sync": self.sync_status(),
            "history": self.history_status(),
            "indexHeight": self.index_height(),
        }

    def index_height(self) -> int:
        """The last main-chain height the transfer indexes (/tx, /address) hold: the tip's
        but for a while after a sync, which leaves them to catch up (docs/storage.md)."""
        behind = self.chain.storage.index_behind()
        return self.chain.tip.height if behind is None else behind

    def history_status(self) -> Optional[dict[str, Any]]:
        """For a database loaded from a snapshot (docs/snapshots.md): its height and
        whether verify-history validated the history below it; None otherwise."""
        base = self.chain.snapshot_base
        if not base:
            return None
        return {"snapshotHeight": base, "validated": history_validated(self.chain.storage) is not None}

    # sync progress

    def _tip_moved(self, block: Block) -> None:
        now = self.node.reactor.seconds()
        if now - self._tips[-1][0] >= SYNC_SAMPLE_SECONDS:
            self._tips.append((now, block.height))

    def sync_rate(self) -> Optional[float]:
        """Blocks a second the tip rose over the last SYNC_RATE_WINDOW seconds (from the
        oldest sample inside it, else the newest before it); None under SYNC_MIN_SPAN."""
        now, height = self.node.reactor.seconds(), self.chain.height
        start = self._tips[-1]
        for sample in self._tips:
            if sample[0] >= now - SYNC_RATE_WINDOW:
                start = sample
                break
            start = sample
        span = now - start[0]
        if span < SYNC_MIN_SPAN:
            return None
        return max(0, height - start[1]) / span

    def sync_status(self) -> dict[str, Any]:
        """{active, targetHeight, blocksPerSecond, etaSeconds}: the target is the best
        header a headers-first round proved, else the best height a ready peer claims
        (never below our own); the ETA is what remains at the recent rate (null when the
        rate is unknown or zero)."""
        node, height = self.node, self.chain.height
        proven = node.sync.best_header_height()
        if proven is not None:
            target = max(proven, height)
        else:
            target = max([p.info.height for p in node.peers.ready_peers() if p.info is not None] + [height])
        rate = self.sync_rate()
        remaining = target - height
        if remaining <= 0:
            eta: Optional[float] = 0.0
        elif rate:
            eta = round(remaining / rate, 1)
        else:
            eta = None
        return {"active": bool(node.sync.active), "targetHeight": target,
                "blocksPerSecond": None if rate is None else round(rate, 3), "etaSeconds": eta}

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

    def block_by_hash(self, hex_hash: str) -> dict[str, Any]:
        """A stored valid block, main chain or a side branch, as `block(height)`."""
        block_hash = parse_hash(hex_hash, "a block hash")
        meta = self.chain.storage.block_meta(block_hash)
        block = None if meta is None or meta.invalid else self.chain.block(block_hash)
        if block is None:
            raise ApiError(404, f"no block {block_hash.hex()}")
        return block.to_json()

    # the transfer indexes and the mempool

    def transaction(self, hex_hash: str) -> dict[str, Any]:
        """A transfer on the main chain ("confirmed") or in the mempool ("pending")."""
        tx_hash = parse_hash(hex_hash, "a transfer hash")
        found = self.chain.storage.transfer(tx_hash)
        if found is not None:
            return {**_indexed_json(found), "status": "confirmed",
                    "confirmations": self.chain.height - found.height + 1}
        tx = self.node.mempool.get(tx_hash)
        if tx is None:
            raise ApiError(404, f"no transfer {tx_hash.hex()} on the main chain or in the mempool")
        return {"hash": tx_hash.hex(), "from": tx.sender, "to": tx.recipient, "amount": tx.amount, "fee": tx.fee,
                "nonce": tx.nonce, "status": "pending", "blockHeight": None, "blockHash": None, "index": None,
                "timestamp": None, "confirmations": 0}

    def mempool(self) -> dict[str, Any]:
        """{count, bytes, transactions}: every pending transfer counted (bytes: their
        canonical JSON), at most MAX_MEMPOOL_LISTED listed, highest fee first (the order
        a block takes them)."""
        pool = self.node.mempool
        facts: dict[Transaction, tuple[bytes, int]] = {}
        for tx in pool.transactions():
            known = self._tx_facts.get(tx)
            facts[tx] = known if known is not None else (tx.hash, len(canonical_json(tx.to_json())))
        self._tx_facts = facts
        listed = []
        for tx in pool.select(MAX_MEMPOOL_LISTED):
            tx_hash = facts[tx][0] if tx in facts else tx.hash
            listed.append({"hash": tx_hash.hex(), "from": tx.sender, "to": tx.recipient, "amount": tx.amount,
                           "fee": tx.fee, "nonce": tx.nonce})
        return {"count": len(facts), "bytes": sum(size for _, size in facts.values()), "limit": MAX_MEMPOOL_LISTED,
                "transactions": listed}

    def address_history(self, address: str, limit: int = HISTORY_LIMIT,
                        before: Optional[int] = None) -> dict[str, Any]:
        """The address's main-chain transfers, sent and received, newest first, from blocks
        below height `before` (all when None): `limit` (1..MAX_HISTORY_LIMIT) of them, and
        the rest of the last one's block, as a page never splits a block. `next` is the
        `before` of the next page (the lowest height on this one), null on the last."""
        try:
            keys.decode_address(address)
        except ValueError as e:
            raise ApiError(400, f"malformed address: {e}") from None
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise ApiError(400, f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}, not {limit!r}")
        if before is not None and (isinstance(before, bool) or not isinstance(before, int)
                                   or not 0 <= before <= MAX_HEIGHT):
            raise ApiError(400, f"before must be a height from 0 to {MAX_HEIGHT}, not {before!r}")
        page, more = self.chain.storage.address_transfers(address, limit, before)
        balance, nonce = self.chain.account(address)
        return {"address": address, "balance": balance, "nonce": nonce,
                "transactions": [_indexed_json(t) for t in page],
                "next": page[-1].height if more else None}

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
        """Stop dialing `address` (host:port, or tls:host:port) and close connections to or
        from it; a malformed address is 400 and changes nothing."""
        try:
            parse_address(address[len(TLS_PREFIX):] if address.startswith(TLS_PREFIX) else address)
        except ValueError as e:
            raise ApiError(400, f"malformed address: {e}") from None
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
            vdf_iterations=node.vdf_iterations,
            discriminant_seed=self.chain.discriminant_seed_for_child(parent),
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

    async def vdf_job(self) -> dict[str, Any]:
        """The next segment to prove on the tip: from the last one the node holds, or from
        the block's origin (drawn in a thread: the first in an epoch makes a discriminant)."""
        node = self.node
        parent = node.vdf_parent
        segments = list(node.vdf_segments)
        job = {
            "parentHash": parent.hex(),
            "seed": self.chain.seed_for_child(parent).hex(),
            "discriminantSeed": self.chain.discriminant_seed_for_child(parent).hex(),
            "discriminantBits": node.params.discriminant_bits,
            "iterations": node.vdf_iterations,
            "segments": len(segments),
        }
        last = segments[-1].output if segments else await node.vdf_origin(parent)
        return {**job, "lastOutput": last.hex()}

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


def _indexed_json(t: IndexedTransfer) -> dict[str, Any]:
    return {"hash": t.hash.hex(), "from": t.sender, "to": t.recipient, "amount": t.amount, "fee": t.fee,
            "nonce": t.nonce, "blockHeight": t.height, "blockHash": t.block_hash.hex(), "index": t.position,
            "timestamp": t.timestamp}


def as_deferred(value: Any) -> defer.Deferred:
    """Call results of LocalNodeAPI as Deferreds (some methods are coroutines)."""
    if hasattr(value, "__await__"):
        return defer.ensureDeferred(value)
    return defer.succeed(value)


