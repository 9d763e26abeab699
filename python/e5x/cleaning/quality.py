"""The quality gate's settings and what it needs to know about each task type.

The checks themselves run in the Rust core (``rust/src/quality.rs``), inside the fused
validate pass. This module turns a user's setting into the checks that run, and a task
type into what the gate needs: which fields must be in which requested language, and
how many words each field's request asked for (from the placeholder values in each
request's ``meta``).

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
                          asked for (query_length, num_words; long-long: 300; STS and
                          bitext: 2/4/30 for a phrase/sentence/passage unit); higher =
                          stricter
    wrong_language   0.5  the language identified by whatlang (on the first 160 bytes of
                          each field) differs from the requested one with at least this
                          confidence; fields whose first words are clearly stop words of
                          the requested language skip whatlang, and so do short fields
                          beside one that did; it abstains on short text and on languages
                          it does not know (for those only a confident English counts);
                          bitext checks each side against its own language; lower =
                          stricter
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
from typing import Any

import polars as pl

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

# Which fields each built-in task type's prompt asks to be in which language part
# ("English-French": 0 = English, 1 = French). Labels of long_short are not asked to be
# in the example's language.
_LANGUAGE_FIELDS: dict[str, dict[str, int]] = {
    "short_long": {"user_query": 0, "positive_document": 0, "hard_negative_document": 0},
    "long_short": {"input_text": 0},
    "short_short": {"input": 0, "positive_document": 0},
    "long_long": {"input": 0, "positive_document": 0},
    "sts": {"S1": 0, "S2": 0, "S3": 0},
    "bitext": {"S1": 0, "S2": 1, "S3": 1},
}
# The words each built-in prompt asks for, per field: a placeholder whose value holds the
# number ("at least 10 words", "200"; "less than ..." asks for no minimum) or a fixed count.
_MIN_WORDS: dict[str, dict[str, str | int]] = {
    "short_long": {
        "user_query": "query_length",
        "positive_document": "num_words",
        "hard_negative_document": "num_words",
    },
    "long_short": {"input_text": "num_words"},
    "long_long": {"input": 300, "positive_document": 300},
    "sts": {"S1": "unit", "S2": "unit", "S3": "unit"},
    "bitext": {"S1": "unit", "S2": "unit", "S3": "unit"},
}
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


def language_fields(t: Any) -> dict[str, int]:
    """Field -> language part of a task type (built-in table; custom types: the mapped
    fields, when the type names one language)."""
    if t.name in _LANGUAGE_FIELDS and set(_LANGUAGE_FIELDS[t.name]) <= set(t.fields):
        return dict(_LANGUAGE_FIELDS[t.name])
    if len(t.language_from) != 1:
        return {}
    m = t.mapping
    return {f: 0 for f in (m.query, m.positive, m.negative) if f}


def gate_types(
    types: Mapping[str, Any], schemas: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, str, list[tuple[str, int]]]]:
    """(task type, prompt template, [(string field, language part or -1)]) per type,
    fields in the order of the schema's string properties (the validator's order)."""
    out = []
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


def placeholder_names(types: Mapping[str, Any]) -> list[str]:
    """Placeholders the minimum-words rules read (their values come from the log)."""
    names: list[str] = []
    for t in types.values():
        for src in _MIN_WORDS.get(t.name, {}).values():
            if isinstance(src, str) and src not in names:
                names.append(src)
    return names


def min_words_columns(rows: pl.DataFrame, types: Mapping[str, Any]) -> list[tuple[str, pl.Series]]:
    """Per field, an Int64 column of the words each row's request asked for (null = no
    minimum). ``rows`` has ``task_type`` and one String column per placeholder name of
    :func:`placeholder_names` (null where the log has none)."""
    rules: dict[str, list[tuple[str, str | int]]] = {}
    for name, t in types.items():
        for f, src in _MIN_WORDS.get(t.name, {}).items():
            if f in t.fields:
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
