"""The quality gate's settings and what it needs to know about each task type.

The checks themselves run in the Rust core (``rust/src/quality.rs``), inside the fused
validate pass. This module turns a user's setting into the checks that run (:func:`gate`
builds the :class:`e5x.core.QualityGate`), and a task type into what the gate needs: which
fields must be in which requested language, and how many words each field's request asked
for (from the placeholder values in each request's ``meta``). Both come from what the task
type declares (``field_languages``, ``field_min_words``; see :class:`e5x.tasks.TaskType`),
never from its name:

- wrong_language checks a field against the part of the requested language (split at "-")
  of the ``language_from`` placeholder it declares; a type that declares no
  ``field_languages`` gets its mapped fields checked when ``language_from`` names exactly
  one placeholder, and no field checked otherwise;
- too_few_words checks a field against the words its ``field_min_words`` placeholder's
  value asks for (see :func:`asked_words`) or the fixed number declared; a field without a
  declaration has no minimum.

Checks and default thresholds (a check that fires names the field and why):

    format_residue   0.5  unfilled/invented placeholders ({language}, [X], %s, {{), JSON
                          fragments ("key": or a bare {...}), stand-in values ("string",
                          "N/A", lorem ipsum), or more than this share of a field's
                          characters are ASCII digits/punctuation; lower = stricter
    degenerate       0.5  one word is more than this share of a field's words, its
                          distinct words are fewer than (1 - this) of them, its words
                          repeat with a period, or a field of under 4 words has fewer
                          than 4 distinct characters; lower = stricter (0.25 .. 1)
    prompt_echo      8    a field shares a span of this many words with its task type's
                          prompt template or the task definition it answered, or a whole
                          field of 4+ words occurs there; lower = stricter (4 .. 64)
    too_few_words    0.5  a field has fewer words than this share of what the request
                          asked for (its type's field_min_words; built-ins: query_length,
                          num_words; long-long: 300; STS and bitext: 2/4/30 for a
                          phrase/sentence/passage unit); higher = stricter
    wrong_language   0.5  the language identified by whatlang (on the first 160 bytes of
                          each field) differs from the requested one with at least this
                          confidence; fields whose first words are clearly stop words of
                          the requested language skip whatlang, and so do short fields
                          beside one that did; in Latin and Cyrillic script whatlang runs
                          only when other languages' stop words outscore the requested
                          one's, to choose between those and the requested one (else the
                          field is kept); it abstains on short text and
                          on languages it does not know (for those only a confident
                          English counts);
                          each field against the language its type's field_languages
                          names (bitext: each side against its own); lower = stricter
    not_a_task       4    a brainstormed task definition with fewer words than this, made
                          mostly of identifiers (snake_case, camelCase), or with format
                          residue; rejected before examples are asked for it (synth) and
                          again in clean; higher = stricter

Word-level checks (degenerate, prompt_echo) read the first 12 words of each field;
counts (too_few_words, placeholders) read all of it, the symbol share its first 128
bytes. This keeps the gate's cost flat in document length.

A setting is a string (the ``--quality-checks`` syntax), a mapping or None:

    "all"                         every check at its default (the default setting)
    "none"                        no checks
    "-wrong_language"             all but one
    "none,prompt_echo=6"          only prompt_echo, with spans of 6 words
    "too_few_words=0.8,degenerate=0.4"   all, two of them stricter
    {"wrong_language": False, "prompt_echo": 6}   the same as a mapping (TOML table)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import polars as pl

from e5x.tasks.languages import NAME_TO_CODE
from e5x.tasks.taxonomy import TaskType, task_types

if TYPE_CHECKING:
    from e5x import core

#: Check name -> default threshold, in the order the gate applies them.
DEFAULTS: dict[str, float] = {
    "not_a_task": 4,
    "format_residue": 0.5,
    "degenerate": 0.5,
    "prompt_echo": 8,
    "too_few_words": 0.5,
    "wrong_language": 0.5,
}
NOT_A_TASK_MIN_WORDS = int(DEFAULTS["not_a_task"])

# The STS and bitext prompts ask for a text unit; a "sentence" of one word is not one.
_UNIT_WORDS = {"phrase": 2, "sentence": 4, "passage": 30}


def parse_checks(setting: str | Mapping[str, Any] | None) -> dict[str, float]:
    """The checks that run (name -> threshold) for a setting (see the module doc)."""
    if setting is None:
        return {}
    out = dict(DEFAULTS)
    if isinstance(setting, Mapping):
        items: list[tuple[str, Any]] = list(setting.items())
    elif isinstance(setting, str):
        items = []
        for raw in setting.split(","):
            item = raw.strip()
            if not item:
                continue
            if item in ("all", "none"):
                items.append((item, None))
            elif item.startswith("-"):
                items.append((item[1:].strip(), False))
            elif "=" in item:
                k, threshold = item.split("=", 1)
                items.append((k.strip(), threshold.strip()))
            else:
                items.append((item, True))
    else:
        raise TypeError(f"quality checks must be a string or a mapping, got {type(setting).__name__}")
    for name, value in items:
        if name == "all":
            out = dict(DEFAULTS)
            continue
        if name == "none":
            out = {}
            continue
        if name not in DEFAULTS:
            raise ValueError(f"unknown quality check {name!r} (known: {', '.join(DEFAULTS)}, all, none)")
        if value is False or (isinstance(value, str) and value.lower() in ("off", "false", "no")):
            out.pop(name, None)
        elif value is True or (isinstance(value, str) and value.lower() in ("on", "true", "yes", "default")):
            out[name] = DEFAULTS[name]
        else:
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"quality check {name}: threshold {value!r} is not a number") from None
            if not math.isfinite(v):
                raise ValueError(f"quality check {name}: threshold {value!r} is not finite")
            if name in ("not_a_task", "prompt_echo") and v != int(v):
                raise ValueError(f"quality check {name}: threshold {value!r} must be a whole number of words")
            if name == "not_a_task" and not 1 <= v <= 64:
                raise ValueError(f"quality check not_a_task: threshold {value!r} is outside [1, 64]")
            out[name] = v
    # The native gate checks the ranges of the others (one source of truth for them).
    return {k: out[k] for k in DEFAULTS if k in out}


def describe(checks: Mapping[str, float]) -> str:
    """One line: ``format_residue=0.5, prompt_echo=8, ...`` or ``none``."""
    return ", ".join(f"{k}={v:g}" for k, v in checks.items()) or "none"


def gate(
    setting: str | Mapping[str, Any] | None = "all",
    types: Mapping[str, TaskType] | None = None,
    schemas: Mapping[str, Mapping[str, Any]] | None = None,
) -> core.QualityGate:
    """The native gate for a setting (see the module doc) and task types (default: the
    built-ins). Each type's schema gives its string fields unless ``schemas`` (name -> JSON
    Schema, as for :func:`e5x.core.validate`) replaces it; ``not_a_task`` is not a row check
    (:func:`e5x.core.task_problems` runs it). A bad threshold is a ValueError naming the check."""
    from e5x import core  # the native extension, only when a gate is built

    checks = parse_checks(setting)
    types = dict(types) if types is not None else task_types()
    merged: dict[str, Mapping[str, Any]] = {n: t.schema for n, t in types.items()}
    merged.update(schemas or {})
    row_checks = {k: v for k, v in checks.items() if k != "not_a_task"}
    return core.QualityGate(row_checks, gate_types(types, merged), NAME_TO_CODE)


def language_fields(t: TaskType) -> dict[str, int]:
    """Field -> the part of the requested language it must be in ("English-French": 0 =
    English, 1 = French), from the type's ``field_languages`` (see the module doc)."""
    if t.field_languages is not None:
        return {f: t.language_from.index(p) for f, p in t.field_languages.items() if f in t.fields}
    if len(t.language_from) != 1:
        return {}
    m = t.mapping
    return {f: 0 for f in (m.query, m.positive, m.negative) if f}


def min_words_fields(t: TaskType) -> dict[str, str | int]:
    """Field -> what gives the words its request asked for: a placeholder name (its drawn
    value is read by :func:`asked_words`) or a fixed number, from ``field_min_words``."""
    return {f: src for f, src in t.field_min_words.items() if f in t.fields}


def gate_types(types: Mapping[str, TaskType], schemas: Mapping[str, Mapping[str, Any]]) -> list[core.GateType]:
    """(task type, prompt template, [(string field, language part or -1)]) per type,
    fields in the order of the schema's string properties (the validator's order)."""
    out: list[core.GateType] = []
    for name, t in types.items():
        props = schemas[name].get("properties") or {}
        fields = [k for k, p in props.items() if isinstance(p, Mapping) and p.get("type") == "string"]
        langs = language_fields(t)
        out.append((name, t.prompt, [(f, langs.get(f, -1)) for f in fields]))
    return out


_NUMBER = re.compile(r"\d+")


def asked_words(value: str | None) -> int | None:
    """The minimum number of words a placeholder value asks for (None = no minimum)."""
    if value is None:
        return None
    v = value.strip().lower()
    if v in _UNIT_WORDS:
        return _UNIT_WORDS[v]
    if v.startswith(("less than", "fewer than", "at most", "up to")):
        return None
    m = _NUMBER.search(v)
    return int(m.group()) if m else None


def placeholder_names(types: Mapping[str, TaskType]) -> list[str]:
    """Placeholders the minimum-words rules read (their values come from the log)."""
    names: list[str] = []
    for t in types.values():
        for src in min_words_fields(t).values():
            if isinstance(src, str) and src not in names:
                names.append(src)
    return names


def min_words_columns(rows: pl.DataFrame, types: Mapping[str, TaskType]) -> list[tuple[str, pl.Series]]:
    """Per field, an Int64 column of the words each row's request asked for (null = no
    minimum). ``rows`` has ``task_type`` and one String column per placeholder name of
    :func:`placeholder_names` (null where the log has none)."""
    rules: dict[str, list[tuple[str, str | int]]] = {}
    for name, t in types.items():
        for f, src in min_words_fields(t).items():
            rules.setdefault(f, []).append((name, src))
    out = []
    for f, per_type in rules.items():
        col: pl.Expr = pl.lit(None, dtype=pl.Int64)
        for name, src in reversed(per_type):
            if isinstance(src, int):
                val: pl.Expr = pl.lit(src, dtype=pl.Int64)
            elif src in rows.columns:
                # Few distinct values: parse each once.
                values = [v for v in rows[src].unique().to_list() if v is not None]
                val = pl.col(src).replace_strict(
                    {v: asked_words(v) for v in values}, default=None, return_dtype=pl.Int64
                )
            else:
                continue
            col = pl.when(pl.col("task_type") == name).then(val).otherwise(col)
        out.append((f, rows.select(col.alias(f)).to_series()))
    return out
