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
- ``fuse_lora_dropout``: LoRA's input dropout and ``lora_A`` as one autograd op that saves
  the (shared) input and a 1-byte mask instead of two float copies per adapted layer
  (CPU; applied by ``e5x.model.loading.apply_lora``; identical numbers).

The LM head is never computed: load the model with ``AutoModel`` (the bare decoder) or let
``e5x.model.decoder.packed_hidden_at`` drive the decoder layers itself, which also applies the
final norm only to the pooled rows and runs the last layer's tail only for them.
"""

from __future__ import annotations

from functools import cache, partial
from typing import Any

from e5x.model.attention import enable_packing
from e5x.model.unwrap import decoder_of, hf_model


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
    sac = partial(ckpt.checkpoint, use_reentrant=False, context_fn=partial(_sac_contexts, min_k))
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


def fuse_lora_dropout(model: Any) -> int:
    """Make every LoRA layer's ``lora_A(dropout(x))`` one op that saves less for backward.

    peft computes ``lora_B(lora_A(dropout(x)))``. On CPU, ``F.dropout`` draws a float32 noise
    tensor (saved for its backward) and multiplies, and ``lora_A`` saves that product: two
    float copies of every adapted layer's input per LoRA module, 7 modules per decoder layer
    (q, k and v each keep their own copies of the same normed input). The fused op draws the same
    noise (same RNG calls, same values, so training is bit-identical), keeps it as a bool
    mask, saves ``x`` itself (one tensor shared by q/k/v and by gate/up) and recomputes
    ``x * noise`` in backward (an elementwise op beside a matmul). SmolLM2-135M at the
    quickstart's batch: 3.67 -> 2.46 GiB saved for backward (padded), 2.25 -> 1.55 GiB packed.

    Only CPU inputs take the fused path: CUDA's dropout is a different (fused Philox) kernel,
    so other devices run peft's exact unfused computation. Returns the number of layers
    changed; idempotent. The parameter (``lora_A.<adapter>.weight``) stays the same object,
    so state dicts, checkpoints, merging and optimisers see no difference.
    """
    import torch

    n = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        lora_as = getattr(module, "lora_A", None)
        if not isinstance(drops, torch.nn.ModuleDict) or not isinstance(lora_as, torch.nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            a = lora_as[name] if name in lora_as else None  # noqa: SIM401 - ModuleDict has no .get
            # Exactly nn.Linear: other adapters (conv, embedding, variants) keep peft's code.
            if type(drop) is not torch.nn.Dropout or type(a) is not torch.nn.Linear or a.bias is not None:
                continue
            if not 0.0 < drop.p < 1.0 or getattr(module, "lora_variant", {}).get(name) is not None:
                continue
            fused = _dropout_linear_class()(drop.p)
            fused.weight = a.weight
            fused.in_features, fused.out_features = a.in_features, a.out_features
            fused.train(a.training)
            lora_as[name] = fused
            drops[name] = torch.nn.Identity()
            n += 1
    return n


@cache
def _dropout_linear_class() -> type:
    # Built on first use so that importing this module does not import torch.
    import torch
    import torch.nn.functional as F

    class DropoutLinearFn(torch.autograd.Function):
        """``F.linear(F.dropout(x, p), w)`` on CPU, saving ``x`` and a bool mask."""

        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
            # The same calls as ATen's CPU dropout (_dropout_impl): float noise, bernoulli_,
            # div_, mul, so the RNG stream and the product are bit-identical to peft's.
            noise = torch.empty_like(x).bernoulli_(1 - p)
            mask = noise.bool()
            noise.div_(1 - p)
            out = F.linear(x * noise, weight)
            ctx.p = p
            ctx.save_for_backward(x, mask, weight)
            return out

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
            x, mask, weight = ctx.saved_tensors
            noise = mask.to(x.dtype).div_(1 - ctx.p)
            grad_x = grad_w = None
            if ctx.needs_input_grad[0]:
                grad_x = grad.matmul(weight.to(grad.dtype)).to(x.dtype) * noise
            if ctx.needs_input_grad[1]:
                xd = (x * noise).to(grad.dtype)
                grad_w = grad.reshape(-1, grad.shape[-1]).t().matmul(xd.reshape(-1, xd.shape[-1]))
                grad_w = grad_w.to(weight.dtype)
            return grad_x, grad_w, None

    class DropoutLinear(torch.nn.Module):
        """A bias-free ``lora_A`` with its input dropout built in (see ``fuse_lora_dropout``)."""

        weight: torch.Tensor  # lora_A's Parameter, put in place by fuse_lora_dropout

        def __init__(self, p: float) -> None:
            super().__init__()
            self.p = p
            self.in_features = self.out_features = 0
            self.register_parameter("weight", None)  # lora_A's own Parameter is put here

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training:
                return F.linear(x, self.weight)
            autocasting = torch.is_autocast_enabled(x.device.type)
            if x.device.type != "cpu" or autocasting or not torch.is_grad_enabled():
                # peft's own computation: other devices' dropout kernels differ, and without
                # a graph nothing is saved anyway (GradCache's first pass).
                return F.linear(F.dropout(x, self.p, True), self.weight)
            return DropoutLinearFn.apply(x, self.weight, self.p)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, bias=False, dropout={self.p}"

    return DropoutLinear


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
    fn(rope=rope, rms_norm=rms_norm, swiglu=swiglu, cross_entropy=False, fused_linear_cross_entropy=False, model=target)
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
        info["checkpointed_layers"] = set_checkpointing(model, checkpoint_keep, save_matmuls=checkpoint_save_matmuls)
    info["liger"] = apply_liger(model) if liger else []
    return info
