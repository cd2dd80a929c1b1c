"""Shared test fixtures: funded fastnet parameters, test keys, one chain builder per run."""

from __future__ import annotations

import time
from typing import Optional

from twisted.trial import unittest

from archivas.chain import params as network_params
from archivas.chain.blockchain import Chain
from archivas.chain.forkchoice import block_weight
from archivas.chain.keys import PrivateKey
from archivas.chain.params import COIN
from archivas.testing.chainbuilder import ChainBuilder

ALICE = PrivateKey.from_secret(b"alice")
BOB = PrivateKey.from_secret(b"bob")
CAROL = PrivateKey.from_secret(b"carol")

FASTNET = network_params.load("fastnet")
PARAMS = FASTNET.with_allocation({ALICE.address: 1000 * COIN, BOB.address: 500 * COIN})

_builder: Optional[ChainBuilder] = None


def builder() -> ChainBuilder:
    """One builder per test run: plots are made once and VDF segments are cached."""
    global _builder
    if _builder is None:
        _builder = ChainBuilder(PARAMS)
    return _builder


_fixture: list = []


def fixture_blocks(count: Optional[int] = None) -> list:
    """The first `count` blocks (heights 1..count) of tests/fixtures/chain.jsonl.gz, a
    3,200-block chain on PARAMS read once per run; tests/fixtures/make_chain.py remakes it."""
    import gzip
    import json
    from pathlib import Path

    from archivas.chain.block import Block, genesis_block

    if not _fixture:
        path = Path(__file__).with_name("fixtures") / "chain.jsonl.gz"
        with gzip.open(path, "rt") as f:
            head = json.loads(f.readline())
            if head["genesis"] != genesis_block(PARAMS).hash.hex():
                raise RuntimeError(f"{path} was made for another genesis: run tests/fixtures/make_chain.py")
            _fixture.extend(Block.from_json(json.loads(line)) for line in f if line.strip())
    return _fixture[:count] if count is not None else list(_fixture)


def weight_of(headers) -> int:
    """The weight `headers` (or blocks) add to a chain: forkchoice.block_weight of each."""
    return sum(block_weight(h.difficulty, h.vdf_iterations) for h in (getattr(x, "header", x) for x in headers))


def now_ms() -> int:
    return int(time.time() * 1000)


def open_chain(case: unittest.TestCase, directory: Optional[str] = None) -> Chain:
    chain = Chain.open(directory or case.mktemp(), PARAMS)
    case.addCleanup(chain.close)
    return chain


def snapshot(chain: Chain) -> tuple:
    """Everything a rejected block must leave as it was."""
    return chain.tip, chain.accounts(), chain.storage.block_count()


def counted_rows(rows_of, read: list):
    """`rows_of` (a function returning an iterator of rows, row[0] first) wrapped so that
    each row the caller takes is appended to `read`: how far a lazy query was stepped."""

    def counted(*args):
        for row in rows_of(*args):
            read.append(row[0])
            yield row

    return counted
