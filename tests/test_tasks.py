"""The task taxonomy: six task types, placeholders, prompts, language weights, custom types."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from e5x.tasks import (
    DEFAULT_TASK_WEIGHTS,
    HIGH_RESOURCE,
    LANGUAGES,
    SCHEMAS,
    TASK_TYPES,
    XLMR_LANGUAGES,
    builtin_task_types,
    default_language_weights,
    load_task_types,
    resolve_language_weights,
    template_placeholders,
)


def test_six_types_with_recipe_fields_and_mapping():
    assert TASK_TYPES == ("short_long", "long_short", "short_short", "long_long", "sts", "bitext")
    types = builtin_task_types()
    assert list(types) == list(TASK_TYPES)
    assert set(DEFAULT_TASK_WEIGHTS) == set(TASK_TYPES)
    m = {name: (t.mapping.query, t.mapping.positive, t.mapping.negative) for name, t in types.items()}
    assert m == {
        "short_long": ("user_query", "positive_document", "hard_negative_document"),
        "long_short": ("input_text", "label", "misleading_label"),
        "short_short": ("input", "positive_document", None),
        "long_long": ("input", "positive_document", None),
        "sts": ("S1", "S2", "S3"),
        "bitext": ("S1", "S2", "S3"),
    }
    # Symmetric types have the recipe's fixed definitions and no brainstorm step.
    assert types["sts"].task == "Retrieve semantically similar text."
    assert types["bitext"].task == "Retrieve parallel sentences."
    for name in ("short_long", "long_short", "short_short", "long_long"):
        assert types[name].brainstorm_prompt and types[name].task is None
    for name, t in types.items():
        assert t.schema is SCHEMAS[name]
        # The prompt names every JSON key the validator will demand.
        for f in t.fields:
            assert f'"{f}"' in t.prompt, (name, f)


def test_placeholder_value_sets_match_the_recipe():
    t = builtin_task_types()
    sl = t["short_long"].placeholders
    assert set(sl["query_type"]) == {"extremely long-tail", "long-tail", "common"}
    assert set(sl["num_words"]) == {"50", "100", "200", "300", "400", "500"}
    assert set(sl["difficulty"]) == {"high school", "college", "PhD"}
    assert sl["language"] == LANGUAGES
    assert set(t["long_short"].placeholders["num_words"]) == {
        "less than 10", "at least 10", "at least 50", "at least 100", "at least 200",
    }  # fmt: skip
    assert set(t["sts"].placeholders["high_score"]) == {"4", "4.5", "5"}
    assert set(t["sts"].placeholders["low_score"]) == {"2.5", "3", "3.5"}
    assert set(t["bitext"].placeholders["low_score"]) == {"1.5", "2", "2.5"}
    assert t["bitext"].language_from == ("src_lang", "tgt_lang")
    # Lists become uniform weights after check().
    assert all(w == 1.0 for w in t["sts"].placeholders["unit"].values())


def test_language_list_and_default_weights():
    assert len(XLMR_LANGUAGES) == 93
    assert len(HIGH_RESOURCE) == 13 and set(HIGH_RESOURCE) <= set(XLMR_LANGUAGES)
    w = default_language_weights()
    assert len(w) == 93
    assert math.isclose(sum(w.values()), 1.0, rel_tol=1e-9)
    assert w["English"] == 0.43
    assert all(w[XLMR_LANGUAGES[c]] == 0.03 for c in HIGH_RESOURCE)
    rest = [v for k, v in w.items() if k != "English" and k not in {XLMR_LANGUAGES[c] for c in HIGH_RESOURCE}]
    assert len(rest) == 79 and math.isclose(sum(rest), 0.18) and max(rest) < 0.03
    # Codes and names both work; a code-looking typo is an error.
    assert resolve_language_weights({"en": 2, "French": 1, "fr": 1}) == {"English": 2.0, "French": 2.0}
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        resolve_language_weights({"xx": 1})


def test_template_placeholders_and_escapes():
    assert template_placeholders("a {x} {{literal}} {y} {x}") == ["x", "y"]
    with pytest.raises(ValueError, match="unmatched '\\{'"):
        template_placeholders("json like {this", where="t")
    with pytest.raises(ValueError, match="bad placeholder"):
        template_placeholders("oops {not valid}")


CUSTOM = """
[task_types.faq]
description = "FAQ retrieval"
brainstorm_prompt = "List {n_tasks} FAQ retrieval tasks as {{\\"tasks\\": [...]}}."
prompt = "Task: {task}. Tone {tone}, language {language}. Give {{\\"question\\": .., \\"answer\\": ..}}."
fields = { question = "a question", answer = "its answer" }
mapping = { query = "question", positive = "answer" }
expected_completion_tokens = 120
[task_types.faq.placeholders]
tone = { formal = 3, casual = 1 }
language = "@languages"
"""


def test_custom_task_type_from_toml(tmp_path: Path):
    f = tmp_path / "types.toml"
    f.write_text(CUSTOM)
    types = load_task_types(f)
    t = types["faq"]
    assert not t.symmetric and t.fields == ["question", "answer"]
    assert t.mapping.negative is None and t.placeholders["tone"] == {"formal": 3.0, "casual": 1.0}
    assert t.language_from == ("language",)
    assert t.schema["required"] == ["question", "answer"] and t.schema["additionalProperties"] is False


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.replace("Tone {tone}", "Tone {tone} {mood}"), r"placeholder \{mood\} which has no values"),
        (lambda s: s.replace("{ formal = 3, casual = 1 }", "{ formal = 0, casual = 0 }"), "weights sum to 0"),
        (lambda s: s.replace("{ formal = 3, casual = 1 }", "[]"), "placeholder has no values"),
        (lambda s: s.replace("{ formal = 3, casual = 1 }", "{ formal = -1, casual = 1 }"), "must be finite and >= 0"),
        (lambda s: s.replace('positive = "answer"', 'positive = "reply"'), "'reply' is not a field"),
        (lambda s: s.replace("description =", "descripton ="), "unknown keys"),
        (lambda s: s.replace("Task: {task}.", "Task."), r"must contain \{task\}"),
    ],
)
def test_bad_custom_task_types_name_file_type_and_problem(tmp_path: Path, edit, message):
    f = tmp_path / "types.toml"
    f.write_text(edit(CUSTOM))
    with pytest.raises(ValueError, match=message) as e:
        load_task_types(f)
    assert str(f) in str(e.value) and "'faq'" in str(e.value)


# --- Every guideline of the paper's templates (E5 paper, App. C) is in the prompts ------
# One key element (a regex over the rendered prompt, whitespace collapsed, case ignored)
# per guideline. Placeholder values below are distinctive so that a check also proves the
# value lands in the right sentence.
VALUES = {
    "task": "Find recipes for a regional dish",
    "n_tasks": "20",
    "query_type": "extremely long-tail",
    "query_length": "5 to 15 words",
    "clarity": "ambiguous",
    "difficulty": "PhD",
    "language": "Zulu",
    "unit": "passage",
    "high_score": "4.5",
    "low_score": "2",
    "src_lang": "Welsh",
    "tgt_lang": "Basque",
}
NUM_WORDS = {"short_long": "300", "long_short": "at least 50"}

_CLOSING = {"JSON only": r"JSON object only", "no explanation": r"no explanation", "be creative": r"Be creative!"}
_BRAINSTORM_COMMON = {
    **_CLOSING,
    "n_tasks": r"list of 20 ",
    "wide range": r"covers a wide range of",
    "not too specific": r"is not too specific",
    "many domains": r"diverse: many domains",
    "one distinct task per element, one sentence": r"one distinct task, described in one English sentence",
    "JSON list": r'"tasks": \[',
}
BRAINSTORM_GUIDELINES: dict[str, dict[str, str]] = {
    "short_long": {
        **_BRAINSTORM_COMMON,
        "kind": r"potentially useful text retrieval tasks",
        "example: claim": r"scientific claim as the query",
        "example: FAQ": r"FAQ-style query",
        "query and documents specified": r"says what the query is and what the desired documents are",
    },
    "long_short": {
        **_BRAINSTORM_COMMON,
        "kind": r"potentially useful text classification tasks",
        "example: review": r"product review",
        "example: news": r"news paragraph",
        "diverse domains and task types": r"diverse range of domains and of task types",
    },
    "short_short": {
        **_BRAINSTORM_COMMON,
        "kind": r"text matching tasks",
        "example: citations": r"titles of papers that cite it",
        "example: definitions": r"match a word with its definition",
        "example: people": r"notable person's name",
        "both sides very short": r"both the query and the matching \(groundtruth\) document are very short: "
        r"one or two sentences, or even a short phrase",
    },
    "long_long": {
        **_BRAINSTORM_COMMON,
        "kind": r"text matching tasks",
        "example: arguments": r"opposite arguments",
        "example: proposal": r"lengthy business proposal",
        "queries are long documents": r"the queries are long documents",
    },
}
PROMPT_GUIDELINES: dict[str, dict[str, str]] = {
    "short_long": {
        **_CLOSING,
        "task": r"retrieval task: Find recipes for a regional dish",
        "key user_query": r'"user_query": a string, a random user search query specified by the retrieval task',
        "key positive_document": r'"positive_document": a string, a document relevant to the user query',
        "key hard negative only appears relevant": r'"hard_negative_document": a string, a hard negative document that only appears relevant',
        "query type, length, clarity, diverse in topic": r"user_query is extremely long-tail, 5 to 15 words, ambiguous, and diverse in topic",
        "documents independent, no verbatim copy": r"written independently of the query: never copy the query verbatim",
        "positive may be off-topic in parts": r"parts of the positive_document may be off-topic",
        "at least num_words": r"every document is at least 300 words long",
        "hard negative: some useful information, less useful or comprehensive": r"hard_negative_document carries some useful information, but it is less useful or less "
        r"comprehensive than the positive_document",
        "language of query and documents": r"the query and all documents are written in Zulu",
        "no explanation of relevance": r"no document explains why it is or is not relevant",
        "difficulty": r"require PhD level education",
    },
    "long_short": {
        **_CLOSING,
        "task": r"classification task: Find recipes for a regional dish",
        "key input_text": r'"input_text": a string, the input text specified by the classification task',
        "key label": r'"label": a string, the correct label',
        "key misleading_label": r'"misleading_label": a string, an incorrect label that is related to the task',
        "num_words, diverse in expression": r"input_text is at least 50 words long and diverse in expression",
        "misleading label valid but less appropriate": r"misleading_label is a valid label of this task, but less appropriate",
        "every field in language": r"values of all fields \(input_text, label and misleading_label\) are in Zulu",
        "labels not in the input": r"neither the label nor the misleading_label appears inside the input_text",
        "clarity and difficulty": r"input_text is ambiguous and requires PhD level education",
    },
    "short_short": {
        **_CLOSING,
        "task": r"matching task: Find recipes for a regional dish",
        "key input": r'"input": a string, a random input specified by the task',
        "key positive_document": r'"positive_document": a string, a document relevant to the input according to the task',
        "every field in language": r"values of all fields are in Zulu",
        "very short, no word overlap": r"very short \(a sentence or a phrase\) and avoid substantial word overlap",
        "independent": r"written independently of each other",
    },
    "long_long": {
        **_CLOSING,
        "task": r"matching task: Find recipes for a regional dish",
        "key input": r'"input": a string, a random input specified by the task',
        "key positive_document": r'"positive_document": a string, a document relevant to the input according to the task',
        "every field in language": r"values of all fields are in Zulu",
        "long, no word overlap": r"long documents \(at least 300 words each\) and avoid substantial word overlap",
        "independent": r"written independently of each other",
    },
    "sts": {
        **_CLOSING,
        "unit triple, varying similarity": r"passage triple with varying semantic similarity scores",
        "scale": r"scored from 1 to 5, where 1 means least similar and 5 most similar",
        "keys, language, no other keys": r'keys are "S1", "S2" and "S3"; their values are strings in Zulu; add no other keys',
        "all three share some words": r"all three passages share some words",
        "S1-S2 score": r"between S1 and S2 is 4\.5\.",
        "S1-S3 score": r"between S1 and S3 is 2\.",
        "difficulty, topic and length diversity": r"passages require PhD level education to understand, and are diverse in topic and in length",
    },
    "bitext": {
        **_CLOSING,
        "languages of the triple": r"one passage in Welsh and two passages in Basque of varying translation quality",
        "scale": r"scored from 1 to 5; higher is better",
        "keys and languages": r"S1 is a string in Welsh; S2 and S3 are strings in Basque; add no other keys",
        "S2 and S3 share some words": r"S2 and S3 share some words",
        "S2 score": r"quality score of S2 with respect to S1 is 4\.5\.",
        "S3 score": r"quality score of S3 with respect to S1 is 2\.",
        "S3 fluent with keyword/number errors, omissions, additions": r"S3 is grammatical and fluent, but contains some translation errors: wrong keywords or numbers, "
        r"omitted information, or added \(redundant\) information",
        "difficulty, topic and length diversity": r"S1 requires PhD level education to understand, and the triples are diverse in topic and in length",
    },
}


def _render(template: str, name: str) -> str:
    from e5x import core
    import polars as pl

    names = template_placeholders(template)
    values = {n: NUM_WORDS[name] if n == "num_words" else VALUES[n] for n in names}
    frame = pl.DataFrame({n: [v] for n, v in values.items()}) if values else pl.DataFrame({"_": [0]})
    return " ".join(core.render(template, frame)[0].split())


def missing_guidelines(template: str, name: str, guidelines: dict[str, str]) -> list[str]:
    """Labels of the guidelines whose key element the rendered template lacks."""
    text = _render(template, name)
    return [label for label, pattern in guidelines.items() if not re.search(pattern, text, re.IGNORECASE)]


def _templates() -> list[Any]:
    types = builtin_task_types()
    out = [
        pytest.param(n, types[n].brainstorm_prompt, g, id=f"{n}-brainstorm") for n, g in BRAINSTORM_GUIDELINES.items()
    ]
    return out + [pytest.param(n, types[n].prompt, g, id=f"{n}-prompt") for n, g in PROMPT_GUIDELINES.items()]


@pytest.mark.parametrize("name, template, guidelines", _templates())
def test_prompt_carries_every_guideline_of_the_paper(name, template, guidelines):
    assert missing_guidelines(template, name, guidelines) == []


@pytest.mark.parametrize("name, template, guidelines", _templates())
def test_deleting_any_guideline_line_is_caught(name, template, guidelines):
    """Each bullet of a template (field, guideline or example) carries at least one checked
    element, so dropping any one line fails the check above."""
    lines = template.split("\n")
    bullets = [i for i, line in enumerate(lines) if line.startswith("- ")]
    assert len(bullets) >= 4
    for i in bullets:
        pruned = "\n".join(lines[:i] + lines[i + 1 :])
        assert missing_guidelines(pruned, name, guidelines), f"deleting {lines[i]!r} went unnoticed"
    closing = template.replace("Be creative!", "")
    assert missing_guidelines(closing, name, guidelines) == ["be creative"]


def test_readme_shows_the_current_prompts():
    """The README's rendered prompts stay in step with the code: every template line that
    has no placeholder appears in it verbatim."""
    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    for name, t in builtin_task_types().items():
        for template in (t.brainstorm_prompt, t.prompt):
            for line in (template or "").split("\n"):
                if line.strip() and not template_placeholders(line):
                    assert line.replace("{{", "{").replace("}}", "}") in readme, (name, line)
