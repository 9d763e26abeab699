"""The clean stage: synth response logs -> training triples + report + chart.

Every answer either becomes a triple or is rejected with exactly one reason:

    refusal            the model refused (``refusal`` set)
    truncated          finish_reason "length": the JSON is cut off
    content_filter     finish_reason "content_filter"
    empty_response     no content
    unknown_task_type  the log names a task type this installation does not know
    <validator codes>  not_json, missing_field, wrong_type, empty_string, too_long,
                       unexpected_field, ... from the Rust validator, with the field
    identical_fields   query == positive, or positive == negative (no training signal)
    label_in_input     a classification answer's label or misleading_label appears
                       verbatim in its input text (any task type whose schema has them)
    missing_instruction  the log holds no task definition for the answer
    not_a_task         the brainstormed task definition the answer was written for is
                       not an instruction (``e5x.cleaning.quality``)
    <quality codes>    format_residue, degenerate, prompt_echo, too_few_words,
                       wrong_language: the quality gate, run inside the validator's pass
                       (``quality_checks``; see ``e5x.cleaning.quality`` for each check)
    duplicate          exact duplicate of an earlier kept example (``dedup_fields``)

The report holds counts by reason (and reason:field), per task type (and per task type
and reason), and a few examples per reason, so "why was this dropped?" always has an
answer.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

import polars as pl
from annotated_types import Ge

from e5x.config import ConfigError, load
from e5x.formats import triples as triples_format
from e5x.formats.jsonfile import write_json_atomic
from e5x.formats.response_log import EXAMPLE_COLUMNS, read_examples
from e5x.tasks.taxonomy import TaskType, load_task_types, task_types


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
    # "prompt_echo=6", or a table {check = threshold | true | false} (see e5x.cleaning.quality).
    quality_checks: str | dict[str, Any] = "all"
    source: str = "synthetic"  # the value of the source column
    examples_per_reason: Annotated[int, Ge(0)] = 5  # rejected answers quoted in the report per reason
    excerpt_chars: Annotated[int, Ge(1)] = 300  # characters of each quoted answer

    def check(self) -> None:
        from e5x.cleaning.quality import parse_checks

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
    out: list[tuple[Path, Path | None]] = []
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


# Python's str.isspace() set, which str.split()/str.strip() use. Polars' default (Rust's
# White_Space) lacks \x1c-\x1f, so the columnar checks name these characters explicitly
# to give exactly the answers of the per-row Python rules they replace.
_PY_SPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)
_PY_SPACE_RUN = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in _PY_SPACE) + "]+"
# Whitespace that " ".join(s.split()) rewrites: runs of 2+, or one that is not a plain
# space. Single spaces are left alone, so most text has no match and is not copied.
_PY_SPACE_FIX = _PY_SPACE_RUN[:-1] + "{2,}|[" + "".join(f"\\x{{{ord(c):x}}}" for c in _PY_SPACE if c != " ") + "]"
# Columns validate() adds itself; a schema field of the same name cannot be unpacked.
_VERDICT_COLUMNS = frozenset({"ok", "reason", "field", "message", "extracted", "json"})
# The label fields of a classification answer (long_short's, or a custom type's): the
# label_in_input rule checks that none appears in the input (see _label_fields).
_LABEL_FIELDS = ("label", "misleading_label")


def _load(cfg: CleanConfig) -> tuple[pl.DataFrame, dict[str, TaskType], int]:
    from e5x.cleaning.quality import placeholder_names

    logs = _log_files(cfg.inputs)
    types = _types_for(cfg, [d for _, d in logs if d is not None])
    placeholders = [p for p in placeholder_names(types) if p not in EXAMPLE_COLUMNS]
    frames = []
    torn = 0
    for log, _ in logs:
        frame, dropped = read_examples(log, placeholders)
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


def clean(
    config: CleanConfig | Mapping[str, Any] | str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    **fields: Any,
) -> CleanReport:
    """Run the clean stage on ``config`` (a CleanConfig, a dict or a TOML path) with
    ``overrides`` (``"key=value"``) and ``fields`` applied; returns the report (also written
    to ``report``).

    Columnar: the log becomes one polars frame and every rule below is an expression over
    it or a call into the Rust core; Python touches single rows only for the label check
    of classification types and for the handful of report examples. Each step rejects
    some answers (recorded in a :class:`_Verdicts`) and hands the rest to the next."""
    from e5x.cleaning import quality as q

    cfg = load(CleanConfig, config, overrides, fields=fields)  # every bad setting fails before any work
    checks = q.parse_checks(cfg.quality_checks)
    answers, types, torn = _load(cfg)
    if answers.height == 0:  # nothing to clean: an empty triples file would pass for a result
        names = ", ".join(str(log) for log, _ in _log_files(cfg.inputs))
        raise ValueError(
            f"{names}: no responses to clean (empty, or no line is a complete response record); nothing written"
        )
    answers = answers.with_row_index("_i")
    verdicts = _Verdicts(answers.schema["_i"])

    open_rows = _reject_before_parsing(answers, types, verdicts)
    if "not_a_task" in checks:
        open_rows = _reject_non_tasks(open_rows, types, int(checks["not_a_task"]), verdicts)
    kept = pl.DataFrame(schema=triples_format.schema())
    extracted = 0
    if open_rows.height:
        valid, extracted = _validate(open_rows, types, checks, cfg, verdicts)
        if valid.height:
            kept = _dedup(_apply_rules(valid, types, cfg, verdicts), cfg, verdicts)

    out_path, report_path, chart_path = cfg.paths()
    triples = _triples(kept, cfg.source)
    triples_format.write_triples(triples, out_path)
    report = _report(cfg, verdicts.per_answer(answers), triples, types, checks, extracted, torn)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report_path, report)
    if chart_path is not None:
        mix_chart(triples, chart_path, rejected=report["by_reason"])
    return report


@dataclass
class _Verdicts:
    """The rejected answers, each recorded once by the step that rejected it: row (``_i``),
    reason and field, the message where the step wrote one (the report writes the others
    from the reason), and the answer each duplicate repeats. An answer not here is kept."""

    index: pl.DataType  # the dtype of ``_i``
    rejected: list[pl.DataFrame] = field(default_factory=list)  # _i, reason, field
    messages: list[pl.DataFrame] = field(default_factory=list)  # _i, _msg, _has_msg
    duplicate_of: list[pl.DataFrame] = field(default_factory=list)  # _i, _dup: the id it repeats

    def reject(self, hits: pl.DataFrame) -> None:
        """Record ``hits``: ``_i``, ``reason``, ``field`` and, if the step wrote them, ``_msg``."""
        self.rejected.append(hits.select("_i", "reason", "field"))
        if "_msg" in hits.columns:
            self.messages.append(hits.select("_i", "_msg", pl.lit(True).alias("_has_msg")))

    def per_answer(self, answers: pl.DataFrame) -> pl.DataFrame:
        """One row per answer, in log order, with its reason (null = kept) and field, the
        message written when it was rejected, and the id a duplicate repeats."""
        i: dict[str, Any] = {"_i": self.index}
        tables = (
            (self.rejected, {**i, "reason": pl.Utf8, "field": pl.Utf8}),
            (self.messages, {**i, "_msg": pl.Utf8, "_has_msg": pl.Boolean}),
            (self.duplicate_of, {**i, "_dup": pl.Utf8}),
        )
        rows = answers.select("_i", "id", "task_type", "model", "content", "refusal")
        for frames, schema in tables:
            table = pl.concat([pl.DataFrame(schema=schema), *frames], how="vertical_relaxed")
            rows = rows.join(table, on="_i", how="left", maintain_order="left")
        return rows


def _reject_before_parsing(answers: pl.DataFrame, types: dict[str, TaskType], verdicts: _Verdicts) -> pl.DataFrame:
    """Rejects answers whose log record alone rules them out (refusal, truncated,
    content_filter, empty_response, unknown_task_type, in this order of precedence);
    returns the others."""
    c = pl.col
    content_empty = c("content").is_null() | (c("content").str.strip_chars(_PY_SPACE) == "")
    reason = (
        pl.when(c("refusal").is_not_null() & (c("refusal") != ""))
        .then(pl.lit("refusal"))
        .when(c("finish_reason") == "length")
        .then(pl.lit("truncated"))
        .when(c("finish_reason") == "content_filter")
        .then(pl.lit("content_filter"))
        .when(content_empty)
        .then(pl.lit("empty_response"))
        .when(c("task_type").is_null() | ~c("task_type").is_in(list(types)))
        .then(pl.lit("unknown_task_type"))
        .otherwise(None)
    )
    answers = answers.with_columns(reason.alias("_pre"))
    rejected = answers.filter(c("_pre").is_not_null())
    verdicts.reject(rejected.select("_i", c("_pre").alias("reason"), pl.lit(None, dtype=pl.Utf8).alias("field")))
    return answers.filter(c("_pre").is_null()).drop("_pre")


def _reject_non_tasks(
    rows: pl.DataFrame, types: dict[str, TaskType], min_words: int, verdicts: _Verdicts
) -> pl.DataFrame:
    """Rejects answers written for a brainstormed task definition that is not an
    instruction (not_a_task; symmetric types have a fixed one); returns the others. Each
    distinct task definition is checked once."""
    from e5x import core

    c = pl.col
    asymmetric = [n for n, t in types.items() if not t.symmetric]
    brainstormed = c("task_type").is_in(asymmetric) & c("instruction").is_not_null()
    tasks = rows.filter(brainstormed)["instruction"].unique().to_list()
    problems = {t: p for t, p in zip(tasks, core.task_problems(tasks, min_words)) if p}
    if not problems:
        return rows
    hit = (brainstormed & c("instruction").is_in(list(problems))).fill_null(False)
    problem = c("instruction").replace_strict(problems, return_dtype=pl.Utf8)
    # concat_str, not pl.format: polars 2.1's format panics on some filtered string columns.
    message = pl.concat_str(pl.lit("task definition "), c("instruction"), pl.lit(": "), problem)
    hits = rows.filter(hit).select(
        "_i",
        pl.lit("not_a_task").alias("reason"),
        pl.lit("instruction").alias("field"),
        message.alias("_msg"),
    )
    verdicts.reject(hits)
    return rows.filter(~hit)


def _validate(
    rows: pl.DataFrame,
    types: dict[str, TaskType],
    checks: dict[str, float],
    cfg: CleanConfig,
    verdicts: _Verdicts,
) -> tuple[pl.DataFrame, int]:
    """Runs the Rust validator, with the quality gate's content checks in its pass, and
    rejects what fails with the validator's reason, field and message. Returns the valid
    answers with their triple fields (``query``, ``positive``, ``negative``) and labels,
    and how many of them had their JSON recovered from prose or code fences."""
    from e5x import core
    from e5x.cleaning import quality as q

    schemas = {name: t.schema for name, t in types.items()}
    validator = core.Validator(schemas)
    columnar = _fields_columnar(types, schemas, validator.unpack_columns)
    gate: dict[str, Any] = {}
    if any(k != "not_a_task" for k in checks):
        gate = {
            # Every check named: a mapping modifies the defaults, and these are final.
            "gate": q.gate({k: checks.get(k, False) for k in q.DEFAULTS}, types, schemas),
            "gate_tasks": rows["instruction"],
            "gate_languages": rows["language"],
            "gate_min_words": dict(q.min_words_columns(rows, types)),
        }
    v = validator.validate(
        rows["content"],
        rows["task_type"],
        extract=cfg.extract,
        unpack=columnar,
        json=not columnar,
        **gate,
    )
    rows = pl.concat(
        [
            rows.select("_i", "task_type", "instruction", "id", "language", "model"),
            v.select("ok", "reason", "field", "message", "extracted"),
            _map_fields(v, rows["task_type"], types, columnar),
        ],
        how="horizontal",
    )
    invalid = rows.filter(~pl.col("ok"))
    reason = pl.col("reason").fill_null("invalid")
    verdicts.reject(invalid.select("_i", reason, "field", pl.col("message").alias("_msg")))
    valid = rows.filter(pl.col("ok"))
    _require_mapped_fields(valid, types)
    return valid, valid.filter(pl.col("extracted")).height


def _fields_columnar(types: dict[str, TaskType], schemas: dict[str, dict[str, Any]], unpack: list[str]) -> bool:
    """Whether every field the stage reads can come from ``validate(unpack=True)``: each
    mapped field (and each label field) must be a string property of its schema."""
    if _VERDICT_COLUMNS & set(unpack):
        return False
    for name, t in types.items():
        props = schemas[name].get("properties") or {}
        need = [t.mapping.query, t.mapping.positive, *([t.mapping.negative] if t.mapping.negative else [])]
        need += _label_fields(t)
        if any(not isinstance(props.get(f), dict) or props[f].get("type") != "string" for f in need):
            return False
    return True


def _map_fields(v: pl.DataFrame, tt: pl.Series, types: dict[str, TaskType], columnar: bool) -> pl.DataFrame:
    """query/positive/negative (and, for classification types, the raw label values in
    ``_label``/``_misleading_label``) of the validated rows."""
    labels = {n: _label_fields(t) for n, t in types.items()}
    if columnar:
        ttc = pl.col("_tt")
        present = set(tt.unique().drop_nulls().to_list())
        sel = {n: t for n, t in types.items() if n in present}
        negatives = {n: pl.col(t.mapping.negative) if t.mapping.negative else None for n, t in sel.items()}
        exprs = [
            _by_type(ttc, {n: pl.col(t.mapping.query) for n, t in sel.items()}).alias("query"),
            _by_type(ttc, {n: pl.col(t.mapping.positive) for n, t in sel.items()}).alias("positive"),
            _by_type(ttc, negatives).alias("negative"),
        ]
        for f in _LABEL_FIELDS:  # obj.get(f, "") of a string field
            exprs.append(_by_type(ttc, {n: pl.col(f).fill_null("") for n in sel if f in labels[n]}).alias(f"_{f}"))
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
            cols[f"_{f}"].append(str(obj.get(f, "")) if f in labels[name] else None)
    return pl.DataFrame(cols, schema={c: pl.Utf8 for c in cols})


def _require_mapped_fields(valid: pl.DataFrame, types: dict[str, TaskType]) -> None:
    """Raise if a valid answer lacks its query or positive: only a schema that makes a
    mapped field optional lets one through, and such an answer cannot become a triple."""
    missing = valid.filter(pl.col("query").is_null() | pl.col("positive").is_null())
    if missing.height:
        row = missing.row(0, named=True)
        t = types[row["task_type"]]
        f = t.mapping.query if row["query"] is None else t.mapping.positive
        raise ValueError(
            f"answer {row['id']} ({row['task_type']}) has no field {f!r}, which the task type maps to a triple"
        )


def _apply_rules(
    valid: pl.DataFrame, types: dict[str, TaskType], cfg: CleanConfig, verdicts: _Verdicts
) -> pl.DataFrame:
    """The recipe's rules on valid answers, in order of precedence: each rejects some of
    the answers the rules before it kept. Returns the answers no rule rejects."""
    rules: list[Callable[[pl.DataFrame, dict[str, TaskType]], pl.DataFrame]] = []
    if cfg.semantic_checks:
        rules += [_identical_fields, _label_in_input]
    rules.append(_missing_instruction)
    rows = valid
    for rule in rules:
        hits = rule(rows, types)
        verdicts.reject(hits)
        rows = rows.join(hits.select("_i"), on="_i", how="anti", maintain_order="left")
    return rows


def _identical_fields(rows: pl.DataFrame, types: dict[str, TaskType]) -> pl.DataFrame:
    """identical_fields: query == positive, or positive == negative, up to whitespace; the
    pair carries no training signal. The field is the second of the two."""
    tt = pl.col("task_type")
    positive = _norm(pl.col("positive"))
    same_qp = _norm(pl.col("query")) == positive
    same_np = pl.col("negative").is_not_null() & (_norm(pl.col("negative")) == positive)
    positive_field = _by_type(tt, {n: pl.lit(t.mapping.positive) for n, t in types.items()})
    negatives = {n: pl.lit(t.mapping.negative) if t.mapping.negative else None for n, t in types.items()}
    negative_field = _by_type(tt, negatives)
    return rows.filter(same_qp | same_np).select(
        "_i",
        pl.lit("identical_fields").alias("reason"),
        pl.when(same_qp).then(positive_field).otherwise(negative_field).alias("field"),
    )


def _label_in_input(rows: pl.DataFrame, types: dict[str, TaskType]) -> pl.DataFrame:
    """label_in_input: a classification answer (a type with label fields, see
    :func:`_label_fields`) whose label or misleading label appears verbatim, casefolded,
    in its input (the query); the field is the label that leaked.

    Python over those rows only: casefold() has no exact polars equivalent."""
    hits: dict[str, list[Any]] = {"_i": [], "reason": [], "field": [], "_msg": []}
    classification = [n for n, t in types.items() if _label_fields(t)]
    candidates = rows.filter(pl.col("task_type").is_in(classification))
    label_columns = [f"_{f}" for f in _LABEL_FIELDS]
    for i, tt, text, *raw_labels in candidates.select("_i", "task_type", "query", *label_columns).iter_rows():
        folded = None
        for f, raw in zip(_LABEL_FIELDS, raw_labels):
            label = (raw or "").strip().casefold()
            # Short labels ("yes", "no") occur in text by chance; only flag labels of 2+ words
            # or of 12+ characters, where verbatim presence means the label leaked.
            if label and (len(label.split()) >= 2 or len(label) >= 12):
                if folded is None:
                    folded = text.casefold()
                if label in folded:
                    hits["_i"].append(i)
                    hits["reason"].append("label_in_input")
                    hits["field"].append(f)
                    hits["_msg"].append(f"{f} {raw!r} appears verbatim in {types[tt].mapping.query}")
                    break
    schema: dict[str, Any] = {"_i": rows.schema["_i"], "reason": pl.Utf8, "field": pl.Utf8, "_msg": pl.Utf8}
    return pl.DataFrame(hits, schema=schema)


def _label_fields(t: TaskType) -> list[str]:
    """The label fields of a classification type: those of ``_LABEL_FIELDS`` its schema
    has (long_short's, or a custom type's written the same way), except its input."""
    return [f for f in _LABEL_FIELDS if f in t.fields and f != t.mapping.query]


def _missing_instruction(rows: pl.DataFrame, types: dict[str, TaskType]) -> pl.DataFrame:
    """missing_instruction: the log holds no task definition for the answer."""
    no_instruction = pl.col("instruction").is_null() | (pl.col("instruction") == "")
    return rows.filter(no_instruction).select(
        "_i", pl.lit("missing_instruction").alias("reason"), pl.lit(None, dtype=pl.Utf8).alias("field")
    )


def _dedup(rows: pl.DataFrame, cfg: CleanConfig, verdicts: _Verdicts) -> pl.DataFrame:
    """Rejects exact duplicates (``dedup_fields``) of an earlier answer, in log order;
    returns the first of each."""
    from e5x import core

    if not rows.height:
        return rows
    # "" = no negative, so keys stay non-null.
    keys = rows.select("instruction", "query", "positive", pl.col("negative").fill_null(""))
    unknown = [f for f in cfg.dedup_fields if f not in keys.columns]
    if unknown:
        raise ValueError(f"dedup_fields {unknown} not among {sorted(keys.columns)}")
    verdict = core.Deduplicator(casefold=cfg.casefold).add(keys, list(cfg.dedup_fields))
    rows = pl.concat([rows, verdict], how="horizontal")
    dups = rows.filter(~pl.col("keep"))
    verdicts.reject(dups.select("_i", pl.lit("duplicate").alias("reason"), pl.lit(None, dtype=pl.Utf8).alias("field")))
    verdicts.duplicate_of.append(dups.select("_i", rows["id"].gather(dups["duplicate_of"]).alias("_dup")))
    return rows.filter(pl.col("keep"))


def _triples(kept: pl.DataFrame, source: str) -> pl.DataFrame:
    """The kept answers as training triples: ``e5x.formats.triples.COLUMNS`` as strings,
    ``source`` in the source column."""
    rows = kept.with_columns(pl.lit(source, dtype=pl.Utf8).alias("source"))
    return rows.select(triples_format.COLUMNS).cast(pl.Utf8)


def _report(
    cfg: CleanConfig,
    rows: pl.DataFrame,
    triples: pl.DataFrame,
    types: dict[str, TaskType],
    checks: dict[str, float],
    extracted: int,
    torn: int,
) -> CleanReport:
    """The report of a run: ``rows`` holds one verdict per answer (see
    :meth:`_Verdicts.per_answer`), ``triples`` what was written."""
    out_path, _, chart_path = cfg.paths()
    rej = rows.filter(pl.col("reason").is_not_null())
    with_field = rej.filter(pl.col("field").is_not_null() & (pl.col("field") != ""))
    reason_field = with_field.select("_i", pl.concat_str("reason", pl.lit(":"), "field").alias("k"))
    lead = pl.int_range(pl.len()).alias("_i")  # row order, for _counts' ties
    return {
        "inputs": [str(p) for p in cfg.inputs],
        "output": str(out_path),
        "responses": rows.height,
        "kept": triples.height,
        "rejected": rows.height - triples.height,
        "extracted_json": extracted,
        "logs_with_torn_tail": torn,
        "by_reason": _counts(rej, "reason"),
        "by_reason_field": _counts(reason_field, "k"),
        "by_task_type": _type_counts(rows),
        "by_task_type_reason": _type_reason_counts(rej),
        "quality_checks": checks,
        "mix": {k: _counts(triples.select(lead, k), k) for k in ("task_type", "language", "model")},
        "examples": _examples(rej, types, cfg),
        "chart": str(chart_path) if chart_path else None,
    }


def _counts(frame: pl.DataFrame, key: str) -> dict[Any, int]:
    """``dict(Counter(frame[key]).most_common())``: count desc, ties in first-seen order."""
    g = frame.group_by(key).agg(pl.len().alias("_n"), pl.col("_i").min().alias("_first"))
    g = g.sort(["_n", "_first"], descending=[True, False])
    return dict(zip(g[key].to_list(), g["_n"].to_list()))


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


def _type_reason_counts(rej: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Rejections by reason (as :func:`_counts`) per task type ("None" if missing), keys sorted."""
    tt = pl.col("task_type").fill_null("None")
    return {name: _counts(rej.filter(tt == name), "reason") for name in sorted(set(rej.select(tt)["task_type"]))}


def _examples(rej: pl.DataFrame, types: dict[str, TaskType], cfg: CleanConfig) -> dict[str, list[dict[str, Any]]]:
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
    """The report's message for a rejected row: the one its step wrote, else one from its reason."""
    r = row["reason"]
    if row["_has_msg"]:
        return row["_msg"]
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
    if r == "identical_fields":
        m = types[row["task_type"]].mapping
        if row["field"] == m.positive:
            return f"{m.positive} equals {m.query}"
        return f"{m.negative} equals {m.positive}"
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
