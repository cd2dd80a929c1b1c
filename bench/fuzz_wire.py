"""Fuzz the peer-protocol decoder: a million generated and mutated lines, and what became of each.

One job: feed lines through the two decoding steps, `wire.decode_envelope` then
`wire.parse(envelope, wire.DEFAULT_LIMITS)`, and print a markdown table: how many lines
gave a typed message, how many each `WireError` reason, how many reached each message's
parser (the envelope was read and its type is in `wire.MESSAGES`, so that class's `parse`
ran), and how many gave anything else. Anything else is an exception other than
`WireError` from either step: a bug, which must be 0. So must the typed messages that do
not come back from `wire.encode` (in both hash styles) as themselves. The script exits 1
otherwise, after printing the first offending lines and their traceback's last line.

Inputs are seeded (`--seed`) and mostly mutations of valid lines, so that most reach a
parser: one or more messages of every type in `wire.MESSAGES`, built from real objects
(a fastnet chain from `archivas.testing.chainbuilder`: real plots, VDF segments and
signatures), each encoded with hex hashes and with Go's `[32]byte` arrays. Each line is
one of: a valid line as it is; byte-level mutations (byte flips, deletions, duplicated
chunks, truncation, insertions of tokens such as `NaN`, `1e999`, `"`, `[`, very long digit
strings); JSON-aware mutations, one to three stacked (a nested value replaced by one of
another type or an edge value, a key deleted, added or duplicated by string surgery,
"type" changed, lists truncated or extended to and past the consensus limits, hex
strings' case and length changed, hex swapped for arrays of integers and back, a subtree
of another message spliced in); or fully random bytes and token soup. Lines are a few KB
at most, except the rare ones that take a list past its limit.

The time reported is the whole run (generating the lines and decoding them); the decoder's
own share is shown beside it.

    .venv/bin/python bench/fuzz_wire.py                   # 1,000,000 lines, seed 1
    .venv/bin/python bench/fuzz_wire.py --lines 20000     # smoke run, seconds
    .venv/bin/python bench/fuzz_wire.py --seed 7          # other lines
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import json
import random
import sys
import time
import traceback
from typing import Any, Callable, Optional, Sequence

import validation_throughput as vt  # the validation bench beside this file: machine()

from archivas.chain import params as network_params
from archivas.chain.keys import PrivateKey
from archivas.chain.params import COIN
from archivas.protocols import wire
from archivas.testing.chainbuilder import ChainBuilder

REASONS = ("bad_json", "bad_shape", "unknown_type", "bad_payload")
SHOWN_BUGS = 5  # offending lines printed (and the first of every other kind of bug)
SHOWN_BYTES = 200

# How a line is made, with its share of the lines.
KIND_WEIGHTS = {"valid": 2, "bytes": 33, "json": 60, "random": 5}

# Lists a peer may send, and their limits (wire.py and Block.from_json, DEFAULT_LIMITS).
LIST_LIMITS = {
    "transactions": wire.DEFAULT_LIMITS.max_block_transactions,
    "vdf": wire.DEFAULT_LIMITS.max_vdf_segments,
    "blocks": wire.MAX_BATCH,
    "hashes": wire.MAX_HASHES,
    "addrs": wire.MAX_PEERS_LISTED,
    "capabilities": 32,
}

TOKENS = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1e-999", b"-1", b"-0", b"1.5", b"0.0",
          b'"', b",", b":", b"[", b"]", b"{", b"}", b" ", b"\t", b"\n", b"\\", b'\\"', b"\\u0000", b"\\ud800",
          b"\\uZZZZ", b"null", b"true", b"false", b"\x00", b"\x7f", b"\xff", b"\xc3", b"\xe2\x82", b"\xef\xbb\xbf",
          b"\xed\xa0\x80", b"9" * 40, b"9" * 400, b"9" * 5000, b"1" + b"0" * 19, b"0." + b"0" * 400 + b"1",
          b"1e" + b"9" * 30, b"00", b"01", b"-", b"+1", b".5", b"0x1f", b'"type":1,', b'"payload":{},',
          b'"type":', b"[" * 50, b"]" * 50]
DEEP = (b"[" * 5000, b'{"a":' * 3000)  # past the parser's recursion limit, now and then
STRUCTURAL = b'{}[]",:0123456789-+.eEabcdefABCDEF xn\\'
SOUP = [b"{", b"}", b"[", b"]", b",", b":", b'"type"', b'"payload"', b'"height"', b'"hash"', b'"blockData"',
        b'"timestamp"', b'"tipHash"', b'"ab"', b'"' + b"ab" * 32 + b'"', b"0", b"1", b"7", b"12", b"100", b"-1",
        b"1e999", b"NaN", b"null", b"true", b"false", b" ", b'"', b"2.5", b"18446744073709551616"]

INTS = [0, 1, -1, 2, 3, 7, 31, 32, 33, 63, 64, 65, 100, 255, 256, -256, 511, 512, 513, 1023, 1024, 1025, 1999,
        2000, 2001, 65535, 65536, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, -2**63, 2**64, 10**30, 10**100]
FLOATS = [0.0, -0.0, 0.5, 1.0, 2.5, -1.5, 1e18, 9.3e18, 1e308, 5e-324, float("nan"), float("inf"), float("-inf")]
STRINGS = ["", "a", "0", "1", "true", "null", "ab" * 32, "AB" * 32, "Ab" * 32, "ab" * 31, "ab" * 31 + "a",
           "ab" * 33, "ab" * 16, "ab" * 50, "ab" * 100, "00" * 64, "0x" + "ab" * 31, " " * 64, "ab" * 31 + " a",
           "zz" * 32, "\nb" * 32, "\u00e9", "\u00e9" * 40, "\ud800", "\udfff" * 3, "\x00", "\U0001f600" * 10,
           "fastnet", "devnet", "x" * 33, "x" * 300, "arcv1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq", "1.2.3.4:9090",
           "[::1]:9090", "hello", "blocks", "push"]
FIELD_NAMES = ["type", "payload", "height", "hash", "tipHash", "difficulty", "timestamp", "blockData", "addrs",
               "txHash", "txData", "fromHeight", "maxBlocks", "blocks", "count", "start", "hashes", "nodeId",
               "genesisHash", "network", "capabilities", "listenPort", "protocolVersion", "parentHash", "index",
               "output", "proof", "seenAt", "netId", "eof", "tipHeight", "weight", "version", "header",
               "transactions", "allocation", "vdf", "proofOfSpace", "signature", "publicKey", "chainId", "pad"]
JSON_KINDS = (type(None), bool, int, float, str, list, dict)

FUNDED = PrivateKey.from_secret(b"alice")


# Valid messages, from real objects.


def round_trips(message: wire.Message) -> bool:
    try:
        return all(wire.decode(wire.encode(message, style)) == message for style in (wire.HEX, wire.ARRAY))
    except Exception:  # a message this script got wrong: not used as a seed
        return False


class Pool:
    """Real values to build messages from: a small fastnet chain (plots are made once,
    a few seconds), transfers, a VDF segment, a key and a signature."""

    def __init__(self) -> None:
        fastnet = network_params.load("fastnet")
        builder = ChainBuilder(fastnet.with_allocation({FUNDED.address: 1000 * COIN}))
        self.chain = builder.extend(builder.genesis, 3)  # heights 1..3
        farmer, other = builder.farmers[0][0], builder.farmers[1][0]
        self.txs = [builder.transfer(farmer, other.address, 5 + i, i) for i in range(3)]
        self.with_txs = builder.make_block(self.chain[-1], self.txs[:2])
        self.segment = self.chain[0].header.vdf[0]
        self.genesis = builder.genesis.hash
        self.public_key = FUNDED.public_key
        self.signature = FUNDED.sign(b"fuzz_wire")

    def value_for(self, name: str, annotation: str, full: bool) -> Any:
        """A value for a message field from its name and annotation (None: no idea)."""
        t = annotation.strip()
        if t.startswith("Optional[") and t.endswith("]"):
            t = t[len("Optional["):-1]
        t = t.removesuffix(" | None")
        n = name.lower()
        if t.startswith("tuple["):
            inner = t[len("tuple["):].split(",")[0].split("]")[0].strip()
            if inner == "Block":
                return tuple(self.chain)
            if inner == "bytes":
                return (self.genesis, self.chain[0].hash)
            if inner == "str":
                if "capab" in n:
                    return wire.CAPABILITIES
                return ("1.2.3.4:9", "[::1]:9090") if "addr" in n else ("x",)
            return None
        if t == "Block":
            return self.chain[0]
        if t == "Transaction":
            return self.txs[0]
        if t == "Segment":
            return self.segment
        if t == "bool":
            return full
        if t in ("int", "float", "int | float"):
            if "version" in n:
                return wire.PROTOCOL_VERSION
            return 9999 if "port" in n else 2 if "count" in n else 1
        if t == "str":
            return "fastnet" if "net" in n else "x"
        if t == "bytes":
            if "hash" in n:
                return self.genesis
            if "key" in n:
                return self.public_key
            if "signature" in n:
                return self.signature
            return bytes(range(32))
        return None


def generic_message(cls: type[wire.Message], pool: Pool, full: bool) -> Optional[wire.Message]:
    """A valid `cls` built from its dataclass fields: the required ones (`full`: all), values
    chosen by name and type; the lengths of its bytes fields searched if the first guess
    does not decode back to itself."""
    kwargs: dict[str, Any] = {}
    bytes_fields = []
    for f in dataclasses.fields(cls):
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if not f.init or (has_default and (not full or f.name.endswith("_style"))):
            continue
        value = pool.value_for(f.name, str(f.type), full)
        if value is None:
            if has_default:
                continue
            return None
        kwargs[f.name] = value
        if isinstance(value, bytes):
            bytes_fields.append(f.name)
    attempts = itertools.chain([kwargs], (
        {**kwargs, **{name: bytes((7 * i + 1) % 256 for i in range(n)) for name, n in zip(bytes_fields, lengths)}}
        for lengths in itertools.islice(itertools.product((32, 16, 64, 100, 8, 48, 20), repeat=len(bytes_fields)),
                                        400)))
    for attempt in attempts:
        try:
            message = cls(**attempt)
        except Exception:
            continue
        if round_trips(message):
            return message
    return None


def valid_messages() -> tuple[list[wire.Message], list[str]]:
    """Messages of every type in wire.MESSAGES: a few chosen by hand (optional fields, the
    edges of ranges) and, for every type, its required fields and all its fields from
    `generic_message` (so that a type added to wire.py is fuzzed too). And notes on what
    could not be built."""
    pool = Pool()
    chain, with_txs, txs, genesis = pool.chain, pool.with_txs, pool.txs, pool.genesis
    chosen: list[Callable[[], wire.Message]] = [
        lambda: wire.Ping(1764000000), lambda: wire.Pong(2.5), lambda: wire.Pong(0),
        lambda: wire.NewBlock(4, with_txs.hash),
        lambda: wire.GetBlock(3),
        lambda: wire.BlockData(2, chain[1]), lambda: wire.BlockData(with_txs.height, with_txs),
        lambda: wire.Status(1, 2, chain[0].hash, 3),
        lambda: wire.Status(3, 1, chain[-1].hash, weight=9, genesis_hash=genesis, network="fastnet",
                            version=wire.PROTOCOL_VERSION, capabilities=wire.CAPABILITIES),
        lambda: wire.Peers(("1.2.3.4:9",)),
        lambda: wire.Peers(("10.9.8.7:9090", "[::1]:9090"), 1764000000, "fastnet"),
        lambda: wire.NewTransaction(txs[2]),
        lambda: wire.GetBlocks(0, wire.MAX_BATCH),
        lambda: wire.Blocks(1, tuple(chain), 4, False), lambda: wire.Blocks(10, (), 4, True),
        lambda: wire.Blocks(1, (*chain, with_txs), 4, True),
        lambda: wire.VdfOutput(chain[0].header.parent_hash, 1, pool.segment),
        lambda: wire.GetHashes(5, wire.MAX_HASHES),
        lambda: wire.Hashes(0, (genesis, chain[0].hash, chain[1].hash)), lambda: wire.Hashes(7, ()),
        lambda: wire.PushBlock(with_txs),
    ]
    messages, notes = [], []
    for i, make in enumerate(chosen):
        try:
            message = make()
        except Exception as e:
            notes.append(f"hand-made message {i} not built ({type(e).__name__}: {e}); wire.py changed?")
            continue
        if round_trips(message):
            messages.append(message)
        else:
            notes.append(f"hand-made {message.NAME} does not decode to itself: left out")
    for kind, cls in sorted(wire.MESSAGES.items()):
        for full in (False, True):
            message = generic_message(cls, pool, full)
            if message is not None:
                messages.append(message)
        if not any(type(m) is cls for m in messages):
            notes.append(f"no valid {cls.NAME} ({kind}) could be built: its parser is reached only by other "
                         "lines relabelled with its type")
    return messages, notes


class Seed:
    """A valid line, its JSON, and the places in it that mutations aim at."""

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.doc = json.loads(line)
        # Every value in the payload (not inside a hash array); the envelope has its own edits.
        self.paths: list[tuple] = []
        self.dicts: list[tuple] = []
        self.lists: list[tuple] = []
        self.hexes: list[tuple] = []  # lowercase hex strings
        self.arrays: list[tuple] = []  # hashes written as arrays of integers
        self._walk(self.doc, ())

    def _walk(self, node: Any, path: tuple) -> None:
        in_payload = path[:1] == ("payload",)
        if len(path) >= 2 and in_payload:
            self.paths.append(path)
        if isinstance(node, dict):
            if in_payload:
                self.dicts.append(path)
            for key, value in node.items():
                self._walk(value, path + (key,))
        elif isinstance(node, list):
            if len(node) >= 16 and all(type(v) is int for v in node):
                self.arrays.append(path)
                return
            self.lists.append(path)
            for i, value in enumerate(node):
                self._walk(value, path + (i,))
        elif isinstance(node, str) and len(node) >= 2 and len(node) % 2 == 0 and is_lower_hex(node):
            self.hexes.append(path)


def is_lower_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def seeds() -> tuple[list[Seed], list[str]]:
    """Every valid message in both hash styles (each distinct line once), and notes."""
    messages, notes = valid_messages()
    out: list[Seed] = []
    lines = set()
    for message in messages:
        for style in (wire.HEX, wire.ARRAY):
            line = wire.encode(message, style)
            if line not in lines:
                lines.add(line)
                out.append(Seed(line))
    return out, notes


# JSON values and edits that copy only what they change (seeds are shared, never mutated).


def replace_at(node: Any, path: tuple, fn: Callable[[Any], Any], i: int = 0) -> Any:
    """`node` with the value at `path` replaced by fn(value)."""
    if i == len(path):
        return fn(node)
    if isinstance(node, list):
        copy: Any = node[:]
    elif isinstance(node, dict):
        copy = dict(node)
    else:
        raise TypeError("a path through a value that is not a container")
    copy[path[i]] = replace_at(node[path[i]], path, fn, i + 1)
    return copy


def value_at(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


def dumps(doc: Any, rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.85:
        return json.dumps(doc, separators=(",", ":")).encode()
    if r < 0.95:
        return json.dumps(doc).encode()  # ", " and ": "
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")  # raw UTF-8 (and bad UTF-8)


class Mutator:
    def __init__(self, rng: random.Random, seed_list: list[Seed]) -> None:
        self.rng = rng
        self.seeds = seed_list
        # Subtrees of every seed, to splice into another message (a tx where a block goes...).
        self.donors: dict[type, list] = {dict: [], list: []}
        names = set(FIELD_NAMES)  # and every key of the seeds (fields wire.py has gained, too)
        for seed in seed_list:
            for path in seed.paths:
                value = value_at(seed.doc, path)
                if isinstance(value, (dict, list)):
                    self.donors[type(value)].append(value)
            names.update(path[-1] for path in seed.paths if isinstance(path[-1], str))
        self.names = sorted(names)
        ops = {self.other_type: 25, self.edge_value: 10, self.delete_key: 8, self.add_key: 7, self.change_type: 8,
               self.envelope: 4, self.truncate_list: 6, self.extend_list: 3, self.hex_edit: 12,
               self.hex_array_swap: 8, self.splice: 5}
        self.ops, self.op_weights = list(ops), list(ops.values())

    # Lines.

    def line(self, kind: str) -> bytes:
        rng = self.rng
        seed = rng.choice(self.seeds)
        if kind == "valid":
            return seed.line
        if kind == "json":
            return self.json_mutation(seed)
        if kind == "bytes":
            base = self.json_mutation(seed) if rng.random() < 0.15 else seed.line
            return self.byte_mutation(base)
        return self.random_line()

    def json_mutation(self, seed: Seed) -> bytes:
        rng = self.rng
        doc = seed.doc
        surgery = rng.random() < 0.06
        extended = False
        for _ in range(rng.choice((1, 1, 1, 1, 2, 2, 3)) - surgery):
            op = rng.choices(self.ops, self.op_weights)[0]
            if op == self.extend_list:
                if extended:  # once a line: lists past their limits, but lines of 1 MB at most
                    continue
                extended = True
            try:
                doc = op(seed, doc)
            except (KeyError, IndexError, TypeError):  # an earlier edit moved what this path names
                pass
        if surgery:
            return self.duplicate_key(seed, doc)
        return dumps(doc, rng)

    def byte_mutation(self, line: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(line)
        for _ in range(min(8, 1 + int(rng.expovariate(1.2)))):
            n = len(buf)
            if n == 0:
                buf += rng.choice(TOKENS)
                continue
            i = rng.randrange(n)
            r = rng.random()
            if r < 0.25:
                buf[i] = rng.randrange(256)
            elif r < 0.35:
                buf[i] ^= 1 << rng.randrange(8)
            elif r < 0.5:
                buf[i] = rng.choice(STRUCTURAL)
            elif r < 0.65:
                del buf[i:i + rng.choice((1, 1, 1, 2, 3, 8, 64))]
            elif r < 0.9:
                buf[i:i] = rng.choice(TOKENS) if rng.random() > 0.002 else rng.choice(DEEP)
            elif r < 0.97:
                j = rng.randrange(n)
                buf[i:i] = buf[j:j + rng.randrange(1, 64)]
            else:
                del buf[i:]
        return bytes(buf)

    def random_line(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.6:
            return rng.randbytes(rng.randrange(0, 300))
        return b"".join(rng.choice(SOUP) for _ in range(rng.randrange(1, 40)))

    # Values.

    def value(self, kind: type, depth: int = 0) -> Any:
        rng = self.rng
        if kind is type(None):
            return None
        if kind is bool:
            return rng.random() < 0.5
        if kind is int:
            return rng.choice(INTS) if rng.random() < 0.7 else rng.randrange(-10**6, 10**6)
        if kind is float:
            return rng.choice(FLOATS) if rng.random() < 0.8 else rng.uniform(-1e6, 1e6)
        if kind is str:
            if rng.random() < 0.8:
                return rng.choice(STRINGS)
            return rng.randbytes(rng.randrange(0, 70)).hex()
        r = rng.random()
        if kind is list:
            if r < 0.25:
                return []
            if r < 0.45:
                return list(range(32)) if rng.random() < 0.5 else [rng.choice((0, 255, 256, -1)) for _ in range(32)]
            if r < 0.65 or depth >= 2:
                return rng.choice(self.donors[list])
            return [self.value(rng.choice(JSON_KINDS), depth + 1) for _ in range(rng.randrange(1, 4))]
        if r < 0.2:
            return {}
        if r < 0.6 or depth >= 2:
            return rng.choice(self.donors[dict])
        return {rng.choice(self.names): self.value(rng.choice(JSON_KINDS), depth + 1)
                for _ in range(rng.randrange(1, 4))}

    def other_kind(self, value: Any) -> type:
        kinds = [k for k in JSON_KINDS if type(value) is not k]
        return self.rng.choice(kinds)

    # Edits of a document (the envelope); each returns a new one.

    def other_type(self, seed: Seed, doc: Any) -> Any:
        """A nested value replaced by a value of another JSON type."""
        if not seed.paths:
            return self.envelope(seed, doc)
        path = self.rng.choice(seed.paths)
        return replace_at(doc, path, lambda v: self.value(self.other_kind(v)))

    def edge_value(self, seed: Seed, doc: Any) -> Any:
        """A nested value replaced by an edge value of its own type or any other."""
        if not seed.paths:
            return self.envelope(seed, doc)
        path = self.rng.choice(seed.paths)
        kind = self.rng.choice(JSON_KINDS)
        return replace_at(doc, path, lambda v: self.value(type(v) if self.rng.random() < 0.6 else kind))

    def delete_key(self, seed: Seed, doc: Any) -> Any:
        path = self.rng.choice(seed.dicts)

        def drop(d: Any) -> Any:
            if isinstance(d, dict) and d:
                d = dict(d)
                del d[self.rng.choice(list(d))]
            return d

        return replace_at(doc, path, drop)

    def add_key(self, seed: Seed, doc: Any) -> Any:
        path = self.rng.choice(seed.dicts)
        name = self.rng.choice(self.names) if self.rng.random() < 0.8 else self.rng.choice(STRINGS)
        value = self.value(self.rng.choice(JSON_KINDS))
        return replace_at(doc, path, lambda d: {**d, name: value} if isinstance(d, dict) else d)

    def change_type(self, seed: Seed, doc: Any) -> Any:
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            kind: Any = rng.randint(-5, 200)
        elif r < 0.9:
            kind = rng.choice(list(wire.MESSAGES) + sorted(wire.RESERVED_TYPES))  # this payload, another parser
        else:
            kind = rng.choice([65535, 65536, 2**64, -2**63, "1", "", 1.0, 3.5, True, False, None, [1], {}])
        return {**doc, "type": kind} if isinstance(doc, dict) else doc

    def envelope(self, seed: Seed, doc: Any) -> Any:
        """The envelope itself: its payload of another type, a key gone or added, not an object."""
        rng = self.rng
        if not isinstance(doc, dict):
            return doc
        r = rng.random()
        if r < 0.3:
            return {**doc, "payload": self.value(self.other_kind(doc.get("payload")))}
        if r < 0.45:
            return {k: v for k, v in doc.items() if k != "type"}
        if r < 0.6:
            return {k: v for k, v in doc.items() if k != "payload"}
        if r < 0.7:
            return self.value(self.other_kind(doc))
        if r < 0.85:
            return {"payload": doc.get("payload"), "type": doc.get("type")}  # the other order
        return {**doc, rng.choice(self.names): self.value(rng.choice(JSON_KINDS))}  # extra keys are ignored

    def truncate_list(self, seed: Seed, doc: Any) -> Any:
        if not seed.lists:
            return self.other_type(seed, doc)
        path = self.rng.choice(seed.lists)
        return replace_at(doc, path, lambda v: v[:self.rng.randrange(len(v))] if v else v)

    def extend_list(self, seed: Seed, doc: Any) -> Any:
        """A list made longer: to its limit and one past it (or just longer, if it has none)."""
        if not seed.lists:
            return self.other_type(seed, doc)
        rng = self.rng
        path = rng.choice(seed.lists)
        limit = LIST_LIMITS.get(path[-1])
        if limit is not None:
            length = limit + rng.choice((0, 1, 1, 2))
        else:
            length = rng.choice((2, 3, 5, 17))

        def extend(v: Any) -> Any:
            if not isinstance(v, list):
                return v
            items = v or [self.value(rng.choice(JSON_KINDS))]
            n = max(length, len(v) + 1)
            if n * len(json.dumps(items)) // len(items) > 1_000_000:  # blocks where transactions go, say
                n = len(v) + 1
            return (items * (n // len(items) + 1))[:n]

        return replace_at(doc, path, extend)

    def hex_edit(self, seed: Seed, doc: Any) -> Any:
        """A hex string's case or length changed, or a character that is not hex put in."""
        if not seed.hexes:
            return self.other_type(seed, doc)
        rng = self.rng
        path = rng.choice(seed.hexes)

        def edit(s: str) -> str:
            if not isinstance(s, str) or not s:
                return s
            i = rng.randrange(len(s))
            return rng.choice((
                lambda: s.upper(),
                lambda: s[:i] + s[i].upper() + s[i + 1:],
                lambda: s[:-1],
                lambda: s[:-2],
                lambda: s + "0",
                lambda: s + "00",
                lambda: s[:len(s) // 2],
                lambda: s * 2,
                lambda: "0x" + s[2:],
                lambda: s[:i] + " " + s[i + 1:],
                lambda: s[:i] + rng.choice("gGxz\u00e9\ud800\x00 -") + s[i + 1:],
                lambda: " " + s[1:],
                lambda: s[:i] + rng.choice("0123456789abcdef") + s[i + 1:],  # still valid hex
            ))()

        return replace_at(doc, path, edit)

    def hex_array_swap(self, seed: Seed, doc: Any) -> Any:
        """Hex written as an array of integers (Go's [32]byte), an array written as hex;
        sometimes an array that is not quite 32 bytes."""
        rng = self.rng
        candidates = seed.hexes + seed.arrays
        if not candidates:
            return self.other_type(seed, doc)
        path = rng.choice(candidates)

        def swap(v: Any) -> Any:
            if isinstance(v, str):
                try:
                    out: Any = list(bytes.fromhex(v))
                except ValueError:
                    return v
            elif isinstance(v, list):
                if rng.random() < 0.7 and all(type(x) is int and 0 <= x <= 255 for x in v):
                    return bytes(v).hex()
                out = list(v)
            else:
                return v
            if out and rng.random() < 0.4:
                i = rng.randrange(len(out))
                r = rng.random()
                if r < 0.3:
                    del out[i]
                elif r < 0.5:
                    out.append(rng.randrange(256))
                else:
                    out[i] = rng.choice((256, -1, True, False, 1.0, "1", None, 2**64, [1]))
            return out

        return replace_at(doc, path, swap)

    def splice(self, seed: Seed, doc: Any) -> Any:
        """A dict or list replaced by a subtree of some message (of another type, often)."""
        if not seed.paths:
            return self.envelope(seed, doc)
        path = self.rng.choice(seed.paths)
        return replace_at(doc, path, lambda v: self.rng.choice(self.donors[dict if isinstance(v, dict) else list]))

    def duplicate_key(self, seed: Seed, doc: Any) -> bytes:
        """A key written twice in one object, by string surgery on the compact JSON."""
        rng = self.rng
        text = json.dumps(doc, separators=(",", ":"))
        candidates = seed.dicts + [()] * (len(seed.dicts) // 6 + 1)  # the envelope too, now and then
        keyed = [p for p in candidates if isinstance(self._get(doc, p), dict) and self._get(doc, p)]
        obj = self._get(doc, rng.choice(keyed)) if keyed else doc
        if not isinstance(obj, dict) or not obj:
            return text.encode()
        key = rng.choice(list(obj))
        token = json.dumps(key) + ":"
        at = text.find(token, rng.randrange(len(text)))
        if at < 0:
            at = text.find(token)
        if at < 0:
            return text.encode()
        value = obj[key] if rng.random() < 0.5 else self.value(rng.choice(JSON_KINDS))
        return (text[:at] + token + json.dumps(value, separators=(",", ":")) + "," + text[at:]).encode()

    @staticmethod
    def _get(doc: Any, path: tuple) -> Any:
        try:
            return value_at(doc, path)
        except (KeyError, IndexError, TypeError):
            return None


# The decoder, and what it gave.


class Tally:
    def __init__(self) -> None:
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.reached: collections.Counter[int] = collections.Counter()
        self.reached_typed: collections.Counter[int] = collections.Counter()
        self.by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.bugs: collections.Counter[str] = collections.Counter()  # "where: what" -> lines
        self.examples: list[tuple[str, bytes, str]] = []  # (step, line, traceback's last line)
        self.reserved = 0
        self.decode_seconds = 0.0
        self.longest = 0

    def bug(self, step: str, line: bytes, exc: BaseException) -> None:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        where = f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name}"
        signature = f"{step}: {type(exc).__name__} at {where}"
        if len(self.examples) < SHOWN_BUGS or signature not in self.bugs:
            if len(self.examples) < 4 * SHOWN_BUGS:
                self.examples.append((signature, line, last))
        self.bugs[signature] += 1


def check(line: bytes, kind: str, tally: Tally, roundtrip: bool) -> None:
    counts = tally.by_kind[kind]
    counts["lines"] += 1
    tally.longest = max(tally.longest, len(line))
    started = time.perf_counter()
    try:
        envelope = wire.decode_envelope(line)
    except wire.WireError as e:
        tally.decode_seconds += time.perf_counter() - started
        tally.outcomes[f"WireError {e.reason}" if e.reason in REASONS else "WireError, other reason (bugs)"] += 1
        return
    except Exception as e:  # what this bench looks for: a bug
        tally.decode_seconds += time.perf_counter() - started
        tally.outcomes["anything else (bugs)"] += 1
        tally.bug("decode_envelope", line, e)
        return
    cls = wire.MESSAGES.get(envelope.type)
    if cls is not None:
        tally.reached[cls.TYPE] += 1
        counts["reached a parser"] += 1
    elif envelope.type in wire.RESERVED_TYPES:
        tally.reserved += 1
    try:
        message = wire.parse(envelope, wire.DEFAULT_LIMITS)
    except wire.WireError as e:
        tally.decode_seconds += time.perf_counter() - started
        tally.outcomes[f"WireError {e.reason}" if e.reason in REASONS else "WireError, other reason (bugs)"] += 1
        return
    except Exception as e:
        tally.decode_seconds += time.perf_counter() - started
        tally.outcomes["anything else (bugs)"] += 1
        tally.bug("parse", line, e)
        return
    tally.decode_seconds += time.perf_counter() - started
    if cls is None or type(message) is not cls:
        tally.outcomes["anything else (bugs)"] += 1
        tally.bug("parse", line, TypeError(f"parse gave {type(message).__name__} for type {envelope.type}"))
        return
    tally.outcomes["typed message"] += 1
    tally.reached_typed[cls.TYPE] += 1
    counts["typed message"] += 1
    if roundtrip:
        for style in (wire.HEX, wire.ARRAY):
            try:
                back = wire.decode(wire.encode(message, style))
                if back != message:
                    raise AssertionError(f"{style} encoding decodes to {back!r:.120}")
            except Exception as e:
                tally.outcomes["typed, but not itself after encode/decode (bugs)"] += 1
                tally.bug(f"round trip ({style})", line, e)
                return


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table, first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if i else ":" + "-" * (w + 1) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def report(tally: Tally, lines: int, seed: int, seconds: float, n_seeds: int, notes: Sequence[str]) -> int:
    bugs = tally.outcomes["anything else (bugs)"] + tally.outcomes["WireError, other reason (bugs)"]
    roundtrip_bugs = tally.outcomes["typed, but not itself after encode/decode (bugs)"]
    print(f"fuzz_wire: {lines:,} lines, seed {seed}, {seconds:.0f} s ({lines / seconds:,.0f} lines/s); "
          f"decoder {tally.decode_seconds:.1f} s of it ({lines / max(tally.decode_seconds, 1e-9):,.0f} lines/s); "
          f"longest line {tally.longest:,} bytes")
    print(vt.machine())
    print(f"{n_seeds} valid lines (every message type in wire.MESSAGES, hex and array hashes) as seeds")
    for note in notes:
        print(f"note: {note}")
    print()
    rows = [["typed message", f"{tally.outcomes['typed message']:,}"]]
    rows += [[f"WireError {r}", f"{tally.outcomes[f'WireError {r}']:,}"] for r in REASONS]
    rows.append(["(unknown_type: a reserved type, 0 9 10 11)", f"{tally.reserved:,}"])
    if tally.outcomes["WireError, other reason (bugs)"]:
        rows.append(["WireError, other reason (bugs)", f"{tally.outcomes['WireError, other reason (bugs)']:,}"])
    total_reached = sum(tally.reached.values())
    rows.append(["parser reached (all types)", f"{total_reached:,}"])
    for kind, cls in sorted(wire.MESSAGES.items()):
        rows.append([f"parser reached: {cls.NAME}", f"{tally.reached[kind]:,}"])
    rows.append(["typed, but not itself after encode/decode (bugs)", f"{roundtrip_bugs:,}"])
    rows.append(["anything else (bugs)", f"{tally.outcomes['anything else (bugs)']:,}"])
    print(md_table(["outcome", "lines"], rows))
    print()
    print("By parser: lines that reached it, and how many of those gave its typed message")
    rows = [[f"{cls.NAME} ({kind})", f"{tally.reached[kind]:,}", f"{tally.reached_typed[kind]:,}",
             pct(tally.reached_typed[kind], tally.reached[kind])] for kind, cls in sorted(wire.MESSAGES.items())]
    print(md_table(["parser (type)", "reached", "typed", "typed %"], rows))
    print()
    print("By input: how the lines were made")
    rows = [[kind, f"{c['lines']:,}", f"{c['reached a parser']:,}", pct(c["reached a parser"], c["lines"]),
             f"{c['typed message']:,}"] for kind, c in sorted(tally.by_kind.items(), key=lambda kv: -kv[1]["lines"])]
    print(md_table(["input", "lines", "reached a parser", "reached %", "typed"], rows))
    if tally.bugs:
        print()
        print("Bugs: exceptions other than WireError (or typed messages that do not survive a round trip)")
        print(md_table(["where", "lines"], [[sig, f"{n:,}"] for sig, n in tally.bugs.most_common()]))
        print()
        print("First offending lines")
        for signature, line, last in tally.examples:
            print(f"* {signature}\n  {last}\n  {line[:SHOWN_BYTES]!r}" + (f" ... ({len(line):,} bytes)"
                                                                          if len(line) > SHOWN_BYTES else ""))
    return 1 if bugs or roundtrip_bugs else 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000, help="lines fed to the decoder (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the generator (default 1)")
    ap.add_argument("--no-roundtrip", action="store_true",
                    help="do not re-encode typed messages to check they decode to themselves")
    args = ap.parse_args(argv)
    if args.lines < 1:
        ap.error("--lines must be 1 or more")

    seed_list, notes = seeds()  # builds a small chain (plots once): a few seconds
    rng = random.Random(args.seed)
    mutator = Mutator(rng, seed_list)
    kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
    tally = Tally()
    print(f"fuzz_wire: {len(seed_list)} valid lines of {len(wire.MESSAGES)} message types, seed {args.seed}",
          file=sys.stderr)
    for note in notes:
        print(f"  note: {note}", file=sys.stderr)
    progress_every = args.lines // 10 if args.lines >= 200_000 else args.lines + 1
    started = time.perf_counter()
    for i, kind in enumerate(rng.choices(kinds, weights, k=args.lines), 1):
        check(mutator.line(kind), kind, tally, not args.no_roundtrip)
        if i % progress_every == 0 and i < args.lines:
            elapsed = time.perf_counter() - started
            print(f"  {i:,} lines, {elapsed:.0f} s, bugs so far {sum(tally.bugs.values())}", file=sys.stderr)
    seconds = time.perf_counter() - started
    sys.exit(report(tally, args.lines, args.seed, seconds, len(seed_list), notes))


if __name__ == "__main__":
    main()
