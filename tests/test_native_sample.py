"""sample_placeholders + render (Rust) against the pure-Python twins, and the .pyi stub."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import e5x
from e5x import _native
from e5x import core
from e5x.cleaning.reference import BLOCK, render_ref, sample_ref

weights = st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=7).filter(lambda w: sum(w) > 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(weights, min_size=1, max_size=3), st.integers(0, 300), st.integers(0, 2**64 - 1))
def test_sample_matches_reference(ws: list, n: int, seed: int) -> None:
    ph = {f"p{k}": {f"v{k}_{i}_" + "x" * i * 3: w for i, w in enumerate(wl)} for k, wl in enumerate(ws)}
    got = core.sample_placeholders(ph, n, seed)
    want = sample_ref(ph, n, seed)
    assert got.columns == list(ph)
    assert {c: got[c].to_list() for c in got.columns} == want


def test_sample_crosses_blocks_like_reference() -> None:
    ph = {"lang": {"en": 43.0, "de": 3.0, "xx": 0.0, "fr": 3.0}, "unit": ["sentence", "phrase", "passage"]}
    n = BLOCK + 17
    got = core.sample_placeholders(ph, n, 7)
    assert {c: got[c].to_list() for c in got.columns} == sample_ref(ph, n, 7)
    assert "xx" not in set(got["lang"].to_list())


def test_sample_same_for_any_thread_count() -> None:
    code = (
        "import polars as pl, e5x.core as c;"
        "df=c.sample_placeholders({'a':{'x':1.0,'y':2.0,'z':0.5},'b':list('pqrs')},200000,11);"
        "print(df.hash_rows().sum())"
    )
    outs = set()
    for threads in ("1", "2", "3"):
        env = {**os.environ, "RAYON_NUM_THREADS": threads}
        outs.add(
            subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        )
    assert len(outs) == 1


def test_sample_frequencies_and_errors() -> None:
    df = core.sample_placeholders({"l": {"a": 0.8, "b": 0.2}}, 100_000, 1)
    frac = (df["l"] == "a").mean()
    assert abs(frac - 0.8) < 0.01
    assert core.sample_placeholders({"l": ["a"]}, 0, 1).height == 0
    assert core.sample_placeholders({"n": [50, 100]}, 5, 1)["n"].is_in(["50", "100"]).all()
    with pytest.raises(ValueError, match="placeholder 'l'"):
        core.sample_placeholders({"l": {"a": -1.0}}, 3, 1)
    with pytest.raises(ValueError, match="placeholder 'l'"):
        core.sample_placeholders({"l": []}, 3, 1)
    with pytest.raises(ValueError, match="seed"):
        core.sample_placeholders({"l": ["a"]}, 3, -1)


template_st = st.lists(
    st.one_of(
        st.text(st.characters(exclude_characters="{}", exclude_categories=("Cs",)), max_size=5),
        st.sampled_from(["{a}", "{b}", "{{", "}}", "{long name}"]),
    ),
    max_size=8,
).map("".join)


@settings(max_examples=100, deadline=None)
@given(template_st, st.lists(st.tuples(st.text(max_size=20), st.text(max_size=3)), max_size=20))
def test_render_matches_reference(template: str, rows: list) -> None:
    df = pl.DataFrame(
        {"a": [r[0] for r in rows], "b": [r[1] for r in rows], "long name": ["L"] * len(rows)},
        schema={"a": pl.String, "b": pl.String, "long name": pl.String},
    )
    got = core.render(template, df)
    assert got.to_list() == render_ref(template, df.to_dicts())


def test_render_errors_name_placeholder_and_row() -> None:
    df = pl.DataFrame({"a": ["x", None]})
    with pytest.raises(ValueError, match=r"\{zz\}"):
        core.render("{a} {zz}", df)
    with pytest.raises(ValueError, match="row 1: placeholder 'a' is null"):
        core.render("<{a}>", df)
    with pytest.raises(ValueError, match="unclosed"):
        core.render("{a", df)
    with pytest.raises(ValueError, match="single"):
        core.render("a}", df)
    assert core.render("{n}!", pl.DataFrame({"n": [1, 2]})).to_list() == ["1!", "2!"]


def test_sample_then_render_million_rows() -> None:
    ph = {"lang": {"English": 43.0, "German": 3.0, "Japanese": 3.0}, "len": ["short", "a much longer value here"]}
    df = core.sample_placeholders(ph, 1_000_000, 3)
    out = core.render("Write in {lang}, {len}. {{json}}", df)
    assert out.len() == 1_000_000
    assert out[0] == f"Write in {df['lang'][0]}, {df['len'][0]}. {{json}}"


def test_stub_matches_module() -> None:
    stub = Path(e5x.__file__).with_name("_native.pyi")
    tree = ast.parse(stub.read_text())
    declared: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            declared[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            declared[node.target.id] = node
    public = {n for n in dir(_native) if not n.startswith("_")} | {"__version__"}
    assert public == set(declared)
    for name, node in declared.items():
        obj = getattr(_native, name)
        if isinstance(node, ast.FunctionDef):
            params = [a.arg for a in node.args.args]
            assert list(inspect.signature(obj).parameters) == params, name
        elif isinstance(node, ast.ClassDef):
            members = {b.name: b for b in node.body if isinstance(b, ast.FunctionDef)}
            runtime = {m for m in dir(obj) if not m.startswith("_")}
            assert runtime == {m for m in members if not m.startswith("_")}, name
            for m, fn in members.items():
                if m == "__new__":
                    sig = inspect.signature(obj)
                elif isinstance(inspect.getattr_static(obj, m), property) or not callable(getattr(obj, m)):
                    continue
                else:
                    sig = inspect.signature(getattr(obj, m))
                    params = [a.arg for a in fn.args.args][1:]
                    assert [p for p in sig.parameters if p != "self"] == params, f"{name}.{m}"
                    continue
                assert list(sig.parameters) == [a.arg for a in fn.args.args][1:], f"{name}.__new__"
