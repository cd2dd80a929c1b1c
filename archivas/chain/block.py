"""Blocks and headers: the model, canonical JSON, hashes, the transaction root, genesis."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

from archivas.chain import keys, vdf
from archivas.chain.encoding import DecodeError, canonical_json, field, hex_field, sha256, str_field
from archivas.chain.params import NetworkParams
from archivas.chain.transactions import InvalidTransaction, Transaction
from archivas.chain.vdf import DISCRIMINANT_EPOCH, FORM_SIZE, Segment

BLOCK_DOMAIN = b"archivas-block-v1\x00"
# 2: the header carries its VDF iterations per segment (vdfIterations); 3: they retarget
# once per iteration epoch, from a window two epochs back (chain/iterations.py): no new field;
# 4: one discriminant per DISCRIMINANT_EPOCH blocks (discriminantSeed), and the VDF starts
# from a form drawn from the block's seed instead of the generator (chain/vdf.py)
BLOCK_VERSION = 4
ZERO_HASH = b"\x00" * 32
MAX_PROOF_BYTES = 8 * 64  # 8k bytes of proof for k <= 64


@dataclasses.dataclass(frozen=True)
class ProofOfSpace:
    k: int
    plot_nonce: bytes
    farmer_public_key: bytes
    proof: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "plotNonce": self.plot_nonce.hex(),
            "farmerPublicKey": self.farmer_public_key.hex(),
            "proof": self.proof.hex(),
        }

    @classmethod
    def from_json(cls, obj: Any) -> "ProofOfSpace":
        return cls(
            k=field(obj, "k", int),
            plot_nonce=hex_field(obj, "plotNonce", 32),
            farmer_public_key=hex_field(obj, "farmerPublicKey", 32),
            proof=hex_field(obj, "proof", max_bytes=MAX_PROOF_BYTES),
        )


@dataclasses.dataclass(frozen=True)
class Header:
    height: int
    parent_hash: bytes
    timestamp: int  # Unix milliseconds
    difficulty: int
    vdf_iterations: int  # T: iterations in each of this block's VDF segments
    discriminant_seed: bytes  # what its VDF's discriminant is made from (child_discriminant_seed)
    vdf: tuple[Segment, ...]
    proof_of_space: Optional[ProofOfSpace]  # None only in genesis
    reward_address: str
    reward: int
    tx_root: bytes
    farmer_signature: bytes = b""
    version: int = BLOCK_VERSION

    def unsigned_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "height": self.height,
            "parentHash": self.parent_hash.hex(),
            "timestamp": self.timestamp,
            "difficulty": self.difficulty,
            "vdfIterations": self.vdf_iterations,
            "discriminantSeed": self.discriminant_seed.hex(),
            "vdf": [{"output": s.output.hex(), "proof": s.proof.hex()} for s in self.vdf],
            "proofOfSpace": self.proof_of_space.to_json() if self.proof_of_space else None,
            "rewardAddress": self.reward_address,
            "reward": self.reward,
            "txRoot": self.tx_root.hex(),
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.unsigned_json(), "farmerSignature": self.farmer_signature.hex()}

    @functools.cached_property
    def hash(self) -> bytes:
        """The block id: over everything the farmer signs, so it has one id (computed once:
        a Header is immutable)."""
        return sha256(BLOCK_DOMAIN, canonical_json(self.unsigned_json()))

    @functools.cached_property
    def signing_bytes(self) -> bytes:
        return BLOCK_DOMAIN + self.hash

    @property
    def segments(self) -> int:
        return len(self.vdf)

    @classmethod
    def from_json(cls, obj: Any, max_segments: int = 4096) -> "Header":
        vdf_json = field(obj, "vdf", list)
        if len(vdf_json) > max_segments:
            raise DecodeError(f"{len(vdf_json)} VDF segments, at most {max_segments}")
        version = field(obj, "version", int)
        if version != BLOCK_VERSION:  # versions 1 to 3 are refused, not read
            raise DecodeError(f"block version {version}, this node reads version {BLOCK_VERSION}")
        pos_json = obj.get("proofOfSpace") if isinstance(obj, dict) else None
        return cls(
            version=version,
            height=field(obj, "height", int),
            parent_hash=hex_field(obj, "parentHash", 32),
            timestamp=field(obj, "timestamp", int),
            difficulty=field(obj, "difficulty", int),
            vdf_iterations=field(obj, "vdfIterations", int),
            discriminant_seed=hex_field(obj, "discriminantSeed", 32),
            vdf=tuple(
                Segment(hex_field(s, "output", FORM_SIZE), hex_field(s, "proof", FORM_SIZE))
                for s in vdf_json
            ),
            proof_of_space=None if pos_json is None else ProofOfSpace.from_json(pos_json),
            reward_address=str_field(obj, "rewardAddress"),
            reward=field(obj, "reward", int),
            tx_root=hex_field(obj, "txRoot", 32),
            farmer_signature=hex_field(obj, "farmerSignature", max_bytes=64),
        )


@dataclasses.dataclass(frozen=True)
class Block:
    header: Header
    transactions: tuple[Transaction, ...] = ()
    allocation: tuple[tuple[str, int], ...] = ()  # genesis only

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "header": self.header.to_json(),
            "transactions": [tx.to_json() for tx in self.transactions],
        }
        if self.allocation:
            doc["allocation"] = [[a, v] for a, v in self.allocation]
        return doc

    def encode(self) -> bytes:
        """Its canonical JSON (what is stored, sent and size-limited), made once: a Block
        is immutable, and a node asks for it to check the size, store it and serve it."""
        return self._encoded

    @functools.cached_property
    def _encoded(self) -> bytes:
        if self.allocation:  # (genesis: "allocation" sorts first)
            return canonical_json(self.to_json())
        # canonical_json(self.to_json()) from the parts' own canonical JSON: the keys sort
        # "header" < "transactions", and a transfer's bytes are made once (Transaction.encode:
        # a gossiped transfer's when the mempool took it, not when its block comes).
        return b"".join((b'{"header":', canonical_json(self.header.to_json()), b',"transactions":[',
                         b",".join(tx.encode() for tx in self.transactions), b"]}"))

    @functools.cached_property
    def tx_root(self) -> bytes:
        """The Merkle root of its transfers (as the header's `tx_root` must be), made once."""
        return tx_root(self.transactions)

    @classmethod
    def from_json(cls, obj: Any, max_transactions: int = 100_000, max_segments: int = 4096,
                  allow_allocation: bool = True) -> "Block":
        """Parse a block from a peer or the database; DecodeError saying what is wrong.

        From a peer the limits are the network's consensus limits and no allocation (only
        genesis has one, and genesis is never sent), so an oversized list is refused before
        anything is built from it."""
        if not isinstance(obj, dict):
            raise DecodeError("a block is an object")
        txs_json = field(obj, "transactions", list)
        if len(txs_json) > max_transactions:
            raise DecodeError(f"{len(txs_json)} transactions, at most {max_transactions}")
        allocation = obj.get("allocation", [])
        if not allow_allocation and allocation != []:
            raise DecodeError("only genesis carries an allocation")
        header = Header.from_json(field(obj, "header", dict), max_segments)
        try:
            txs = tuple(Transaction.from_json(t) for t in txs_json)
        except InvalidTransaction as e:
            raise DecodeError(f"transaction: {e}") from None
        if not isinstance(allocation, list) or not all(
            isinstance(a, list) and len(a) == 2 and isinstance(a[0], str) and type(a[1]) is int
            for a in allocation
        ):
            raise DecodeError("allocation must be a list of [address, amount]")
        return cls(header, txs, tuple((a, v) for a, v in allocation))


def merkle_root(leaves: list[bytes]) -> bytes:
    """Binary SHA-256 Merkle root with leaf/node domain separation; an odd node is promoted."""
    if not leaves:
        return sha256(b"\x00")
    level = [sha256(b"\x00", leaf) for leaf in leaves]
    while len(level) > 1:
        nxt = [sha256(b"\x01", level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def tx_root(transactions: tuple[Transaction, ...] | list[Transaction]) -> bytes:
    return merkle_root([tx.hash for tx in transactions])


def allocation_root(allocation: tuple[tuple[str, int], ...]) -> bytes:
    return merkle_root([canonical_json([a, v]) for a, v in allocation])


def genesis_seed(params: NetworkParams) -> bytes:
    """The VDF seed of block 1: from the network's fixed genesis string."""
    return sha256(b"archivas-genesis-seed\x00", params.genesis_message.encode())


def genesis_block(params: NetworkParams) -> Block:
    """Deterministic per network (and allocation): every node computes the same hash."""
    header = Header(
        height=0,
        parent_hash=sha256(params.genesis_message.encode()),
        timestamp=params.genesis_timestamp,
        difficulty=params.initial_difficulty,
        vdf_iterations=params.vdf_iterations,
        discriminant_seed=genesis_seed(params),
        vdf=(),
        proof_of_space=None,
        reward_address="",
        reward=0,
        tx_root=allocation_root(params.genesis_allocation),
    )
    return Block(header, (), params.genesis_allocation)


def child_seed(parent: Header, params: NetworkParams) -> bytes:
    """The VDF seed for a child of `parent`: only the parent's proofs, never its contents."""
    if parent.height == 0 or parent.proof_of_space is None or not parent.vdf:
        return genesis_seed(params)
    return sha256(parent.proof_of_space.proof, parent.vdf[-1].output)


def child_discriminant_seed(parent: Header, params: NetworkParams) -> bytes:
    """The discriminant seed of a child of `parent`: the child's own seed when it opens a
    discriminant epoch (its height a multiple of DISCRIMINANT_EPOCH), else its parent's."""
    if (parent.height + 1) % DISCRIMINANT_EPOCH == 0:
        return child_seed(parent, params)
    return parent.discriminant_seed


def sign_header(header: Header, key: keys.PrivateKey) -> Header:
    return dataclasses.replace(header, farmer_signature=key.sign(header.signing_bytes))


def child_origin(parent: Header, params: NetworkParams) -> bytes:
    """Where the VDF of a child of `parent` starts (vdf.origin of its two seeds)."""
    return vdf.origin(child_discriminant_seed(parent, params), child_seed(parent, params), params.discriminant_bits)
