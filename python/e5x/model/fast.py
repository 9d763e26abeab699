"""Model surgery for fast contrastive LoRA training (opt-in; each piece is measured in
benches/bench_train.py).

- ``set_checkpointing``: selective activation checkpointing. Recomputing a layer costs one
  extra forward of it (~1/3 of a LoRA step's FLOPs: frozen weights need no weight grads, so a
  step is ~2N forward + ~2N backward + 2N recompute per token). A packed stream has no padding,
  so its checkpoints are far smaller than a padded batch's; the memory that frees is spent on
  keeping the activations of the last ``keep`` layers (the ones backward reaches first, so their
  activations are freed soonest) instead of recomputing them, and/or on ``save_matmuls`` layers
  that are checkpointed but store their big matmul outputs (PyTorch selective activation
  checkpointing): nearly the same recompute saved per layer at about a third of the memory.
- ``apply_liger``: fused Triton RMSNorm / SwiGLU / RoPE from liger-kernel when installed (GPU
  only; an optional dependency).
- ``prepare_for_packed_training``: the above plus ``enable_packing``, in one call.

The LM head is never computed: load the model with ``AutoModel`` (the bare decoder) or let
``e5x.model.packing.packed_hidden_at`` drive the decoder layers itself, which also applies the
final norm only to the pooled rows and runs the last layer's tail only for them.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from e5x.model.packing import decoder_of, enable_packing, hf_model


def set_checkpointing(
    model: Any,
    keep: int = 0,
    *,
    save_matmuls: int = 0,
    min_k: int = 256,
    use_reentrant: bool = False,
) -> int:
    """Selective activation checkpointing over the decoder layers; returns how many layers are
    checkpointed (fully or selectively).

    From the last layer backwards: ``keep`` layers keep all their activations (no recompute),
    the ``save_matmuls`` layers before them are checkpointed but save the outputs of their
    large matmuls (reduction dim >= ``min_k``: the frozen q/k/v/o/gate/up/down projections),
    so their recompute is only the cheap elementwise work (norms, RoPE, SiLU, dropout, the
    rank-r LoRA up-projections) at about a third of a kept layer's memory; every other layer is
    fully checkpointed. ``keep=0, save_matmuls=0`` is plain full checkpointing.
    """
    import torch.utils.checkpoint as ckpt

    dec = decoder_of(model)
    if dec is None:
        raise ValueError(f"{type(model).__name__}: no Llama/Mistral-style decoder layers found")
    layers = list(dec.layers)
    if keep < 0 or save_matmuls < 0:
        raise ValueError(f"keep and save_matmuls must be >= 0, got {keep}, {save_matmuls}")
    target = hf_model(model)
    ckpt_kwargs = {"use_reentrant": use_reentrant}
    # transformers >= 5.2x renamed it (the old name warns); older ones only have the old name
    if hasattr(target, "activation_checkpointing_enable"):
        target.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
    else:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    n_full = max(0, len(layers) - keep - save_matmuls)
    n_ckpt = max(0, len(layers) - keep)
    if save_matmuls and use_reentrant:
        raise ValueError("save_matmuls needs non-reentrant checkpointing")
    sac = partial(ckpt.checkpoint, use_reentrant=False,
                  context_fn=partial(_sac_contexts, min_k))
    # transformers calls each layer's own _gradient_checkpointing_func, so it can differ per layer
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < n_ckpt
        if n_full <= i < n_ckpt:
            layer._gradient_checkpointing_func = sac
    return n_ckpt


def _sac_contexts(min_k: int) -> Any:
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(partial(save_big_matmuls, min_k=min_k))


def save_big_matmuls(ctx: Any, op: Any, *args: Any, min_k: int = 256, **kwargs: Any) -> Any:
    """Selective-checkpoint policy: keep the output of every matmul whose reduction dimension
    is at least ``min_k`` (2*K FLOPs per stored element: worth its memory), recompute the rest
    (LoRA's rank-r up-projection has K = r; elementwise ops cost next to nothing)."""
    import torch
    from torch.utils.checkpoint import CheckpointPolicy

    aten = torch.ops.aten
    if op in (aten.mm.default, aten.addmm.default, aten.bmm.default):
        a = args[-2]
        if isinstance(a, torch.Tensor) and a.shape[-1] >= min_k:
            return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def apply_liger(model: Any, *, rms_norm: bool = True, swiglu: bool = True, rope: bool = True) -> list[str]:
    """Swap in liger-kernel's fused RMSNorm / SwiGLU / RoPE on a Llama/Mistral/Qwen2 model.

    Returns the kernels applied ([] when liger-kernel is missing, the model type has no liger
    patch, or there is no GPU). Works under peft: the fused MLP still calls the (LoRA-wrapped)
    projections; it fuses only the activation.
    """
    import torch

    if not torch.cuda.is_available():
        return []
    try:
        import liger_kernel.transformers as lk  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - optional: any import failure means "not usable"
        return []
    target = hf_model(model)
    model_type = getattr(target.config, "model_type", "")
    fn = getattr(lk, f"apply_liger_kernel_to_{model_type}", None)
    if fn is None:
        return []
    fn(rope=rope, rms_norm=rms_norm, swiglu=swiglu, cross_entropy=False,
       fused_linear_cross_entropy=False, model=target)
    return [k for k, on in (("rms_norm", rms_norm), ("swiglu", swiglu), ("rope", rope)) if on]


def prepare_for_packed_training(
    model: Any,
    *,
    checkpoint_keep: int | None = 0,
    checkpoint_save_matmuls: int = 0,
    liger: bool = False,
) -> dict[str, Any]:
    """Make a (peft-wrapped) HF decoder ready for ``embed_packed`` training.

    ``checkpoint_keep=None`` leaves checkpointing as the caller set it. Returns a summary of
    what was applied (for logs and the benchmark header).
    """
    enable_packing(model)
    info: dict[str, Any] = {"packing": True}
    if checkpoint_keep is not None:
        info["checkpointed_layers"] = set_checkpointing(
            model, checkpoint_keep, save_matmuls=checkpoint_save_matmuls)
    info["liger"] = apply_liger(model) if liger else []
    return info
