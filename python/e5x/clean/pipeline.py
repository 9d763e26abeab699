"""The clean stage: synth response logs -> training triples (contract 3) + report + chart.

Every answer either becomes a triple or is rejected with exactly one reason:

    refusal            the model refused (``refusal`` set)
    truncated          finish_reason "length": the JSON is cut off
    content_filter     finish_reason "content_filter"
    empty_response     no content
    unknown_task_type  the log names a task type this installation does not know
    <validator codes>  not_json, missing_field, wrong_type, empty_string, too_long,
                       unexpected_field, ... from the Rust validator, with the field
    identical_fields   query == positive, or positive == negative (no training signal)
    label_in_input     a classification label appears verbatim in the input text
    duplicate          exact duplicate of an earlier kept example (``dedup_fields``)

The report holds counts by reason (and reason:field), per task type, and a few examples
per reason, so "why was this dropped?" always has an answer.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from e5x.synth.store import read_log, write_json_atomic
from e5x.tasks.taxonomy import TaskType, load_task_types, task_types

TRIPLE_COLUMNS = ("instruction", "query", "positive", "negative", "task_type", "language", "model", "source")


@dataclass
class CleanConfig:
    inputs: list[str] = field(default_factory=list)  # synth run dirs or responses.jsonl files
    out: str = "triples.parquet"
    report: str | None = None  # default: <out stem>.report.json
    chart: str | None = None  # default: <out stem>.mix.png; "" disables
    task_types_file: str | None = None  # default: the one in the run's config.json
    extract: bool = True  # recover a JSON object wrapped in prose or code fences
    dedup_fields: tuple[str, ...] = ("query", "positive")
    casefold: bool = False  # the recipe dedups by exact string match
    semantic_checks: bool = True
    source: str = "synthetic"
    examples_per_reason: int = 5
    excerpt_chars: int = 300

    def paths(self) -> tuple[Path, Path, Path | None]:
        out = Path(self.out)
        stem = out.with_suffix("") if out.suffix == ".parquet" else out
        report = Path(self.report) if self.report else Path(f"{stem}.report.json")
        chart = None if self.chart == "" else Path(self.chart) if self.chart else Path(f"{stem}.mix.png")
        return out, report, chart


def _log_files(inputs: Sequence[str]) -> list[tuple[Path, Path | None]]:
    """(responses.jsonl, run dir or None) per input; clear error for a bad path."""
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            log = p / "responses.jsonl"
            if not log.exists():
                raise FileNotFoundError(f"{p} is not a synth run directory (no responses.jsonl)")
            out.append((log, p))
        elif p.is_file():
            out.append((p, None))
        else:
            raise FileNotFoundError(f"clean input {p} does not exist")
    if not out:
        raise ValueError("clean: no inputs (give synth run directories or responses.jsonl files)")
    return out


def _types_for(cfg: CleanConfig, run_dirs: list[Path]) -> dict[str, TaskType]:
    files = [cfg.task_types_file] if cfg.task_types_file else []
    for d in run_dirs:
        c = d / "config.json"
        if c.exists():
            f = json.loads(c.read_text()).get("task_types_file")
            if f and f not in files:
                files.append(f)
    extra: dict[str, TaskType] = {}
    for f in files:
        extra.update(load_task_types(f))
    return task_types(extra)


def _load(cfg: CleanConfig) -> tuple[pl.DataFrame, dict[str, TaskType], int]:
    logs = _log_files(cfg.inputs)
    types = _types_for(cfg, [d for _, d in logs if d is not None])
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    torn = 0
    for log, _ in logs:
        records, dropped = read_log(log)
        torn += dropped > 0
        for r in records:
            if r.get("step") != "examples":
                continue
            key = f"{r.get('id')}"
            if key in seen:  # the same run given twice
                continue
            seen.add(key)
            meta = r.get("meta") or {}
            rows.append(
                {
                    "id": key,
                    "task_type": r.get("task_type"),
                    "model": r.get("model"),
                    "content": r.get("content"),
                    "refusal": r.get("refusal"),
                    "finish_reason": r.get("finish_reason"),
                    "instruction": meta.get("task"),
                    "language": meta.get("language"),
                }
            )
    schema = {k: pl.Utf8 for k in ("id", "task_type", "model", "content", "refusal", "finish_reason", "instruction", "language")}
    return pl.DataFrame(rows, schema=schema), types, torn


def clean(config: CleanConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Run the clean stage; returns the report (also written to ``report``)."""
    from e5x.clean import core

    cfg = config or CleanConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise TypeError(f"CleanConfig has no field {k!r}")
        setattr(cfg, k, v)
    out_path, report_path, chart_path = cfg.paths()
    df, types, torn = _load(cfg)
    n = df.height

    reason: list[str | None] = [None] * n
    fld: list[str | None] = [None] * n
    msg: list[str | None] = [None] * n
    content = df["content"].to_list()
    refusal = df["refusal"].to_list()
    finish = df["finish_reason"].to_list()
    ttype = df["task_type"].to_list()
    for i in range(n):
        if refusal[i]:
            reason[i], msg[i] = "refusal", str(refusal[i])
        elif finish[i] == "length":
            reason[i], msg[i] = "truncated", "finish_reason is 'length': the answer was cut off"
        elif finish[i] == "content_filter":
            reason[i], msg[i] = "content_filter", "finish_reason is 'content_filter'"
        elif not content[i] or not str(content[i]).strip():
            reason[i], msg[i] = "empty_response", "the answer has no content"
        elif ttype[i] not in types:
            reason[i], msg[i] = "unknown_task_type", f"task type {ttype[i]!r} is not known here"

    # The Rust validator, on everything not already rejected.
    todo = [i for i in range(n) if reason[i] is None]
    parsed: dict[int, dict[str, Any]] = {}
    extracted = 0
    if todo:
        schemas = {name: t.schema for name, t in types.items()}
        v = core.validate(
            pl.Series("content", [content[i] for i in todo], dtype=pl.Utf8),
            pl.Series("task_type", [ttype[i] for i in todo], dtype=pl.Utf8),
            schemas=schemas,
            extract=cfg.extract,
        )
        for i, ok, r, f, m, ex, js in zip(
            todo, v["ok"], v["reason"], v["field"], v["message"], v["extracted"], v["json"]
        ):
            if ok:
                parsed[i] = json.loads(js)
                extracted += bool(ex)
            else:
                reason[i], fld[i], msg[i] = r or "invalid", f, m

    # Map to triples and apply the recipe's semantic constraints.
    instr = df["instruction"].to_list()
    triples: dict[int, tuple[str, str, str | None]] = {}
    for i, obj in parsed.items():
        t = types[ttype[i]]
        q, p = obj[t.mapping.query], obj[t.mapping.positive]
        neg = obj.get(t.mapping.negative) if t.mapping.negative else None
        if cfg.semantic_checks:
            bad = _semantic_problem(t, obj, q, p, neg)
            if bad is not None:
                reason[i], fld[i], msg[i] = bad
                continue
        if not instr[i]:
            reason[i], msg[i] = "missing_instruction", "the log has no task definition for this answer"
            continue
        triples[i] = (q, p, neg)

    # Exact dedup over kept rows, in log order.
    kept = sorted(triples)
    if kept:
        cols = {"instruction": [instr[i] for i in kept], "query": [triples[i][0] for i in kept]}
        cols["positive"] = [triples[i][1] for i in kept]
        cols["negative"] = [triples[i][2] or "" for i in kept]  # "" = no negative, so keys stay non-null
        bad_fields = [f for f in cfg.dedup_fields if f not in cols]
        if bad_fields:
            raise ValueError(f"dedup_fields {bad_fields} not among {sorted(cols)}")
        d = core.Deduplicator(casefold=cfg.casefold).add(pl.DataFrame(cols), list(cfg.dedup_fields))
        for i, keep, dup in zip(kept, d["keep"], d["duplicate_of"]):
            if not keep:
                reason[i], msg[i] = "duplicate", f"duplicate of {df['id'][kept[dup]]}"
        kept = [i for i in kept if reason[i] is None]

    ids, models, langs = df["id"].to_list(), df["model"].to_list(), df["language"].to_list()
    out = pl.DataFrame(
        {
            "instruction": [instr[i] for i in kept],
            "query": [triples[i][0] for i in kept],
            "positive": [triples[i][1] for i in kept],
            "negative": [triples[i][2] for i in kept],
            "task_type": [ttype[i] for i in kept],
            "language": [langs[i] for i in kept],
            "model": [models[i] for i in kept],
            "source": [cfg.source] * len(kept),
        },
        schema={c: pl.Utf8 for c in TRIPLE_COLUMNS},
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out.write_parquet(out_path)

    # The report.
    by_reason = Counter(r for r in reason if r is not None)
    by_reason_field = Counter(f"{r}:{f}" for r, f in zip(reason, fld) if r is not None and f)
    per_type: dict[str, Counter[str]] = defaultdict(Counter)
    examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for i in range(n):
        per_type[str(ttype[i])]["kept" if reason[i] is None else "rejected"] += 1
        r = reason[i]
        if r is not None and len(examples[r]) < cfg.examples_per_reason:
            text = content[i] or ""
            examples[r].append(
                {
                    "id": ids[i],
                    "task_type": ttype[i],
                    "model": models[i],
                    "field": fld[i],
                    "message": msg[i],
                    "excerpt": text[: cfg.excerpt_chars] + ("…" if len(text) > cfg.excerpt_chars else ""),
                }
            )
    report: dict[str, Any] = {
        "inputs": [str(p) for p in cfg.inputs],
        "output": str(out_path),
        "responses": n,
        "kept": len(kept),
        "rejected": n - len(kept),
        "extracted_json": extracted,
        "logs_with_torn_tail": torn,
        "by_reason": dict(by_reason.most_common()),
        "by_reason_field": dict(by_reason_field.most_common()),
        "by_task_type": {k: dict(v) for k, v in sorted(per_type.items())},
        "mix": {
            "task_type": dict(Counter(out["task_type"].to_list()).most_common()),
            "language": dict(Counter(out["language"].to_list()).most_common()),
            "model": dict(Counter(out["model"].to_list()).most_common()),
        },
        "examples": dict(examples),
        "chart": str(chart_path) if chart_path else None,
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report_path, report)
    if chart_path is not None:
        mix_chart(out, chart_path)
    return report


def _semantic_problem(
    t: TaskType, obj: dict[str, Any], q: str, p: str, neg: str | None
) -> tuple[str, str | None, str] | None:
    norm = " ".join
    if norm(q.split()) == norm(p.split()):
        return "identical_fields", t.mapping.positive, f"{t.mapping.positive} equals {t.mapping.query}"
    if neg is not None and norm(neg.split()) == norm(p.split()):
        return "identical_fields", t.mapping.negative, f"{t.mapping.negative} equals {t.mapping.positive}"
    if t.name == "long_short":
        text = q.casefold()
        for f in ("label", "misleading_label"):
            label = str(obj.get(f, "")).strip().casefold()
            # Short labels ("yes", "no") occur in text by chance; only flag labels of 2+ words
            # or of 12+ characters, where verbatim presence means the label leaked.
            if label and (len(label.split()) >= 2 or len(label) >= 12) and label in text:
                return "label_in_input", f, f"{f} {obj[f]!r} appears verbatim in input_text"
    return None


def mix_chart(triples: pl.DataFrame, path: Path, top_languages: int = 20) -> None:
    """Bar charts of the task-type and language mix of the kept triples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tt = Counter(triples["task_type"].to_list()).most_common()
    # Bitext languages are "src-tgt"; chart the source language so pairs do not swamp it.
    langs = Counter((lang or "unknown").split("-")[0] for lang in triples["language"].to_list()).most_common()
    head, rest = langs[:top_languages], sum(c for _, c in langs[top_languages:])
    if rest:
        head.append((f"{len(langs) - top_languages} others", rest))
    total = max(1, triples.height)
    fig, axes = plt.subplots(1, 2, figsize=(12, max(3.0, 0.28 * len(head) + 1.2)))
    for ax, data, title in ((axes[0], tt, "task type"), (axes[1], head, "language (source side)")):
        labels = [k for k, _ in data][::-1]
        values = [v for _, v in data][::-1]
        ax.barh(labels, values, color="#4c72b0")
        for y, v in enumerate(values):
            ax.text(v, y, f" {v} ({100 * v / total:.1f}%)", va="center", fontsize=8)
        ax.set_title(f"{title} — {triples.height} triples")
        ax.set_xlim(0, max(values, default=1) * 1.35 if values else 1)
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

