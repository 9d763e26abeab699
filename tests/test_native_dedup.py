"""e5x.clean.core.Deduplicator (Rust) against its pure-Python twin."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e5x.clean import core
from e5x.clean.reference import dedup_ref, normalize_ref

# Characters assigned in Python's Unicode database (so both sides agree on NFKC and
# case folding), plus whitespace and compatibility characters that normalise.
chars = st.one_of(
    st.characters(exclude_categories=("Cs", "Cn", "Co")),
    st.sampled_from(list(" \t\n\u00a0\u3000\u2028AaßẞﬁＡ\u0130\u03a3\u03c2e\u0301é\x1c")),
)
field = st.one_of(st.none(), st.text(chars, max_size=6), st.sampled_from(["a", "A", " a ", "a  b", "a\nb"]))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.tuples(field, field), max_size=25), min_size=1, max_size=4),
    st.booleans(),
)
def test_matches_reference_across_batches(batches: list, casefold: bool) -> None:
    d = core.Deduplicator(casefold=casefold)
    want = dedup_ref(batches, casefold)
    total = 0
    for rows, exp in zip(batches, want):
        df = pl.DataFrame({"x": [r[0] for r in rows], "y": [r[1] for r in rows]}, schema={"x": pl.String, "y": pl.String})
        got = d.add(df, ["x", "y"])
        assert got["duplicate_of"].to_list() == exp, rows
        assert got["keep"].to_list() == [e is None for e in exp]
        total += len(rows)
    assert d.seen == total


@settings(max_examples=200, deadline=None)
@given(st.text(chars, max_size=10), st.text(chars, max_size=10), st.booleans())
def test_pairwise_equivalence(a: str, b: str, casefold: bool) -> None:
    d = core.Deduplicator(casefold=casefold)
    got = d.add(pl.DataFrame({"t": [a, b]}), ["t"])["duplicate_of"].to_list()
    same = normalize_ref(a, casefold) == normalize_ref(b, casefold)
    assert got == [None, 0 if same else None]


def test_normalisation_examples() -> None:
    d = core.Deduplicator()
    df = pl.DataFrame({"t": ["Hello  world", " Hello world\n", "ＨＥＬＬＯ world", "hello world", "Hello\u00a0world"]})
    assert d.add(df, ["t"])["duplicate_of"].to_list() == [None, 0, None, None, 0]
    d = core.Deduplicator(casefold=True)
    assert d.add(df, "t")["duplicate_of"].to_list() == [None, 0, 0, 0, 0]
    assert (d.seen, d.unique) == (5, 1)


def test_field_choice_and_nulls() -> None:
    d = core.Deduplicator()
    df = pl.DataFrame({"q": ["a", "a", None, None], "p": ["x", "y", "z", "z"], "n": [1, 2, 3, 4]})
    assert d.add(df, ["q"])["duplicate_of"].to_list() == [None, 0, None, 2]
    d2 = core.Deduplicator()
    assert d2.add(df, ["q", "p"])["duplicate_of"].to_list() == [None, None, None, 2]
    with pytest.raises(ValueError, match="missing"):
        d2.add(df, ["missing"])
    with pytest.raises(TypeError, match="'n' must be String"):
        d2.add(df, ["n"])


def test_large_batch_parallel_keeps_first() -> None:
    n = 50_000
    vals = [f"doc {i % 20_000}" for i in range(n)]
    d = core.Deduplicator()
    out = d.add(pl.DataFrame({"t": vals[:30_000]}), ["t"])
    out2 = d.add(pl.DataFrame({"t": vals[30_000:]}), ["t"])
    dup = out["duplicate_of"].to_list() + out2["duplicate_of"].to_list()
    assert dup == [None if i < 20_000 else i % 20_000 for i in range(n)]
    assert d.unique == 20_000
