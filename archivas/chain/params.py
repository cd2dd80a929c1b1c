"""Per-network consensus parameters, loaded from the JSON files in `networks/`."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from typing import Any, Mapping, Optional

COIN = 100_000_000  # 1 RCHV in base units (8 decimals)
# A VDF origin's a has 62 bits and must stay below sqrt(|D|)/2 for the form to be reduced
# (chain/classgroup.py); chiavdf's compressed forms are 100 bytes, for up to 1024 bits.
MIN_DISCRIMINANT_BITS, MAX_DISCRIMINANT_BITS = 256, 1024


@dataclasses.dataclass(frozen=True)
class NetworkParams:
    name: str
    chain_id: int
    genesis_message: str
    genesis_timestamp: int  # Unix milliseconds
    genesis_allocation: tuple[tuple[str, int], ...]  # (address, base units), sorted
    block_reward: int
    min_fee: int
    target_block_time_ms: int
    initial_difficulty: int
    difficulty_window: int
    discriminant_bits: int
    vdf_iterations: int  # T of blocks 1 and 2: iterations per VDF segment until it retargets
    target_vdf_segments: int  # segments per block the iterations retarget aims at
    max_vdf_segments: int
    k_min: int
    k_max: int
    plot_filter_bits: int
    max_block_transactions: int
    max_block_bytes: int
    median_time_blocks: int = 11
    max_future_ms: int = 30_000
    # Headers-first sync stores nothing of a peer's chain until its headers prove at least
    # this weight (and more than the node's own): a low-weight fork costs only its sender.
    min_chain_weight: int = 0
    # host:port names dialed while the address book is nearly empty (resolved at each try)
    bootstrap_peers: tuple[str, ...] = ()
    # Assume-valid (chain/assumed.py): a block hash whose ancestors headers-first sync takes
    # without checking their proofs and signatures; None: every block fully verified.
    assume_valid: Optional[bytes] = None
    # (height, state hash) of the one snapshot `snapshot load` takes without
    # --assume-snapshot (docs/snapshots.md); None: none is pinned
    assume_snapshot: Optional[tuple[int, bytes]] = None

    def with_allocation(self, allocation: Mapping[str, int]) -> "NetworkParams":
        """The same network with another genesis allocation (and so another genesis)."""
        return dataclasses.replace(self, genesis_allocation=_allocation(allocation))


_FIELDS = {
    "name": "name",
    "chainId": "chain_id",
    "genesisMessage": "genesis_message",
    "genesisTimestamp": "genesis_timestamp",
    "genesisAllocation": "genesis_allocation",
    "blockReward": "block_reward",
    "minFee": "min_fee",
    "targetBlockTimeMs": "target_block_time_ms",
    "initialDifficulty": "initial_difficulty",
    "difficultyWindow": "difficulty_window",
    "discriminantBits": "discriminant_bits",
    "vdfIterations": "vdf_iterations",
    "targetVdfSegments": "target_vdf_segments",
    "maxVdfSegments": "max_vdf_segments",
    "kMin": "k_min",
    "kMax": "k_max",
    "plotFilterBits": "plot_filter_bits",
    "maxBlockTransactions": "max_block_transactions",
    "maxBlockBytes": "max_block_bytes",
}


def _allocation(allocation: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    from archivas.chain.keys import decode_address

    for address, amount in allocation.items():
        decode_address(address)  # raises on a malformed address
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount < 2**62:
            raise ValueError(f"genesis allocation for {address} must be a positive integer")
    return tuple(sorted(allocation.items()))


def from_json(data: Mapping[str, Any]) -> NetworkParams:
    missing = sorted(set(_FIELDS) - set(data))
    if missing:
        raise ValueError(f"network parameters lack {', '.join(missing)}")
    values = {attr: data[key] for key, attr in _FIELDS.items()}
    values["genesis_allocation"] = _allocation(values["genesis_allocation"])
    bootstrap = data.get("bootstrapPeers", [])
    if not isinstance(bootstrap, list) or not all(isinstance(p, str) for p in bootstrap):
        raise ValueError("bootstrapPeers must be a list of host:port strings")
    values["bootstrap_peers"] = tuple(bootstrap)
    min_weight = data.get("minChainWeight", 0)
    if isinstance(min_weight, bool) or not isinstance(min_weight, int) or min_weight < 0:
        raise ValueError("minChainWeight must be a non-negative integer")
    values["min_chain_weight"] = min_weight
    assume_valid = data.get("assumeValid") or None  # "" or null: none
    if assume_valid is not None:
        if not isinstance(assume_valid, str) or len(assume_valid) != 64:
            raise ValueError("assumeValid must be a block hash of 64 hex characters, or empty")
        try:
            values["assume_valid"] = bytes.fromhex(assume_valid)
        except ValueError:
            raise ValueError("assumeValid must be a block hash of 64 hex characters, or empty") from None
    values["assume_snapshot"] = _assume_snapshot(data.get("assumeSnapshot"))
    params = NetworkParams(**values)
    if params.initial_difficulty < 1 or params.difficulty_window < 2:
        raise ValueError("initialDifficulty must be >= 1 and difficultyWindow >= 2")
    if params.vdf_iterations < 1 or params.target_vdf_segments < 1:
        raise ValueError("vdfIterations and targetVdfSegments must be >= 1")
    if not MIN_DISCRIMINANT_BITS <= params.discriminant_bits <= MAX_DISCRIMINANT_BITS:
        raise ValueError(f"discriminantBits must be {MIN_DISCRIMINANT_BITS} to {MAX_DISCRIMINANT_BITS}")
    return params


def _assume_snapshot(pin: Any) -> Optional[tuple[int, bytes]]:
    """`assumeSnapshot: {"height": H, "hash": "<state hash, 64 hex>"}`, or absent."""
    if pin is None:
        return None
    height = pin.get("height") if isinstance(pin, dict) else None
    digest = pin.get("hash") if isinstance(pin, dict) else None
    if (isinstance(height, bool) or not isinstance(height, int) or height < 1 or not isinstance(digest, str)
            or len(digest) != 64 or digest.strip("0123456789abcdef")):
        raise ValueError('assumeSnapshot must be {"height": H >= 1, "hash": "<64 lowercase hex digits>"}')
    return height, bytes.fromhex(digest)


def load(name: str) -> NetworkParams:
    """The built-in network `name` (`devnet` or `fastnet`)."""
    try:
        text = resources.files("archivas.chain").joinpath(f"networks/{name}.json").read_text()
    except FileNotFoundError:
        raise ValueError(f"unknown network {name!r} (known: {', '.join(NETWORKS)})") from None
    return from_json(json.loads(text))


NETWORKS = ("devnet", "fastnet")
