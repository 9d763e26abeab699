"""Inputs that once aborted the interpreter (SIGABRT, which no ``try`` catches) now raise a
clear Python error or work. Each runs in a subprocess, so an abort fails the test instead
of killing the test session."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import polars as pl
import pytest

from e5x import core


def run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    prog = "import polars as pl\nfrom e5x import core\n" + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120)


def ok_line(code: str) -> str:
    """Run ``code`` isolated; it must exit normally. Returns its last stdout line."""
    r = run_isolated(code)
    assert r.returncode == 0, f"exit {r.returncode} (negative = killed by a signal)\n{r.stderr[-2000:]}"
    return r.stdout.strip().splitlines()[-1]


def test_nul_byte_in_a_series_name_validates():
    out = ok_line("""
        df = core.validate(pl.Series('\\x00', ['{"S1": "a", "S2": "b", "S3": "c"}', '{}']), 'sts')
        tt = core.validate(pl.Series('x', ['{}']), pl.Series('\\x00', ['sts']))
        print(df['ok'].to_list(), tt['ok'].to_list())
    """)
    assert out == "[True, False] [False]"


def test_nul_byte_in_a_column_name_renders_and_dedups():
    out = ok_line("""
        r = core.render('<{\\x00}>', pl.DataFrame({'\\x00': ['a', 'b']}))
        d = core.Deduplicator().add(pl.DataFrame({'\\x00': ['x', 'x', 'y']}), ['\\x00'])
        print(r.to_list(), d['keep'].to_list())
    """)
    assert out == "['<a>', '<b>'] [True, False, True]"


def test_nul_byte_in_a_placeholder_name_is_an_error_or_works():
    r = run_isolated("""
        try:
            df = core.sample_placeholders({'\\x00': ['x']}, 3, seed=0)
            print('ok', df.height)
        except Exception as e:
            print('error', type(e).__name__)
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[0] in ("ok", "error")


def test_huge_n_is_a_value_error_before_allocating():
    out = ok_line("""
        try:
            core.sample_placeholders({'a': ['x']}, 2**50, seed=0)
        except ValueError as e:
            print('ValueError', e)
    """)
    assert out.startswith("ValueError drawing n=1125899906842624 rows of 1 placeholder(s) would need")
    assert "GiB of memory" in out
    # Beyond usize: rejected by the argument conversion, still no abort.
    r = run_isolated("core.sample_placeholders({'a': ['x']}, 2**64 + 1, seed=0)")
    assert r.returncode == 1 and "OverflowError" in r.stderr


def test_render_output_size_is_checked_before_building():
    # One row rendering to ~5 GiB: refused from the measured size, nothing is built.
    out = ok_line("""
        import os, resource
        core.render('{a}', pl.DataFrame({'a': ['x']}))  # thread pools up before the limit
        vsz = int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE')
        limit = vsz + (2 << 30)  # building the 5 GiB row would hit it (and abort, before the fix)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            core.render('{a}' * 5000, pl.DataFrame({'a': ['x' * (1 << 20)]}))
        except ValueError as e:
            print('ValueError', e)
    """)
    assert out.startswith("ValueError rows 0..1 render to 5242880000 bytes")


def test_a_shared_deduplicator_serialises_threads():
    d = core.Deduplicator(casefold=True)
    batches = [
        pl.DataFrame({"t": [f"row {i % 5000}" for i in range(k, k + 20_000)]}) for k in range(0, 160_000, 20_000)
    ]
    errors: list[BaseException] = []
    kept: list[int] = []

    def work(df: pl.DataFrame) -> None:
        try:
            kept.append(int(d.add(df, ["t"])["keep"].sum()))
        except BaseException as e:  # noqa: BLE001 - the test reports any
            errors.append(e)

    threads = [threading.Thread(target=work, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # Every batch was applied whole, one at a time: 5,000 distinct rows kept in total.
    assert sum(kept) == 5000 and d.seen == 160_000 and d.unique == 5000


def test_validate_and_add_on_one_deduplicator_from_many_threads():
    d = core.Deduplicator()
    rows = [f'{{"S1": "s {i % 300}", "S2": "b", "S3": "c"}}' for i in range(3000)]
    errors: list[BaseException] = []
    kept: list[int] = []

    def work(k: int) -> None:
        try:
            if k % 2:
                out = core.validate(pl.Series(rows), "sts", dedup=d, dedup_fields=["S1"])
            else:
                out = d.add(pl.DataFrame({"S1": [f"s {i % 300}" for i in range(3000)]}), ["S1"])
            kept.append(int(out["keep"].sum()))
        except BaseException as e:  # noqa: BLE001 - the test reports any
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sum(kept) == 300 and d.seen == 18_000


@pytest.mark.parametrize("n", [0, 1, 4097])
def test_render_still_renders_every_row(n: int):
    values = pl.DataFrame({"a": [f"v{i}" for i in range(n)], "b": ["é" * (i % 7) for i in range(n)]})
    out = core.render("{a}:{b}|{a}", values).to_list()
    assert out == [f"v{i}:{'é' * (i % 7)}|v{i}" for i in range(n)]
