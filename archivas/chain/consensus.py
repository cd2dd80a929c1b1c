"""Block validation: every rule, each failure with a stable reason code.

Validation has three parts so that the costly one can run in threads:
- `check_standalone`: needs only the block and its parent's header. It is `check_header`
  (farmer signature, proof of space, VDF segments: what headers-first sync checks before
  any body) and `check_body` (size, transaction root, transfers, reward). Pure and
  thread-safe; chiavdf and pynacl release the GIL.
- `check_context`: height, timestamps, difficulty and VDF iterations against the ancestors.
- the state part (nonces, balances), applied by `Chain` in a `StateDelta`.

`check_header` and `check_standalone` take a `segments` cache (verifycache.VerifiedSegments)
and `check_transactions`, `check_body` and `check_standalone` a `transfers` cache
(verifycache.VerifiedTransfers): a proof found there verified before, byte for byte, and is
not verified again. Without them every proof is verified, as before.
"""

from __future__ import annotations

import time
from typing import Optional, Protocol, Sequence

from archivas.chain import iterations, keys, pos, vdf
from archivas.chain.block import BLOCK_VERSION, Block, Header, child_discriminant_seed, child_seed
from archivas.chain.difficulty import median_time, next_difficulty
from archivas.chain.params import NetworkParams
from archivas.chain.transactions import InvalidTransaction, check_stateless, verify_signature
from archivas.chain.vdf import Segment
from archivas.chain.verifycache import VerifiedSegments, VerifiedTransfers


class Ancestor(Protocol):
    """What the context rules need of an ancestor (a Header or a stored BlockMeta)."""

    @property
    def height(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def difficulty(self) -> int: ...
    @property
    def segments(self) -> int: ...
    @property
    def vdf_iterations(self) -> int: ...


class BlockRejected(ValueError):
    """An invalid block. `reason` is a stable code from REASONS; the text says more.

    `permanent` is True when every block with this id fails the same way for good, so the
    id may be remembered as invalid. It is False for a failure in what the id does not
    commit to (the farmer's signature, the transfers' signatures, a body that does not
    match the header's transaction root, the encoded size) and for a block that is only
    early: another copy with the same id may be valid, and only its sender is to blame.
    """

    def __init__(self, reason: str, message: str, permanent: Optional[bool] = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.permanent = reason not in NOT_PERMANENT if permanent is None else permanent


REASONS = (
    "malformed",  # fields of the wrong shape or version (raised by the decoder's caller)
    "too_large",  # encoded size above max_block_bytes
    "too_many_transactions",
    "too_many_segments",
    "no_vdf",  # a block answers signage point >= 1
    "bad_height",
    "timestamp_too_old",  # not above the median of the last 11
    "timestamp_in_future",  # more than 30 s ahead of this node's clock
    "bad_difficulty",
    "bad_vdf_iterations",  # outside the network's bounds, or not the retarget's value
    "bad_vdf",
    "bad_proof_of_space",
    "plot_filter",
    "insufficient_quality",  # the proof does not win at this difficulty
    "bad_farmer_signature",
    "bad_reward_address",
    "bad_reward",
    "bad_tx_root",
    "bad_transaction",  # stateless or state rule of one transaction; message names it
    "invalid_ancestor",
)

# Failures of what a block's id does not commit to, or not for good (see BlockRejected).
NOT_PERMANENT = frozenset({"too_large", "bad_tx_root", "bad_farmer_signature", "timestamp_in_future"})


def bind_body(block: Block, params: NetworkParams) -> None:
    """The body against its header: count, encoded size and transaction root. Until the
    root matches, a failure is the copy's, not the id's (see BlockRejected.permanent)."""
    header = block.header
    if block.allocation:
        raise BlockRejected("malformed", "only genesis carries an allocation", permanent=False)
    if len(block.transactions) > params.max_block_transactions:
        raise BlockRejected(
            "too_many_transactions",
            f"{len(block.transactions)} > {params.max_block_transactions}",
            permanent=False,  # not yet bound to the header's root
        )
    size = len(block.encode())
    if size > params.max_block_bytes:
        raise BlockRejected("too_large", f"{size} bytes > {params.max_block_bytes}")
    if block.tx_root != header.tx_root:
        raise BlockRejected("bad_tx_root", "transaction root does not match")


def _spent(timings: Optional[dict[str, float]], part: str, since: float) -> float:
    """Adds the seconds since `since` to timings[part] (when timings are asked for)."""
    now = time.perf_counter()
    if timings is not None:
        timings[part] = timings.get(part, 0.0) + now - since
    return now


def _counted(timings: Optional[dict[str, float]], count: str, n: int) -> None:
    """Adds n to timings[count] (a count, not seconds: "vdf_segments_checked",
    "signatures_checked") when timings are asked for."""
    if timings is not None:
        timings[count] = timings.get(count, 0) + n


class _CountedSegments:
    """A segment cache that counts the segments it really verified (its misses)."""

    def __init__(self, cache: VerifiedSegments) -> None:
        self.cache = cache
        self.verified = 0

    def check(self, seed: bytes, start: bytes, segment: Segment, bits: int, iterations: int) -> bool:
        ok, verified = self.cache.lookup_or_verify(seed, start, segment, bits, iterations)
        self.verified += verified
        return ok


def check_shape(header: Header, params: NetworkParams) -> None:
    """A header's shape: version, iterations within the network's bounds, segment count,
    reward address, the proof of space's k and length. What check_header checks before
    any proof, and all an assumed header (chain/assumed.py) is checked for beyond its
    context."""
    if header.version != BLOCK_VERSION:
        raise BlockRejected("malformed", f"version {header.version}")
    floor, ceiling = iterations.bounds(params.vdf_iterations)
    if not floor <= header.vdf_iterations <= ceiling:
        raise BlockRejected("bad_vdf_iterations", f"{header.vdf_iterations} iterations per segment outside "
                                                  f"{floor}..{ceiling}")
    if header.segments > params.max_vdf_segments:
        raise BlockRejected("too_many_segments", f"{header.segments} > {params.max_vdf_segments}")
    if header.segments == 0:
        raise BlockRejected("no_vdf", "a block carries at least one VDF segment")
    if not keys.is_address(header.reward_address):
        raise BlockRejected("bad_reward_address", f"{header.reward_address!r} is not an address")
    proof = header.proof_of_space
    if proof is None:
        raise BlockRejected("bad_proof_of_space", "missing")
    if not params.k_min <= proof.k <= params.k_max:
        raise BlockRejected("bad_proof_of_space", f"k={proof.k} outside {params.k_min}..{params.k_max}")
    if len(proof.proof) != 8 * proof.k:
        raise BlockRejected("bad_proof_of_space", f"proof of {len(proof.proof)} bytes for k={proof.k}")


def check_header(header: Header, parent: Header, params: NetworkParams,
                 timings: Optional[dict[str, float]] = None,
                 segments: Optional[VerifiedSegments] = None) -> int:
    """Everything a header proves on its own, given its parent's header; returns its score.

    Cheapest first: shape, then the farmer's signature (tens of microseconds), then the
    proof of space against the challenge of the header's last VDF output (a plot look-up
    check), and only then the VDF segments (milliseconds each), each of the header's own
    `vdf_iterations` (within the network's bounds; whether they are the retarget's value is
    check_context's to say, so this stays context-free). Thread-safe; chiavdf and
    pynacl release the GIL. A failure is permanent (the id commits to it) except the
    farmer's signature, which the id leaves out. `timings`, when given, gets the seconds
    spent on "farmer_signature", "proof_of_space" and "vdf" (for /metrics), and the count
    "vdf_segments_checked" of segments really verified (not found in `segments`)."""
    check_shape(header, params)
    proof = header.proof_of_space
    assert proof is not None  # (check_shape)
    discriminant_seed = child_discriminant_seed(parent, params)
    if header.discriminant_seed != discriminant_seed:
        raise BlockRejected("bad_vdf", "discriminant seed is not the one its parent gives "
                            f"(a new one every {vdf.DISCRIMINANT_EPOCH} blocks)")

    started = time.perf_counter()
    if not keys.verify(proof.farmer_public_key, header.signing_bytes, header.farmer_signature):
        raise BlockRejected("bad_farmer_signature", "header not signed by the plot's farmer key")
    started = _spent(timings, "farmer_signature", started)

    seed = child_seed(parent, params)
    challenge = vdf.signage_challenge(seed, header.vdf[-1].output)
    pid = pos.plot_id(proof.farmer_public_key, proof.plot_nonce)
    if not pos.passes_filter(pid, challenge, params.plot_filter_bits):
        raise BlockRejected("plot_filter", "plot does not pass the filter for this challenge")
    quality = pos.verify(pid, proof.k, challenge, proof.proof)
    if quality is None:
        raise BlockRejected("bad_proof_of_space", "proof does not verify for this plot and challenge")
    if not pos.wins(quality, challenge, proof.k, header.difficulty, params.k_min):
        raise BlockRejected("insufficient_quality", f"quality does not win at difficulty {header.difficulty}")
    started = _spent(timings, "proof_of_space", started)

    if segments is None:
        failed = vdf.verify_chain(discriminant_seed, seed, list(header.vdf), params.discriminant_bits,
                                  header.vdf_iterations)
        verified = failed + 1 if failed >= 0 else header.segments
    else:
        counted = _CountedSegments(segments)
        failed = vdf.verify_chain(discriminant_seed, seed, list(header.vdf), params.discriminant_bits,
                                  header.vdf_iterations, cache=counted)
        verified = counted.verified
    _spent(timings, "vdf", started)
    _counted(timings, "vdf_segments_checked", verified)
    if failed >= 0:
        raise BlockRejected("bad_vdf", f"segment {failed + 1} does not verify")
    return pos.score(quality, challenge)


def check_transactions(block: Block, params: NetworkParams, timings: Optional[dict[str, float]] = None,
                       transfers: Optional[VerifiedTransfers] = None, signatures: bool = True) -> None:
    """The transfers' stateless rules and the reward (the id commits to them once the body
    is bound), then their signatures (which it leaves out; timed as "signatures", counted
    as "signatures_checked": those really verified, not found in `transfers`).
    `signatures=False` stops before the signatures (assume-valid: chain/assumed.py)."""
    for i, tx in enumerate(block.transactions):
        try:
            check_stateless(tx, params, verify_signature=False)
        except InvalidTransaction as e:
            raise BlockRejected("bad_transaction", f"transaction {i}: {e}") from None
    expected_reward = params.block_reward + sum(tx.fee for tx in block.transactions)
    if block.header.reward != expected_reward:
        raise BlockRejected("bad_reward", f"reward {block.header.reward}, expected {expected_reward}")
    if not signatures:
        return
    started = time.perf_counter()
    verified = 0
    for i, tx in enumerate(block.transactions):
        if transfers is None:
            ok, now = verify_signature(tx), True
        else:
            ok, now = transfers.lookup_or_verify(tx)
        verified += now
        if not ok:
            raise BlockRejected("bad_transaction", f"transaction {i}: bad_signature: signature does not verify",
                                permanent=False)
    _spent(timings, "signatures", started)
    _counted(timings, "signatures_checked", verified)


def check_body(block: Block, params: NetworkParams, timings: Optional[dict[str, float]] = None,
               transfers: Optional[VerifiedTransfers] = None) -> None:
    """What a block adds to a header already checked (check_header): bound, then its transfers."""
    bind_body(block, params)
    check_transactions(block, params, timings, transfers)


def check_standalone(block: Block, parent: Header, params: NetworkParams,
                     timings: Optional[dict[str, float]] = None,
                     segments: Optional[VerifiedSegments] = None,
                     transfers: Optional[VerifiedTransfers] = None) -> int:
    """Everything provable from the block and its parent's header; returns the score.

    The body is first bound to the header (count, size, transaction root), so that a later
    failure is one of what the block id commits to, except the signatures, which the id
    leaves out (see BlockRejected.permanent)."""
    bind_body(block, params)
    score = check_header(block.header, parent, params, timings, segments)
    check_transactions(block, params, timings, transfers)
    return score


def _anchored(ancestors: Sequence[Ancestor], params: NetworkParams
              ) -> Optional[tuple[Sequence[Ancestor], Ancestor]]:
    """For a child of ancestors[-1] (`ancestors` oldest first, consecutive, genesis allowed,
    context_depth of them when the chain has that many): the retarget window (up to
    difficultyWindow + 1 non-genesis blocks ending at the anchor, two epochs back:
    iterations.anchor_height) and the previous epoch's last block, whose values bound the
    step; None in epochs 0 and 1, which keep the initial values."""
    anchor = iterations.anchor_height(ancestors[-1].height + 1)
    if anchor < 1:
        return None
    base, first = ancestors[0].height, max(1, anchor - params.difficulty_window)
    if base > first:  # (a snapshot node asked about a fork below the blocks it stores)
        raise BlockRejected("invalid_ancestor", f"its retarget window (anchor {anchor}) starts at height {first}, "
                            f"below the ancestors this node stores (from {base})", permanent=False)
    window = [h for h in ancestors[:anchor - base + 1] if h.height > 0][-(params.difficulty_window + 1):]
    return window, ancestors[anchor + iterations.EPOCH_BLOCKS - base]


def expected_difficulty(ancestors: Sequence[Ancestor], params: NetworkParams) -> int:
    """Difficulty of a child of ancestors[-1] (as _anchored): one value per epoch, measured
    on the window two epochs back, so that no farmer can date his block to lower the
    difficulty his own child meets."""
    anchored = _anchored(ancestors, params)
    if anchored is None:
        return params.initial_difficulty
    window, previous = anchored
    return next_difficulty([(h.timestamp, h.difficulty) for h in window], params.target_block_time_ms,
                           params.initial_difficulty, previous.difficulty)


def context_depth(params: NetworkParams) -> int:
    """Ancestors (the parent last) the context rules read: the median time's and the
    difficulty's windows, and the iterations' window, which ends up to two iteration
    epochs before the parent (iterations.anchor_height)."""
    return max(params.difficulty_window + 1, params.median_time_blocks) + 1 + 2 * iterations.EPOCH_BLOCKS


def expected_iterations(ancestors: Sequence[Ancestor], params: NetworkParams) -> int:
    """VDF iterations per segment of a child of ancestors[-1] (as _anchored): one value per
    iteration epoch, measured on the window ending at the anchor, two epochs back; the
    epoch before's value bounds the step (iterations.py)."""
    anchored = _anchored(ancestors, params)
    if anchored is None:
        return params.vdf_iterations
    window, previous = anchored
    return iterations.next_iterations([(h.timestamp, h.segments, h.vdf_iterations) for h in window],
                                      params.target_block_time_ms, params.target_vdf_segments,
                                      params.vdf_iterations, previous.vdf_iterations)


def check_context(
    header: Header, ancestors: Sequence[Ancestor], params: NetworkParams, now_ms: int
) -> None:
    """Height, timestamp, difficulty and VDF iterations rules against the ancestors (oldest first, the
    parent last, at least max(difficulty_window, 11) + 1 of them when the chain has them)."""
    parent = ancestors[-1]
    if header.height != parent.height + 1:
        raise BlockRejected("bad_height", f"height {header.height} on a parent at {parent.height}")
    recent = [h.timestamp for h in ancestors[-params.median_time_blocks:]]
    floor = median_time(recent)
    if header.timestamp <= floor:
        raise BlockRejected("timestamp_too_old", f"{header.timestamp} not above the median {floor}")
    if header.timestamp > now_ms + params.max_future_ms:
        raise BlockRejected(
            "timestamp_in_future", f"{header.timestamp} is {header.timestamp - now_ms} ms ahead"
        )
    want = expected_difficulty(ancestors, params)
    if header.difficulty != want:
        raise BlockRejected("bad_difficulty", f"difficulty {header.difficulty}, expected {want}")
    want = expected_iterations(ancestors, params)
    if header.vdf_iterations != want:
        raise BlockRejected("bad_vdf_iterations", f"{header.vdf_iterations} iterations per segment, expected {want}")
