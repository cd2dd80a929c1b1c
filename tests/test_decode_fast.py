"""Transaction.from_json's one-pass path for well-formed transfers accepts exactly what
the field-by-field path accepts, and builds the same transfer."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from archivas.chain import transactions
from archivas.chain.transactions import InvalidTransaction, Transaction
from tests.common import ALICE, BOB, builder

_VALID = builder().transfer(ALICE, BOB.address, 12345, 7).to_json()

_values = st.one_of(
    st.integers(-2, 2**64), st.booleans(), st.none(), st.floats(allow_nan=False), st.text(max_size=130),
    st.sampled_from(["ab" * 32, "AB" * 32, "ab" * 64, "zz" * 64, "ab" * 31, " " * 64, "arcv1" + "q" * 96]),
    st.lists(st.integers(), max_size=2),
)


def _slow(obj):
    saved = transactions._well_formed
    transactions._well_formed = lambda o: None
    try:
        return Transaction.from_json(obj)
    finally:
        transactions._well_formed = saved


def _outcome(parse, obj):
    try:
        return parse(obj)
    except InvalidTransaction as e:
        return ("refused", e.reason)


class FastPathTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.sampled_from(sorted(_VALID)), _values, max_size=3),
           st.lists(st.sampled_from(sorted(_VALID)), max_size=2), st.booleans())
    def test_same_outcome_as_the_field_by_field_path(self, changes, removed, extra):
        obj = dict(_VALID)
        obj.update(changes)
        for key in removed:
            obj.pop(key, None)
        if extra:
            obj["extra"] = 1
        fast = _outcome(Transaction.from_json, obj)
        self.assertEqual(fast, _outcome(_slow, obj))

    def test_a_valid_transfer_takes_the_fast_path(self):
        tx = transactions._well_formed(dict(_VALID))
        self.assertIsNotNone(tx)
        self.assertEqual(tx, _slow(dict(_VALID)))
