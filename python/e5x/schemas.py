"""JSON Schemas of one LLM-written example, per built-in task type.

These are the schemas the Rust validator (``e5x.core``) checks every raw response
against by default; custom task types add their own. Strict on purpose: weaker models
ignore the guidelines, and every rejection must name its reason and field. Plain data
below every stage (the task taxonomy re-exports it as ``e5x.tasks.schemas``).
"""

from __future__ import annotations

from typing import Any

# Generous caps: long-long documents are >= 300 words; anything far beyond is a runaway.
MAX_TEXT_CHARS = 20_000


def _text(description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_TEXT_CHARS,
        "description": description,
    }


def object_schema(fields: dict[str, str], title: str) -> dict[str, Any]:
    """A closed object whose fields are all required non-empty strings."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "type": "object",
        "properties": {name: _text(desc) for name, desc in fields.items()},
        "required": list(fields),
        "additionalProperties": False,
    }


SCHEMAS: dict[str, dict[str, Any]] = {
    "short_long": object_schema(
        {
            "user_query": "a short query a user would type for the task",
            "positive_document": "a long document that answers the query",
            "hard_negative_document": "a long document that looks relevant but does not answer it",
        },
        "short-long retrieval example",
    ),
    "long_short": object_schema(
        {
            "input_text": "the long text to classify",
            "label": "the correct label",
            "misleading_label": "a valid label of the task that fits the text less well",
        },
        "long-short classification example",
    ),
    "short_short": object_schema(
        {"input": "a short text", "positive_document": "a short text that matches it"},
        "short-short matching example",
    ),
    "long_long": object_schema(
        {"input": "a long text", "positive_document": "a long text that matches it"},
        "long-long matching example",
    ),
    "sts": object_schema(
        {
            "S1": "a text",
            "S2": "a text highly similar to S1",
            "S3": "a text only loosely similar to S1",
        },
        "monolingual STS example",
    ),
    "bitext": object_schema(
        {
            "S1": "a text in the source language",
            "S2": "its translation into the target language",
            "S3": "a fluent target-language text with translation errors",
        },
        "bitext retrieval example",
    ),
}

TASK_TYPES: tuple[str, ...] = tuple(SCHEMAS)
