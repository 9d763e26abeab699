"""The task taxonomy: six task types, placeholders, prompts, language weights, custom types."""

from __future__ import annotations

import math
from pathlib import Path

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


CUSTOM = '''
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
'''


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
