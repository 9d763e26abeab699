"""Checkpoints carry checksums of their files; a bad latest one is reported by name and
resume falls back to the newest good one. They record the run's config and data, and a
resume that changes them is refused before any model loads unless the change is allowed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from e5x.training import checkpoint
from e5x.training.checkpoint import CheckpointError
from e5x.training.step import World


def save(root: Path, step: int) -> Path:
    w = torch.full((3, 5), float(step))
    return checkpoint.save(
        root, step, {"w": w}, {"state": {0: {"exp_avg": w * 2}}}, {"last_epoch": step}, World(), {"seed": 1}, keep=5
    )


@pytest.fixture
def ckpts(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "checkpoints"
    return root, save(root, 10), save(root, 20)


def test_save_records_checksums_and_load_verifies(ckpts):
    root, first, second = ckpts
    state = json.loads((second / "state.json").read_text())
    assert set(state["files"]) == {"trainable.pt", "optimizer.pt", "scheduler.pt", "rng-rank0.pt"}
    assert state["files"]["trainable.pt"]["bytes"] == (second / "trainable.pt").stat().st_size
    assert checkpoint.latest(root) == second
    got = checkpoint.load(second, World())
    assert got["step"] == 20 and torch.equal(got["trainable"]["w"], torch.full((3, 5), 20.0))


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _flip(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x10
    p.write_bytes(bytes(b))


@pytest.mark.parametrize(
    "name, damage, why",
    [
        ("trainable.pt", _truncate, "trainable.pt is .* bytes, .* were written"),
        ("optimizer.pt", _empty, "optimizer.pt is 0 bytes"),
        ("trainable.pt", _flip, "trainable.pt does not match its SHA-256"),
        ("state.json", _truncate, "state.json is unreadable"),
        ("rng-rank0.pt", lambda p: p.unlink(), "rng-rank0.pt is missing"),
    ],
)
def test_a_bad_latest_checkpoint_is_named_and_the_previous_one_is_used(ckpts, name, damage, why):
    root, first, second = ckpts
    damage(second / name)
    with pytest.raises(CheckpointError, match=f"{second}: {why}"):
        checkpoint.load(second, World())
    said: list[str] = []
    assert checkpoint.latest(root, report=said.append) == first
    assert len(said) == 1 and str(second) in said[0] and f"resuming from {first}" in said[0]
    assert checkpoint.load(first, World())["step"] == 10


def test_no_good_checkpoint_left_starts_over(ckpts):
    root, first, second = ckpts
    _empty(first / "scheduler.pt")
    _flip(second / "optimizer.pt")
    said: list[str] = []
    assert checkpoint.latest(root, report=said.append) is None
    assert len(said) == 2 and "starting from step 0" in said[-1]


def test_a_checkpoint_without_checksums_still_loads(ckpts):
    root, first, second = ckpts
    state = json.loads((second / "state.json").read_text())
    del state["files"]  # written before checksums existed
    (second / "state.json").write_text(json.dumps(state))
    assert checkpoint.latest(root) == second and checkpoint.load(second, World())["step"] == 20
    (second / "optimizer.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="optimizer.pt cannot be loaded"):
        checkpoint.load(second, World())


@pytest.mark.usefixtures("one_thread")
def test_training_resumes_from_the_previous_checkpoint_when_the_latest_is_truncated(tmp_path: Path, capsys):
    import signal

    from _tiny import toy_triples
    from e5x.training import TrainConfig, train

    data = tmp_path / "toy.parquet"
    toy_triples(128, seed=0).write_parquet(data)
    tiny = {"arch": "mistral", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip

    def cfg(name: str) -> TrainConfig:
        return TrainConfig(
            tiny_model=tiny, sources=[{"path": str(data), "name": "toy", "instruction": "Find the code"}],
            output_dir=str(tmp_path / name), batch_size=8, chunk_size=4, max_length=40, lr=3e-3, warmup_steps=2,
            max_steps=6, save_every=2, lora_dropout=0.1, precision="fp32", progress=False, seed=1,
        )  # fmt: skip

    straight = train(cfg("straight"))

    def stop_at_5(record):
        if record["step"] == 5:
            signal.raise_signal(signal.SIGTERM)

    first = train(cfg("resumed"), on_step=stop_at_5)
    assert first.interrupted and first.checkpoint is not None and first.checkpoint.name == "step-00000005"
    _truncate(first.checkpoint / "trainable.pt")
    capsys.readouterr()
    second = train(cfg("resumed"))
    err = capsys.readouterr().err
    assert f"{first.checkpoint}: trainable.pt is" in err and "step-00000004" in err
    # Steps 5 and 6 again from step 4's state: the same losses as the uninterrupted run.
    assert second.step == 6 and second.losses == pytest.approx(straight.losses[4:], abs=1e-6)


# ---------------------------------------------------------------- the resume check

TINY = {"arch": "mistral", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip


def _recipe(data: Path, out: Path, **changes) -> dict:
    recipe = dict(
        tiny_model=TINY, sources=[{"path": str(data), "name": "toy", "instruction": "Find the code"}],
        output_dir=str(out), batch_size=8, chunk_size=8, max_length=40, lr=3e-3, warmup_steps=1, max_steps=4,
        save_every=2, lora_dropout=0.1, precision="fp32", progress=False, seed=1,
    )  # fmt: skip
    return {**recipe, **changes}


def _stop_at(step: int):
    import signal

    def stop(record):
        if record["step"] == step:
            signal.raise_signal(signal.SIGTERM)  # as a scheduler's preemption would

    return stop


@pytest.fixture(scope="module")
def half_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run of 4 steps stopped at step 2 (its checkpoint): the data file and the run folder."""
    from _tiny import toy_triples
    from e5x.training import train

    tmp = tmp_path_factory.mktemp("resume")
    data = tmp / "toy.parquet"
    toy_triples(64, seed=0).write_parquet(data)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(_recipe(data, tmp / "run"), on_step=_stop_at(2))
    finally:
        torch.set_num_threads(n)
    assert result.interrupted and result.checkpoint is not None and result.checkpoint.name == "step-00000002"
    return data, tmp / "run"


@pytest.fixture
def run_copy(half_run, tmp_path) -> tuple[Path, Path]:
    data, run = half_run
    shutil.copytree(run, tmp_path / "run")  # output_dir is free to change on resume
    return data, tmp_path / "run"


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the resume check")


@pytest.mark.parametrize(
    "changes, said",
    [
        ({"max_length": 64}, "max_length was 40, now 64"),
        ({"sources": "Find the word"}, 'sources.0.instruction was "Find the code", now "Find the word"'),
        ({"lr": 1e-3}, "lr was 0.003, now 0.001"),
        ({"lora_r": 4}, "lora_r was 16, now 4"),
        ({"tiny_model": {**TINY, "hidden_size": 48}}, "tiny_model.hidden_size was 32, now 48"),
    ],
)
def test_a_changed_field_is_refused_before_the_model_loads(run_copy, monkeypatch, changes, said):
    import e5x.training.loop as loop
    from e5x.training import ConfigError, train

    data, out = run_copy
    if changes.get("sources"):
        changes = {"sources": [{"path": str(data), "name": "toy", "instruction": changes["sources"]}]}
    before = _snapshot(out)
    monkeypatch.setattr(loop, "_load_model", _no_model)
    field = said.split(" ")[0]
    with pytest.raises(ConfigError) as err:
        train(_recipe(data, out, **changes))
    msg = str(err.value)
    assert msg.startswith(f"{out / 'checkpoints' / 'step-00000002'}: cannot resume") and said in msg, msg
    assert f"--allow-config-change {field} " in msg and "\n" not in msg
    assert _snapshot(out) == before  # checkpoint and train_config.json untouched


def test_changed_data_is_refused_and_a_touched_file_is_not(tmp_path, monkeypatch):
    import os

    import e5x.training.loop as loop
    from _tiny import toy_triples
    from e5x.training import ConfigError, train

    data = tmp_path / "toy.parquet"
    toy_triples(64, seed=0).write_parquet(data)
    out = tmp_path / "run"
    assert train(_recipe(data, out, max_steps=2)).step == 2
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new mtime: hashed again
    assert train(_recipe(data, out, max_steps=2)).step == 2
    toy_triples(64, seed=1).write_parquet(data)
    before = _snapshot(out)
    monkeypatch.setattr(loop, "_load_model", _no_model)
    with pytest.raises(
        ConfigError,
        match=r"sources\.0\.data was \"1 file\(s\), [0-9,]+ bytes, sha256 [0-9a-f]{16}\", "
        r"now \"1 file\(s\), .*--allow-config-change sources\.0\.data ",
    ):
        train(_recipe(data, out, max_steps=2))
    assert _snapshot(out) == before


def test_an_allowed_lr_reaches_the_optimizer(run_copy):
    from e5x.training import train

    data, out = run_copy
    result = train(_recipe(data, out, lr=0.0), allow_config_change=["lr"], on_step=_stop_at(3))
    assert result.step == 3 and result.interrupted
    # lr 0: AdamW leaves the weights exactly as the checkpoint had them (the old lr would move them).
    a = torch.load(out / "checkpoints" / "step-00000002" / "trainable.pt")
    b = torch.load(result.checkpoint / "trainable.pt")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["lr"] for m in metrics][2:] == [0.0] and metrics[1]["lr"] > 0
    ran = json.loads((out / "train_config.json").read_text())
    assert ran["lr"] == 0.0 and ran["config_changes"] == [{"step": 2, "field": "lr", "old": 3e-3, "new": 0.0}]
    state = json.loads((result.checkpoint / "state.json").read_text())
    assert state["config"]["lr"] == 0.0 and state["config_changes"] == ran["config_changes"]


def test_extending_a_finished_run_with_max_steps(run_copy):
    from e5x.training import ConfigError, train
    from e5x.training.loop import _warmup_linear

    data, out = run_copy
    finished = train(_recipe(data, out))  # the same config resumes and finishes
    assert finished.step == 4 and finished.model_dir is not None
    with pytest.raises(ConfigError, match="max_steps was 4, now 6; .*--allow-config-change max_steps "):
        train(_recipe(data, out, max_steps=6))
    longer = train(_recipe(data, out, max_steps=6), allow_config_change=["max_steps"])
    assert longer.step == 6 and len(longer.losses) == 2 and longer.model_dir is not None
    # The decay is recomputed over 6 steps: steps 5 and 6 get the lr a 6-step plan gives them.
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert [m["lr"] for m in metrics[4:]] == pytest.approx([3e-3 * _warmup_linear(s, warmup=1, total=6)
                                                            for s in (4, 5)], rel=1e-12)  # fmt: skip
    assert metrics[3]["lr"] == pytest.approx(3e-3 * _warmup_linear(3, warmup=1, total=4), rel=1e-12)
    ran = json.loads((out / "train_config.json").read_text())
    assert ran["max_steps"] == 6 and ran["config_changes"] == [{"step": 4, "field": "max_steps", "old": 4, "new": 6}]
    with pytest.raises(ConfigError, match="at step 6, beyond this run's 5 steps"):
        train(_recipe(data, out, max_steps=5), allow_config_change=["max_steps"])


def test_cli_refuses_a_changed_field_in_one_line(run_copy):
    import subprocess
    import sys

    data, out = run_copy
    recipe = out.parent / "changed.toml"
    recipe.write_text(_toml(_recipe(data, out, max_length=64)))
    before = _snapshot(out)
    proc = subprocess.run([sys.executable, "-m", "e5x", "train", str(recipe)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"e5x train: error: {out / 'checkpoints' / 'step-00000002'}: cannot resume")
    assert "max_length was 40, now 64" in lines[0] and "--allow-config-change max_length " in lines[0]
    assert _snapshot(out) == before


def test_cli_allow_config_change_takes_fields_and_lists(run_copy, capsys):
    from e5x.cli import main

    data, out = run_copy
    recipe = out.parent / "changed.toml"
    recipe.write_text(_toml(_recipe(data, out, max_length=48, temperature=0.05)))
    assert main(["train", str(recipe), "--allow-config-change", "nope"]) == 2
    assert "'nope' is not a config field" in capsys.readouterr().err
    assert main(["train", str(recipe), "--allow-config-change", "max_length"]) == 2
    assert "temperature was 0.02, now 0.05" in capsys.readouterr().err
    rc = main(["train", str(recipe), "--allow-config-change", "max_length,lr", "--allow-config-change", "temperature"])
    assert rc == 0, capsys.readouterr().err
    ran = json.loads((out / "train_config.json").read_text())
    assert [(c["field"], c["old"], c["new"]) for c in ran["config_changes"]] == [
        ("max_length", 40, 48),
        ("temperature", 0.02, 0.05),
    ]


def _toml(recipe: dict) -> str:
    lines, tables = [], []
    for key, value in recipe.items():
        if isinstance(value, dict):
            tables.append(f"[{key}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in value.items()))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            tables += [f"[[{key}]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in v.items()) for v in value]
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n\n" + "\n".join(tables)


# The check itself, on records of configs (no training).


@pytest.fixture
def records(tmp_path):
    from _tiny import toy_triples
    from e5x.training import TrainConfig

    data = tmp_path / "toy.parquet"
    toy_triples(16, seed=0).write_parquet(data)
    cfg = TrainConfig(**_recipe(data, tmp_path / "out"))

    def record(c):
        return checkpoint.run_record(c, 1, 4)

    return cfg, record, {"step": 2, **record(cfg)}


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    return None


def test_every_field_but_the_free_ones_is_checked(records):
    """Fields added to TrainConfig later are checked without anyone listing them."""
    import dataclasses

    from e5x.training import ConfigError
    from e5x.training.config import RESUME_FREE

    cfg, record, state = records
    checked = 0
    for f in dataclasses.fields(cfg):
        new = _changed(getattr(cfg, f.name))
        if new is None:
            continue
        changed = record(dataclasses.replace(cfg, **{f.name: new}))
        if f.name in RESUME_FREE:
            assert checkpoint.config_changes(Path("ck"), state, changed) == []
            continue
        with pytest.raises(ConfigError, match=f"ck: cannot resume: .*{f.name} was "):
            checkpoint.config_changes(Path("ck"), state, changed)
        allowed = checkpoint.config_changes(Path("ck"), state, changed, allow=[f.name])
        assert [c["field"] for c in allowed] == [f.name]
        checked += 1
    assert checked >= 30


def test_a_field_the_checkpoint_predates_counts_as_its_default(records):
    import dataclasses

    from e5x.training import ConfigError

    cfg, record, state = records
    del state["config"]["mask_false_negatives"]  # written before the field existed
    del state["config"]["sources"][0]["ratio"]
    assert checkpoint.config_changes(Path("ck"), state, record(cfg)) == []
    with pytest.raises(ConfigError, match="mask_false_negatives was true, now false"):
        checkpoint.config_changes(Path("ck"), state, record(dataclasses.replace(cfg, mask_false_negatives=False)))


def test_sources_allow_covers_what_they_hold_and_names_must_be_fields(records):
    import dataclasses

    from e5x.training import ConfigError

    cfg, record, state = records
    two = dataclasses.replace(cfg, sources=[*cfg.sources, dataclasses.replace(cfg.sources[0], ratio=0.5)])
    with pytest.raises(ConfigError, match=r"sources was \[.*now \[.*--allow-config-change sources "):
        checkpoint.config_changes(Path("ck"), state, record(two))
    assert [c["field"] for c in checkpoint.config_changes(Path("ck"), state, record(two), allow=["sources"])] == [
        "sources"
    ]
    with pytest.raises(ConfigError, match="'lrr' is not a config field"):
        checkpoint.check_allowed_names(["lrr"])
    assert checkpoint.check_allowed_names(["sources.0.data", "lr"]) == ["sources.0.data", "lr"]
    with pytest.raises(ConfigError, match="written by 2 processes, this run has 1"):
        checkpoint.config_changes(Path("ck"), {**state, "world_size": 2}, record(cfg))


def test_a_checkpoint_without_a_recorded_config_checks_what_it_recorded(records):
    import dataclasses

    from e5x.training import ConfigError

    cfg, record, _ = records
    legacy = {"step": 2, "batch_size": 8, "seed": 1, "world_size": 1, "total_steps": 4, "task_homogeneous": False}
    assert checkpoint.config_changes(Path("ck"), legacy, record(dataclasses.replace(cfg, lr=1.0))) == []
    with pytest.raises(ConfigError, match="batch_size was 8, now 16"):
        checkpoint.config_changes(Path("ck"), legacy, record(dataclasses.replace(cfg, batch_size=16)))
    changed = checkpoint.run_record(cfg, 1, 6)
    with pytest.raises(ConfigError, match="max_steps was 4, now 6"):
        checkpoint.config_changes(Path("ck"), legacy, changed)
