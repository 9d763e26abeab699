"""The transformers model inside DDP and peft wrappers, and the bare decoder inside that."""

from __future__ import annotations

from typing import Any


def hf_model(model: Any) -> Any:
    """The transformers model inside DDP (``.module``) and peft (``get_base_model``) wrappers."""
    import torch

    while isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_of(model: Any) -> Any:
    """The bare decoder (``embed_tokens``, ``layers``, ``norm``, ``rotary_emb``) inside an HF or
    peft model, or None when the model does not have that (Llama/Mistral/Qwen2) structure."""
    m = hf_model(model)
    for _ in range(3):
        if all(hasattr(m, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
            return m
        m = getattr(m, "model", None)
        if m is None:
            return None
    return None
