"""`e5x demo`: draws and renders with the recipe's short_long task type, then validates."""

from __future__ import annotations

import pytest

from e5x.cli import main
from e5x.cli.demo import DEMO_TASK
from e5x.tasks.taxonomy import task_types


def test_demo_renders_the_taxonomys_short_long_prompt(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--rows", "300", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    first = out.split("first prompt: ", 1)[1]
    prompt = task_types()["short_long"].prompt
    # The literal text before the first placeholder, and the task, are in the rendered prompt.
    head = prompt[: prompt.index("{")]
    assert head and first.startswith(head.replace("{{", "{").replace("}}", "}")), first[:200]
    assert DEMO_TASK in first
    assert "validate (schema short_long)" in out and "  kept" in out
