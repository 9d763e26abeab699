"""Checkpoints carry checksums of their files; a bad latest one is reported by name and
resume falls back to the newest good one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from e5x.train import checkpoint
from e5x.train.checkpoint import CheckpointError
from e5x.train.step import World


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
    from e5x.train import TrainConfig, train

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
