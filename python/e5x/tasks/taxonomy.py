"""The task taxonomy: what the LLM is asked to write, and how its answer becomes a triple.

A :class:`TaskType` bundles, for one kind of embedding task:

- ``placeholders``: name -> weighted values (``{value: weight}`` or a list = uniform), or
  the string ``"@languages"`` for "draw from the run's language weights";
- ``brainstorm_prompt`` (asymmetric types): asks for a JSON list of task definitions;
- ``prompt``: asks for one example as JSON; ``{task}`` is the task definition (drawn from
  the brainstormed pool, or the fixed ``task`` of a symmetric type);
- ``schema``: the JSON Schema the Rust validator checks the answer against;
- ``mapping``: which answer fields become (query, positive, negative);
- ``field_languages`` / ``field_min_words``: what the prompt asks of each answer field, for
  the quality gate of ``e5x clean`` (which language placeholder it is written in; the
  placeholder whose drawn value, or the fixed number, gives the words it must have).

Templates use ``{name}`` placeholders and ``{{``/``}}`` for literal braces (the syntax of
``e5x.core.render``). Users add task types from a TOML file (:func:`load_task_types`).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e5x.tasks.schemas import SCHEMAS, object_schema

LANGUAGES = "@languages"  # placeholder value set = the run's language weights
# Filled by the synth stage, never sampled: the task definition and the brainstorm size.
BUILTIN_PLACEHOLDERS = frozenset({"task", "n_tasks"})

PlaceholderValues = Mapping[str, float] | list[str] | tuple[str, ...] | str

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def template_placeholders(template: str, *, where: str = "template") -> list[str]:
    """Names of the ``{name}`` placeholders in a template, in order of first use."""
    names: list[str] = []
    for m in _TOKEN.finditer(template):
        tok = m.group(0)
        if tok in ("{{", "}}"):
            continue
        if tok in ("{", "}"):
            raise ValueError(f"{where}: unmatched {tok!r} at offset {m.start()} (write {tok * 2} for a literal brace)")
        name = m.group(1)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{where}: bad placeholder {tok!r} at offset {m.start()}")
        if name not in names:
            names.append(name)
    return names


def normalize_values(values: PlaceholderValues, *, where: str) -> dict[str, float] | str:
    """Check a placeholder's value set; lists become uniform weights."""
    if isinstance(values, str):
        if values != LANGUAGES:
            raise ValueError(f"{where}: a value set must be a table of weights, a list, or {LANGUAGES!r}")
        return values
    if isinstance(values, (list, tuple)):
        values = {str(v): 1.0 for v in values}
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: a value set must be a table of weights or a list, got {type(values).__name__}")
    if not values:
        raise ValueError(f"{where}: placeholder has no values")
    out: dict[str, float] = {}
    for v, w in values.items():
        try:
            wf = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: weight of {v!r} is not a number: {w!r}") from None
        if not math.isfinite(wf) or wf < 0:
            raise ValueError(f"{where}: weight of {v!r} must be finite and >= 0, got {w!r}")
        out[str(v)] = wf
    check_weights(out, where=where)
    return out


def check_weights(weights: Mapping[str, float], *, where: str) -> None:
    """Weights must be finite, non-negative and sum to a positive number."""
    if not weights:
        raise ValueError(f"{where}: no entries")
    for k, w in weights.items():
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{where}: weight of {k!r} must be a finite number >= 0, got {w!r}")
    if sum(weights.values()) <= 0:
        raise ValueError(f"{where}: weights sum to 0")


@dataclass(frozen=True)
class Mapping3:
    """Answer fields that become the training triple; ``negative`` None = in-batch only."""

    query: str
    positive: str
    negative: str | None = None


@dataclass
class TaskType:
    name: str
    schema: dict[str, Any]
    prompt: str
    mapping: Mapping3
    placeholders: dict[str, Any] = field(default_factory=dict)
    brainstorm_prompt: str | None = None  # asymmetric types only
    task: str | None = None  # fixed task definition of symmetric types
    # Placeholders whose values name the example's language(s), joined with "-".
    language_from: tuple[str, ...] = ("language",)
    # Answer field -> the placeholder of language_from its prompt asks it to be written in
    # (the wrong_language check). None: every mapped field, when language_from names one
    # placeholder; else no field.
    field_languages: dict[str, str] | None = None
    # Answer field -> the placeholder whose drawn value says how many words the prompt asks
    # for ("at least 10 words", "200", "sentence"), or a fixed number (too_few_words).
    field_min_words: dict[str, str | int] = field(default_factory=dict)
    # Completion size guesses for --dry-run cost estimates (tokens).
    expected_completion_tokens: int = 400
    description: str = ""

    @property
    def symmetric(self) -> bool:
        return self.task is not None

    @property
    def fields(self) -> list[str]:
        return list(self.schema.get("properties", {}))

    def check(self) -> None:
        """Raise ValueError naming the task type and the problem; no request is sent before this."""
        where = f"task type {self.name!r}"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ValueError(f"{where}: name must be an identifier (letters, digits, _)")
        if (self.task is None) == (self.brainstorm_prompt is None):
            raise ValueError(f"{where}: give either a fixed `task` (symmetric) or a `brainstorm_prompt` (asymmetric)")
        if not isinstance(self.schema, dict) or self.schema.get("type") != "object" or not self.fields:
            raise ValueError(f"{where}: schema must be a JSON Schema of an object with properties")
        for role in ("query", "positive", "negative"):
            f = getattr(self.mapping, role)
            if f is not None and f not in self.fields:
                raise ValueError(f"{where}: mapping.{role} = {f!r} is not a field of the schema {self.fields}")
        for name, values in self.placeholders.items():
            if name in BUILTIN_PLACEHOLDERS:
                raise ValueError(f"{where}: placeholder {name!r} is built in and filled by e5x; rename it")
            self.placeholders[name] = normalize_values(values, where=f"{where}, placeholder {name!r}")
        known = set(self.placeholders) | {"task"}
        for name in template_placeholders(self.prompt, where=f"{where}, prompt"):
            if name not in known:
                raise ValueError(
                    f"{where}: prompt uses placeholder {{{name}}} which has no values (known: {sorted(known)})"
                )
        if self.brainstorm_prompt is not None:
            for name in template_placeholders(self.brainstorm_prompt, where=f"{where}, brainstorm_prompt"):
                if name not in known - {"task"} | {"n_tasks"}:
                    raise ValueError(f"{where}: brainstorm_prompt uses placeholder {{{name}}} which has no values")
        if "task" not in template_placeholders(self.prompt):
            raise ValueError(f"{where}: prompt must contain {{task}} (the task definition)")
        for name in self.language_from:
            if name not in self.placeholders:
                raise ValueError(f"{where}: language_from names {name!r}, which is not a placeholder")
        props = self.schema.get("properties", {})
        strings = [f for f, p in props.items() if isinstance(p, Mapping) and p.get("type") == "string"]
        for key, per_field in (
            ("field_languages", self.field_languages or {}),
            ("field_min_words", self.field_min_words),
        ):
            for f in per_field:
                if f not in strings:
                    raise ValueError(f"{where}: {key} names {f!r}, which is not a string field of the schema {strings}")
        for f, lang in (self.field_languages or {}).items():
            if lang not in self.language_from:
                raise ValueError(
                    f"{where}: field_languages.{f} = {lang!r} is not a language placeholder "
                    f"(language_from: {list(self.language_from)})"
                )
        for f, src in self.field_min_words.items():
            if isinstance(src, bool) or not isinstance(src, (str, int)):
                raise ValueError(
                    f"{where}: field_min_words.{f} must be a placeholder name or a whole number of words, got {src!r}"
                )
            if isinstance(src, int) and src < 1:
                raise ValueError(f"{where}: field_min_words.{f} must be at least 1, got {src}")
            if isinstance(src, str) and (src not in self.placeholders or self.placeholders[src] == LANGUAGES):
                raise ValueError(
                    f"{where}: field_min_words.{f} = {src!r} is not a placeholder with values "
                    f"(known: {sorted(k for k, v in self.placeholders.items() if v != LANGUAGES)})"
                )

    def placeholder_values(self, languages: Mapping[str, float]) -> dict[str, Any]:
        """The placeholders with the run's language weights in place of ``LANGUAGES``."""
        return {k: (dict(languages) if v == LANGUAGES else v) for k, v in self.placeholders.items()}

    def brainstorm_placeholders(self) -> dict[str, Any]:
        assert self.brainstorm_prompt is not None
        used = set(template_placeholders(self.brainstorm_prompt)) - BUILTIN_PLACEHOLDERS
        return {k: v for k, v in self.placeholders.items() if k in used}


# ---------------------------------------------------------------------------------------
# The six built-in task types. The wording is ours; every guideline of the paper's
# templates (E5 paper, App. C) is here, one per bullet, so tests/test_tasks.py can check
# each one. {language} reaches every field the paper writes in it.
# ---------------------------------------------------------------------------------------

_JSON_ONLY = (
    "Reply with the JSON object only: no markdown fences, no comments, no explanation, "
    "nothing before or after it. Be creative!"
)

_BRAINSTORM = (
    """Brainstorm a list of {n_tasks} potentially useful {what}.

Here are a few examples for your reference:
{examples}

Guidelines:
{guidelines}
- Each task covers a wide range of {inputs} and is not too specific: a task that fits only \
a handful of {inputs} is useless.
- Make the list diverse: many domains (science, law, shopping, health, software, hobbies, \
everyday life, ...), many user intents, and no two tasks that are rewordings of each other.
- Each element is one distinct task, described in one English sentence.

Return a JSON object of the form {{{{"tasks": ["...", "..."]}}}}. """
    + _JSON_ONLY
)  # .format halves braces

BRAINSTORM_SHORT_LONG = _BRAINSTORM.format(
    n_tasks="{n_tasks}",
    what="text retrieval tasks",
    examples="- Given a scientific claim as the query, retrieve documents that help verify or refute it.\n"
    "- Search for documents that answer a FAQ-style query about children's nutrition.",
    guidelines="- Each task says what the query is and what the desired documents are.",
    inputs="queries",
)
BRAINSTORM_LONG_SHORT = _BRAINSTORM.format(
    n_tasks="{n_tasks}",
    what="text classification tasks",
    examples="- Classify a product review by the aspect the customer complains about most.\n"
    "- Decide whether a news paragraph reports a fact, an opinion or a prediction.",
    guidelines="- The tasks cover a diverse range of domains and of task types (topic, sentiment, intent, style, ...).",
    inputs="input texts",
)
BRAINSTORM_SHORT_SHORT = _BRAINSTORM.format(
    n_tasks="{n_tasks}",
    what="text matching tasks",
    examples="- Given a scientific paper title, retrieve the titles of papers that cite it.\n"
    "- Match a word with its definition.\n"
    "- Given a notable person's name, identify their occupation or achievement.",
    guidelines="- In every task both the query and the matching (groundtruth) document are very "
    "short: one or two sentences, or even a short phrase.",
    inputs="inputs",
)
BRAINSTORM_LONG_LONG = _BRAINSTORM.format(
    n_tasks="{n_tasks}",
    what="text matching tasks",
    examples="- Given a document that supports a debatable argument, find another document that "
    "contains the opposite arguments.\n"
    "- Given a lengthy business proposal, retrieve competitive business strategies in the same industry.",
    guidelines="- In every task the queries are long documents (several paragraphs), and so are "
    "the documents they match.",
    inputs="inputs",
)

PROMPT_SHORT_LONG = (
    """You have been assigned a text retrieval task: {task}

Write one text retrieval example for this task as a JSON object with exactly these keys:
- "user_query": a string, a random user search query specified by the retrieval task.
- "positive_document": a string, a document relevant to the user query.
- "hard_negative_document": a string, a hard negative document that only appears relevant \
to the query.

Guidelines:
- The user_query is {query_type}, {query_length}, {clarity}, and diverse in topic.
- All documents are written independently of the query: never copy the query verbatim.
- Some parts of the positive_document may be off-topic (not topically related to the \
query); that is acceptable.
- Every document is at least {num_words} words long.
- The hard_negative_document carries some useful information, but it is less useful or \
less comprehensive than the positive_document.
- The query and all documents are written in {language}.
- No document explains why it is or is not relevant to the query.
- The query and the documents require {difficulty} level education to understand.

"""
    + _JSON_ONLY
)

PROMPT_LONG_SHORT = (
    """You have been assigned a text classification task: {task}

Write one text classification example for this task as a JSON object with exactly these keys:
- "input_text": a string, the input text specified by the classification task.
- "label": a string, the correct label of the input text.
- "misleading_label": a string, an incorrect label that is related to the task.

Guidelines:
- The input_text is {num_words} words long and diverse in expression.
- The misleading_label is a valid label of this task, but less appropriate for the \
input_text than the label.
- The values of all fields (input_text, label and misleading_label) are in {language}.
- Neither the label nor the misleading_label appears inside the input_text (that would \
make the task too easy).
- The input_text is {clarity} and requires {difficulty} level education to comprehend.

"""
    + _JSON_ONLY
)

PROMPT_SHORT_SHORT = (
    """You have been assigned a text matching task: {task}

Write one example for this task as a JSON object with exactly these keys:
- "input": a string, a random input specified by the task.
- "positive_document": a string, a document relevant to the input according to the task.

Guidelines:
- The values of all fields are in {language}.
- Both the input and the positive_document are very short (a sentence or a phrase) and \
avoid substantial word overlap with each other, otherwise the task would be too easy.
- The input and the positive_document are written independently of each other.

"""
    + _JSON_ONLY
)

PROMPT_LONG_LONG = (
    """You have been assigned a text matching task: {task}

Write one example for this task as a JSON object with exactly these keys:
- "input": a string, a random input specified by the task.
- "positive_document": a string, a document relevant to the input according to the task.

Guidelines:
- The values of all fields are in {language}.
- Both the input and the positive_document are long documents (at least 300 words each) \
and avoid substantial word overlap with each other, otherwise the task would be too easy.
- The input and the positive_document are written independently of each other.

"""
    + _JSON_ONLY
)

PROMPT_STS = (
    """Task: {task}

Write a {unit} triple with varying semantic similarity scores as a JSON object. Semantic \
similarity is scored from 1 to 5, where 1 means least similar and 5 most similar.

Guidelines:
- The keys are "S1", "S2" and "S3"; their values are strings in {language}; add no other keys.
- All three {unit}s share some words (word overlap between all three).
- The similarity score between S1 and S2 is {high_score}.
- The similarity score between S1 and S3 is {low_score}.
- The {unit}s require {difficulty} level education to understand, and are diverse in topic \
and in length.

"""
    + _JSON_ONLY
)

PROMPT_BITEXT = (
    """Task: {task}

Write a {unit} triple as a JSON object: one {unit} in {src_lang} and two {unit}s in \
{tgt_lang} of varying translation quality. Translation quality is scored from 1 to 5; \
higher is better.

Guidelines:
- The keys are "S1", "S2" and "S3": S1 is a string in {src_lang}; S2 and S3 are strings \
in {tgt_lang}; add no other keys.
- S2 and S3 share some words (word overlap between S2 and S3).
- The translation quality score of S2 with respect to S1 is {high_score}.
- The translation quality score of S3 with respect to S1 is {low_score}.
- S3 is grammatical and fluent, but contains some translation errors: wrong keywords or \
numbers, omitted information, or added (redundant) information.
- S1 requires {difficulty} level education to understand, and the triples are diverse in \
topic and in length.

"""
    + _JSON_ONLY
)

DIFFICULTY = ["high school", "college", "PhD"]
CLARITY = ["clear", "understandable with some effort", "ambiguous"]
UNIT = ["sentence", "phrase", "passage"]


def builtin_task_types() -> dict[str, TaskType]:
    """Fresh copies of the six task types of the recipe (callers may modify them)."""
    types = [
        TaskType(
            name="short_long",
            schema=SCHEMAS["short_long"],
            brainstorm_prompt=BRAINSTORM_SHORT_LONG,
            prompt=PROMPT_SHORT_LONG,
            mapping=Mapping3("user_query", "positive_document", "hard_negative_document"),
            field_languages={
                "user_query": "language",
                "positive_document": "language",
                "hard_negative_document": "language",
            },
            field_min_words={
                "user_query": "query_length",
                "positive_document": "num_words",
                "hard_negative_document": "num_words",
            },
            placeholders={
                "query_type": ["extremely long-tail", "long-tail", "common"],
                "query_length": ["less than 5 words", "5 to 15 words", "at least 10 words"],
                "clarity": list(CLARITY),
                "num_words": ["50", "100", "200", "300", "400", "500"],
                "difficulty": list(DIFFICULTY),
                "language": LANGUAGES,
            },
            expected_completion_tokens=900,
            description="short query, long document retrieval",
        ),
        TaskType(
            name="long_short",
            schema=SCHEMAS["long_short"],
            brainstorm_prompt=BRAINSTORM_LONG_SHORT,
            prompt=PROMPT_LONG_SHORT,
            mapping=Mapping3("input_text", "label", "misleading_label"),
            # Labels are often the task's own (English) class names, whatever the text's language.
            field_languages={"input_text": "language"},
            field_min_words={"input_text": "num_words"},
            placeholders={
                "num_words": ["less than 10", "at least 10", "at least 50", "at least 100", "at least 200"],
                "difficulty": list(DIFFICULTY),
                "clarity": list(CLARITY),
                "language": LANGUAGES,
            },
            expected_completion_tokens=250,
            description="classification: long input, short label",
        ),
        TaskType(
            name="short_short",
            schema=SCHEMAS["short_short"],
            brainstorm_prompt=BRAINSTORM_SHORT_SHORT,
            prompt=PROMPT_SHORT_SHORT,
            mapping=Mapping3("input", "positive_document", None),
            field_languages={"input": "language", "positive_document": "language"},
            placeholders={"language": LANGUAGES},
            expected_completion_tokens=80,
            description="short-short matching",
        ),
        TaskType(
            name="long_long",
            schema=SCHEMAS["long_long"],
            brainstorm_prompt=BRAINSTORM_LONG_LONG,
            prompt=PROMPT_LONG_LONG,
            mapping=Mapping3("input", "positive_document", None),
            field_languages={"input": "language", "positive_document": "language"},
            field_min_words={"input": 300, "positive_document": 300},
            placeholders={"language": LANGUAGES},
            expected_completion_tokens=1000,
            description="long-long matching",
        ),
        TaskType(
            name="sts",
            schema=SCHEMAS["sts"],
            task="Retrieve semantically similar text.",
            prompt=PROMPT_STS,
            mapping=Mapping3("S1", "S2", "S3"),
            field_languages={"S1": "language", "S2": "language", "S3": "language"},
            field_min_words={"S1": "unit", "S2": "unit", "S3": "unit"},
            placeholders={
                "high_score": ["4", "4.5", "5"],
                "low_score": ["2.5", "3", "3.5"],
                "unit": list(UNIT),
                "difficulty": ["elementary school", "high school", "college"],
                "language": LANGUAGES,
            },
            expected_completion_tokens=150,
            description="monolingual semantic textual similarity",
        ),
        TaskType(
            name="bitext",
            schema=SCHEMAS["bitext"],
            task="Retrieve parallel sentences.",
            prompt=PROMPT_BITEXT,
            mapping=Mapping3("S1", "S2", "S3"),
            field_languages={"S1": "src_lang", "S2": "tgt_lang", "S3": "tgt_lang"},
            field_min_words={"S1": "unit", "S2": "unit", "S3": "unit"},
            placeholders={
                "high_score": ["4", "4.5", "5"],
                "low_score": ["1.5", "2", "2.5"],
                "unit": list(UNIT),
                "difficulty": ["elementary school", "high school", "college"],
                "src_lang": LANGUAGES,
                "tgt_lang": LANGUAGES,
            },
            language_from=("src_lang", "tgt_lang"),
            expected_completion_tokens=150,
            description="bitext retrieval",
        ),
    ]
    for t in types:
        t.check()
    return {t.name: t for t in types}


# Share of each task type in the published data (thousands of examples, E5 paper Fig. 2):
# the default mix of `e5x synth`.
DEFAULT_TASK_WEIGHTS: dict[str, float] = {
    "short_long": 167.0,
    "long_short": 122.0,
    "short_short": 13.0,
    "long_long": 17.0,
    "sts": 99.0,
    "bitext": 89.0,
}


def task_type_from_dict(name: str, spec: Mapping[str, Any], *, base_dir: Path | None = None) -> TaskType:
    """Build and check one custom task type from a TOML/dict spec.

    Keys: ``prompt`` (required), ``brainstorm_prompt`` or ``task``, ``fields`` (name ->
    description; all required non-empty strings) or ``schema`` (a JSON Schema table) or
    ``schema_file`` (path to a JSON Schema), ``mapping`` {query, positive, negative?},
    ``placeholders`` {name: {value: weight} | [values] | "@languages"}, ``language_from``,
    ``field_languages`` {field: language placeholder}, ``field_min_words`` {field:
    placeholder | number}, ``expected_completion_tokens``, ``description``.
    """
    where = f"task type {name!r}"
    allowed = {
        "prompt", "brainstorm_prompt", "task", "fields", "schema", "schema_file", "mapping",
        "placeholders", "language_from", "field_languages", "field_min_words",
        "expected_completion_tokens", "description",
    }  # fmt: skip
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    if "prompt" not in spec:
        raise ValueError(f"{where}: missing `prompt`")
    n_schema = sum(k in spec for k in ("fields", "schema", "schema_file"))
    if n_schema != 1:
        raise ValueError(f"{where}: give exactly one of `fields`, `schema`, `schema_file`")
    if "fields" in spec:
        schema = object_schema({str(k): str(v) for k, v in spec["fields"].items()}, f"{name} example")
    elif "schema" in spec:
        schema = dict(spec["schema"])
    else:
        import json

        path = Path(spec["schema_file"])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            schema = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{where}: cannot read schema_file {path}: {e}") from None
    m = spec.get("mapping")
    if not isinstance(m, Mapping) or "query" not in m or "positive" not in m:
        raise ValueError(f"{where}: `mapping` needs `query` and `positive` (and optionally `negative`)")
    placeholders = dict(spec.get("placeholders", {}))
    language_from = tuple(spec.get("language_from", ("language",) if "language" in placeholders else ()))
    per_field: dict[str, dict[str, Any]] = {}
    for key in ("field_languages", "field_min_words"):
        table = spec.get(key, {})
        if not isinstance(table, Mapping):
            raise ValueError(f"{where}: `{key}` must be a table {{field = ...}}, got {type(table).__name__}")
        per_field[key] = {str(k): v for k, v in table.items()}
    t = TaskType(
        name=name,
        schema=schema,
        prompt=str(spec["prompt"]),
        brainstorm_prompt=spec.get("brainstorm_prompt"),
        task=spec.get("task"),
        mapping=Mapping3(str(m["query"]), str(m["positive"]), m.get("negative") or None),
        placeholders=placeholders,
        language_from=language_from,
        field_languages=per_field["field_languages"] if "field_languages" in spec else None,
        field_min_words=per_field["field_min_words"],
        expected_completion_tokens=int(spec.get("expected_completion_tokens", 400)),
        description=str(spec.get("description", "")),
    )
    t.check()
    return t


def load_task_types(path: str | Path) -> dict[str, TaskType]:
    """Custom task types from a TOML file: one ``[task_types.NAME]`` table each."""
    path = Path(path)
    data = _read_toml(path)
    tables = data.get("task_types", {})
    if not isinstance(tables, Mapping) or not tables:
        raise ValueError(f"{path}: no [task_types.NAME] tables found")
    out = {}
    for name, spec in tables.items():
        try:
            out[name] = task_type_from_dict(name, spec, base_dir=path.parent)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML: {e}") from None


def task_types(extra: Mapping[str, TaskType] | None = None) -> dict[str, TaskType]:
    """The built-in task types plus custom ones (a custom type may replace a built-in)."""
    out = builtin_task_types()
    out.update(extra or {})
    return out
