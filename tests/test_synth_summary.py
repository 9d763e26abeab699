"""synthesize() returns what its TypedDicts say, and writes the same to summary.json."""

from __future__ import annotations

import json
import typing
from pathlib import Path

from fake_openai import FakeOpenAI
from test_synth import KEY_ENV, make_cfg

from e5x.synth import DryRunReport, SynthSummary, synthesize


def assert_shape(value: object, tp: object, where: str = "summary") -> None:
    """``value`` has exactly the keys of the TypedDict ``tp``, recursively."""
    if typing.is_typeddict(tp):
        assert isinstance(value, dict), where
        hints = typing.get_type_hints(tp)
        assert set(value) == set(hints), f"{where}: {sorted(set(value) ^ set(hints))}"
        for k, sub in hints.items():
            assert_shape(value[k], sub, f"{where}.{k}")
    elif typing.get_origin(tp) is dict:
        assert isinstance(value, dict), where
        for k, v in value.items():
            assert_shape(v, typing.get_args(tp)[1], f"{where}[{k!r}]")
    elif typing.get_origin(tp) is list:
        assert isinstance(value, list), where
        for i, v in enumerate(value):
            assert_shape(v, typing.get_args(tp)[0], f"{where}[{i}]")


def test_summary_is_a_synth_summary_and_matches_summary_json(monkeypatch, tmp_path: Path):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    server = FakeOpenAI()
    server.start()
    try:
        cfg = make_cfg(server, n_examples=8)
        s = synthesize(cfg, tmp_path / "run")
        d = synthesize(cfg, tmp_path / "dry", dry_run=True, echo=lambda _: None)
    finally:
        server.stop()
    assert s["complete"] and s["examples"]["answered"] == 8
    assert_shape(s, SynthSummary)
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == json.loads(json.dumps(s))
    assert d["dry_run"] is True and d["total"]["requests"] > 8
    assert_shape(d, DryRunReport, "dry run")
