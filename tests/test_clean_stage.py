"""e5x clean: raw synth answers -> triples Parquet (contract 3), rejection report, mix chart."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from e5x.clean import CleanConfig, clean
from e5x.clean.pipeline import TRIPLE_COLUMNS

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
        rec(1, "long_short", {"input_text": "The battery died after two days.", "label": "negative", "misleading_label": "neutral"}),
        rec(2, "short_short", {"input": "Paris", "positive_document": "capital of France"}, language="French"),
        rec(3, "long_long", {"input": "a" * 50, "positive_document": "b" * 50}),
        rec(4, "sts", {"S1": "A cat sits.", "S2": "A cat is sitting.", "S3": "A dog runs."}, task="Retrieve semantically similar text."),
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
        rec(17, "long_short", {"input_text": "This is clearly about customer support quality.", "label": "customer support", "misleading_label": "billing"}),
        # duplicate of 0 (same query and positive)
        rec(18, "short_long", {**SL, "hard_negative_document": "a different negative"}),
        # brainstorm answers are not examples
        {"id": "brainstorm-short_long-000000", "step": "brainstorm", "task_type": "short_long", "content": '{"tasks": []}'},
    ]


def test_clean_writes_triples_report_and_chart(tmp_path: Path):
    run = write_run(tmp_path / "run", sample_records())
    out = tmp_path / "out" / "syn.parquet"
    report = clean(CleanConfig(inputs=[str(run)], out=str(out)))

    df = pl.read_parquet(out)
    assert tuple(df.columns) == TRIPLE_COLUMNS and all(t == pl.Utf8 for t in df.dtypes)
    assert df.height == report["kept"] == 7 and report["responses"] == 19 and report["rejected"] == 12
    rows = {r["task_type"] + str(r["query"]): r for r in df.to_dicts()}
    sl = rows["short_longq1"]
    assert (sl["instruction"], sl["positive"], sl["negative"]) == ("task for short_long", "long doc one", "long neg one")
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
    report = clean(CleanConfig(inputs=[str(a), str(b)], out=str(tmp_path / "t.parquet"), chart=""))
    assert report["kept"] == 3 and report["by_reason"] == {"duplicate": 1}
    assert report["logs_with_torn_tail"] == 1 and report["chart"] is None
    assert not (tmp_path / "t.mix.png").exists()


def test_clean_errors_name_the_input(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clean(CleanConfig(inputs=[str(tmp_path / "nope")]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a synth run directory"):
        clean(CleanConfig(inputs=[str(tmp_path / "empty")]))


def test_cli_clean(tmp_path: Path, capsys):
    from e5x.cli import main

    run = write_run(tmp_path / "run", sample_records())
    assert main(["clean", str(run), "--out", str(tmp_path / "t.parquet"), "--json"]) == 0
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
    report = clean(CleanConfig(inputs=[str(tmp_path / "run")], out=str(tmp_path / "t.parquet")))
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
        '[task_types.faq]\n'
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
