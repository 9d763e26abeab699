"""Pure-Python twins of the Rust data core, used only by tests to check it.

Slow and simple on purpose: each function spells out the contract the native code
implements (same reason codes and precedence, same normalisation, same alias tables,
the same ChaCha8 stream), so a property test can compare the two row by row.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

MAX_DEPTH = 64
MAX_TEXT_BYTES = 16 << 20

# Unicode White_Space (what Rust's char::is_whitespace uses). Not str.isspace(), which
# also counts U+001C..U+001F.
WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B)) + "\u2028\u2029\u202f\u205f\u3000"
)
_WS_RUN = re.compile("[" + re.escape("".join(sorted(WHITESPACE))) + "]+")

# Precedence when one row has several schema errors (lower wins; ties by field).
_RANK = {
    code: i
    for i, code in enumerate(
        [
            "not_an_object",
            "unexpected_field",
            "missing_field",
            "wrong_type",
            "empty_string",
            "too_short",
            "too_long",
            "not_in_enum",
        ]
    )
}


class _Reject(Exception):
    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.field = reason, field


def _all_ws(s: str) -> bool:
    return all(c in WHITESPACE for c in s)


def nesting_depth(text: str, limit: int) -> int:
    depth = best = 0
    in_str = False
    i = 0
    while i < len(text):
        c = text[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
            if depth > best:
                best = depth
                if best > limit:
                    return best
        elif c in "}]":
            depth = max(depth - 1, 0)
        i += 1
    return best


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_surrogates(v: Any) -> None:
    # serde_json rejects lone surrogate escapes; Python's json accepts them.
    if isinstance(v, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in v):
            raise ValueError("lone surrogate")
    elif isinstance(v, list):
        for x in v:
            _check_surrogates(x)
    elif isinstance(v, dict):
        for k, x in v.items():
            _check_surrogates(k)
            _check_surrogates(x)


def _parse(text: str) -> Any:
    if nesting_depth(text, MAX_DEPTH) > MAX_DEPTH:
        raise _Reject("too_deep")
    try:
        v = json.loads(text, parse_constant=_no_constants)
        _check_surrogates(v)
    except (ValueError, RecursionError):
        raise _Reject("not_json") from None
    return v


def extraction_candidates(text: str) -> list[str]:
    out = []
    start = text.find("```")
    if start >= 0:
        after = text[start + 3 :]
        nl = after.find("\n")
        body = after[nl + 1 :] if nl >= 0 else ""
        end = body.find("```")
        if end >= 0:
            out.append(body[:end].strip(" \t\n\r"))
    open_ = text.find("{")
    if open_ >= 0:
        depth, in_str, i = 0, False, open_
        while i < len(text):
            c = text[i]
            if in_str:
                if c == "\\":
                    i += 1
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    out.append(text[open_ : i + 1])
                    break
            i += 1
    return out


def _ptr(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


_TYPES = {"string": str, "object": dict, "array": list, "boolean": bool, "null": type(None)}


def _check(schema: Mapping[str, Any], value: Any) -> tuple[str, str | None] | None:
    """Errors of the keyword subset the built-in schemas use, highest precedence first."""
    supported_root = {
        "$schema",
        "$id",
        "$comment",
        "title",
        "description",
        "examples",
        "type",
        "properties",
        "required",
        "additionalProperties",
    }
    supported_prop = {"$comment", "title", "description", "examples", "type", "minLength", "maxLength", "enum"}
    if set(schema) - supported_root:
        raise NotImplementedError(f"reference validator lacks {set(schema) - supported_root}")
    errs: list[tuple[str, str | None]] = []
    if schema.get("type") == "object" and not isinstance(value, dict):
        return ("not_an_object", None)
    props: Mapping[str, Any] = schema.get("properties", {})
    if schema.get("additionalProperties") is False:
        errs += [("unexpected_field", _ptr(k)) for k in value if k not in props]
    errs += [("missing_field", _ptr(k)) for k in schema.get("required", []) if k not in value]
    for k, v in value.items():
        ps = props.get(k)
        if ps is None:
            continue
        if set(ps) - supported_prop:
            raise NotImplementedError(f"reference validator lacks {set(ps) - supported_prop}")
        t = ps.get("type")
        if t is not None and not (isinstance(v, _TYPES[t]) and not (t != "boolean" and isinstance(v, bool))):
            errs.append(("wrong_type", _ptr(k)))
        if isinstance(v, str):
            if "minLength" in ps and len(v) < ps["minLength"]:
                errs.append(("empty_string" if _all_ws(v) else "too_short", _ptr(k)))
            if "maxLength" in ps and len(v) > ps["maxLength"]:
                errs.append(("too_long", _ptr(k)))
            if ps.get("minLength", 0) >= 1 and v and _all_ws(v):
                errs.append(("empty_string", _ptr(k)))
        if "enum" in ps and v not in ps["enum"]:
            errs.append(("not_in_enum", _ptr(k)))
    if not errs:
        return None
    return min(errs, key=lambda e: (_RANK[e[0]], (e[1] or "").encode()))


def validate_ref(
    texts: Sequence[str | bytes | None],
    task_types: Sequence[str | None] | str,
    schemas: Mapping[str, Mapping[str, Any]],
    *,
    extract: bool = False,
) -> list[dict[str, Any]]:
    """Rows of ``{ok, reason, field, extracted, json, values}`` (``values``: the string
    properties of the row's schema, in schema order, when ok)."""
    out = []
    for i, text in enumerate(texts):
        task = task_types if isinstance(task_types, str) else task_types[i]
        out.append(_validate_one(text, task, schemas, extract))
    return out


def _validate_one(
    text: str | bytes | None, task: str | None, schemas: Mapping[str, Mapping[str, Any]], extract: bool
) -> dict[str, Any]:
    def rej(reason: str, field: str | None = None, extracted: bool = False) -> dict[str, Any]:
        return {"ok": False, "reason": reason, "field": field, "extracted": extracted, "json": None, "values": None}

    if text is None:
        return rej("null_text")
    if task is None or task not in schemas:
        return rej("unknown_task_type")
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_TEXT_BYTES:
        return rej("too_large")
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        return rej("invalid_utf8")
    missing = object()  # JSON null parses to None, so use a sentinel
    value: Any = missing
    extracted = False
    try:
        value = _parse(s.strip(" \t\n\r"))
    except _Reject as first:
        if extract:
            for cand in extraction_candidates(s):
                try:
                    value, extracted = _parse(cand), True
                    break
                except _Reject:
                    pass
        if value is missing:
            return rej(first.reason, first.field)
    schema = schemas[task]
    err = _check(schema, value)
    if err is not None:
        return rej(err[0], err[1], extracted)
    props = [k for k, p in schema.get("properties", {}).items() if p.get("type") == "string"]
    return {
        "ok": True,
        "reason": None,
        "field": None,
        "extracted": extracted,
        "json": json.dumps(value, ensure_ascii=False, separators=(",", ":")),
        "values": [value.get(k) if isinstance(value.get(k), str) else None for k in props],
    }


# ----------------------------------------------------------------------------- dedup


def normalize_ref(s: str, casefold: bool = False) -> str:
    if s.isascii():
        t = s.lower() if casefold else s
    else:
        t = unicodedata.normalize("NFKC", s)
        if casefold:
            t = t.casefold()
    return _WS_RUN.sub(" ", t).strip(" ").strip("".join(WHITESPACE))


def dedup_ref(batches: Sequence[Sequence[Sequence[str | None]]], casefold: bool = False) -> list[list[int | None]]:
    """Per batch (rows of field values), the global index each row duplicates (or None)."""
    first: dict[tuple[str | None, ...], int] = {}
    out, idx = [], 0
    for rows in batches:
        res: list[int | None] = []
        for row in rows:
            key = tuple(None if v is None else normalize_ref(v, casefold) for v in row)
            if key in first:
                res.append(first[key])
            else:
                first[key] = idx
                res.append(None)
            idx += 1
        out.append(res)
    return out


# ----------------------------------------------------------------------------- sampling

BLOCK = 4096
_M32 = 0xFFFFFFFF


def _rotl(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & _M32


def _chacha8_block(key: Sequence[int], counter: int, stream: int) -> list[int]:
    init = [
        0x61707865,
        0x3320646E,
        0x79622D32,
        0x6B206574,
        *key,
        counter & _M32,
        counter >> 32,
        stream & _M32,
        stream >> 32,
    ]
    x = list(init)

    def qr(a: int, b: int, c: int, d: int) -> None:
        x[a] = (x[a] + x[b]) & _M32
        x[d] = _rotl(x[d] ^ x[a], 16)  # noqa: E702
        x[c] = (x[c] + x[d]) & _M32
        x[b] = _rotl(x[b] ^ x[c], 12)  # noqa: E702
        x[a] = (x[a] + x[b]) & _M32
        x[d] = _rotl(x[d] ^ x[a], 8)  # noqa: E702
        x[c] = (x[c] + x[d]) & _M32
        x[b] = _rotl(x[b] ^ x[c], 7)  # noqa: E702

    for _ in range(4):  # 8 rounds = 4 double rounds
        qr(0, 4, 8, 12)
        qr(1, 5, 9, 13)
        qr(2, 6, 10, 14)
        qr(3, 7, 11, 15)  # noqa: E702
        qr(0, 5, 10, 15)
        qr(1, 6, 11, 12)
        qr(2, 7, 8, 13)
        qr(3, 4, 9, 14)  # noqa: E702
    return [(a + b) & _M32 for a, b in zip(x, init)]


class ChaCha8:
    """ChaCha8 keyed by a u64 seed (8 LE bytes then zeros), 64-bit counter and stream."""

    def __init__(self, seed: int, stream: int) -> None:
        kb = seed.to_bytes(8, "little") + bytes(24)
        self.key = [int.from_bytes(kb[i : i + 4], "little") for i in range(0, 32, 4)]
        self.buf: list[int] = []
        self.stream, self.counter = stream, 0

    def next_u32(self) -> int:
        if not self.buf:
            self.buf = _chacha8_block(self.key, self.counter, self.stream)[::-1]
            self.counter += 1
        return self.buf.pop()

    def next_u64(self) -> int:
        lo = self.next_u32()
        return lo | (self.next_u32() << 32)


def alias_table(weights: Sequence[float]) -> tuple[list[int], list[int]]:
    total = 0.0
    for w in weights:  # plain left-to-right sum (not math.fsum / Neumaier)
        total += w
    n = len(weights)
    p = [w / total * float(n) for w in weights]
    prob = [0.0] * n
    alias = list(range(n))
    small = [i for i in range(n) if p[i] < 1.0]
    large = [i for i in range(n) if p[i] >= 1.0]
    while small and large:
        l, g = small.pop(), large.pop()  # noqa: E741
        prob[l], alias[l] = p[l], g
        p[g] = (p[g] + p[l]) - 1.0
        (small if p[g] < 1.0 else large).append(g)
    for g in large + small:
        prob[g] = 1.0
    thr = [1 << 32 if q >= 1.0 else int(q * 4294967296.0) for q in prob]
    return thr, alias


def sample_ref(
    placeholders: Mapping[str, Mapping[str, float] | Sequence[Any]], n: int, seed: int
) -> dict[str, list[str]]:
    tables = []
    for spec in placeholders.values():
        if isinstance(spec, Mapping):
            vals, ws = [str(v) for v in spec], [float(w) for w in spec.values()]
        else:
            vals, ws = [str(v) for v in spec], [1.0] * len(spec)
        tables.append((vals, *alias_table(ws)))
    cols: list[list[str]] = [[] for _ in tables]
    for b in range(-(-n // BLOCK)):
        rng = ChaCha8(seed, b)
        for _ in range(min(BLOCK, n - b * BLOCK)):
            for k, (vals, thr, alias) in enumerate(tables):
                r = rng.next_u64()
                col = ((r >> 32) * len(vals)) >> 32
                cols[k].append(vals[col] if (r & _M32) < thr[col] else vals[alias[col]])
    return dict(zip([str(k) for k in placeholders], cols))


# ----------------------------------------------------------------------------- render


def parse_template(t: str) -> list[str | tuple[str]]:
    """Literal strings and ``(name,)`` placeholders."""
    segs: list[str | tuple[str]] = []
    lit, i = "", 0
    while i < len(t):
        c = t[i]
        if c == "{" and t[i + 1 : i + 2] == "{":
            lit, i = lit + "{", i + 2
        elif c == "}" and t[i + 1 : i + 2] == "}":
            lit, i = lit + "}", i + 2
        elif c == "{":
            m = re.compile(r"[{}]").search(t, i + 1)
            if m is None or m.group() != "}":
                raise ValueError(f"unclosed '{{' at {i}")
            name = t[i + 1 : m.start()]
            if not name:
                raise ValueError("empty placeholder")
            if lit:
                segs.append(lit)
            lit = ""
            segs.append((name,))
            i = m.end()
        elif c == "}":
            raise ValueError(f"single '}}' at {i}")
        else:
            lit, i = lit + c, i + 1
    if lit:
        segs.append(lit)
    return segs


def render_ref(template: str, rows: Sequence[Mapping[str, str]]) -> list[str]:
    segs = parse_template(template)
    return ["".join(s if isinstance(s, str) else row[s[0]] for s in segs) for row in rows]
