"""``e5x.train``: the E5-mistral recipe, readable top to bottom in ``train``."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from e5x._extras import require
from e5x.config import load
from e5x.training.config import ConfigError, TrainConfig


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    output_dir: Path
    step: int  # steps completed
    total_steps: int
    losses: list[float] = field(default_factory=list)  # of the steps run in this call
    interrupted: bool = False  # stopped by SIGTERM after saving a checkpoint
    checkpoint: Path | None = None  # latest checkpoint written
    model_dir: Path | None = None  # final model (when the run finished)


def train(
    config: TrainConfig | Mapping[str, Any] | str | Path,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    allow_config_change: Iterable[str] = (),
) -> TrainResult:
    """Train an embedding model: LoRA on a decoder, EOS pooling, InfoNCE, GradCache.

    ``config`` is a ``TrainConfig``, a dict of its fields, or a TOML path; ``overrides``
    (``"key.sub=value"``, ``"sources.0.ratio=0.5"``) apply on top. Launch with
    ``torchrun --nproc-per-node N`` for several GPUs/processes. ``on_step`` receives each
    step's metrics record (rank 0 and others alike).

    A run resumes from the latest checkpoint in ``output_dir`` only with the config (every
    field but ``RESUME_FREE``) and data that wrote it. ``allow_config_change`` names the
    fields this call may change (``["max_steps"]`` extends a run, ``["lr"]``, or
    ``["sources.0.data"]`` for new data); allowed changes take effect from the resumed step
    and are listed in ``train_config.json``. It is an argument, not a config field, so that a
    permission given once does not stay in a recipe and let later changes through unseen.
    """
    require("training", "train")
    import torch

    from e5x.data import BatchPlan, TripleStore, collate, shard
    from e5x.training import checkpoint
    from e5x.training.step import average_gradients, forward_backward, masked_negatives, num_chunks

    # 1. Config, data and resume checks: everything that can fail does so before a model loads.
    cfg = load(TrainConfig, config, overrides)
    allow = checkpoint.check_allowed_names(list(allow_config_change))
    cfg.validate()
    world = _init_distributed()
    if cfg.batch_size % world.size:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by {world.size} processes")
    store = TripleStore(cfg.sources)
    try:
        plan = BatchPlan(store.sizes, [s.ratio for s in cfg.sources], cfg.batch_size, cfg.seed, cfg.task_homogeneous)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    total_steps = plan.total_steps(cfg.epochs, cfg.max_steps)
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    last_ckpt = checkpoint.latest(ckpt_root) if cfg.resume else None
    saved = checkpoint.read_state(last_ckpt) if last_ckpt is not None else {}
    run = checkpoint.run_record(cfg, world.size, total_steps, known=saved.get("data_files"))
    history = list(saved.get("config_changes", []))
    if last_ckpt is not None:
        changes = checkpoint.config_changes(last_ckpt, saved, run, allow)
        history += [{"step": saved["step"], **c} for c in changes]
        if total_steps < saved["step"]:
            raise ConfigError(f"{last_ckpt}: cannot resume: the checkpoint is at step {saved['step']}, "
                              f"beyond this run's {total_steps} steps (max_steps, epochs)")  # fmt: skip
    if world.rank == 0:  # what runs: the config in effect and the changes resumes allowed
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(
            json.dumps({**cfg.to_dict(), "config_changes": history}, indent=2, default=str) + "\n"
        )

    # 2. Model: base decoder (no LM head) + LoRA on every linear layer.
    device = _device(world)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext
    torch.manual_seed(cfg.seed)  # LoRA init
    tokenizer, model = _load_model(cfg, device, torch.bfloat16 if use_bf16 and device.type == "cuda" else None)
    hidden_size = int(model.config.hidden_size)
    if any(m >= hidden_size for m in cfg.matryoshka_dims):
        raise ConfigError(f"matryoshka_dims {cfg.matryoshka_dims} must be below the model's hidden size {hidden_size}")
    _configure_kernels(cfg)
    if world.rank == 0:  # the effective kernel settings; rewritten at the end with what ran
        _write_kernel_record(out / "kernels.json")
    embed_fn = None
    if cfg.packing:  # padding-free: one packed stream per chunk, attention kept per sequence
        from e5x.model.fast import prepare_for_packed_training
        from e5x.model.embed import embed_packed_inputs

        prepare_for_packed_training(
            model,
            checkpoint_keep=cfg.checkpoint_keep if cfg.gradient_checkpointing else None,
            checkpoint_save_matmuls=cfg.checkpoint_save_matmuls,
            liger=cfg.liger,
        )
        embed_fn = embed_packed_inputs
    fsdp = cfg.distributed == "fsdp" and world.size > 1
    if fsdp:
        _fully_shard(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    # 3. Resume: weights, optimiser, RNG; the data position is the step.
    step, state = 0, None
    if last_ckpt is not None:
        state = checkpoint.load(last_ckpt, world)
        _load_trainable(model, optimizer, state, fsdp, last_ckpt)
        step = state["step"]
    # The schedule is this config's, at this step: a resume with a changed lr, warmup or
    # length continues as a run planned that way from the start would (the loaded
    # optimiser's param groups still hold the old lr and weight decay).
    for group in optimizer.param_groups:
        group.update(lr=cfg.lr, initial_lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(_warmup_linear, warmup=cfg.warmup_steps, total=total_steps), last_epoch=step - 1
    )
    if state is not None:
        checkpoint.set_rng_state(state["rng"])
    run_meta = {**run, "config_changes": history}
    metrics_path = out / "metrics.jsonl"
    if world.rank == 0:
        _truncate_metrics(metrics_path, step)

    # 4. SIGTERM (preemption, scancel): finish the step, checkpoint, exit cleanly.
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps, initial=step, disable=not cfg.progress or world.rank != 0, desc="train", dynamic_ncols=True
    )
    result = TrainResult(out, step, total_steps, checkpoint=last_ckpt)
    model.train()
    try:
        with open(metrics_path, "a") if world.rank == 0 else nullcontext() as metrics:
            while step < total_steps:
                t0 = time.perf_counter()
                # 5. This rank's share of the global batch, tokenised (EOS appended).
                pairs = shard(plan.batch(step), world.rank, world.size)
                batch = collate(store, pairs, tokenizer, cfg.max_length, cfg.padding_side).to(device)

                # 6. Forward/backward (GradCache over chunks; documents from every rank).
                optimizer.zero_grad(set_to_none=True)
                sync = None
                if fsdp:
                    n = torch.tensor(
                        [num_chunks(batch, cfg.chunk_size, cfg.chunk_tokens, embed_fn is not None)], device=device
                    )
                    torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MAX)
                    sync = int(n.item())
                loss = forward_backward(
                    model,
                    batch,
                    chunk_size=cfg.chunk_size,
                    chunk_tokens=cfg.chunk_tokens,
                    temperature=cfg.temperature,
                    world=world,
                    autocast=autocast,
                    sync_chunks=sync,
                    embed_fn=embed_fn,
                    matryoshka_dims=cfg.matryoshka_dims,
                    mask_false_negatives=cfg.mask_false_negatives,
                    pooling=cfg.pooling,
                )
                masked = masked_negatives(batch, world) if cfg.mask_false_negatives else 0
                if not fsdp:
                    average_gradients(params, world)  # FSDP reduce-scatters by itself
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if hasattr(grad_norm, "full_tensor"):
                    grad_norm = grad_norm.full_tensor()

                # 7. One all-reduce for the logged loss, token count, stop flag, masked count.
                stats = torch.tensor(
                    [float(loss), float(batch.num_tokens), float(stop.is_set()), float(masked)],
                    dtype=torch.float64,
                    device=device,
                )
                if world.size > 1:
                    torch.distributed.all_reduce(stats)
                loss_value = float(stats[0]) / world.size
                if not (math.isfinite(loss_value) and math.isfinite(float(grad_norm))):
                    where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                    raise TrainingDiverged(
                        f"step {step + 1}: loss {loss_value}, grad norm {float(grad_norm)}; "
                        f"stopping without updating the weights; {where}. Lower lr, check the "
                        "data for empty/odd rows, or use precision = 'fp32' to find the cause."
                    )

                # 8. Update, schedule, log.
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                step += 1
                dt = time.perf_counter() - t0
                record = {
                    "step": step,
                    "loss": loss_value,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "examples_per_s": cfg.batch_size / dt,
                    "tokens_per_s": float(stats[1]) / dt,
                    "seconds": dt,
                    "masked_negatives": int(stats[3]),
                }
                result.losses.append(loss_value)
                if metrics is not None and (step % cfg.log_every == 0 or step == total_steps):
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss_value:.4f}",
                    lr=f"{lr:.2e}",
                    ex_s=f"{record['examples_per_s']:.1f}",
                    tok_s=f"{record['tokens_per_s']:.0f}",
                )
                if on_step is not None:
                    on_step(record)

                # 9. Checkpoint every save_every steps, at the end, and when asked to stop.
                stopping = bool(stats[2] > 0) or stop.is_set()
                if step % cfg.save_every == 0 or step == total_steps or stopping:
                    trainable, optim_state = _gather_trainable(model, optimizer, fsdp)
                    last_ckpt = checkpoint.save(
                        ckpt_root,
                        step,
                        trainable,
                        optim_state,
                        scheduler.state_dict(),
                        world,
                        run_meta,
                        cfg.keep_checkpoints,
                    )
                    result.checkpoint = last_ckpt
                if stopping and step < total_steps:
                    result.interrupted = True
                    break
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    result.step = step
    _release_freed_memory(device)
    if world.rank == 0:
        _write_kernel_record(out / "kernels.json")  # + GEMM path and fallbacks taken
        _plot_losses(metrics_path, out / "loss.png")

    # 10. Final outputs: adapter, merged model + tokenizer, e5x.json, sentence-transformers.
    if step >= total_steps and not result.interrupted:
        result.model_dir = _export(cfg, model, tokenizer, out / "model", world, fsdp)
    return result


# ---------------------------------------------------------------------------- helpers


def _warmup_linear(step: int, *, warmup: int, total: int) -> float:
    """Linear warmup to the peak lr over ``warmup`` steps, then linear decay to 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def _configure_kernels(cfg: TrainConfig) -> dict[str, Any]:
    """The kernel knobs of ``cfg`` as process settings (environment variables still
    override them, for benchmarks); returns the effective values, which ``train`` records."""
    import e5x.kernels as kernels
    from e5x.model import attention

    kernels.configure(mode=cfg.infonce_mode, chunk_mib=cfg.infonce_chunk_mib, autotune=cfg.kernel_autotune)
    attention.FLEX_COMPILE = cfg.flex_compile
    return _kernel_record()


def _kernel_record() -> dict[str, Any]:
    import e5x.kernels as kernels
    from e5x.model import attention

    flex_env = os.environ.get("E5X_FLEX_COMPILE")
    return {
        **kernels.runtime_info(),
        "flex_compile": flex_env == "1" if flex_env is not None else attention.FLEX_COMPILE,
    }


def _write_kernel_record(path: Path) -> None:
    path.write_text(json.dumps(_kernel_record(), indent=2, default=str) + "\n")


def _release_freed_memory(device: Any) -> None:
    """Hand freed heap memory back to the OS after a CPU run.

    glibc keeps what training freed (activation-sized holes between live blocks; ~3 GiB after
    a quickstart-sized step) mapped in the process, so the export and evaluation that usually
    follow in the same process would run on top of it. ``malloc_trim`` returns those pages.
    """
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to do
        pass


def _init_distributed() -> Any:
    import torch
    import torch.distributed as dist

    from e5x.training.step import World

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return World.current()


def _device(world: Any) -> Any:
    import torch

    if torch.cuda.is_available():
        return torch.device(
            "cuda", int(os.environ.get("LOCAL_RANK", "0")) if world.size > 1 else torch.cuda.current_device()
        )
    return torch.device("cpu")


def _load_model(cfg: TrainConfig, device: Any, dtype: Any) -> tuple[Any, Any]:
    from e5x.model.loading import (
        apply_lora,
        build_byte_tokenizer,
        build_tiny_model,
        load_base_model,
        load_tokenizer,
    )

    if cfg.tiny_model is not None:
        tokenizer = build_byte_tokenizer()
        base = build_tiny_model(cfg.tiny_model, len(tokenizer))
    else:
        tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
        base = load_base_model(cfg.model, dtype)
    model = apply_lora(
        base, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules, cfg.gradient_checkpointing
    )
    return tokenizer, model.to(device)


def _fully_shard(model: Any) -> None:
    """FSDP2 (ZeRO-3): shard each decoder layer, then the rest."""
    from torch.distributed.fsdp import fully_shard

    layers = model.get_base_model().layers
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)


def _gather_trainable(model: Any, optimizer: Any, fsdp: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        sd = {k: v for k, v in get_model_state_dict(model, options=opts).items() if k in names}
        return sd, get_optimizer_state_dict(model, optimizer, options=opts)
    sd = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    return sd, optimizer.state_dict()


def _load_trainable(model: Any, optimizer: Any, state: dict[str, Any], fsdp: bool, path: Path) -> None:
    # A resume that allowed a change of lora_r, lora_target_modules or the base model can
    # meet an adapter that does not fit: say which, instead of a shape error from deep in torch.
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = state["trainable"]
    bad = [f"{n} is {tuple(v.shape)} there, {tuple(trainable[n].shape)} here" for n, v in saved.items()
           if n in trainable and tuple(v.shape) != tuple(trainable[n].shape)]  # fmt: skip
    bad += [f"{n} is not in the checkpoint" for n in trainable if n not in saved]
    bad += [f"{n} is not in this model" for n in saved if n not in trainable]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ConfigError(f"{path}: the checkpoint's adapter does not fit this model (lora_r, "
                          f"lora_target_modules or the base model changed): {bad[0]}{more}")  # fmt: skip
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, state["trainable"], options=opts)
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=opts)
        return
    import torch

    with torch.no_grad():
        for name, value in state["trainable"].items():
            trainable[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records after the resumed step so the file is one clean curve."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by a kill
            continue
    path.write_text("".join(line + "\n" for line in keep))


def _plot_losses(metrics_path: Path, png: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is optional at run time
        return
    if not metrics_path.is_file():
        return
    recs = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not recs:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in recs], [r["loss"] for r in recs])
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title("e5x training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _export(cfg: TrainConfig, model: Any, tokenizer: Any, directory: Path, world: Any, fsdp: bool) -> Path:
    from e5x.training.export import query_prompt, save_model

    prompts = {"query": query_prompt(cfg.default_instruction), "document": ""}
    for s in cfg.sources:
        if s.instruction:
            prompts[s.label] = query_prompt(s.instruction)
    if fsdp:
        # Gather the adapter to rank 0 and merge into a fresh, unsharded copy there.
        import torch

        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        names = {n for n, p in model.named_parameters() if p.requires_grad}
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        trainable = {k: v for k, v in full.items() if k in names}
        if world.rank == 0:
            _, fresh = _load_model(cfg, torch.device("cpu"), None)
            fresh.load_state_dict(trainable, strict=False)
            model = fresh
    if world.rank == 0:
        model.eval()
        save_model(
            model.to("cpu") if fsdp else model,
            tokenizer,
            directory,
            max_length=cfg.max_length,
            padding_side=cfg.padding_side,
            prompts=prompts,
            matryoshka_dims=cfg.matryoshka_dims,
            pooling=cfg.pooling,
        )
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()
    return directory
