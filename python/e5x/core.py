"""Typed polars wrappers over the Rust data core (``e5x._native``).

Data crosses the boundary as Arrow (the PyCapsule stream interface), never one Python
object per row; the native calls release the GIL and use every core.

- :func:`validate` — parse raw LLM output and check it against its task type's JSON
  Schema; one verdict row per input row (reason code + offending field).
- :class:`Deduplicator` — keep-first exact dedup by xxh3-128 of normalised text
  (NFKC, whitespace collapsed, optional case folding); state persists across batches.
- :func:`sample_placeholders` — weighted draws (alias method, ChaCha8, seeded; the same
  seed gives the same draws on every platform and thread count).
- :func:`render` — fill ``{name}`` templates from a frame of values.
- :class:`QualityGate` — content checks of valid answers, run by :func:`validate` in the
  same pass (``e5x.cleaning.quality.gate`` builds one from a setting and task types);
  :func:`task_problems` — the ``not_a_task`` check.

Everything here takes plain data (names, templates, thresholds, polars columns); this module
imports no stage of the pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import polars as pl

from e5x import _native
from e5x.schemas import SCHEMAS

__all__ = [
    "REASON_CODES",
    "Deduplicator",
    "QualityGate",
    "Validator",
    "render",
    "sample_placeholders",
    "task_problems",
    "validate",
]

#: Every reason code :func:`validate` can put in the ``reason`` column.
REASON_CODES: tuple[str, ...] = tuple(_native.reason_codes())

_TEXT_TYPES = (pl.String, pl.Binary, pl.Null)


#: One task type of a :class:`QualityGate`: (name, prompt template, [(string field,
#: language part or -1)]), the fields in the order of the schema's string properties.
GateType = tuple[str, str, Sequence[tuple[str, int]]]


def _merged_schemas(schemas: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    merged: dict[str, Any] = dict(SCHEMAS)
    if schemas:
        merged.update(schemas)
    return merged


@lru_cache(maxsize=16)
def _compiled(key: str) -> _native.Validator:
    named = json.loads(key)
    return _native.Validator([(name, json.dumps(s)) for name, s in named])


class Validator:
    """Task-type schemas compiled once (built-ins plus ``schemas``, added by name)."""

    def __init__(self, schemas: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        merged = _merged_schemas(schemas)
        try:
            key = json.dumps(sorted(merged.items()), sort_keys=True)
        except TypeError as e:
            raise TypeError(f"schemas must be JSON-serialisable dicts: {e}") from None
        self._native = _compiled(key)

    @property
    def task_types(self) -> list[str]:
        return list(self._native.task_types)

    @property
    def unpack_columns(self) -> list[str]:
        """String fields ``validate(..., unpack=True)`` adds when task types vary per row."""
        return list(self._native.unpack_columns)

    def validate(
        self,
        texts: pl.Series,
        task_types: pl.Series | str,
        *,
        extract: bool = False,
        unpack: bool = False,
        json: bool = True,
        dedup: Deduplicator | None = None,
        dedup_fields: Sequence[str] | None = None,
        gate: QualityGate | None = None,
        gate_tasks: pl.Series | None = None,
        gate_languages: pl.Series | None = None,
        gate_min_words: Mapping[str, pl.Series] | None = None,
    ) -> pl.DataFrame:
        """See :func:`validate`."""
        if not isinstance(texts, pl.Series):
            raise TypeError(f"texts must be a polars Series, got {type(texts).__name__}")
        if texts.dtype not in _TEXT_TYPES:
            raise TypeError(f"texts must be String or Binary, got {texts.dtype}")
        if texts.dtype == pl.Null:  # all-null column: no Arrow buffers to share
            texts = texts.cast(pl.String)
        # Arrow export of a name holding a NUL byte aborts the process; the name is unused.
        texts = texts.alias("texts")
        if isinstance(task_types, pl.Series):
            if len(task_types) != len(texts):
                raise ValueError(f"task_types has {len(task_types)} rows but texts has {len(texts)}")
            per_row: pl.Series = task_types if task_types.dtype == pl.String else task_types.cast(pl.String)
            task_types = per_row.alias("task_types")
        elif not isinstance(task_types, str):
            raise TypeError("task_types must be a str or a polars Series")
        if isinstance(dedup_fields, str):
            dedup_fields = [dedup_fields]

        def column(name: str, s: pl.Series | None, dtype: Any) -> pl.Series | None:
            if s is None:
                return None
            if not isinstance(s, pl.Series) or len(s) != len(texts):
                raise ValueError(f"{name} must be a polars Series of {len(texts)} rows")
            return s.cast(dtype)

        mins = [(str(f), column(f"gate_min_words[{f}]", s, pl.Int64)) for f, s in (gate_min_words or {}).items()]
        table = self._native.validate(
            texts,
            task_types,
            extract,
            unpack,
            json,
            None if dedup is None else dedup._native,
            None if dedup_fields is None else list(dedup_fields),
            None if gate is None else gate._native,
            column("gate_tasks", gate_tasks, pl.String),
            column("gate_languages", gate_languages, pl.String),
            mins or None,
        )
        return pl.DataFrame(table)


def validate(
    texts: pl.Series,
    task_types: pl.Series | str,
    *,
    schemas: Mapping[str, Mapping[str, Any]] | None = None,
    extract: bool = False,
    unpack: bool = False,
    json: bool = True,
    dedup: Deduplicator | None = None,
    dedup_fields: Sequence[str] | None = None,
    gate: QualityGate | None = None,
    gate_tasks: pl.Series | None = None,
    gate_languages: pl.Series | None = None,
    gate_min_words: Mapping[str, pl.Series] | None = None,
) -> pl.DataFrame:
    """Validate raw LLM outputs against the JSON Schema of their task type.

    Returns one row per input row with columns ``ok`` (bool), ``reason`` (code, see
    :data:`REASON_CODES`; null when ok), ``field`` (offending field as a JSON pointer
    without the leading ``/``, e.g. ``user_query``), ``message``, ``extracted`` (the
    object was pulled out of a fenced block or prose; only with ``extract=True``) and
    ``json`` (the validated object as compact JSON, keys in input order; null when not
    ok). ``unpack=True`` appends one String column per string field (unescaped): the
    fields of ``task_types`` when it is one name, else the union over all schemas
    (:attr:`Validator.unpack_columns`), null where the row failed or its task type lacks
    the field. Unpacked values are zero-copy views into ``texts`` where possible.
    ``json=False`` leaves out the ``json`` column (with ``unpack=True`` it is usually
    redundant, and building it copies every accepted row once more).

    ``dedup`` (a :class:`Deduplicator`) with ``dedup_fields`` (string fields of the
    task types) deduplicates the accepted rows in the same pass, while each row's text
    is still in cache: two more columns, ``keep`` (accepted and first of its kind) and
    ``duplicate_of`` (global row index of the first occurrence, null unless a
    duplicate). Every input row counts as seen by the deduplicator, so indices are
    input row numbers across all batches it was given; a rejected row is never kept
    and matches nothing. Same decisions as ``dedup.add`` on the accepted rows.

    ``gate`` (a :class:`QualityGate`) also runs the content checks on every row the
    schema accepts, in the same pass; a row it rejects gets the check's reason code and
    field like any other rejection (and is never kept by ``dedup``). It reads per row
    ``gate_tasks`` (the task definition, for prompt_echo), ``gate_languages`` (the
    requested language, parts joined with "-" for bitext) and ``gate_min_words``
    (field -> Int64 column of the words the request asked for; null = no minimum).

    ``schemas`` adds custom task types (name -> JSON Schema dict) to the built-in
    :data:`e5x.schemas.SCHEMAS`. Bad rows never raise: invalid UTF-8 (Binary
    input, or a String array built from unchecked bytes: every row's bytes are checked),
    deep nesting, huge rows and nulls are per-row rejections; a ``task_types``,
    ``gate_tasks`` or ``gate_languages`` value that is not UTF-8 rejects its row as
    ``invalid_utf8`` too, its message naming the column.
    """
    return Validator(schemas).validate(
        texts, task_types, extract=extract, unpack=unpack, json=json, dedup=dedup, dedup_fields=dedup_fields,
        gate=gate, gate_tasks=gate_tasks, gate_languages=gate_languages, gate_min_words=gate_min_words,
    )  # fmt: skip


class QualityGate:
    """The row checks of the quality gate, compiled for a set of task types.

    ``checks``: check name -> threshold (NaN = its default) of the row checks to run
    (format_residue, degenerate, prompt_echo, too_few_words, wrong_language; not_a_task is
    :func:`task_problems`). ``types``: one :data:`GateType` per task type; prompt_echo
    compares against its template, wrong_language reads each field's language part (the
    requested language split at "-"; -1 = not checked). ``language_codes``: requested
    language name -> ISO 639-1 code, so wrong_language can read function words first.
    ``e5x.cleaning.quality.gate`` builds all three from a setting and task types.
    """

    def __init__(
        self,
        checks: Mapping[str, float],
        types: Sequence[GateType] = (),
        language_codes: Mapping[str, str] | None = None,
    ) -> None:
        self._native = _native.QualityGate(
            [(str(k), float(v)) for k, v in checks.items()],
            [(str(n), str(p), [(str(f), int(part)) for f, part in fields]) for n, p, fields in types],
            sorted((str(k), str(v)) for k, v in (language_codes or {}).items()),
        )

    @property
    def checks(self) -> dict[str, float]:
        """The checks that run, with their thresholds."""
        return dict(self._native.checks)

    def __repr__(self) -> str:
        return f"QualityGate({', '.join(f'{k}={v:g}' for k, v in self.checks.items()) or 'none'})"


def task_problems(tasks: Sequence[str], min_words: int = 4) -> list[str | None]:
    """Why each brainstormed task definition is not one (None = it is): fewer than
    ``min_words`` words, mostly identifiers (snake_case, camelCase), or format residue."""
    return list(_native.task_problems([str(t) for t in tasks], int(min_words)))


class Deduplicator:
    """Keep-first exact dedup over chosen fields; the state persists across batches.

    Two rows are duplicates when every chosen field is equal after normalisation
    (Unicode NFKC, runs of whitespace collapsed to one space and trimmed, and with
    ``casefold=True`` full Unicode case folding). A null field equals only null.
    """

    def __init__(self, casefold: bool = False) -> None:
        self._native = _native.Deduplicator(casefold)

    @property
    def casefold(self) -> bool:
        return bool(self._native.casefold)

    @property
    def seen(self) -> int:
        """Rows added so far, over all batches (the next row's global index)."""
        return int(self._native.seen)

    @property
    def unique(self) -> int:
        """Distinct rows kept so far."""
        return int(self._native.unique)

    def add(self, df: pl.DataFrame, fields: Sequence[str]) -> pl.DataFrame:
        """Add a batch. Returns ``keep`` (bool) and ``duplicate_of`` (Int64: the global
        row index, across all batches so far, of the first occurrence; null if kept).
        A value that is not UTF-8 is a ValueError naming its column and row, and the
        batch is not added."""
        if isinstance(fields, str):
            fields = [fields]
        fields = list(fields)
        if not fields:
            raise ValueError("fields must name at least one column")
        missing = [f for f in fields if f not in df.columns]
        if missing:
            raise ValueError(f"columns {missing} not in frame (columns: {df.columns})")
        cols: list[pl.Series] = []
        for f in fields:
            s = df.get_column(f)
            if s.dtype not in (pl.String, pl.Null):
                raise TypeError(f"column '{f}' must be String, got {s.dtype}")
            cols.append(s.cast(pl.String).alias(f"c{len(cols)}"))  # a NUL in a name aborts Arrow export
        dup = pl.Series(self._native.add(fields, cols))
        return pl.DataFrame({"keep": dup.is_null(), "duplicate_of": dup})

    def __repr__(self) -> str:
        return f"Deduplicator(casefold={self.casefold}, seen={self.seen}, unique={self.unique})"


def sample_placeholders(
    placeholders: Mapping[str, Mapping[str, float] | Sequence[Any]],
    n: int,
    seed: int,
) -> pl.DataFrame:
    """Draw ``n`` assignments: one String column per placeholder (in the given order).

    Each placeholder maps value -> weight (weights >= 0, positive sum) or is a list of
    values drawn uniformly (non-string values are converted with ``str``). The same
    ``seed`` (0 <= seed < 2**64) gives the same draws on every platform and thread count.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    names, values, weights = [], [], []
    for name, spec in placeholders.items():
        if isinstance(spec, Mapping):
            vals = [str(v) for v in spec]
            ws = [float(w) for w in spec.values()]
        elif isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
            raise TypeError(f"placeholder '{name}': expected a dict of weights or a list of values")
        else:
            vals = [str(v) for v in spec]
            ws = [1.0] * len(vals)
        names.append(str(name))
        values.append(vals)
        weights.append(ws)
    return pl.DataFrame(_native.sample_placeholders(names, values, weights, n, seed))


def render(template: str, values: pl.DataFrame) -> pl.Series:
    """Fill ``template``'s ``{name}`` placeholders from the columns of ``values``, one
    output row per input row (``{{`` / ``}}`` write literal braces). A placeholder with
    no column is a ValueError naming it; a null value, or one that is not UTF-8, is a
    ValueError naming the row."""
    names = list(_native.template_names(template))
    missing = [n for n in names if n not in values.columns]
    if missing:
        raise ValueError(
            f"template placeholders {['{' + m + '}' for m in missing]} have no column in "
            f"values (columns: {values.columns})"
        )
    cols: list[pl.Series] = []
    for name in names:
        s = values.get_column(name)
        if s.dtype != pl.String:
            s = s.cast(pl.String)
        cols.append(s.alias(f"c{len(cols)}"))  # a NUL in a name aborts Arrow export
    out = _native.render(template, names, cols, values.height)
    return pl.Series("rendered", out)
