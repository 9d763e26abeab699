"""A stage's command line, derived from its config class: ``e5x STAGE [CONFIG.toml] [key=value ...]``.

The positional words are a TOML file of the config's fields, ``key=value`` overrides of them
(dotted for nested tables, TOML literals, bare words are strings: see ``e5x.config``) and
whatever else the stage takes (clean's inputs, eval's model and tasks). ``--help`` lists
every field with its type, default and doc, read from the class. The flags the README and
older scripts use are aliases of fields (``--out X`` sets ``out``), named, typed and
documented by the field they set.
"""

from __future__ import annotations

import argparse
import difflib
import json
from dataclasses import dataclass
from typing import Any

from e5x.config import ConfigError, describe_fields, field_names, help_table, is_override, unknown_key

POSITIONALS = "config_words"  # the argparse dest of the positional words


@dataclass(frozen=True)
class Alias:
    """A flag that sets one field. ``flags`` default to ``--field-name``; ``value`` makes it
    a switch that sets the field to that TOML literal; ``items`` makes it repeatable
    ``NAME=VALUE``, each setting ``field.NAME``; ``csv`` reads a comma-separated list."""

    field: str
    flags: tuple[str, ...] = ()
    value: str | None = None
    items: bool = False
    csv: bool = False
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return f"set:{self.field}"


def alias(field: str, *flags: str, value: str | None = None, items: bool = False, csv: bool = False,
          choices: Any = None) -> Alias:  # fmt: skip
    return Alias(field, flags or (f"--{field.replace('_', '-')}",), value, items, csv,
                 tuple(choices) if choices is not None else None)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser, cls: type, aliases: list[Alias] = (), *,  # type: ignore[assignment]
                  positionals: str = "", legacy_config_flag: bool = True) -> None:  # fmt: skip
    """The positional words, ``--config`` and the alias flags; the field table as epilog."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    words = "[CONFIG.toml]" + (f" {positionals}" if positionals else "") + " [key=value ...]"
    parser.add_argument(POSITIONALS, nargs="*", metavar="WORD",
                        help=f"{words}: a TOML file of the fields below, then key=value overrides of them "
                             "(dotted for nested tables; values are TOML literals, a bare word is a string)")  # fmt: skip
    if legacy_config_flag:
        parser.add_argument("--config", dest="config_flag", metavar="CONFIG.toml", help="the same as the positional")
    fields = {f.name: f for f in describe_fields(cls)}
    for a in aliases:
        f = fields[a.field]
        doc = f"{f.doc}; " if f.doc else ""
        if a.value is not None:
            parser.add_argument(*a.flags, dest=a.dest, action="store_const", const=a.value,
                                help=f"{a.field}={a.value}" + (f" ({f.doc})" if f.doc else ""))  # fmt: skip
        elif a.items:
            parser.add_argument(*a.flags, dest=a.dest, action="append", metavar="NAME=VALUE",
                                help=f"sets {a.field}.NAME (repeatable); {doc}{f.type}")  # fmt: skip
        else:
            parser.add_argument(*a.flags, dest=a.dest, choices=a.choices, metavar=None if a.choices else "VALUE",
                                help=f"sets {a.field}: {doc}{f.type} (default {f.default})".replace("%", "%%"))  # fmt: skip
    fields_text = f"config fields ({cls.__name__}):\n{help_table(cls)}"
    parser.epilog = f"{parser.epilog}\n{fields_text}" if parser.epilog else fields_text


def parse(args: argparse.Namespace, cls: type, aliases: list[Alias] = (),  # type: ignore[assignment]
          *, positionals: bool = False) -> tuple[str | None, list[str], list[str]]:  # fmt: skip
    """(the config file or None, the overrides in the order they apply, the other positional
    words, which only a stage that takes ``positionals`` has). Aliases apply before
    ``key=value`` words, so a word given last wins."""
    words: list[str] = list(getattr(args, POSITIONALS))
    config = getattr(args, "config_flag", None)
    rest = []
    overrides = []
    for i, word in enumerate(words):
        if i == 0 and "=" not in word and (word.lower().endswith(".toml") or not positionals):
            if config:
                raise ValueError(f"two config files: --config {config} and {word}")
            config = word
        elif is_override(word, cls):
            overrides.append(word)
        elif _mistyped(word, cls) or ("=" in word and not positionals):
            key = word.partition("=")[0]
            raise ConfigError(unknown_key(key.split(".")[0], cls), where="override", field=key)
        elif positionals:
            rest.append(word)
        else:
            raise ValueError(f"unexpected argument {word!r}: give a CONFIG.toml first, then key=value words")
    given = []
    for a in aliases:
        v = getattr(args, a.dest, None)
        if v is None:
            continue
        if a.items:
            for item in v:
                name, sep, text = item.partition("=")
                if not sep or not name:
                    raise ValueError(f"{a.flags[0]} expects NAME=VALUE, got {item!r}")
                given.append(f"{a.field}.{name}={text}")
        elif a.csv:
            given.append(f"{a.field}={json.dumps([x.strip() for x in v.split(',') if x.strip()])}")
        else:
            given.append(f"{a.field}={v}")
    return config, given + overrides, rest


def _mistyped(word: str, cls: type) -> bool:
    """Whether ``key=value`` names no field but one close to a field: a typo, not a stage's
    own positional word (an eval task's ``NAME=PATH``)."""
    key, sep, _ = word.partition("=")
    head = key.split(".")[0]
    return bool(sep) and head.isidentifier() and bool(difflib.get_close_matches(head, field_names(cls), cutoff=0.8))


def toml_list(items: list[str]) -> str:
    """A list of strings as a TOML literal (JSON strings are TOML strings)."""
    return json.dumps(list(items), ensure_ascii=False)
