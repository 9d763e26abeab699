"""Stage configs: one way to build, override, validate and describe them.

A stage's config is a plain dataclass. Its annotations say what each field takes
(``Annotated[float, Gt(0)]`` for a range, ``Literal[...]`` for a choice, ``list[str]`` for a
list) and the comment beside or above a field says what it means (``--help`` shows it).
What fields require of each other goes in the class's ``check()``, which raises
``ConfigError(message, field=...)``. What a table given as a dict or a TOML file means
before it is validated (paths relative to the file, a dataset name resolved to its files)
goes in its classmethod ``from_table(table, path or None) -> table``; a config object is
taken as it is.

``load(cls, source, overrides)`` builds one from an instance, a dict or a TOML file, applies
dotted ``key.sub=value`` overrides (values are TOML literals: ``lr=1e-4``,
``langs=["en","fr"]``; a bare word is a string) and validates everything before any work
starts. Validation is pydantic's, in strict mode: nothing is coerced, so ``"10"`` is no
integer, ``true`` no number and ``"query"`` no list of letters. pydantic is imported on the
first ``load``, not with this module, so ``import e5x`` stays light. Every problem is
reported at once, on one line: ``train.toml: lr: must be > 0, got -1; seed: ...``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import sys
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, cast

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = ["ConfigError", "FieldInfo", "describe_fields", "field_names", "load", "parse_override", "to_dict"]

T = TypeVar("T")

MAX_PROBLEMS = 5  # reported on the one line; the rest are counted


class ConfigError(ValueError):
    """A bad config: one line naming where it came from (a file, ``override``) and the field."""

    def __init__(self, message: str, *, where: str | None = None, field: str | None = None) -> None:
        self.message, self.where, self.field = message, where, field
        super().__init__(": ".join(p for p in (where, field, message) if p))

    def located(self, where: str) -> ConfigError:
        """The same error, said of ``where`` unless it already names a place."""
        return self if self.where else ConfigError(self.message, where=where, field=self.field)


# ---- loading ---------------------------------------------------------------------------


def load(
    cls: type[T],
    source: T | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    fields: Mapping[str, Any] | None = None,
    where: str | None = None,
) -> T:
    """A validated ``cls`` from ``source`` (an instance, a dict, a TOML path or None for the
    defaults) with ``overrides`` applied (``"key.sub=value"`` strings, or a mapping of dotted
    keys to values), then ``fields`` (dotted keys to values: a stage's keyword arguments).
    Raises ConfigError naming the file (or ``where``) and every bad field."""
    from_table = getattr(cls, "from_table", None)
    if isinstance(source, cls):
        data, where = to_dict(source), where or f"{cls.__name__} object"
    elif isinstance(source, (Mapping, str, os.PathLike)):
        path = None if isinstance(source, Mapping) else Path(source)
        data = _plain(dict(cast(Mapping[str, Any], source)), "") if path is None else read_toml(path)
        where = where or ("config" if path is None else str(path))
        if from_table is not None:
            try:
                data = from_table(data, path)
            except ConfigError as e:
                raise e.located(where) from None
    elif source is None:
        data, where = {}, where or "defaults"
    else:
        raise ConfigError(f"expected a {cls.__name__}, a dict or a TOML path, got {type(source).__name__}",
                          where=where or "config")  # fmt: skip
    if isinstance(overrides, Mapping):
        given = {k: _plain(v, k) for k, v in overrides.items()}
    elif isinstance(overrides, str):  # one override, not a sequence of letters
        given = dict([parse_override(overrides, cls)])
    else:
        given = dict(parse_override(text, cls) for text in overrides)
    given.update((k, _plain(v, k)) for k, v in (fields or {}).items())
    for key, value in given.items():
        _set(data, cls, key, value)
    overridden = {_dotted(split_key(k)) for k in given}
    cfg = _validate(cls, data, where, overridden)
    check = getattr(cfg, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as e:
            raise e.located(_where_of(e.field, where, overridden)) from None
    return cfg


def read_toml(path: Path) -> dict[str, Any]:
    """The table of a TOML file; a missing or malformed file is a ConfigError naming it."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config file not found", where=str(path)) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", where=str(path)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"invalid TOML: {e}", where=str(path)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain TOML/JSON values (tuples become lists, paths strings)."""
    return _plain(dataclasses.asdict(cfg), "")


def parse_override(text: str, cls: type | None = None) -> tuple[str, Any]:
    """``"key.sub=value"`` -> (``"key.sub"``, value). The value is a TOML literal
    (``1e-4``, ``true``, ``["en", "fr"]``, ``{a = 1}``); anything that is not one, and any
    value given to a field that takes a string, stays the text it is."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"expected key=value, got {text!r}", where="override")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if cls is not None and not isinstance(value, str) and _takes_string(_annotation_at(cls, key)):
        value = raw
    return key, value


def field_names(cls: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def is_override(arg: str, cls: type) -> bool:
    """Whether a command-line word is ``key=value`` for a field of ``cls``."""
    key, sep, _ = arg.partition("=")
    return bool(sep) and key.split(".")[0].split("[")[0] in field_names(cls)


def split_key(key: str) -> list[str]:
    """``'prices."gpt-4.1".x'`` -> ``["prices", "gpt-4.1", "x"]``: a quoted part may hold dots."""
    parts, part, quoted = [], "", False
    for ch in key:
        if ch == '"':
            quoted = not quoted
        elif ch == "." and not quoted:
            parts.append(part)
            part = ""
        else:
            part += ch
    return [*parts, part]


def _set(data: dict[str, Any], cls: type, key: str, value: Any) -> None:
    """Set ``data[key]`` for a dotted key; a table the data does not give yet starts from the
    field's default, so ``task_weights.sts=2`` changes one weight of the default table."""
    parts = split_key(key)
    node: Any = data
    tp: Any = cls
    default = _default_instance(cls)
    defaults: Any = to_dict(default) if default is not None else {}
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        tp = _unwrap(tp)
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"no item {part} in a list of {len(node)}", where="override",
                                  field=".".join(parts[:i + 1]))  # fmt: skip
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if dataclasses.is_dataclass(tp) and part not in field_names(tp):
                raise ConfigError(unknown_key(part, tp), where="override", field=".".join(parts[: i + 1]))
        elif _is_table(tp):  # the source gives something else where a table belongs: validation names it
            return
        else:
            raise ConfigError(f"{'.'.join(parts[:i])} is not a table", where="override", field=key)
        if last:
            node[index] = value
            return
        if isinstance(node, dict) and index not in node:
            default = defaults.get(index) if isinstance(defaults, dict) else None
            node[index] = default if isinstance(default, (dict, list)) else {}
        node = node[index]
        defaults = defaults.get(index) if isinstance(defaults, dict) else None
        tp = _child_type(tp, part)


def _dotted(parts: list[str]) -> str:
    """``["sources", "0", "ratio"]`` -> ``"sources[0].ratio"``, as errors name fields."""
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else f".{p}" if out else p
    return out


def _is_table(tp: Any) -> bool:
    tp = _strip_none(tp)
    return dataclasses.is_dataclass(tp) or typing.get_origin(tp) in (dict, Mapping)


@functools.cache
def _default_instance(cls: type) -> Any:
    try:
        return cls()
    except TypeError:  # a class with required fields has no defaults to start from
        return None


def _plain(value: Any, key: str) -> Any:
    """``value`` as JSON-able data (what TOML can hold), or a ConfigError naming ``key``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ConfigError(f"{type(value).__name__} is no config value (strings, numbers, booleans, lists, tables)",
                      field=key or None)  # fmt: skip


# ---- validation ------------------------------------------------------------------------


@functools.cache
def _adapter(cls: type) -> Any:
    import pydantic

    return pydantic.TypeAdapter(cls)


def _validate(cls: type[T], data: dict[str, Any], where: str, overridden: set[str]) -> T:
    import pydantic

    problems: dict[str, tuple[str, str]] = {}  # field -> (where, message); the first per field
    for field, message in _unknown_keys(data, cls, ""):
        problems[field] = (_where_of(field, where, overridden), message)
    for field, value in _non_finite(data, ""):  # NaN and infinity are no setting of any field
        problems[field] = (_where_of(field, where, overridden), f"must be a finite number, got {_shown(value)}")
    try:
        # ignore: a class is Hashable, which the stub of functools.cache does not see
        cfg = _adapter(cls).validate_json(json.dumps(data), strict=True)  # type: ignore[arg-type]
    except pydantic.ValidationError as exc:
        for err in exc.errors(include_url=False):
            field, message = _explain(cls, err)
            problems.setdefault(field, (_where_of(field, where, overridden), message))
    if problems:
        raise _one_line(problems)
    return cfg


def _unknown_keys(value: Any, tp: Any, key: str) -> Iterable[tuple[str, str]]:
    """(field, message) for each key of a table that its dataclass has no field for."""
    tp = _strip_none(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        for k, v in value.items():
            sub = f"{key}.{k}" if key else k
            if k in field_names(tp):
                yield from _unknown_keys(v, _hints(tp)[k], sub)  # type: ignore[arg-type]  # a class is Hashable
            else:
                yield sub, unknown_key(k, tp)
    elif isinstance(value, dict) and typing.get_origin(tp) in (dict, Mapping):
        for k, v in value.items():
            yield from _unknown_keys(v, _child_type(tp, k), f"{key}.{k}")
    elif isinstance(value, list) and typing.get_origin(tp) in (list, tuple):
        for i, v in enumerate(value):
            yield from _unknown_keys(v, _child_type(tp, i), f"{key}[{i}]")


def _non_finite(value: Any, key: str) -> Iterable[tuple[str, float]]:
    if isinstance(value, float) and not math.isfinite(value):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, f"{key}.{k}" if key else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{key}[{i}]")


def _where_of(field: str | None, where: str, overridden: set[str]) -> str:
    """``override`` for a field set by an override (or inside one), else ``where``."""
    if field and any(field == k or field.startswith((f"{k}.", f"{k}[")) for k in overridden):
        return "override"
    return where


def _one_line(problems: dict[str, tuple[str, str]]) -> ConfigError:
    items = list(problems.items())
    (field, (where, message)), rest = items[0], items[1:MAX_PROBLEMS]
    text = message
    last_where = where
    for f, (w, m) in rest:
        text += f"; {w + ': ' if w != last_where else ''}{f}: {m}"
        last_where = w
    if len(items) > MAX_PROBLEMS:
        text += f"; and {len(items) - MAX_PROBLEMS} more"
    return ConfigError(text, where=where, field=field or None)


def _explain(cls: type, err: Mapping[str, Any]) -> tuple[str, str]:
    """(dotted field, message) for one pydantic error, in the words of the annotation."""
    tp: Any = cls
    path = ""
    parent: Any = None
    for part in err["loc"]:
        base = _unwrap(tp)
        if _is_union(base):  # the loc names a union member: speak of the union as a whole
            break
        parent = base
        path = f"{path}[{part}]" if isinstance(part, int) else f"{path}.{part}" if path else str(part)
        tp = _child_type(base, part)
        if tp is None:
            break
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        name = str(err["loc"][-1])
        return path, unknown_key(name, parent) if dataclasses.is_dataclass(parent) else "unknown key"
    if kind == "missing":
        if typing.get_origin(_unwrap(parent)) is tuple:  # a list too short for its fixed length
            path = path.rsplit("[", 1)[0]
            return path, f"must be {describe(_annotation_at(cls, path))}, got {_shown(value)}"
        return path, "required"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        return path, f"must be {bounds[kind]} {_number(next(iter(ctx.values())))}, got {_shown(value)}"
    if kind == "finite_number":
        return path, f"must be a finite number, got {_shown(value)}"
    if kind in ("too_short", "too_long") and "min_length" in ctx | {"min_length": 0} and tp is not None:
        return path, f"must be {describe(tp)}, got {_shown(value)}"
    if tp is None or kind.endswith("_parsing"):
        return path, f"{err['msg'][0].lower()}{err['msg'][1:]}, got {_shown(value)}"
    return path, f"must be {describe(tp)}, got {_shown(value)}"


def unknown_key(name: str, cls: Any) -> str:
    known = field_names(cls)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if not close:  # a part or a long form is no close match: max_step, learning_rate -> lr
        initials = "".join(w[:1] for w in name.split("_"))
        close = [k for k in known if k in name or name in k or k == initials][:1]
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; known keys: {', '.join(known)}"


def _shown(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({'float' if isinstance(value, float) else type(value).__name__})"


# ---- types -----------------------------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    """The type inside ``Annotated[...]`` (constraints aside)."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _is_union(tp: Any) -> bool:
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return False
    return len([a for a in typing.get_args(tp) if a is not type(None)]) > 1


def _strip_none(tp: Any) -> Any:
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return _unwrap(rest[0])
    return tp


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _child_type(tp: Any, part: Any) -> Any:
    """The annotation of ``tp``'s member ``part`` (a field, a key or an index), or None."""
    tp = _strip_none(tp)
    if dataclasses.is_dataclass(tp):
        return _hints(tp).get(part)  # type: ignore[arg-type]  # a class is Hashable
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    if origin is list and args:
        return args[0]
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        return args[part] if isinstance(part, int) and part < len(args) else None
    return None


def _annotation_at(cls: type, key: str) -> Any:
    tp: Any = cls
    for part in split_key(key.replace("[", ".").replace("]", "")):
        tp = _child_type(tp, int(part) if part.isdigit() else part)
        if tp is None:
            return None
    return tp


def _takes_string(tp: Any) -> bool:
    """Whether ``tp`` accepts a string and nothing a TOML literal other than a string is."""
    tp = _strip_none(tp)
    return tp is str or (typing.get_origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp)))


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "unset",
          Any: "any value"}  # fmt: skip
_PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def describe(tp: Any) -> str:
    """What a value of annotation ``tp`` must be, in words: "an integer >= 1",
    "a table of name = a number", "one of ddp|fsdp"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        limits = [t for t in map(_limit, args[1:]) if t]
        return " ".join([describe(args[0]), " and ".join(limits)]) if limits else describe(args[0])
    if origin is Literal:
        return "one of " + "|".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin in (dict, Mapping):
        return f"a table of name = {describe(args[1])}" if args else "a table"
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(set(args)) == 1:
                return f"a list of {len(args)} {_plural(args[0])}"
            return f"a list of {len(args)} values"
        return f"a list of {_plural(args[0])}" if args else "a list"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(tp: Any) -> str:
    tp = _unwrap(tp)
    if dataclasses.is_dataclass(tp):
        return "tables"
    return _PLURALS.get(tp, describe(tp) + " values")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return f"{value:_}" if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def _limit(meta: Any) -> str:
    for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if hasattr(meta, attr):
            return f"{sign} {_number(getattr(meta, attr))}"
    return ""


# ---- description (--help) ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    name: str  # dotted for fields of nested tables
    type: str  # in words
    default: str  # as TOML would write it
    doc: str


def describe_fields(cls: type, prefix: str = "", default: Any = None) -> list[FieldInfo]:
    """Every field of ``cls`` (nested tables' fields dotted) with its type, default and doc."""
    out = []
    docs = _field_docs(cls)
    default = default if default is not None else _default_instance(cls)
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        value = getattr(default, f.name, None) if default is not None else None
        if dataclasses.is_dataclass(_unwrap(tp)) and dataclasses.is_dataclass(value):  # a table, never unset
            out += describe_fields(_unwrap(tp), f"{prefix}{f.name}.", value)
            continue
        shown = "unset" if value is None else _toml(_plain(value, f.name))
        out.append(FieldInfo(f"{prefix}{f.name}", describe(tp), shown, docs.get(f.name, "")))
    return out


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}" if value else "{}"
    return str(value)


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    """Each field's comment: the comment lines right above it and the one at its end."""
    import ast
    import inspect
    import io
    import tokenize

    try:
        source = textwrap.dedent(inspect.getsource(cls))
        comments = {tok.start[0]: tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                    if tok.type == tokenize.COMMENT}  # fmt: skip
    except (OSError, TypeError, tokenize.TokenError, IndentationError):  # no source (frozen, zipped)
        return {}
    lines = source.splitlines()
    docs = {}
    body = ast.parse(source).body[0]
    for node in getattr(body, "body", []):
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above: list[str] = []
        line = node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            text = comments.get(line, "")
            if text.startswith("---") or "fmt:" in text:
                break
            above.insert(0, text)
            line -= 1
        end = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)
               if n in comments and "fmt:" not in comments[n]]  # fmt: skip
        docs[node.target.id] = " ".join(above + end)
    return docs


def help_table(cls: type, width: int = 100) -> str:
    """The fields of ``cls`` as ``--help`` lists them: name, type, default, then the doc."""
    rows = describe_fields(cls)
    name_w = min(max(len(r.name) for r in rows), 28)
    out = []
    for r in rows:
        head = f"  {r.name.ljust(name_w)}  {r.type} (default {r.default})"
        out.append(head)
        if r.doc:
            out += textwrap.wrap(r.doc, width, initial_indent=" " * (name_w + 4), subsequent_indent=" " * (name_w + 4))
    return "\n".join(out)
