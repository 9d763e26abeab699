"""e5x.training (``e5x.train``): the E5-mistral recipe (LoRA, EOS pooling, InfoNCE, GradCache, DDP/FSDP2).

From Python::

    import e5x
    result = e5x.train("configs/tiny-cpu.toml")          # or a TrainConfig / dict
    result.model_dir   # merged HF model + tokenizer, adapter/, e5x.json, sentence-transformers

From a shell: ``e5x train configs/e5-mistral.toml`` (several GPUs:
``torchrun --nproc-per-node 8 -m e5x train configs/e5-mistral.toml``). Rerunning the same
command after an interruption resumes from the latest checkpoint in ``output_dir``.

Layout: ``config`` (TrainConfig), ``step`` (``embed``, the document all-gather, GradCache),
``loop`` (``train``, one function top to bottom), ``checkpoint``, ``export``.
"""

from __future__ import annotations

from typing import Any

from e5x.training.config import ConfigError, TrainConfig

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "TrainingDiverged", "train"]


def __getattr__(name: str) -> Any:
    # ``e5x.training.loop`` is light too (torch is imported inside ``train``), but resolving
    # these lazily keeps ``import e5x.training`` to the config alone.
    if name in ("train", "TrainResult", "TrainingDiverged"):
        from e5x.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'e5x.training' has no attribute {name!r}")
