"""The quality gate of e5x clean: hand-written good and junk answers, thresholds, off
switches, the CLI/TOML settings, the report, and the not_a_task check synth reuses."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e5x import core
from e5x.cleaning import CleanConfig, clean
from e5x.cleaning import quality as q
from e5x.tasks.taxonomy import load_task_types, task_types

FIXTURES = Path(__file__).parent / "fixtures"
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def template_line(task_type: str) -> str:
    """The longest stretch of a task type's current prompt without a placeholder: what a
    model that echoes its instructions copies."""
    prompt = task_types()[task_type].prompt
    parts = [p.strip().lstrip("- ") for p in re.split(r"\{[^{}]*\}|\n", prompt)]
    return max(parts, key=lambda p: len(p.split()))


def load(name: str) -> list[dict]:
    """Fixture entries; "@template" in an answer value is replaced by the task type's
    :func:`template_line` in its place (prompts are reworded; the echo must follow)."""
    out = []
    for line in (FIXTURES / name).read_text().splitlines():
        if not line.strip():
            continue
        e = json.loads(line)
        for k, v in e["answer"].items():
            if "@template" in v:
                e["answer"][k] = v.replace("@template", template_line(e["task_type"]))
        out.append(e)
    return out


def log_records(entries: list[dict]) -> list[dict]:
    """Response-log records as e5x synth writes them (``meta`` holds the task, the
    requested language and the placeholder draws)."""
    out = []
    for i, e in enumerate(entries):
        out.append(
            {
                "id": f"examples-{e['task_type']}-{i:06d}",
                "step": "examples",
                "task_type": e["task_type"],
                "model": "m",
                "content": json.dumps(e["answer"], ensure_ascii=False),
                "refusal": None,
                "finish_reason": "stop",
                "meta": {"task": e["task"], "language": e["language"], "placeholders": e["placeholders"]},
            }
        )
    return out


def run_clean(tmp_path: Path, entries: list[dict], **cfg) -> tuple[dict, pl.DataFrame]:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    with (run / "responses.jsonl").open("w") as f:
        for r in log_records(entries):
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    out = tmp_path / "t.parquet"
    report = clean(CleanConfig(inputs=[str(run)], out=str(out), chart="", **cfg))
    return report, pl.read_parquet(out)


def verdicts(report: dict) -> dict[str, str]:
    """id -> reason of every rejected row the report shows (examples_per_reason is large)."""
    return {e["id"]: r for r, exs in report["examples"].items() for e in exs}


def test_quality_fixtures_cover_the_recipe():
    good, junk = load("quality_good.jsonl"), load("quality_junk.jsonl")
    assert len(good) >= 60 and len(junk) >= 60
    assert set(Counter(e["task_type"] for e in good)) == set(task_types())
    langs = {lang for e in good for lang in e["language"].split("-")}
    assert len(langs) >= 8, langs
    assert set(e["reason"] for e in junk) == {*(k for k in q.DEFAULTS)}


def test_quality_good_answers_are_kept(tmp_path: Path):
    good = load("quality_good.jsonl")
    report, df = run_clean(tmp_path, good, examples_per_reason=100)
    assert report["kept"] >= 0.95 * len(good), report["examples"]
    assert df.height == report["kept"]


def test_quality_code_in_a_document_is_not_residue(tmp_path: Path):
    """Documents a programming task asks for hold braces, %d and arr[i]: kept, every one."""
    code = [e for e in load("quality_good.jsonl") if any(m in str(e["answer"]) for m in ("printf(", ".count("))]
    assert len(code) >= 2
    report, df = run_clean(tmp_path, code, examples_per_reason=100)
    assert report["kept"] == len(code), report["examples"]


def test_quality_examples_in_prose_are_not_residue(tmp_path: Path):
    """A JSON object with keys of its own, and format specifiers quoted as inline code, in
    prose without code marks: examples the text gives, kept."""
    prose = [e for e in load("quality_good.jsonl") if any(m in str(e["answer"]) for m in ('"suggestions"', "`%s`"))]
    assert len(prose) == 2
    report, _ = run_clean(tmp_path, prose, examples_per_reason=100)
    assert report["kept"] == len(prose), report["examples"]


def test_quality_junk_is_rejected_by_its_reason(tmp_path: Path):
    junk = load("quality_junk.jsonl")
    report, _ = run_clean(tmp_path, junk, examples_per_reason=100)
    got = verdicts(report)
    right = [e for i, e in enumerate(junk) if got.get(f"examples-{e['task_type']}-{i:06d}") == e["reason"]]
    wrong = [
        (e["reason"], got.get(f"examples-{e['task_type']}-{i:06d}"), e["note"])
        for i, e in enumerate(junk)
        if got.get(f"examples-{e['task_type']}-{i:06d}") != e["reason"]
    ]
    assert len(right) >= 0.9 * len(junk), wrong
    # Every check catches most of its own kind.
    per = Counter(e["reason"] for e in right)
    for reason, n in Counter(e["reason"] for e in junk).items():
        assert per[reason] >= 0.75 * n, (reason, wrong)


def test_quality_junk_passes_with_the_gate_off(tmp_path: Path):
    """Without the gate the junk is valid JSON of the right shape: the gate is what rejects it."""
    junk = load("quality_junk.jsonl")
    report, _ = run_clean(tmp_path, junk, quality_checks="none", semantic_checks=False)
    assert report["rejected"] <= 0.1 * len(junk), report["by_reason"]
    assert report["quality_checks"] == {}


def test_quality_mixed_log_judges_each_answer_as_alone(tmp_path: Path):
    """Good and junk answers in one log get the verdicts each kind gets in a log of its own
    (polars 2.1 once panicked here formatting the not_a_task messages)."""
    good, junk = load("quality_good.jsonl"), load("quality_junk.jsonl")
    alone = Counter()
    for name, entries in (("good", good), ("junk", junk)):
        (tmp_path / name).mkdir()
        alone += Counter(run_clean(tmp_path / name, entries)[0]["by_reason"])
    mixed, _ = run_clean(tmp_path, good + junk, examples_per_reason=100)
    assert mixed["by_reason"] == dict(alone) and alone["not_a_task"] >= 1
    assert all(e["message"].startswith("task definition ") for e in mixed["examples"]["not_a_task"])


def test_quality_report_says_why(tmp_path: Path):
    junk = load("quality_junk.jsonl")
    report, _ = run_clean(tmp_path, junk, examples_per_reason=2, excerpt_chars=40)
    assert report["quality_checks"] == q.DEFAULTS
    for reason in ("format_residue", "degenerate", "prompt_echo", "too_few_words", "wrong_language", "not_a_task"):
        assert report["by_reason"][reason] >= 1
        ex = report["examples"][reason]
        assert 1 <= len(ex) <= 2 and all(len(e["excerpt"]) <= 41 and e["message"] for e in ex)
    per_type = report["by_task_type_reason"]
    assert sum(sum(v.values()) for v in per_type.values()) == report["rejected"]
    assert per_type["bitext"]["wrong_language"] >= 1
    fields = report["by_reason_field"]
    assert fields["not_a_task:instruction"] == report["by_reason"]["not_a_task"]
    # the message names the field and what was found
    msg = next(e["message"] for e in report["examples"]["too_few_words"])
    assert "words where the request asked for" in msg


def test_quality_chart_has_rejections(tmp_path: Path):
    junk = load("quality_junk.jsonl")[:20]
    run = tmp_path / "run"
    run.mkdir()
    (run / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log_records(junk)))
    report = clean(CleanConfig(inputs=[str(run)], out=str(tmp_path / "t.parquet")))
    png = Path(report["chart"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("all", q.DEFAULTS),
        ("none", {}),
        ("-wrong_language", {k: v for k, v in q.DEFAULTS.items() if k != "wrong_language"}),
        ("none,prompt_echo=6", {"prompt_echo": 6.0}),
        (
            {"wrong_language": False, "degenerate": 0.4},
            {**{k: v for k, v in q.DEFAULTS.items() if k != "wrong_language"}, "degenerate": 0.4},
        ),
        ("too_few_words=off", {k: v for k, v in q.DEFAULTS.items() if k != "too_few_words"}),
    ],
)
def test_quality_settings_parse(setting, expected):
    assert q.parse_checks(setting) == expected


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ("prompt_eco", "unknown quality check 'prompt_eco'"),
        ("degenerate=lots", "not a number"),
        ("prompt_echo=6.5", "whole number"),
        ("degenerate=0.1", r"outside \[0.25, 1\]"),
        ("prompt_echo=2", r"outside \[4, 64\]"),
    ],
)
def test_quality_bad_settings_name_the_check(setting, match):
    with pytest.raises(ValueError, match=match):
        q.gate(setting)


def test_quality_cli_flag_and_toml(tmp_path: Path, capsys):
    from e5x.cli import main

    junk = load("quality_junk.jsonl")
    run = tmp_path / "run"
    run.mkdir()
    (run / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log_records(junk)))
    out = str(tmp_path / "t.parquet")
    assert main(["clean", str(run), "--out", out, "--chart", "", "--json", "--quality-checks", "none,degenerate"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["quality_checks"] == {"degenerate": 0.5} and set(rep["by_reason"]) <= {
        "degenerate",
        "identical_fields",
        "duplicate",
    }
    toml = tmp_path / "clean.toml"
    toml.write_text(
        f'inputs = ["{run}"]\nout = "{out}"\nchart = ""\n[quality_checks]\nwrong_language = false\nprompt_echo = 6\n'
    )
    assert main(["clean", "--config", str(toml), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert "wrong_language" not in rep["quality_checks"] and rep["quality_checks"]["prompt_echo"] == 6
    assert "wrong_language" not in rep["by_reason"]
    assert main(["clean", str(run), "--quality-checks", "bogus"]) == 2
    assert "unknown quality check 'bogus'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Properties of the gate, on the validator directly (no files).

WORDS = "the cat sat on a mat Write one example for this task as JSON object with exactly these keys {x} [X] %s aaaa".split()
FIELD_TEXT = st.one_of(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=30).map(" ".join),
    st.text(min_size=1, max_size=60),
    st.sampled_from([e["answer"]["S1"] for e in load("quality_good.jsonl") if e["task_type"] in ("sts", "bitext")]),
)


@st.composite
def sts_rows(draw: st.DrawFn) -> list[tuple[str, str, int | None]]:
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        obj = {k: draw(FIELD_TEXT) for k in ("S1", "S2", "S3")}
        lang = draw(st.sampled_from(["English", "German", "French", "Japanese", "Swahili", "English-French"]))
        rows.append((json.dumps(obj, ensure_ascii=False), lang, draw(st.one_of(st.none(), st.integers(0, 40)))))
    return rows


def kept(rows: list[tuple[str, str, int | None]], checks) -> list[bool]:
    texts = pl.Series([r[0] for r in rows], dtype=pl.String)
    tt = (
        "sts"
        if all(r[1].count("-") == 0 for r in rows)
        else pl.Series(["bitext" if "-" in r[1] else "sts" for r in rows])
    )
    v = core.validate(
        texts,
        tt,
        gate=q.gate(checks),
        gate_tasks=pl.Series(["Retrieve semantically similar text."] * len(rows)),
        gate_languages=pl.Series([r[1] for r in rows]),
        gate_min_words={"S1": pl.Series([r[2] for r in rows], dtype=pl.Int64)},
    )
    return v["ok"].to_list()


STRICTER = {
    "format_residue": (0.2, 0.7),
    "degenerate": (0.3, 0.8),
    "prompt_echo": (4, 10),
    "too_few_words": (0.9, 0.3),
    "wrong_language": (0.1, 0.9),
}


@SETTINGS
@given(rows=sts_rows(), check=st.sampled_from(sorted(STRICTER)))
def test_quality_stricter_threshold_never_keeps_more(rows, check):
    strict, loose = STRICTER[check]
    a = kept(rows, {check: strict})
    b = kept(rows, {check: loose})
    assert all(not x or y for x, y in zip(a, b)), (check, rows)


@SETTINGS
@given(rows=sts_rows(), check=st.sampled_from(sorted(STRICTER)))
def test_quality_turning_a_check_off_never_rejects_more(rows, check):
    on = kept(rows, "all")
    off = kept(rows, f"-{check}")
    assert all(not x or y for x, y in zip(on, off)), (check, rows)


@SETTINGS
@given(
    values=st.lists(st.text(max_size=80), min_size=3, max_size=3), lang=st.text(max_size=20), task=st.text(max_size=40)
)
def test_quality_gate_never_raises_on_valid_utf8(values, lang, task):
    obj = dict(zip(("S1", "S2", "S3"), values))
    texts = pl.Series([json.dumps(obj, ensure_ascii=False), json.dumps(obj)], dtype=pl.String)
    v = core.validate(
        texts,
        "sts",
        gate=q.gate("all"),
        gate_tasks=pl.Series([task, task]),
        gate_languages=pl.Series([lang, lang]),
        gate_min_words={"S1": pl.Series([3, None], dtype=pl.Int64)},
    )
    assert v.height == 2 and "internal_error" not in v["reason"].to_list()
    assert core.task_problems([task, *values]) is not None


# ---------------------------------------------------------------------------------------
# not_a_task: one check, used by clean and by synth's task pool.


@pytest.mark.parametrize(
    ("task", "bad"),
    [
        ("Given a question about a medication, retrieve leaflets that answer it.", False),
        ("Classify a product review by the aspect the customer complains about most.", False),
        ("Given a Python name like parse_args, retrieve its documentation page.", False),
        ("semantic_search", True),
        ("documentRetrieval", True),
        ("Retrieval.", True),
        ("task_1 task_2 task_3 find", True),
        ("Classify {input_text} into {label} please", True),
    ],
)
def test_quality_not_a_task(task, bad):
    assert (core.task_problems([task])[0] is not None) == bad


def test_quality_synth_pool_drops_non_tasks():
    from e5x.synth.plan import build_pool

    tasks = ["Given a bug report, find forum threads that explain the fix.", "bug_report_retrieval", "Retrieval"]
    pool, stats = build_pool([{"id": "brainstorm-short_long-000000", "content": json.dumps({"tasks": tasks})}])
    assert pool == tasks[:1]
    assert stats["not_a_task"] == 2


# ---------------------------------------------------------------------------------------
# The per-field plan comes from what a task type declares, built-in or custom.

# What the gate checks per field of each built-in type: the language part wrong_language
# compares with (-1: none; "English-French" -> 0 English, 1 French) and the source of the
# words too_few_words asks for (a placeholder of the request, or a fixed number).
BUILTIN_PLANS = {
    "short_long": (
        {"user_query": 0, "positive_document": 0, "hard_negative_document": 0},
        {"user_query": "query_length", "positive_document": "num_words", "hard_negative_document": "num_words"},
    ),
    "long_short": ({"input_text": 0, "label": -1, "misleading_label": -1}, {"input_text": "num_words"}),
    "short_short": ({"input": 0, "positive_document": 0}, {}),
    "long_long": ({"input": 0, "positive_document": 0}, {"input": 300, "positive_document": 300}),
    "sts": ({"S1": 0, "S2": 0, "S3": 0}, {"S1": "unit", "S2": "unit", "S3": "unit"}),
    "bitext": ({"S1": 0, "S2": 1, "S3": 1}, {"S1": "unit", "S2": "unit", "S3": "unit"}),
}


def test_quality_builtin_plans_are_pinned():
    types = task_types()
    assert set(types) == set(BUILTIN_PLANS)
    gate_types = q.gate_types(types, {n: t.schema for n, t in types.items()})
    assert [(n, p) for n, p, _ in gate_types] == [(n, t.prompt) for n, t in types.items()]
    for name, _, fields in gate_types:
        languages, words = BUILTIN_PLANS[name]
        assert dict(fields) == languages and [f for f, _ in fields] == list(languages), name
        assert q.min_words_fields(types[name]) == words, name
    assert q.placeholder_names(types) == ["query_length", "num_words", "unit"]


def custom_types(tmp_path: Path, declarations: str) -> Path:
    f = tmp_path / "types.toml"
    f.write_text(
        """
[task_types.faq]
brainstorm_prompt = "List {n_tasks} FAQ retrieval tasks as JSON."
prompt = "Task: {task}. Write a {question_length} question in {language} and its answer as JSON."
fields = { question = "a question", answer = "its answer" }
mapping = { query = "question", positive = "answer" }
"""
        + declarations
        + """
[task_types.faq.placeholders]
question_length = ["at least 8 words", "less than 6 words"]
language = "@languages"
"""
    )
    return f


FAQ_TASK = "Given a question about filing taxes, retrieve the FAQ entry that answers it."
FAQ_ANSWER = (
    "You can file your return online through the official portal. Sign in with your account, "
    "fill in the form for the last year, attach your documents and submit it before the deadline."
)
FAQ_ANSWERS = {  # id suffix -> (question, requested length)
    "good": ("How do I file my tax return online if I live abroad?", "at least 8 words"),
    "short": ("Filing taxes abroad?", "at least 8 words"),
    "short_but_asked": ("Taxes when living abroad?", "less than 6 words"),
    "german": (
        "Wie kann ich die Steuererklärung für das letzte Jahr online einreichen, wenn ich im Ausland lebe?",
        "at least 8 words",
    ),
}


def run_faq(tmp_path: Path, types_file: Path) -> dict[str, tuple[str | None, str | None]]:
    """Cleans one answer per FAQ_ANSWERS entry, all requested in English; id -> (reason, field)."""
    run = tmp_path / "run"
    run.mkdir()
    records = [
        {
            "id": f"examples-faq-{key}",
            "step": "examples",
            "task_type": "faq",
            "model": "m",
            "content": json.dumps({"question": question, "answer": FAQ_ANSWER}, ensure_ascii=False),
            "refusal": None,
            "finish_reason": "stop",
            "meta": {
                "task": FAQ_TASK,
                "language": "English",
                "placeholders": {"question_length": length, "language": "English"},
            },
        }
        for key, (question, length) in FAQ_ANSWERS.items()
    ]
    (run / "responses.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    out = tmp_path / "t.parquet"
    report = clean(
        CleanConfig(inputs=[str(run)], out=str(out), chart="", task_types_file=str(types_file), examples_per_reason=10)
    )
    got = {e["id"]: (reason, e.get("field")) for reason, exs in report["examples"].items() for e in exs}
    assert report["kept"] + len(got) == len(records)
    return {key: got.get(f"examples-faq-{key}", (None, None)) for key in FAQ_ANSWERS}


def test_quality_custom_type_declares_its_field_plans(tmp_path: Path):
    f = custom_types(tmp_path, 'field_min_words = { question = "question_length", answer = 20 }\n')
    faq = load_task_types(f)["faq"]
    # One language placeholder and no field_languages: the mapped fields are checked.
    assert q.language_fields(faq) == {"question": 0, "answer": 0}
    assert q.min_words_fields(faq) == {"question": "question_length", "answer": 20}
    assert q.placeholder_names(task_types({"faq": faq})) == ["query_length", "num_words", "unit", "question_length"]
    assert run_faq(tmp_path, f) == {
        "good": (None, None),
        "short": ("too_few_words", "question"),
        "short_but_asked": (None, None),
        "german": ("wrong_language", "question"),
    }


def test_quality_custom_type_without_declarations_gets_no_plan(tmp_path: Path):
    """No field_min_words: no minimum; field_languages = {} (or no language placeholder):
    no field is checked for its language."""
    f = custom_types(tmp_path, "field_languages = {}\n")
    faq = load_task_types(f)["faq"]
    assert q.language_fields(faq) == {} and q.min_words_fields(faq) == {}
    assert q.gate_types({"faq": faq}, {"faq": faq.schema}) == [("faq", faq.prompt, [("question", -1), ("answer", -1)])]
    assert all(v == (None, None) for v in run_faq(tmp_path, f).values())
    # Two language placeholders and no field_languages: which field is in which is unknown.
    two = custom_types(tmp_path, 'language_from = ["language", "other"]\n')
    two.write_text(two.read_text().replace('language = "@languages"', 'language = "@languages"\nother = "@languages"'))
    assert q.language_fields(load_task_types(two)["faq"]) == {}


def test_quality_custom_bitext_checks_each_side_against_its_language(tmp_path: Path):
    f = tmp_path / "types.toml"
    f.write_text(
        """
[task_types.pairs]
task = "Retrieve parallel sentences."
prompt = "Task: {task}. One {unit} in {src} and its translation into {tgt}, as JSON."
fields = { source = "a text", target = "its translation" }
mapping = { query = "source", positive = "target" }
language_from = ["src", "tgt"]
field_languages = { source = "src", target = "tgt" }
field_min_words = { source = "unit", target = "unit" }
[task_types.pairs.placeholders]
unit = ["sentence", "passage"]
src = "@languages"
tgt = "@languages"
"""
    )
    pairs = load_task_types(f)["pairs"]
    assert q.language_fields(pairs) == {"source": 0, "target": 1}
    english = "The weather was cold and rainy, so we stayed at home and read our books all afternoon."
    german = "Das Wetter war kalt und regnerisch, also blieben wir zu Hause und lasen den ganzen Nachmittag."
    rows = [
        json.dumps({"source": english, "target": german}, ensure_ascii=False),
        json.dumps({"source": english, "target": english}),
        json.dumps({"source": german, "target": german}, ensure_ascii=False),
    ]
    v = core.validate(
        pl.Series(rows),
        "pairs",
        schemas={"pairs": pairs.schema},
        gate=q.gate("all", task_types({"pairs": pairs})),
        gate_tasks=pl.Series([pairs.task] * 3),
        gate_languages=pl.Series(["English-German"] * 3),
    )
    assert list(zip(v["reason"], v["field"])) == [
        (None, None),
        ("wrong_language", "target"),
        ("wrong_language", "source"),
    ]


@pytest.mark.parametrize(
    ("declarations", "match"),
    [
        ('field_languages = { title = "language" }\n', "field_languages names 'title', which is not a string field"),
        ('field_languages = { question = "question_length" }\n', "'question_length' is not a language placeholder"),
        ('field_min_words = { answer = "language" }\n', "'language' is not a placeholder with values"),
        ('field_min_words = { answer = "length" }\n', "'length' is not a placeholder with values"),
        ("field_min_words = { answer = 0 }\n", "must be at least 1"),
        ("field_min_words = { answer = 2.5 }\n", "placeholder name or a whole number of words"),
        ('field_min_words = "question_length"\n', r"`field_min_words` must be a table"),
    ],
)
def test_quality_bad_field_declarations_name_the_problem(tmp_path: Path, declarations, match):
    with pytest.raises(ValueError, match=match) as e:
        load_task_types(custom_types(tmp_path, declarations))
    assert "'faq'" in str(e.value)
