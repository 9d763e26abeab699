"""e5x clean: raw synth answers -> triples Parquet, rejection report, mix chart.

The answers here are toy strings that exercise parsing, mapping and dedup; the quality
gate would reject them as too short or not a task, so these tests turn it off
(``NO_GATE``). The gate has its own tests in test_clean_quality.py."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from e5x.cleaning import CleanConfig, clean
from e5x.formats.triples import COLUMNS as TRIPLE_COLUMNS

NO_GATE = {"quality_checks": "none"}
SL = {"user_query": "q1", "positive_document": "long doc one", "hard_negative_document": "long neg one"}


def rec(i: int, task_type: str, content, **kw) -> dict:
    meta = {"task": kw.pop("task", f"task for {task_type}"), "language": kw.pop("language", "English")}
    r = {
        "id": f"examples-{task_type}-{i:06d}",
        "step": "examples",
        "task_type": task_type,
        "model": kw.pop("model", "big"),
        "content": content if isinstance(content, str) or content is None else json.dumps(content),
        "refusal": None,
        "finish_reason": "stop",
        "meta": meta,
    }
    r.update(kw)
    return r


def write_run(run: Path, records: list[dict]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    with (run / "responses.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return run


def sample_records() -> list[dict]:
    return [
        # kept
        rec(0, "short_long", SL),
        rec(
            1,
            "long_short",
            {"input_text": "The battery died after two days.", "label": "negative", "misleading_label": "neutral"},
        ),
        rec(2, "short_short", {"input": "Paris", "positive_document": "capital of France"}, language="French"),
        rec(3, "long_long", {"input": "a" * 50, "positive_document": "b" * 50}),
        rec(
            4,
            "sts",
            {"S1": "A cat sits.", "S2": "A cat is sitting.", "S3": "A dog runs."},
            task="Retrieve semantically similar text.",
        ),
        rec(5, "bitext", {"S1": "Hello", "S2": "Bonjour", "S3": "Bonsoir"}, language="English-French"),
        rec(6, "sts", "```json\n" + json.dumps({"S1": "x1", "S2": "x2", "S3": "x3"}) + "\n```"),  # extracted
        # rejected before the validator
        rec(7, "sts", None, refusal="I can't help with that."),
        rec(8, "sts", '{"S1": "cut off', finish_reason="length"),
        rec(9, "sts", ""),
        rec(10, "mystery", {"a": "b"}),
        # rejected by the validator
        rec(11, "sts", "this is not json at all"),
        rec(12, "sts", {"S1": "a", "S2": "b"}),
        rec(13, "sts", {"S1": "a", "S2": 3, "S3": "c"}),
        rec(14, "sts", {"S1": "a", "S2": "  ", "S3": "c"}),
        rec(15, "sts", {"S1": "a", "S2": "b", "S3": "c", "extra": "d"}),
        # semantic checks
        rec(16, "short_short", {"input": "same text", "positive_document": "same  text"}),
        rec(
            17,
            "long_short",
            {
                "input_text": "This is clearly about customer support quality.",
                "label": "customer support",
                "misleading_label": "billing",
            },
        ),
        # duplicate of 0 (same query and positive)
        rec(18, "short_long", {**SL, "hard_negative_document": "a different negative"}),
        # brainstorm answers are not examples
        {
            "id": "brainstorm-short_long-000000",
            "step": "brainstorm",
            "task_type": "short_long",
            "content": '{"tasks": []}',
        },
    ]


def test_clean_writes_triples_report_and_chart(tmp_path: Path):
    run = write_run(tmp_path / "run", sample_records())
    out = tmp_path / "out" / "syn.parquet"
    report = clean(CleanConfig(inputs=[str(run)], out=str(out), **NO_GATE))

    df = pl.read_parquet(out)
    assert tuple(df.columns) == TRIPLE_COLUMNS and all(t == pl.Utf8 for t in df.dtypes)
    assert df.height == report["kept"] == 7 and report["responses"] == 19 and report["rejected"] == 12
    rows = {r["task_type"] + str(r["query"]): r for r in df.to_dicts()}
    sl = rows["short_longq1"]
    assert (sl["instruction"], sl["positive"], sl["negative"]) == (
        "task for short_long",
        "long doc one",
        "long neg one",
    )
    assert sl["model"] == "big" and sl["source"] == "synthetic" and sl["language"] == "English"
    ls = rows["long_shortThe battery died after two days."]
    assert (ls["positive"], ls["negative"]) == ("negative", "neutral")
    assert rows["short_shortParis"]["negative"] is None and rows["short_shortParis"]["language"] == "French"
    assert rows["long_long" + "a" * 50]["negative"] is None
    assert rows["bitextHello"]["language"] == "English-French"
    assert rows["stsx1"]["positive"] == "x2"  # recovered from a code fence
    assert report["extracted_json"] == 1

    assert report["by_reason"] == {
        "refusal": 1, "truncated": 1, "empty_response": 1, "unknown_task_type": 1, "not_json": 1,
        "missing_field": 1, "wrong_type": 1, "empty_string": 1, "unexpected_field": 1,
        "identical_fields": 1, "label_in_input": 1, "duplicate": 1,
    }  # fmt: skip
    assert report["by_reason_field"]["missing_field:S3"] == 1
    assert report["by_reason_field"]["wrong_type:S2"] == 1
    assert report["by_reason_field"]["label_in_input:label"] == 1
    dup = report["examples"]["duplicate"][0]
    assert dup["id"] == "examples-short_long-000018" and "examples-short_long-000000" in dup["message"]
    assert report["by_task_type"]["sts"] == {"kept": 2, "rejected": 8}
    assert report["mix"]["task_type"]["sts"] == 2
    on_disk = json.loads((tmp_path / "out" / "syn.report.json").read_text())
    assert on_disk["by_reason"] == report["by_reason"]
    png = (tmp_path / "out" / "syn.mix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_clean_tolerates_torn_tail_and_dedups_across_runs(tmp_path: Path):
    a = write_run(tmp_path / "a", sample_records()[:3])
    with (a / "responses.jsonl").open("a") as f:
        f.write('{"id": "examples-sts-0001')  # kill -9 mid-write
    b = write_run(tmp_path / "b", [rec(0, "short_long", SL) | {"id": "other-run-id"}])
    report = clean(CleanConfig(inputs=[str(a), str(b)], out=str(tmp_path / "t.parquet"), chart="", **NO_GATE))
    assert report["kept"] == 3 and report["by_reason"] == {"duplicate": 1}
    assert report["logs_with_torn_tail"] == 1 and report["chart"] is None
    assert not (tmp_path / "t.mix.png").exists()


def test_clean_reads_logs_with_list_content_and_odd_meta(tmp_path: Path):
    # Earlier synth versions stored a list of content parts as it came; a hand-edited meta
    # may be anything. Both read without a traceback, the parts' text being the answer.
    parts = [{"type": "text", "text": json.dumps({"S1": "A cat sits.", "S2": "A cat is sitting.", "S3": "A dog."})}]
    run = write_run(tmp_path / "r", [rec(0, "sts", None) | {"content": parts},
                                     rec(1, "sts", {"S1": "x1", "S2": "x2", "S3": "x3"}) | {"meta": "odd"}])  # fmt: skip
    report = clean(CleanConfig(inputs=[str(run)], out=str(tmp_path / "t.parquet"), chart="", **NO_GATE))
    assert report["responses"] == 2 and report["kept"] == 1
    assert pl.read_parquet(tmp_path / "t.parquet")["query"].to_list() == ["A cat sits."]


def test_clean_errors_name_the_input(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clean(CleanConfig(inputs=[str(tmp_path / "nope")]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a synth run directory"):
        clean(CleanConfig(inputs=[str(tmp_path / "empty")]))


def test_cli_clean(tmp_path: Path, capsys):
    from e5x.cli import main

    run = write_run(tmp_path / "run", sample_records())
    assert main(["clean", str(run), "--out", str(tmp_path / "t.parquet"), "--json", "--quality-checks", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["kept"] == 7
    assert main(["clean", str(tmp_path / "missing")]) == 2


def test_synth_then_clean_end_to_end(tmp_path: Path, monkeypatch):
    from fake_openai import FakeOpenAI

    from e5x.synth import SynthConfig, synthesize

    monkeypatch.setenv("E5X_TEST_FAKE_KEY", "k")
    with FakeOpenAI() as server:
        server.faults["examples-sts-000001"] = ["length"]
        server.faults["examples-sts-000002"] = ["refusal"]
        cfg = SynthConfig(n_examples=30, progress=False, concurrency=8, tasks_per_brainstorm=5)
        cfg.endpoint.base_url, cfg.endpoint.api_key_env = server.base_url, "E5X_TEST_FAKE_KEY"
        cfg.brainstorm.models = cfg.examples.models = {"m": 1}
        assert synthesize(cfg, tmp_path / "run")["complete"]
    report = clean(CleanConfig(inputs=[str(tmp_path / "run")], out=str(tmp_path / "t.parquet"), **NO_GATE))
    assert report["responses"] == 30 and report["kept"] == 28
    assert report["by_reason"] == {"truncated": 1, "refusal": 1}
    df = pl.read_parquet(tmp_path / "t.parquet")
    pools = json.loads((tmp_path / "run" / "pools.json").read_text())["pools"]
    for r in df.filter(pl.col("task_type") == "short_long").to_dicts():
        assert r["instruction"] in pools["short_long"]
    assert set(df.filter(pl.col("task_type") == "sts")["instruction"]) == {"Retrieve semantically similar text."}


def test_custom_task_type_through_synth_and_clean(tmp_path: Path, monkeypatch):
    from fake_openai import FakeOpenAI, default_content, parse_request_id

    from e5x.synth import SynthConfig, synthesize

    types = tmp_path / "types.toml"
    types.write_text(
        "[task_types.faq]\n"
        'brainstorm_prompt = "List {n_tasks} FAQ tasks as JSON {{\\"tasks\\": [..]}}."\n'
        'prompt = "Task: {task}. Write a {tone} FAQ entry in {language} as JSON with question, answer."\n'
        'fields = { question = "a question", answer = "its answer" }\n'
        'mapping = { query = "question", positive = "answer" }\n'
        '[task_types.faq.placeholders]\ntone = { formal = 3, casual = 1 }\nlanguage = "@languages"\n'
    )

    def content(rid: str, body: dict) -> str:
        step, task_type, i = parse_request_id(rid)
        if step == "brainstorm":
            return default_content(rid, body)
        return json.dumps({"question": f"How do I do thing {i}?", "answer": f"Like this, {i}."})

    monkeypatch.setenv("E5X_TEST_FAKE_KEY", "k")
    with FakeOpenAI(content_fn=content) as server:
        cfg = SynthConfig(n_examples=8, task_weights={"faq": 1}, task_types_file=str(types), progress=False)
        cfg.endpoint.base_url, cfg.endpoint.api_key_env = server.base_url, "E5X_TEST_FAKE_KEY"
        cfg.brainstorm.models = cfg.examples.models = {"m": 1}
        assert synthesize(cfg, tmp_path / "run")["complete"]
        prompts = [a.body["messages"][-1]["content"] for a in server.arrivals if a.rid.startswith("examples")]
    assert all(p.startswith("Task: ") and (" formal FAQ" in p or " casual FAQ" in p) for p in prompts)
    # clean finds the custom type through the run's config.json.
    report = clean(CleanConfig(inputs=[str(tmp_path / "run")], out=str(tmp_path / "t.parquet"), chart=""))
    assert report["kept"] == 8, report["by_reason"]
    df = pl.read_parquet(tmp_path / "t.parquet")
    assert set(df["task_type"]) == {"faq"} and df["negative"].null_count() == 8
    assert df["query"][0].startswith("How do I do thing")


def test_mixed_task_types_keep_log_order_and_mapping(tmp_path: Path):
    """One batch of every task type, interleaved with rejections: each kept triple must come
    from its own row through its own type's mapping, in log order. Also pins the rules that
    follow Python's str semantics (whitespace incl. \\x1c and U+3000, casefold)."""
    records = [
        rec(0, "short_long", {"user_query": "sl q", "positive_document": "sl pos", "hard_negative_document": "sl neg"}),
        rec(1, "sts", {"S1": "shared one", "S2": "shared two", "S3": "sts three"}),
        # "Straße" casefolds to "strasse": the label leaked (lowercasing would miss it)
        rec(2, "long_short", {"input_text": "It came late; the strasse quality was poor.", "label": "Straße Quality", "misleading_label": "shipping"}),
        rec(3, "short_short", {"input": "ss in", "positive_document": "ss pos"}, language="German"),
        # bitext maps S1/S2 like sts: a duplicate across task types (whitespace-normalised)
        rec(4, "bitext", {"S1": "shared one", "S2": "shared  two", "S3": "bitext three"}),
        rec(5, "long_short", {"input_text": "long text about billing", "label": "billing question", "misleading_label": "refund"}),
        rec(6, "short_short", {"input": "a\x1cb", "positive_document": "a b"}),  # \x1c is whitespace to str.split
        rec(7, "sts", "\x1c\u3000"),  # whitespace only
        rec(8, "long_long", {"input": "ll in", "positive_document": "ll pos"}, model="small"),
        rec(9, "sts", {"S1": "x", "S2": "y", "S3": "y\u2003"}),  # negative equals positive
        rec(10, "bitext", {"S1": "hello", "S2": "bonjour", "S3": "salut"}, language="English-French"),
        rec(11, "short_long", {"user_query": "sl q", "positive_document": "sl pos", "hard_negative_document": "other"}),
        rec(12, "long_short", {"input_text": "Great phone.", "label": "positive", "misleading_label": "negative"}),
    ]  # fmt: skip
    run = write_run(tmp_path / "run", records)
    report = clean(CleanConfig(inputs=[str(run)], out=str(tmp_path / "t.parquet"), chart="", **NO_GATE))
    df = pl.read_parquet(tmp_path / "t.parquet")
    got = df.select("task_type", "query", "positive", "negative", "instruction", "language", "model").rows()
    assert got == [
        ("short_long", "sl q", "sl pos", "sl neg", "task for short_long", "English", "big"),
        ("sts", "shared one", "shared two", "sts three", "task for sts", "English", "big"),
        ("short_short", "ss in", "ss pos", None, "task for short_short", "German", "big"),
        (
            "long_short",
            "long text about billing",
            "billing question",
            "refund",
            "task for long_short",
            "English",
            "big",
        ),
        ("long_long", "ll in", "ll pos", None, "task for long_long", "English", "small"),
        ("bitext", "hello", "bonjour", "salut", "task for bitext", "English-French", "big"),
        ("long_short", "Great phone.", "positive", "negative", "task for long_short", "English", "big"),
    ]
    assert report["by_reason"] == {"duplicate": 2, "label_in_input": 1, "identical_fields": 2, "empty_response": 1}
    assert report["by_reason_field"] == {
        "identical_fields:positive_document": 1, "label_in_input:label": 1, "identical_fields:S3": 1,
    }  # fmt: skip
    ex = report["examples"]
    assert [(e["id"], e["message"]) for e in ex["duplicate"]] == [
        ("examples-bitext-000004", "duplicate of examples-sts-000001"),
        ("examples-short_long-000011", "duplicate of examples-short_long-000000"),
    ]
    assert ex["label_in_input"][0]["message"] == "label 'Straße Quality' appears verbatim in input_text"
    assert [e["message"] for e in ex["identical_fields"]] == ["positive_document equals input", "S3 equals S2"]
    assert list(ex) == ["label_in_input", "duplicate", "identical_fields", "empty_response"]
    assert report["by_task_type"]["long_short"] == {"rejected": 1, "kept": 2}
    assert report["mix"]["task_type"] == {
        "long_short": 2,
        "short_long": 1,
        "sts": 1,
        "short_short": 1,
        "long_long": 1,
        "bitext": 1,
    }


CLASSIFICATION_TYPES = """
[task_types.intent]
brainstorm_prompt = "List {n_tasks} intent classification tasks."
prompt = "Task: {task}. Write a user message and its intent as JSON."
fields = { message = "a user message", label = "its intent", misleading_label = "a close but wrong intent" }
mapping = { query = "message", positive = "label", negative = "misleading_label" }

[task_types.topic]
brainstorm_prompt = "List {n_tasks} topic classification tasks."
prompt = "Task: {task}. Write a text and its topic as JSON."
fields = { text = "a text", label = "its topic" }
mapping = { query = "text", positive = "label" }
"""
# A type whose mapped field may be null: the stage parses every answer's JSON in Python
# instead of reading the validator's columns.
NULLABLE_TYPE = """
[task_types.faq]
brainstorm_prompt = "List {n_tasks} FAQ tasks."
prompt = "Task: {task}. Write a question and its answer as JSON."
mapping = { query = "question", positive = "answer" }
schema = { type = "object", required = ["question", "answer"], properties = { question = { type = ["string", "null"] }, answer = { type = "string" } } }
"""  # noqa: E501


@pytest.mark.parametrize("columnar", [True, False], ids=["columnar", "json"])
def test_label_leak_applies_to_classification_types_from_toml(tmp_path: Path, columnar: bool):
    """A TOML task type whose answers carry label (and misleading_label) fields gets the
    label_in_input rule of long_short, whatever its name and input field."""
    types = tmp_path / "types.toml"
    types.write_text(CLASSIFICATION_TYPES + ("" if columnar else NULLABLE_TYPE))
    records = [
        rec(0, "intent", {"message": "This is a Refund Request for order 12.", "label": "refund request", "misleading_label": "order status"}),
        rec(1, "intent", {"message": "Where is my parcel? order status please.", "label": "delivery tracking", "misleading_label": "Order Status"}),
        rec(2, "intent", {"message": "Cancel it? yes", "label": "yes", "misleading_label": "no"}),  # short labels occur by chance
        rec(3, "intent", {"message": "Please end my subscription", "label": "cancellation", "misleading_label": "refund request"}),
        rec(4, "topic", {"text": "The stock market rallied as interest rates fell.", "label": "interest rates"}),
        rec(5, "topic", {"text": "The team won the final in extra time.", "label": "sports"}),
    ]  # fmt: skip
    run = write_run(tmp_path / "run", records)
    cfg = CleanConfig(inputs=[str(run)], out=str(tmp_path / "t.parquet"), chart="", task_types_file=str(types))
    report = clean(cfg, quality_checks="none")
    assert report["by_reason"] == {"label_in_input": 3}
    assert report["by_reason_field"] == {"label_in_input:label": 2, "label_in_input:misleading_label": 1}
    assert [(e["id"], e["message"]) for e in report["examples"]["label_in_input"]] == [
        ("examples-intent-000000", "label 'refund request' appears verbatim in message"),
        ("examples-intent-000001", "misleading_label 'Order Status' appears verbatim in message"),
        ("examples-topic-000004", "label 'interest rates' appears verbatim in text"),
    ]
    df = pl.read_parquet(tmp_path / "t.parquet")
    assert df.select("task_type", "query", "positive", "negative").rows() == [
        ("intent", "Cancel it? yes", "yes", "no"),
        ("intent", "Please end my subscription", "cancellation", "refund request"),
        ("topic", "The team won the final in extra time.", "sports", None),
    ]
    # The rule is part of the semantic checks: off, every answer is kept.
    assert clean(cfg, quality_checks="none", semantic_checks=False)["kept"] == len(records)
