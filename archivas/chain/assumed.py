"""Assume-valid, in the manner of Bitcoin Core's -assumevalid: the checks of a block that is
an ancestor of a block hash the node was given (the network's `assumeValid`, or
`--assume-valid HASH`) on the header chain headers-first sync is taking.

Such a block's proofs are not checked: not its proof of space, not its VDF segments, not
the farmer's signature, not its transfers' Ed25519 signatures. Everything else is: the
header's shape (version, segment count, reward address, the proof's k and length), its
linkage, height, timestamp and difficulty (the context rules, against the headers before
it), the body against the header (count, size, transaction root), the transfers'
stateless rules but the signature, the reward, and every state transition (nonces and
balances, when the block is added). Blocks above the assumed block, and every block that
comes by gossip or by block-by-block sync, are fully verified.

Where the skip is decided: protocols/assumevalid.py (the header chain must reach the
assumed hash first); what it means for the node: Node.assume_header. The trust this asks
for is written in docs/consensus.md ("Assume-valid").

Pure and synchronous.
"""

from __future__ import annotations

from typing import Optional

from archivas.chain.block import Block, Header
from archivas.chain.consensus import bind_body, check_shape, check_transactions
from archivas.chain.params import NetworkParams

# The fork-choice score (the tie-break between tips of equal weight, lower wins) of a
# block whose proof of space was not checked: the worst there is. Its true score needs
# the proof verified; the worst means an assumed block never displaces a tip of equal
# weight whose proofs were checked. It can matter only while the assumed block itself is
# not stored yet (after that no assumed block is a tip), and at an exact tie, which the
# next block settles.
ASSUMED_SCORE = 2**256 - 1

DISABLED = "0"  # `--assume-valid 0`: every block fully verified, whatever the network says



def parse_hash(text: str) -> bytes:
    """A block hash as 64 hex characters (ValueError if not)."""
    text = text.strip().lower()
    if len(text) != 64:
        raise ValueError(f"{text!r} is not a block hash (64 hex characters), nor 0")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a block hash (64 hex characters), nor 0") from None


def resolve(option: Optional[str], params: NetworkParams) -> Optional[bytes]:
    """The assumed block hash in effect: `option` (the node's `--assume-valid`) when given,
    None for "0", else the network's `assumeValid` (None when it has none)."""
    if option is None:
        return params.assume_valid
    if option.strip() == DISABLED:
        return None
    return parse_hash(option)


def check_header(header: Header, params: NetworkParams) -> int:
    """What an assumed header is checked for beyond its context: its shape (as
    consensus.check_header checks it before any proof). Returns ASSUMED_SCORE."""
    check_shape(header, params)
    return ASSUMED_SCORE


def assumed_body(block: Block, params: NetworkParams, score: int,
                 timings: Optional[dict[str, float]] = None) -> int:
    """The body of an assumed block: bound to its header (count, size, root), the
    transfers' stateless rules and the reward; not the signatures. Returns `score`."""
    bind_body(block, params)
    check_transactions(block, params, timings, signatures=False)
    return score
