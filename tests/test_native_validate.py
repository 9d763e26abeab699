"""e5x.core.validate (Rust) against its pure-Python twin, plus targeted cases."""

from __future__ import annotations

import json

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e5x import core
from e5x.cleaning.reference import MAX_DEPTH, validate_ref
from e5x.tasks.schemas import SCHEMAS

# Small limits so hypothesis reaches too_short / too_long; "a/b" checks pointer escaping;
# "mood" (enum) is not a closed string object, so it only takes the general path.
CUSTOM = {
    "tiny": {
        "type": "object",
        "properties": {
            "q": {"type": "string", "minLength": 1, "maxLength": 6},
            "a/b": {"type": "string", "minLength": 3},
            "opt": {"type": "string"},
        },
        "required": ["q", "a/b"],
        "additionalProperties": False,
    },
    "mood": {
        "type": "object",
        "properties": {"m": {"type": "string", "enum": ["happy", "sad"]}, "t": {"type": "string", "minLength": 1}},
        "required": ["m", "t"],
        "additionalProperties": False,
    },
}
ALL = {**SCHEMAS, **CUSTOM}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts_st = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(' \t\n\r"\\/{}[]:,`\x00\x01\u00a0\u3000éß\u2028')),
        st.characters(exclude_categories=("Cs",)),
    ),
    max_size=12,
)
values_st = st.one_of(
    texts_st,
    st.integers(-5, 5),
    st.none(),
    st.booleans(),
    st.lists(st.integers(0, 3), max_size=2),
    st.just(""),
    st.just("   "),
    st.just("\n\t"),
)


@st.composite
def row(draw: st.DrawFn) -> tuple[str | bytes | None, str | None]:
    task = draw(st.sampled_from([*ALL, "nope"]))
    props = list(ALL.get(task, SCHEMAS["sts"])["properties"])
    obj = {}
    for k in props:
        if draw(st.integers(0, 9)) > 0:
            obj[k] = draw(texts_st.filter(bool)) if draw(st.booleans()) else draw(values_st)
    if draw(st.integers(0, 5)) == 0:
        obj[draw(st.sampled_from(["extra", "x~y", "q"]))] = draw(values_st)
    keys = list(obj)
    keys = draw(st.permutations(keys)) if keys else keys
    obj = {k: obj[k] for k in keys}
    style = draw(st.sampled_from(["compact", "spaced", "indent", "ascii"]))
    if style == "compact":
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    elif style == "spaced":
        text = json.dumps(obj, ensure_ascii=False)
    elif style == "indent":
        text = json.dumps(obj, ensure_ascii=False, indent=2)
    else:
        text = json.dumps(obj)  # \uXXXX escapes
    wrap = draw(st.sampled_from(["none", "none", "fence", "prose", "junk", "trunc", "deep", "array"]))
    if wrap == "fence":
        text = f"Here you go:\n```json\n{text}\n```\nanything else?"
    elif wrap == "prose":
        text = f"Sure! {text} Hope this helps {{not json}}"
    elif wrap == "junk":
        text = draw(texts_st)
    elif wrap == "trunc":
        text = text[: draw(st.integers(0, max(len(text) - 1, 0)))]
    elif wrap == "deep":
        d = draw(st.integers(MAX_DEPTH - 2, MAX_DEPTH + 2))
        text = "[" * d + "]" * d
    elif wrap == "array":
        text = f"[{text}]"
    kind = draw(st.integers(0, 19))
    value: str | bytes | None = text
    if kind == 0:
        value = None
    elif kind == 1:
        value = text.encode() + b"\xff\xfe"
    return value, None if kind == 2 else task


def _compare(rows: list[tuple[str | bytes | None, str | None]], extract: bool) -> None:
    texts = [r[0] for r in rows]
    tasks = [r[1] for r in rows]
    binary = any(isinstance(t, bytes) for t in texts)
    series = pl.Series(
        [t.encode() if isinstance(t, str) else t for t in texts] if binary else texts,
        dtype=pl.Binary if binary else pl.String,
    )
    got = core.validate(series, pl.Series(tasks, dtype=pl.String), schemas=CUSTOM, extract=extract, unpack=True)
    # json=False drops that column and changes nothing else (fast and general paths).
    lean = core.validate(
        series, pl.Series(tasks, dtype=pl.String), schemas=CUSTOM, extract=extract, unpack=True, json=False
    )
    assert lean.columns == [c for c in got.columns if c != "json"]
    assert lean.equals(got.drop("json"))
    want = validate_ref(texts, tasks, ALL, extract=extract)
    cols = core.Validator(CUSTOM).unpack_columns
    for i, (g, w) in enumerate(zip(got.iter_rows(named=True), want)):
        ctx = f"row {i}: text={texts[i]!r} task={tasks[i]!r} got={g} want={w}"
        assert (g["ok"], g["reason"], g["field"], g["extracted"]) == (
            w["ok"],
            w["reason"],
            w["field"],
            w["extracted"],
        ), ctx
        if w["ok"]:
            assert g["message"] is None, ctx
            assert json.loads(g["json"]) == json.loads(w["json"]), ctx
            assert list(json.loads(g["json"])) == list(json.loads(w["json"])), ctx  # key order
            props = [k for k, p in ALL[tasks[i]]["properties"].items() if p["type"] == "string"]
            assert [g[c] for c in props] == w["values"], ctx
            assert all(g[c] is None for c in cols if c not in props), ctx
        else:
            assert g["json"] is None and g["message"], ctx
            assert all(g[c] is None for c in cols), ctx


@SETTINGS
@given(st.lists(row(), min_size=1, max_size=30), st.booleans())
def test_matches_reference(rows: list, extract: bool) -> None:
    _compare(rows, extract)


def _one(text: str, task: str = "tiny", extract: bool = False) -> dict:
    return core.validate(pl.Series([text]), task, schemas=CUSTOM, extract=extract).row(0, named=True)


def test_valid_short_long_and_compact_json() -> None:
    obj = {"user_query": "q", "positive_document": 'p\n"x"', "hard_negative_document": "n"}
    r = core.validate(pl.Series([json.dumps(obj, indent=2)]), "short_long", unpack=True).row(0, named=True)
    assert r["ok"] and r["reason"] is None and not r["extracted"]
    assert r["json"] == json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    assert r["positive_document"] == 'p\n"x"'


@pytest.mark.parametrize(
    ("text", "reason", "field"),
    [
        ("not json at all", "not_json", None),
        ('{"q": "ab"', "not_json", None),
        ('["q"]', "not_an_object", None),
        ('"just a string"', "not_an_object", None),
        ('{"q": "ab"}', "missing_field", "a~1b"),  # JSON pointer escaping
        ('{"q": "ab", "a/b": "abc", "zzz": 1}', "unexpected_field", "zzz"),
        ('{"q": 5, "a/b": "abc"}', "wrong_type", "q"),
        ('{"q": "", "a/b": "abc"}', "empty_string", "q"),
        ('{"q": "  ", "a/b": "abc"}', "empty_string", "q"),
        ('{"q": "ab", "a/b": "ab"}', "too_short", "a~1b"),
        ('{"q": "abcdefg", "a/b": "abc"}', "too_long", "q"),
        ('{"q": NaN, "a/b": "abc"}', "not_json", None),
        ("[" * 200 + "]" * 200, "too_deep", None),
    ],
)
def test_reason_codes(text: str, reason: str, field: str | None) -> None:
    r = _one(text)
    assert (r["ok"], r["reason"], r["field"]) == (False, reason, field), r
    assert r["message"]
    assert reason in core.REASON_CODES


def test_precedence_unexpected_before_missing() -> None:
    r = _one('{"zz": "x"}')
    assert (r["reason"], r["field"]) == ("unexpected_field", "zz")


def test_enum_general_path() -> None:
    assert _one('{"m": "happy", "t": "x"}', "mood")["ok"]
    r = _one('{"m": "meh", "t": "x"}', "mood")
    assert (r["reason"], r["field"]) == ("not_in_enum", "m")


def test_extract_is_opt_in_and_counted() -> None:
    text = 'Sure:\n```json\n{"q": "ab", "a/b": "abc"}\n```'
    assert _one(text)["reason"] == "not_json"
    r = _one(text, extract=True)
    assert r["ok"] and r["extracted"]
    r = _one('I think {"q": "ab", "a/b": "abc"} is right.', extract=True)
    assert r["ok"] and r["extracted"]
    r = _one('prefix {"q": "ab"} suffix', extract=True)
    assert (r["ok"], r["reason"], r["extracted"]) == (False, "missing_field", True)


def test_bad_rows_never_raise() -> None:
    texts = pl.Series([b'{"q": "ab", "a/b": "abc"}', b"\xff\xfe{", None, b"x" * 100, b"{" * 100_000])
    got = core.validate(texts, "tiny", schemas=CUSTOM)
    assert got["reason"].to_list() == [None, "invalid_utf8", "null_text", "not_json", "too_deep"]
    huge = '{"q": "ab", "a/b": "' + "x" * (17 << 20) + '"}'
    assert _one(huge)["reason"] == "too_large"
    tasks = pl.Series(["tiny", None, "nope"])
    got = core.validate(pl.Series(['{"q":"ab","a/b":"abc"}'] * 3), tasks, schemas=CUSTOM)
    assert got["reason"].to_list() == [None, "unknown_task_type", "unknown_task_type"]
    assert "nope" in got["message"][2]


def test_empty_and_null_series() -> None:
    assert core.validate(pl.Series([], dtype=pl.String), "sts").height == 0
    got = core.validate(pl.Series([None, None]), "sts")
    assert got["reason"].to_list() == ["null_text", "null_text"]


def test_input_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="task_types has 1 rows"):
        core.validate(pl.Series(["{}", "{}"]), pl.Series(["sts"]))
    with pytest.raises(TypeError, match="String or Binary"):
        core.validate(pl.Series([1, 2]), "sts")
    with pytest.raises(ValueError, match="schema 'bad'"):
        core.validate(pl.Series(["{}"]), "bad", schemas={"bad": {"type": 12}})


def test_many_rows_parallel_and_chunked() -> None:
    good = json.dumps({"S1": "a", "S2": "b", "S3": "c"})
    s = pl.concat([pl.Series([good, "x"] * 5000), pl.Series([good] * 3001)], rechunk=False)
    got = core.validate(s, "sts")
    assert got.height == 13001
    assert got["ok"].sum() == 8001
    assert got["ok"][:10].to_list() == [True, False] * 5


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60)),
        min_size=1,
        max_size=40,
    ),
    st.integers(1, 4),
)
def test_unpacked_values_long_and_multichunk(rows: list, nchunks: int) -> None:
    # Long values become zero-copy views into the input buffers; check them across
    # several input chunks, with escapes (copied) and without (shared).
    texts = [json.dumps({"S1": a, "S2": b, "S3": c}, ensure_ascii=bool(len(a) % 2)) for a, b, c in rows]
    step = -(-len(texts) // nchunks)
    series = pl.concat(
        [pl.Series(texts[i : i + step], dtype=pl.String) for i in range(0, len(texts), step)], rechunk=False
    )
    got = core.validate(series, "sts", unpack=True)
    want = validate_ref(texts, "sts", ALL)
    for i, (g, w) in enumerate(zip(got.iter_rows(named=True), want)):
        assert (g["ok"], g["reason"]) == (w["ok"], w["reason"]), (texts[i], g, w)
        if w["ok"]:
            assert [g["S1"], g["S2"], g["S3"]] == w["values"] == list(rows[i])
