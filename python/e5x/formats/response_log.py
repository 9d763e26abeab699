"""The response log of a synth run (``responses.jsonl``): one JSON record per line.

``e5x synth`` appends one record per answer (:func:`response_record` builds it) and
``e5x clean`` reads the example answers back (:func:`read_examples`). A record's keys:

    id, step, task_type, model   the planned request ("brainstorm" or "examples" step)
    response_model, response_id  what the server says it ran and called the answer
    messages, params             the request as sent (params: every argument but those)
    meta                         the plan's values: ``placeholders`` (name -> value), and
                                 on an example also ``task`` (its task definition) and
                                 ``language`` (null for a type without languages)
    content, refusal             the answer's text; the refusal text, if any
    finish_reason, rejected      the server's; why the answer cannot be used, or null
    usage, usage_estimated       prompt/completion/total tokens; true when the server
                                 reported no usable counts and they were estimated
    latency_s, attempts, call    seconds, the attempt that got the answer, and its call
    ts                           unix time
    choice_raw, ...              raw odd values of the body, kept for the report (some only)
    cost_usd                     what it cost at the configured prices

The run's other logs (``errors.jsonl``, ``calls.jsonl``) are JSONL written and read by the
same rules (:class:`AppendLog`, :func:`read_log`).

Why this survives kill -9: every record is one ``os.write`` of a whole line to an
``O_APPEND`` descriptor. Once ``write`` returns the bytes are in the kernel's page cache,
which survives the death of the process; only an OS crash or power loss can drop them, and
that is what ``fsync`` guards against. The policy (``SynthConfig.fsync``):

- ``interval`` (default): fsync at most every ``fsync_interval_s`` and on close. A power
  loss can lose at most that window of responses; resume re-requests them (cost, not
  corruption). Per-record fsync would cap throughput at the disk's flush rate.
- ``always``: fsync after every record (slow disks: a few hundred records/s at best).
- ``never``: leave flushing to the OS.

A process killed mid-``write`` can leave a torn last line (no newline / invalid JSON);
:func:`read_log` drops it and truncates the file back to the last complete line before the
log is reopened for appending.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl


def response_record(
    *,
    id: str,
    step: str,
    task_type: str,
    model: str,
    response_model: Any,
    messages: list[dict[str, str]],
    params: dict[str, Any],
    meta: dict[str, Any],
    content: str | None,
    refusal: str | None,
    finish_reason: str | None,
    rejected: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    usage_estimated: bool,
    latency_s: float,
    attempts: int,
    call: str,
    response_id: Any,
    ts: float,
    extra: Mapping[str, Any],
    cost_usd: float,
) -> dict[str, Any]:
    """One answer's record, its keys in the order they are written (``extra``: the body's
    raw odd values, between ``ts`` and ``cost_usd``)."""
    return {
        "id": id,
        "step": step,
        "task_type": task_type,
        "model": model,
        "response_model": response_model,
        "messages": messages,
        "params": params,
        "meta": meta,
        "content": content,
        "refusal": refusal,
        "finish_reason": finish_reason,
        "rejected": rejected,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "usage_estimated": usage_estimated,
        "latency_s": round(latency_s, 4),
        "attempts": attempts,
        "call": call,
        "response_id": response_id,
        "ts": ts,
        **extra,
        "cost_usd": cost_usd,
    }


def content_text(content: Any) -> str | None:
    """The text of a message ``content``: a string as is, a list of parts joined, else None.

    A part is a string, ``{"type": "text", "text": "..."}`` (or ``output_text``), or
    ``{"text": {"value": "..."}}``; parts of other types (images, audio) carry no text.
    Logs of earlier versions hold an answer's content in this shape too.
    """
    if content is None or isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    texts: list[str] = []
    for p in parts:
        if isinstance(p, str):
            texts.append(p)
        elif isinstance(p, dict) and p.get("type", "text") in ("text", "output_text"):
            t = p.get("text")
            if isinstance(t, dict):
                t = t.get("value")
            if isinstance(t, str):
                texts.append(t)
    return "".join(texts) if texts else None


def read_log(path: Path, *, repair: bool = False) -> tuple[list[dict[str, Any]], int]:
    """All complete records of a JSONL log and the number of bytes dropped from its end.

    With ``repair`` a torn tail is truncated away on disk so that appends start on a
    fresh line. A bad line *inside* the file (not possible with a single appender, but
    possible after disk corruption) is skipped with a warning rather than fatal.
    """
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes after the last newline are a torn line
    records: list[dict[str, Any]] = []
    bad = 0
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:  # valid JSON but not a record: as corrupt as a broken line
            bad += 1
    if bad:
        import warnings

        warnings.warn(f"{path}: skipped {bad} corrupt line(s)", stacklevel=2)
    dropped = len(data) - end
    if dropped and repair:
        with path.open("r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return records, dropped


class AppendLog:
    """One appender of a JSONL file with the fsync policy above."""

    def __init__(self, path: Path, *, fsync: str = "interval", fsync_interval_s: float = 1.0) -> None:
        self.path = path
        self.policy = fsync
        self.interval = fsync_interval_s
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._last_sync = time.monotonic()
        self._dirty = False

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        view = memoryview(line)
        while view:  # regular-file writes are complete in practice; loop for correctness
            n = os.write(self.fd, view)
            view = view[n:]
        self._dirty = True
        if self.policy == "always":
            self.sync()
        elif self.policy == "interval" and time.monotonic() - self._last_sync >= self.interval:
            self.sync()

    def sync(self) -> None:
        if self._dirty and self.policy != "never":
            os.fsync(self.fd)
        self._dirty = False
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self.fd >= 0:
            if self._dirty:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1


# The columns of :func:`read_examples`, before the placeholder columns; instruction and
# language are the record's meta.task and meta.language.
EXAMPLE_COLUMNS = ("id", "task_type", "model", "content", "refusal", "finish_reason", "instruction", "language")


def ndjson_schema(placeholders: Sequence[str] = ()) -> dict[str, Any]:
    """The keys of a record :func:`read_examples` reads, with their types, for polars'
    NDJSON reader (``placeholders``: the names read from ``meta.placeholders``)."""
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


def read_examples(log: Path, placeholders: Sequence[str] = ()) -> tuple[pl.DataFrame, int]:
    """The example answers of one log (``EXAMPLE_COLUMNS``, then one column per name in
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
            raw = pl.read_ndjson(io.BytesIO(memoryview(data)[:end]), schema=ndjson_schema(placeholders))
        except (pl.exceptions.PolarsError, ValueError, TypeError):
            raw = None
        if raw is not None:
            meta = pl.col("meta")
            examples = raw.filter(pl.col("step") == "examples").select(
                pl.col("id").fill_null("None"),  # f"{r.get('id')}"
                "task_type",
                "model",
                "content",
                "refusal",
                "finish_reason",
                meta.struct.field("task").alias("instruction"),
                meta.struct.field("language").alias("language"),
                *[meta.struct.field("placeholders").struct.field(p).alias(p) for p in placeholders],
            )
            return examples, len(data) - end
    del data
    records, dropped = read_log(log)
    cols: dict[str, list[Any]] = {k: [] for k in (*EXAMPLE_COLUMNS, *placeholders)}
    ids, tts, models, contents = cols["id"], cols["task_type"], cols["model"], cols["content"]
    refusals, finishes, instrs, langs = cols["refusal"], cols["finish_reason"], cols["instruction"], cols["language"]
    for r in records:
        if r.get("step") != "examples":
            continue
        meta_obj = r.get("meta")
        record_meta: dict[str, Any] = meta_obj if isinstance(meta_obj, dict) else {}
        ids.append(f"{r.get('id')}")
        tts.append(r.get("task_type"))
        models.append(r.get("model"))
        # Logs of earlier versions may hold a list of content parts: their text is the answer.
        contents.append(content_text(r.get("content")) if isinstance(r.get("content"), list) else r.get("content"))
        refusals.append(r.get("refusal"))
        finishes.append(r.get("finish_reason"))
        instrs.append(record_meta.get("task"))
        langs.append(record_meta.get("language"))
        ph = record_meta.get("placeholders")
        for p in placeholders:
            v = ph.get(p) if isinstance(ph, dict) else None
            cols[p].append(None if v is None else str(v))
    schema = {k: pl.Utf8 for k in cols}
    try:
        return pl.DataFrame(cols, schema=schema), dropped
    except (TypeError, pl.exceptions.PolarsError):
        # A non-string value (hand-edited log): row-wise construction converts scalars to
        # text and rejects nested values, as this reader always has.
        return pl.DataFrame([dict(zip(cols, row)) for row in zip(*cols.values())], schema=schema), dropped
