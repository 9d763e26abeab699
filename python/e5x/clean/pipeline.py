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
    not_a_task         the brainstormed task definition the answer was written for is
                       not an instruction (``e5x.clean.quality``)
    <quality codes>    format_residue, degenerate, prompt_echo, too_few_words,
                       wrong_language: the quality gate, run inside the validator's pass
                       (``quality_checks``; see ``e5x.clean.quality`` for each check)
    duplicate          exact duplicate of an earlier kept example (``dedup_fields``)

The report holds counts by reason (and reason:field), per task type (and per task type
and reason), and a few examples per reason, so "why was this dropped?" always has an
answer.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

import polars as pl
from annotated_types import Ge

from e5x.config import ConfigError, load
from e5x.synth.response import content_text
from e5x.synth.store import read_log, write_json_atomic
from e5x.tasks.taxonomy import TaskType, load_task_types, task_types

TRIPLE_COLUMNS = ("instruction", "query", "positive", "negative", "task_type", "language", "model", "source")


@dataclass
class CleanConfig:
    inputs: list[str] = field(default_factory=list)  # synth run dirs or responses.jsonl files
    out: str = "triples.parquet"  # the training triples (Parquet)
    report: str | None = None  # the rejection report (JSON); default: <out stem>.report.json
    chart: str | None = None  # the mix chart (PNG); default: <out stem>.mix.png; "" disables
    task_types_file: str | None = None  # TOML with custom [task_types.NAME]; default: the run's own
    extract: bool = True  # recover a JSON object wrapped in prose or code fences
    dedup_fields: tuple[str, ...] = ("query", "positive")  # an example repeating these is a duplicate
    casefold: bool = False  # dedup ignoring case (the recipe dedups by exact string match)
    semantic_checks: bool = True  # reject identical fields and labels leaked into the input
    # Content checks of the quality gate: "all", "none", "-wrong_language",
    # "prompt_echo=6", or a table {check = threshold | true | false} (see e5x.clean.quality).
    quality_checks: str | dict[str, Any] = "all"
    source: str = "synthetic"  # the value of the source column
    examples_per_reason: Annotated[int, Ge(0)] = 5  # rejected answers quoted in the report per reason
    excerpt_chars: Annotated[int, Ge(1)] = 300  # characters of each quoted answer

    def check(self) -> None:
        from e5x.clean.quality import parse_checks

        if not self.inputs:
            raise ConfigError("no inputs: give synth run directories or responses.jsonl files", field="inputs")
        try:
            parse_checks(self.quality_checks)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e), field="quality_checks") from None

    def paths(self) -> tuple[Path, Path, Path | None]:
        out = Path(self.out)
        stem = out.with_suffix("") if out.suffix == ".parquet" else out
        report = Path(self.report) if self.report else Path(f"{stem}.report.json")
        chart = None if self.chart == "" else Path(self.chart) if self.chart else Path(f"{stem}.mix.png")
        return out, report, chart


class CleanReport(TypedDict):
    """What ``clean`` returns, and writes to ``report`` as JSON."""

    inputs: list[str]
    output: str  # the triples
    responses: int
    kept: int
    rejected: int
    extracted_json: int  # kept answers whose JSON was recovered from prose or code fences
    logs_with_torn_tail: int  # logs whose last line a kill cut off (that line is skipped)
    by_reason: dict[str, int]
    by_reason_field: dict[str, int]  # "reason:field" -> count
    by_task_type: dict[str, dict[str, int]]  # task type -> kept/rejected
    by_task_type_reason: dict[str, dict[str, int]]
    quality_checks: dict[str, float]  # the checks that ran, with their thresholds
    mix: dict[str, dict[str, int]]  # task_type/language/model -> value -> kept rows
    examples: dict[str, list[dict[str, Any]]]  # a few rejected answers per reason
    chart: str | None


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


_LOG_COLUMNS = ("id", "task_type", "model", "content", "refusal", "finish_reason", "instruction", "language")

# Python's str.isspace() set, which str.split()/str.strip() use. Polars' default (Rust's
# White_Space) lacks \x1c-\x1f, so the columnar checks name these characters explicitly
# to give exactly the answers of the per-row Python rules they replace.
_PY_SPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
_PY_SPACE_RUN = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in _PY_SPACE) + "]+"
# Whitespace that " ".join(s.split()) rewrites: runs of 2+, or one that is not a plain
# space. Single spaces are left alone, so most text has no match and is not copied.
_PY_SPACE_FIX = _PY_SPACE_RUN[:-1] + "{2,}|[" + "".join(f"\\x{{{ord(c):x}}}" for c in _PY_SPACE if c != " ") + "]"
# Columns validate() adds itself; a schema field of the same name cannot be unpacked.
_VERDICT_COLUMNS = frozenset({"ok", "reason", "field", "message", "extracted", "json"})
_LABEL_FIELDS = ("label", "misleading_label")  # the classification label check (long_short)


def _ndjson_schema(placeholders: Sequence[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"task": pl.Utf8, "language": pl.Utf8}
    if placeholders:
        meta["placeholders"] = pl.Struct({p: pl.Utf8 for p in placeholders})
    return {
        "id": pl.Utf8,
        "step": pl.Utf8,
        "task_type": pl.Utf8,
        "model": pl.Utf8,
        "content": pl.Utf8,
        "refusal": pl.Utf8,
        "finish_reason": pl.Utf8,
        "meta": pl.Struct(meta),
    }
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate_risk(data: bytes) -> bool:
    """Whether a JSON string escape of a UTF-16 surrogate (``\\ud800``) occurs, not
    counting an escaped backslash followed by "ud8..": polars' reader mangles lone ones."""
    for m in _SURROGATE_ESCAPE.finditer(data):
        j = m.start()
        while j > 0 and data[j - 1] == 0x5C:
            j -= 1
        if (m.start() - j) % 2 == 0:
            return True
    return False


def _read_examples(log: Path, placeholders: Sequence[str] = ()) -> tuple[pl.DataFrame, int]:
    """The example answers of one log (``_LOG_COLUMNS``, then one column per name in
    ``placeholders``: its value in ``meta.placeholders``) and the bytes of its torn tail.

    Same records as :func:`read_log`, which parses every line, prompts included, into
    Python objects; polars' reader keeps only the keys used here (~8x faster). A torn
    tail is cut off first (what read_log drops). Anything polars refuses (a corrupt line
    inside the file, a line that is not an object, a ``meta`` that is not an object) or
    may misread (a lone-surrogate escape) takes the read_log path, so the rules stay
    read_log's. Logs written by e5x synth hold only strings or nulls in these keys and
    read the same either way. Hand-edited logs may differ: polars keeps the first of
    duplicate keys (json the last) and turns an object where text belongs into its JSON
    text (the record path raises)."""
    data = log.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes after the last newline are a torn line
    # Content given as a list of parts (logs of earlier versions) is joined on the record path.
    if end and not _lone_surrogate_risk(data[:end]) and not re.search(rb'"content":\s*\[', data[:end]):
        try:
            raw = pl.read_ndjson(io.BytesIO(memoryview(data)[:end]), schema=_ndjson_schema(placeholders))
        except (pl.exceptions.PolarsError, ValueError, TypeError):
            raw = None
        if raw is not None:
            meta = pl.col("meta")
            return raw.filter(pl.col("step") == "examples").select(
                pl.col("id").fill_null("None"),  # f"{r.get('id')}"
                "task_type", "model", "content", "refusal", "finish_reason",
                meta.struct.field("task").alias("instruction"),
                meta.struct.field("language").alias("language"),
                *[meta.struct.field("placeholders").struct.field(p).alias(p) for p in placeholders],
            ), len(data) - end  # fmt: skip
    del data
    records, dropped = read_log(log)
    cols: dict[str, list[Any]] = {k: [] for k in (*_LOG_COLUMNS, *placeholders)}
    ids, tts, models, contents = cols["id"], cols["task_type"], cols["model"], cols["content"]
    refusals, finishes, instrs, langs = cols["refusal"], cols["finish_reason"], cols["instruction"], cols["language"]
    for r in records:
        if r.get("step") != "examples":
            continue
        meta = r.get("meta") if isinstance(r.get("meta"), dict) else {}
        ids.append(f"{r.get('id')}")
        tts.append(r.get("task_type"))
        models.append(r.get("model"))
        # Logs of earlier versions may hold a list of content parts: their text is the answer.
        contents.append(content_text(r.get("content")) if isinstance(r.get("content"), list) else r.get("content"))
        refusals.append(r.get("refusal"))
        finishes.append(r.get("finish_reason"))
        instrs.append(meta.get("task"))
        langs.append(meta.get("language"))
        ph = meta.get("placeholders") if isinstance(meta, dict) else None
        for p in placeholders:
            v = ph.get(p) if isinstance(ph, dict) else None
            cols[p].append(None if v is None else str(v))
    schema = {k: pl.Utf8 for k in cols}
    try:
        return pl.DataFrame(cols, schema=schema), dropped
    except (TypeError, pl.exceptions.PolarsError):
        # A non-string value (hand-edited log): row-wise construction converts scalars to
        # text and rejects nested values, as this stage always has.
        return pl.DataFrame([dict(zip(cols, row)) for row in zip(*cols.values())], schema=schema), dropped


def _load(cfg: CleanConfig) -> tuple[pl.DataFrame, dict[str, TaskType], int]:
    from e5x.clean.quality import placeholder_names

    logs = _log_files(cfg.inputs)
    types = _types_for(cfg, [d for _, d in logs if d is not None])
    placeholders = [p for p in placeholder_names(types) if p not in _LOG_COLUMNS]
    frames = []
    torn = 0
    for log, _ in logs:
        frame, dropped = _read_examples(log, placeholders)
        torn += dropped > 0
        frames.append(frame)
    df = pl.concat(frames, how="vertical")
    # The same run given twice: keep each answer id once, first occurrence.
    return df.filter(pl.col("id").is_first_distinct()), types, torn


def _by_type(tt: pl.Expr, values: dict[str, Any]) -> pl.Expr:
    """Per-row value chosen by task type: a literal, or ``pl.col(name)`` for an expression."""
    out: Any = None
    for name, v in values.items():
        if v is None:
            continue
        out = (pl.when(tt == name) if out is None else out.when(tt == name)).then(v)
    return pl.lit(None, dtype=pl.Utf8) if out is None else out.otherwise(None)


def _norm(e: pl.Expr) -> pl.Expr:
    """``" ".join(s.split())`` as an expression."""
    return e.str.replace_all(_PY_SPACE_FIX, " ").str.strip_chars(" ")


def _fields_columnar(types: dict[str, TaskType], schemas: dict[str, dict[str, Any]], unpack: list[str]) -> bool:
    """Whether every field the stage reads can come from ``validate(unpack=True)``: each
    mapped field (and long_short's labels) must be a string property of its schema."""
    if _VERDICT_COLUMNS & set(unpack):
        return False
    for name, t in types.items():
        props = schemas[name].get("properties") or {}
        need = [t.mapping.query, t.mapping.positive] + ([t.mapping.negative] if t.mapping.negative else [])
        if t.name == "long_short":
            need += _LABEL_FIELDS
        if any(not isinstance(props.get(f), dict) or props[f].get("type") != "string" for f in need):
            return False
    return True


def _map_fields(
    v: pl.DataFrame, tt: pl.Series, types: dict[str, TaskType], columnar: bool
) -> pl.DataFrame:
    """query/positive/negative (and long_short's raw label values) of the validated rows."""
    if columnar:
        ttc = pl.col("_tt")
        present = set(tt.unique().drop_nulls().to_list())
        sel = {n: t for n, t in types.items() if n in present}
        ls = [n for n, t in sel.items() if t.name == "long_short"]
        exprs = [
            _by_type(ttc, {n: pl.col(t.mapping.query) for n, t in sel.items()}).alias("query"),
            _by_type(ttc, {n: pl.col(t.mapping.positive) for n, t in sel.items()}).alias("positive"),
            _by_type(ttc, {n: pl.col(t.mapping.negative) if t.mapping.negative else None for n, t in sel.items()}).alias("negative"),
        ]
        for f in _LABEL_FIELDS:  # obj.get(f, "") of a string field
            exprs.append(_by_type(ttc, {n: pl.col(f).fill_null("") for n in ls}).alias(f"_{f}"))
        return v.with_columns(tt.alias("_tt")).select(exprs)
    # Fallback for schemas whose mapped fields are not plain strings: parse the JSON.
    cols: dict[str, list[Any]] = {"query": [], "positive": [], "negative": [], "_label": [], "_misleading_label": []}
    for ok, js, name in zip(v["ok"], v["json"], tt):
        if not ok:
            for c in cols.values():
                c.append(None)
            continue
        t, obj = types[name], json.loads(js)
        cols["query"].append(obj[t.mapping.query])
        cols["positive"].append(obj[t.mapping.positive])
        cols["negative"].append(obj.get(t.mapping.negative) if t.mapping.negative else None)
        for f in _LABEL_FIELDS:
            cols[f"_{f}"].append(str(obj.get(f, "")) if t.name == "long_short" else None)
    return pl.DataFrame(cols, schema={c: pl.Utf8 for c in cols})


def _label_leaks(rows: pl.DataFrame) -> tuple[list[int], list[str]]:
    """Rows (``_i``) whose classification label appears verbatim in the input, with the field.

    Python over long_short rows only: casefold() has no exact polars equivalent."""
    hit_i: list[int] = []
    hit_f: list[str] = []
    for i, q, lab, mis in rows.select("_i", "query", "_label", "_misleading_label").iter_rows():
        text = None
        for f, raw in (("label", lab), ("misleading_label", mis)):
            label = raw.strip().casefold()
            # Short labels ("yes", "no") occur in text by chance; only flag labels of 2+ words
            # or of 12+ characters, where verbatim presence means the label leaked.
            if label and (len(label.split()) >= 2 or len(label) >= 12):
                if text is None:
                    text = q.casefold()
                if label in text:
                    hit_i.append(i)
                    hit_f.append(f)
                    break
    return hit_i, hit_f


def _counts(frame: pl.DataFrame, key: str) -> dict[Any, int]:
    """``dict(Counter(frame[key]).most_common())``: count desc, ties in first-seen order."""
    g = frame.group_by(key).agg(pl.len().alias("_n"), pl.col("_i").min().alias("_first"))
    g = g.sort(["_n", "_first"], descending=[True, False])
    return dict(zip(g[key].to_list(), g["_n"].to_list()))


def clean(
    config: CleanConfig | Mapping[str, Any] | str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    **fields: Any,
) -> CleanReport:
    """Run the clean stage on ``config`` (a CleanConfig, a dict or a TOML path) with
    ``overrides`` (``"key=value"``) and ``fields`` applied; returns the report (also written
    to ``report``).

    Columnar: the log becomes one polars frame and every rule below is an expression over
    it or a call into the Rust core; Python touches single rows only for the long_short
    label check and for the handful of report examples."""
    from e5x import core
    from e5x.clean import quality as q

    cfg = load(CleanConfig, config, overrides, fields=fields)  # every bad setting fails before any work
    checks = q.parse_checks(cfg.quality_checks)
    out_path, report_path, chart_path = cfg.paths()
    df, types, torn = _load(cfg)
    n = df.height
    df = df.with_row_index("_i")
    idx = df.schema["_i"]
    c = pl.col

    # Rejections that need no parsing, in this order of precedence.
    content_empty = c("content").is_null() | (c("content").str.strip_chars(_PY_SPACE) == "")
    pre = (
        pl.when(c("refusal").is_not_null() & (c("refusal") != "")).then(pl.lit("refusal"))
        .when(c("finish_reason") == "length").then(pl.lit("truncated"))
        .when(c("finish_reason") == "content_filter").then(pl.lit("content_filter"))
        .when(content_empty).then(pl.lit("empty_response"))
        .when(c("task_type").is_null() | ~c("task_type").is_in(list(types))).then(pl.lit("unknown_task_type"))
        .otherwise(None)
    )  # fmt: skip
    df = df.with_columns(pre.alias("_pre"))
    vmsgs = [pl.DataFrame(schema={"_i": idx, "_vmsg": pl.Utf8, "_val": pl.Boolean})]
    if "not_a_task" in checks:
        # Brainstormed task definitions that are not instructions (symmetric types have a
        # fixed one); each distinct task is checked once.
        asym = [n for n, t in types.items() if not t.symmetric]
        open_rows = c("_pre").is_null() & c("task_type").is_in(asym) & c("instruction").is_not_null()
        uniq = df.filter(open_rows)["instruction"].unique().to_list()
        bad_tasks = {t: p for t, p in zip(uniq, core.task_problems(uniq, int(checks["not_a_task"]))) if p}
        if bad_tasks:
            hit = open_rows & c("instruction").is_in(list(bad_tasks))
            df = df.with_columns(pl.when(hit).then(pl.lit("not_a_task")).otherwise(c("_pre")).alias("_pre"))
            vmsgs.append(
                df.filter(c("_pre") == "not_a_task").select(
                    "_i",
                    pl.format("task definition {}: {}", c("instruction"), c("instruction").replace_strict(bad_tasks, return_dtype=pl.Utf8)).alias("_vmsg"),
                    pl.lit(True).alias("_val"),
                )
            )  # fmt: skip
    todo = df.filter(c("_pre").is_null()).select("_i", "task_type", "instruction", "id", "language", "model")

    # The Rust validator, on everything not already rejected.
    # Messages are written only for the report's examples (_message), from these columns.
    pre_field = pl.when(c("_pre") == "not_a_task").then(pl.lit("instruction")).otherwise(pl.lit(None, pl.Utf8))
    rejects = [df.filter(c("_pre").is_not_null()).select("_i", c("_pre").alias("reason"), pre_field.alias("field"))]
    dup_ids = pl.DataFrame(schema={"_i": idx, "_dup": pl.Utf8})
    acc = None
    extracted = 0
    if todo.height:
        schemas = {name: t.schema for name, t in types.items()}
        validator = core.Validator(schemas)
        columnar = _fields_columnar(types, schemas, validator.unpack_columns)
        open_df = df.filter(c("_pre").is_null())
        gate_kw: dict[str, Any] = {}
        if any(k != "not_a_task" for k in checks):
            gate_kw = {
                # Every check named: a mapping modifies the defaults, and these are final.
                "gate": core.QualityGate({k: checks.get(k, False) for k in q.DEFAULTS}, types, schemas),
                "gate_tasks": todo["instruction"],
                "gate_languages": todo["language"],
                "gate_min_words": dict(q.min_words_columns(open_df, types)),
            }
        v = validator.validate(
            open_df["content"],
            todo["task_type"],
            extract=cfg.extract,
            unpack=columnar,
            json=not columnar,
            **gate_kw,
        )
        mapped = _map_fields(v, todo["task_type"], types, columnar)
        todo = pl.concat([todo, v.select("ok", "reason", "field", "message", "extracted"), mapped], how="horizontal")
        extracted = int(todo.filter(c("ok") & c("extracted")).height)
        bad = todo.filter(~c("ok"))
        rejects.append(bad.select("_i", c("reason").fill_null("invalid"), "field"))
        vmsgs.append(bad.select("_i", c("message").alias("_vmsg"), pl.lit(True).alias("_val")))
        acc = todo.filter(c("ok"))

    if acc is not None and acc.height:
        missing = acc.filter(c("query").is_null() | c("positive").is_null())
        if missing.height:  # only a schema with optional mapped fields can get here
            row = missing.row(0, named=True)
            t = types[row["task_type"]]
            f = t.mapping.query if row["query"] is None else t.mapping.positive
            raise ValueError(f"answer {row['id']} ({row['task_type']}) has no field {f!r}, which the task type maps to a triple")
        # Map to triples and apply the recipe's semantic constraints.
        sem_reason = pl.lit(None, dtype=pl.Utf8)
        sem_field = pl.lit(None, dtype=pl.Utf8)
        if cfg.semantic_checks:
            tt = c("task_type")
            pn = _norm(c("positive"))
            same_qp = _norm(c("query")) == pn
            same_np = c("negative").is_not_null() & (_norm(c("negative")) == pn)
            ls_names = [n for n, t in types.items() if t.name == "long_short"]
            acc = acc.with_columns(
                pl.when(same_qp).then(pl.lit("identical_fields"))
                .when(same_np).then(pl.lit("identical_fields")).alias("_sem"),
                pl.when(same_qp).then(_by_type(tt, {n: pl.lit(t.mapping.positive) for n, t in types.items()}))
                .when(same_np).then(_by_type(tt, {n: pl.lit(t.mapping.negative) if t.mapping.negative else None for n, t in types.items()}))
                .alias("_semf"),
            )  # fmt: skip
            if ls_names:
                hit_i, hit_f = _label_leaks(acc.filter(c("_sem").is_null() & tt.is_in(ls_names)))
                if hit_i:
                    hits = pl.DataFrame({"_i": hit_i, "_lf": hit_f}, schema={"_i": idx, "_lf": pl.Utf8})
                    acc = acc.join(hits, on="_i", how="left", maintain_order="left").with_columns(
                        pl.when(c("_lf").is_not_null()).then(pl.lit("label_in_input")).otherwise(c("_sem")).alias("_sem"),
                        pl.coalesce("_lf", "_semf").alias("_semf"),
                    )
            sem_reason, sem_field = c("_sem"), c("_semf")
        no_instr = c("instruction").is_null() | (c("instruction") == "")
        acc = acc.with_columns(
            pl.when(sem_reason.is_not_null()).then(sem_reason)
            .when(no_instr).then(pl.lit("missing_instruction")).alias("_r"),
            pl.when(sem_reason.is_not_null()).then(sem_field).alias("_f"),
        )  # fmt: skip
        rejects.append(acc.filter(c("_r").is_not_null()).select("_i", c("_r").alias("reason"), c("_f").alias("field")))
        cand = acc.filter(c("_r").is_null())

        # Exact dedup over kept rows, in log order.
        if cand.height:
            dcols = cand.select("instruction", "query", "positive", c("negative").fill_null(""))  # "" = no negative, so keys stay non-null
            bad_fields = [f for f in cfg.dedup_fields if f not in dcols.columns]
            if bad_fields:
                raise ValueError(f"dedup_fields {bad_fields} not among {sorted(dcols.columns)}")
            d = core.Deduplicator(casefold=cfg.casefold).add(dcols, list(cfg.dedup_fields))
            cand = pl.concat([cand, d], how="horizontal")
            dups = cand.filter(~c("keep"))
            rejects.append(dups.select("_i", pl.lit("duplicate").alias("reason"), pl.lit(None, pl.Utf8).alias("field")))
            dup_ids = dups.select("_i", cand["id"].gather(dups["duplicate_of"]).alias("_dup"))
            cand = cand.filter(c("keep"))
        kept = cand
    else:
        kept = pl.DataFrame(schema={k: pl.Utf8 for k in TRIPLE_COLUMNS})
    out = kept.select(
        "instruction", "query", "positive", "negative", "task_type", "language", "model",
        pl.lit(cfg.source, dtype=pl.Utf8).alias("source"),
    ).cast({k: pl.Utf8 for k in TRIPLE_COLUMNS})  # fmt: skip
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out.write_parquet(out_path)

    # The report: one verdict per row (reason null = kept).
    verdict = pl.concat(rejects, how="vertical_relaxed")
    rows = (
        df.select("_i", "id", "task_type", "model", "content", "refusal")
        .join(verdict, on="_i", how="left", maintain_order="left")
        .join(pl.concat(vmsgs, how="vertical_relaxed"), on="_i", how="left", maintain_order="left")
        .join(dup_ids, on="_i", how="left", maintain_order="left")
    )
    if acc is not None and "_label" in acc.columns:
        rows = rows.join(acc.select("_i", "_label", "_misleading_label"), on="_i", how="left", maintain_order="left")
    rej = rows.filter(c("reason").is_not_null())
    by_reason = _counts(rej, "reason")
    by_reason_field = _counts(
        rej.filter(c("field").is_not_null() & (c("field") != "")).select("_i", pl.format("{}:{}", "reason", "field").alias("k")), "k"
    )
    per_type = _type_counts(rows)
    per_type_reason: dict[str, dict[str, int]] = {}
    for tt_name in sorted(set(rej["task_type"].fill_null("None").to_list())):
        sub = rej.filter(c("task_type").fill_null("None") == tt_name)
        per_type_reason[tt_name] = _counts(sub, "reason")
    examples = _examples(rej, types, cfg)
    kept_n = out.height
    lead = pl.int_range(pl.len(), dtype=idx).alias("_i")
    report: CleanReport = {
        "inputs": [str(p) for p in cfg.inputs],
        "output": str(out_path),
        "responses": n,
        "kept": kept_n,
        "rejected": n - kept_n,
        "extracted_json": extracted,
        "logs_with_torn_tail": torn,
        "by_reason": by_reason,
        "by_reason_field": by_reason_field,
        "by_task_type": per_type,
        "by_task_type_reason": per_type_reason,
        "quality_checks": checks,
        "mix": {k: _counts(out.select(lead, k), k) for k in ("task_type", "language", "model")},
        "examples": examples,
        "chart": str(chart_path) if chart_path else None,
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report_path, report)
    if chart_path is not None:
        mix_chart(out, chart_path, rejected=by_reason)
    return report


def _type_counts(rows: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Kept/rejected per task type (``str()`` of it, so a missing one is "None"), keys
    sorted, each type's two counts in the order they first occur."""
    g = (
        rows.select(
            "_i",
            pl.col("task_type").fill_null("None").alias("tt"),
            pl.when(pl.col("reason").is_null()).then(pl.lit("kept")).otherwise(pl.lit("rejected")).alias("kr"),
        )
        .group_by("tt", "kr")
        .agg(pl.len().alias("_n"), pl.col("_i").min().alias("_first"))
        .sort("_first")
    )
    out: dict[str, dict[str, int]] = {}
    for tt, kr, cnt, _ in g.iter_rows():
        out.setdefault(tt, {})[kr] = cnt
    return dict(sorted(out.items()))


def _examples(
    rej: pl.DataFrame, types: dict[str, TaskType], cfg: CleanConfig
) -> dict[str, list[dict[str, Any]]]:
    """The first ``examples_per_reason`` rows of each reason, with their messages."""
    # Keys in the order each reason first occurs (as a defaultdict filled in row order).
    first = rej.group_by("reason").agg(pl.col("_i").min()).sort("_i")["reason"].to_list()
    examples: dict[str, list[dict[str, Any]]] = {r: [] for r in first}
    k = cfg.examples_per_reason
    if k <= 0:
        return examples
    pick = rej.filter(pl.int_range(pl.len()).over("reason") < k)
    for row in pick.iter_rows(named=True):
        r, tt = row["reason"], row["task_type"]
        text = row["content"] or ""
        examples[r].append(
            {
                "id": row["id"],
                "task_type": tt,
                "model": row["model"],
                "field": row["field"],
                "message": _message(row, types),
                "excerpt": text[: cfg.excerpt_chars] + ("…" if len(text) > cfg.excerpt_chars else ""),
            }
        )
    return examples


def _message(row: dict[str, Any], types: dict[str, TaskType]) -> str | None:
    r = row["reason"]
    if row["_val"]:
        return row["_vmsg"]  # the validator's own message
    if r == "refusal":
        return str(row["refusal"])
    if r == "truncated":
        return "finish_reason is 'length': the answer was cut off"
    if r == "content_filter":
        return "finish_reason is 'content_filter'"
    if r == "empty_response":
        return "the answer has no content"
    if r == "unknown_task_type":
        return f"task type {row['task_type']!r} is not known here"
    if r == "missing_instruction":
        return "the log has no task definition for this answer"
    if r == "duplicate":
        return f"duplicate of {row['_dup']}"
    if r == "not_a_task":
        return "the task definition is not an instruction"
    if r == "identical_fields":
        m = types[row["task_type"]].mapping
        if row["field"] == m.positive:
            return f"{m.positive} equals {m.query}"
        return f"{m.negative} equals {m.positive}"
    if r == "label_in_input":
        f = row["field"]
        return f"{f} {row['_' + f]!r} appears verbatim in input_text"
    raise AssertionError(f"no message for reason {r!r}")


def mix_chart(
    triples: pl.DataFrame, path: Path, top_languages: int = 20, rejected: dict[str, int] | None = None
) -> None:
    """Bar charts of the task-type and language mix of the kept triples, and (given
    ``rejected``: reason -> count) of the rejections by reason."""
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
    panels: list[tuple[list[tuple[str, int]], str, int, str]] = [
        (tt, f"task type — {triples.height} triples", total, "#4c72b0"),
        (head, f"language (source side) — {triples.height} triples", total, "#4c72b0"),
    ]
    if rejected is not None:
        n_rej = sum(rejected.values())
        panels.append((list(rejected.items()), f"rejected by reason — {n_rej} answers", max(1, n_rej), "#c44e52"))
    rows_max = max(len(p[0]) for p in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), max(3.0, 0.28 * rows_max + 1.2)))
    for ax, (data, title, denom, color) in zip(axes, panels):
        labels = [k for k, _ in data][::-1]
        values = [v for _, v in data][::-1]
        ax.barh(labels, values, color=color)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v} ({100 * v / denom:.1f}%)", va="center", fontsize=8)
        ax.set_title(title)
        ax.set_xlim(0, max(values, default=1) * 1.35 if values else 1)
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

