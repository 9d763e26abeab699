"""e5x.core.Deduplicator (Rust) against its pure-Python twin."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e5x import core
from e5x.cleaning.reference import dedup_ref, normalize_ref

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
        df = pl.DataFrame(
            {"x": [r[0] for r in rows], "y": [r[1] for r in rows]}, schema={"x": pl.String, "y": pl.String}
        )
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


# Long texts: the Rust side scans in 32-byte blocks; these cross block boundaries with
# spaces, newlines, NBSP, ideographic space and non-ASCII chars at every offset.
piece = st.sampled_from(
    [
        "word",
        "lorem ipsum",
        " ",
        "  ",
        "\n",
        "\t",
        "\u00a0",
        "\u3000",
        "é",
        "e\u0301",
        "ﬁ",
        "日本",
        "データ",
        "Straße",
        "Ａ",
    ]
)
long_text = st.lists(piece, max_size=60).map("".join)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(long_text, max_size=12), min_size=1, max_size=3), st.booleans())
def test_long_texts_match_reference(batches: list, casefold: bool) -> None:
    d = core.Deduplicator(casefold=casefold)
    want = dedup_ref([[(t,) for t in rows] for rows in batches], casefold)
    for rows, exp in zip(batches, want):
        got = d.add(pl.DataFrame({"t": rows}, schema={"t": pl.String}), ["t"])
        assert got["duplicate_of"].to_list() == exp, rows


def _json_row(draw: st.DrawFn) -> tuple[str, str]:
    """A short_long or sts answer built from a small pool (so duplicates happen), often
    differing only in whitespace; sometimes broken."""
    task = draw(st.sampled_from(["short_long", "sts"]))
    pool = st.sampled_from(["a query", "a  query", "A query", "doc one\nbody", "doc one body", "日本 データ", "x"])
    keys = ["user_query", "positive_document", "hard_negative_document"] if task == "short_long" else ["S1", "S2", "S3"]
    obj = {k: draw(pool) for k in keys}
    text = __import__("json").dumps(obj, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:
        text = text[: len(text) // 2]  # not JSON
    return text, task


@settings(max_examples=120, deadline=None)
@given(st.lists(st.lists(st.composite(_json_row)(), max_size=20), min_size=1, max_size=3), st.booleans())
def test_fused_validate_dedup_matches_two_steps(batches: list, casefold: bool) -> None:
    # Fused: validation and dedup in one pass; indices are input rows across batches.
    fields = ["user_query", "positive_document", "S1"]  # S1 is null for short_long rows
    fused_d, step_d = core.Deduplicator(casefold=casefold), core.Deduplicator(casefold=casefold)
    accepted_global: list[int] = []  # step_d's row k is input row accepted_global[k]
    offset = 0
    for rows in batches:
        texts = pl.Series([r[0] for r in rows], dtype=pl.String)
        tasks = pl.Series([r[1] for r in rows], dtype=pl.String)
        got = core.validate(texts, tasks, unpack=True, json=False, dedup=fused_d, dedup_fields=fields)
        plain = core.validate(texts, tasks, unpack=True, json=False)
        assert got.drop("keep", "duplicate_of").equals(plain)
        ok_rows = [i for i, ok in enumerate(plain["ok"]) if ok]
        step = step_d.add(plain[ok_rows], fields) if ok_rows else None
        accepted_global += [offset + i for i in ok_rows]
        want_dup: list[int | None] = [None] * len(rows)
        want_keep = [False] * len(rows)
        for j, i in enumerate(ok_rows):
            assert step is not None
            dup = step["duplicate_of"][j]
            want_dup[i] = None if dup is None else accepted_global[dup]
            want_keep[i] = dup is None
        assert got["duplicate_of"].to_list() == want_dup
        assert got["keep"].to_list() == want_keep
        offset += len(rows)
    assert fused_d.seen == offset and fused_d.unique == step_d.unique


def test_fused_dedup_errors_name_the_problem() -> None:
    texts = pl.Series(['{"S1": "a", "S2": "b", "S3": "c"}'])
    with pytest.raises(ValueError, match="go together"):
        core.validate(texts, "sts", dedup=core.Deduplicator())
    with pytest.raises(ValueError, match="dedup field 'user_query'"):
        core.validate(texts, "sts", dedup=core.Deduplicator(), dedup_fields=["user_query"])
    out = core.validate(texts, "sts", dedup=core.Deduplicator(), dedup_fields="S1")
    assert out["keep"].to_list() == [True] and out["duplicate_of"].to_list() == [None]
    # An unknown task type rejects the rows themselves; no complaint about the fields.
    d = core.Deduplicator()
    out = core.validate(texts, "no_such_type", dedup=d, dedup_fields=["S1"])
    assert out["reason"].to_list() == ["unknown_task_type"] and out["keep"].to_list() == [False]
    assert (d.seen, d.unique) == (1, 0)
