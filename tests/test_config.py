"""The one config mechanism (e5x.config): every stage's config is built from an instance, a
dict or a TOML file plus dotted overrides, validated completely before any work, and a bad
value is one line naming the file and the field."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import pytest
from annotated_types import Ge, Gt

from e5x.config import ConfigError, describe_fields, help_table, is_override, load, parse_override, to_dict


@dataclass
class Inner:
    temperature: Annotated[float, Ge(0)] = 1.0  # sampling temperature
    models: dict[str, float] = field(default_factory=lambda: {"a": 1.0})


@dataclass
class Demo:
    # learning rate of the optimiser
    lr: Annotated[float, Gt(0)] = 1e-4
    steps: Annotated[int, Ge(1)] = 10
    name: str = "run"
    langs: list[str] = field(default_factory=lambda: ["en"])
    pair: tuple[float, float] = (0.0, 1.0)
    mode: Literal["fast", "slow"] = "fast"
    limit: int | None = None
    flag: bool = False
    inner: Inner = field(default_factory=Inner)

    def check(self) -> None:
        if self.limit is not None and self.limit > self.steps:
            raise ConfigError(f"must be <= steps ({self.steps}), got {self.limit}", field="limit")


def toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "demo.toml"
    p.write_text(text)
    return p


def error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as exc:
        load(Demo, *args, **kwargs)
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_path_dict_and_object_give_the_same_config(tmp_path: Path) -> None:
    body = 'lr = 0.01\nlangs = ["en", "fr"]\npair = [1, 2]\n[inner]\ntemperature = 0.5\n'
    from_file = load(Demo, toml(tmp_path, body))
    from_path_str = load(Demo, str(tmp_path / "demo.toml"))
    from_dict = load(Demo, {"lr": 0.01, "langs": ["en", "fr"], "pair": [1, 2], "inner": {"temperature": 0.5}})
    from_object = load(Demo, Demo(lr=0.01, langs=["en", "fr"], pair=(1.0, 2.0), inner=Inner(temperature=0.5)))
    assert from_file == from_path_str == from_dict == from_object
    assert from_file.pair == (1.0, 2.0) and isinstance(from_file.inner, Inner) and from_file.inner.models == {"a": 1.0}
    assert load(Demo) == Demo()
    assert load(Demo, to_dict(from_file)) == from_file  # a snapshot loads back as it was


def test_unknown_key_names_the_file_and_suggests(tmp_path: Path) -> None:
    path = toml(tmp_path, "stpes = 3\n")
    assert error(path) == f"{path}: stpes: unknown key; did you mean 'steps'?"
    assert error({"learning_rate": 1}) == "config: learning_rate: unknown key; did you mean 'lr'?"
    assert "inner.temp: unknown key; did you mean 'temperature'?" in error({"inner": {"temp": 1}})
    assert "zzz: unknown key; known keys: lr, steps, name" in error({"zzz": 1})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"steps": "10"}, "steps: must be an integer >= 1, got '10' (str)"),
        ({"steps": 2.0}, "steps: must be an integer >= 1, got 2.0 (float)"),
        ({"steps": True}, "steps: must be an integer >= 1, got True (bool)"),
        ({"lr": "1e-4"}, "lr: must be a number > 0, got '1e-4' (str)"),
        ({"name": 3}, "name: must be a string, got 3 (int)"),
        ({"flag": 1}, "flag: must be true or false, got 1 (int)"),
        ({"mode": "medium"}, "mode: must be one of fast|slow, got 'medium' (str)"),
        ({"limit": "5"}, "limit: must be an integer or unset, got '5' (str)"),
        ({"inner": "x"}, "inner: must be a table, got 'x' (str)"),
        ({"inner": {"models": {"a": "x"}}}, "inner.models.a: must be a number, got 'x' (str)"),
        ({"inner": {"models": "a"}}, "inner.models: must be a table of name = a number, got 'a' (str)"),
        ({"pair": [1]}, "pair: must be a list of 2 numbers, got [1] (list)"),
        ({"langs": [1]}, "langs[0]: must be a string, got 1 (int)"),
    ],
)
def test_wrong_type(data, message) -> None:
    assert error(data) == f"config: {message}"


def test_a_string_is_not_a_list_of_letters() -> None:
    assert error({"langs": "en"}) == "config: langs: must be a list of strings, got 'en' (str)"
    assert error(None, ["langs=en"]) == "override: langs: must be a list of strings, got 'en' (str)"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lr": -1}, "lr: must be > 0, got -1 (int)"),
        ({"lr": 0.0}, "lr: must be > 0, got 0.0 (float)"),
        ({"steps": 0}, "steps: must be >= 1, got 0 (int)"),
        ({"lr": float("nan")}, "lr: must be a finite number, got nan (float)"),
        ({"inner": {"temperature": float("inf")}}, "inner.temperature: must be a finite number, got inf (float)"),
        ({"inner": {"temperature": -0.5}}, "inner.temperature: must be >= 0, got -0.5 (float)"),
    ],
)
def test_range(data, message) -> None:
    assert error(data) == f"config: {message}"


def test_every_problem_is_on_one_line_and_checks_run_after_types(tmp_path: Path) -> None:
    path = toml(tmp_path, 'lr = -1\nsteps = "x"\nbogus = 1\n')
    assert error(path) == (
        f"{path}: bogus: unknown key; known keys: lr, steps, name, langs, pair, mode, limit, flag, "
        "inner; lr: must be > 0, got -1 (int); steps: must be an integer >= 1, got 'x' (str)"
    )
    assert error({"limit": 20}) == "config: limit: must be <= steps (10), got 20"  # the class's own check()
    assert error({"limit": 5}, ["steps=2"]) == "config: limit: must be <= steps (2), got 5"


def test_dotted_overrides_are_toml_literals_and_win(tmp_path: Path) -> None:
    path = toml(tmp_path, "lr = 0.01\n[inner]\ntemperature = 0.5\n")
    cfg = load(Demo, path, ["lr=1e-3", "langs=[\"en\", \"fr\"]", "inner.temperature=0", "flag=true",
                            "inner.models.b=2", "name=runs/x-1", "mode=slow", "limit=5"])  # fmt: skip
    assert cfg == Demo(lr=1e-3, langs=["en", "fr"], flag=True, name="runs/x-1", mode="slow", limit=5,
                       inner=Inner(temperature=0.0, models={"a": 1.0, "b": 2.0}))  # fmt: skip
    # A field that takes a string keeps the text as given, even one that reads as a number.
    assert load(Demo, None, ["name=1e3"]).name == "1e3"
    # A mapping of dotted keys to values is the same.
    assert load(Demo, None, {"inner.temperature": 2, "steps": 3}) == Demo(steps=3, inner=Inner(temperature=2.0))
    # One override given as a bare string is that override, not a sequence of letters.
    assert load(Demo, None, "steps=3") == load(Demo, None, ["steps=3"]) == Demo(steps=3)


def test_bad_overrides_are_named(tmp_path: Path) -> None:
    path = toml(tmp_path, "lr = 0.01\n")
    assert error(path, ["lr=-1"]) == "override: lr: must be > 0, got -1 (int)"
    assert error(path, ["inner.temprature=1"]) == "override: inner.temprature: unknown key; did you mean 'temperature'?"
    assert error(path, ["lr"]) == "override: expected key=value, got 'lr'"
    assert error(path, ["lr.x=1"]) == "override: lr.x: lr is not a table"
    # A problem in the file and one in an override: each is named by where it came from.
    assert error(toml(tmp_path, "steps = 0\n"), ["lr=0"]) == (
        f"override: lr: must be > 0, got 0 (int); {path}: steps: must be >= 1, got 0 (int)"
    )


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    assert error(tmp_path / "nope.toml") == f"{tmp_path / 'nope.toml'}: config file not found"
    assert error(toml(tmp_path, "lr = = 1\n")).startswith(f"{tmp_path / 'demo.toml'}: invalid TOML: ")
    assert error(42) == "config: expected a Demo, a dict or a TOML path, got int"


def test_parse_override_and_is_override() -> None:
    assert parse_override("a.b=1e-4") == ("a.b", 1e-4)
    assert parse_override("x = [1, 2]") == ("x", [1, 2])
    assert parse_override("x=hello world") == ("x", "hello world")
    assert parse_override('x="quoted"') == ("x", "quoted")
    assert is_override("inner.temperature=1", Demo) and is_override("lr=1", Demo)
    assert not is_override("SciFact=data/scifact", Demo) and not is_override("lr", Demo)


def test_fields_are_described_from_the_class() -> None:
    rows = {r.name: r for r in describe_fields(Demo)}
    assert rows["lr"].type == "a number > 0" and rows["lr"].default == "0.0001"
    assert rows["lr"].doc == "learning rate of the optimiser"
    assert rows["inner.temperature"].doc == "sampling temperature"
    assert rows["langs"].default == '["en"]' and rows["limit"].default == "unset"
    assert rows["mode"].type == "one of fast|slow"
    assert "inner.models" in help_table(Demo)


def test_importing_e5x_config_does_not_import_pydantic() -> None:
    code = "import sys, e5x.config; print('pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_an_override_wins_over_the_file_value_it_names(tmp_path: Path) -> None:
    path = toml(tmp_path, 'steps = "x"\ninner = "oops"\n')
    # steps is replaced by a good value; inner stays the file's, which is no table.
    assert error(path, ["steps=3", "inner.temperature=1"]) == f"{path}: inner: must be a table, got 'oops' (str)"
