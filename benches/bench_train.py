"""Training throughput: the plain HF + peft loop against e5x's packed training step.

One process, one run, the SAME batches for every variant (a seeded generator drawing
lengths like real data: query tokens lognormal, median 24, clipped 8..64; document tokens
lognormal, median 180, clipped 16..512; 32 queries + 64 documents = 1 positive + 1 hard
negative each). Every variant runs on the same model object (weights shared, so peak
memories compare), with a fresh AdamW over the LoRA parameters:

  plain        AutoModel + peft LoRA r16/a32/dropout 0.1 on all linear layers, gradient
               checkpointing on every layer, bf16 autocast, SDPA, queries and documents each
               padded to their longest, last-token pooling + InfoNCE (tau 0.02), AdamW step
  grouped      the same, but each side's padded forwards go over length-sorted chunks
               (packing off, same batch; --group-tokens per chunk)
  packed       one padding-free stream for all 96 sequences, varlen attention, full checkpointing
  packed+trim  + final norm / last layer's tail only at the pooled rows
  e5x          + selective checkpointing: the last layers keep their activations or store their
               big matmul outputs (torch selective activation checkpointing); on GPU the plan
               is sized from measured peaks to stay under the plain loop's peak (--keep)
  e5x+liger    + liger-kernel fused RMSNorm/SwiGLU/RoPE (only when liger_kernel imports, GPU)
  e5x-train    what ``e5x.train()`` runs: ``e5x.training.step.forward_backward`` with GradCache
               at the recipe's chunking (configs/e5-mistral.toml: chunk_tokens, else chunk_size;
               --gradcache-chunk / --gradcache-tokens override it), the packed forward and the e5x variant's checkpointing plan;
               documents laid out as the trainer's Batch (positives first), so its loss
               column is not comparable with the others'

Prints useful (non-pad) tokens/s, examples/s (one example = a query with its two
documents), padding share of computed tokens, peak memory; header with device and versions.

GPU (Mistral-7B shape, random bf16 weights built from MistralConfig, nothing downloaded):
    python benches/bench_train.py --json benches/results/bench_train-h100.json
CPU smoke test (tiny shape; its speed says nothing about a GPU):
    python benches/bench_train.py --device cpu
On a GPU machine without liger-kernel, carry its wheel (pure Python + Triton) and
`pip install --no-deps` it first to get the e5x+liger row.

One GPU session, everything in one command (~5 min on an H100/H200: the GPU backend tests,
then the benchmark; the .whl folder holds liger_kernel-*.whl and is git-ignored):
    set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=python
    pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=python:/tmp/site
    E5X_TEST_GPU=1 timeout 240 python3 -m pytest tests/test_packing.py -q -k cuda 2>&1 | tee $OUT/test_gpu.txt
    timeout 420 python3 benches/bench_train.py --json $OUT/bench_train.json 2>&1 | tee $OUT/bench_train.txt
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("e5x") is None:
    # run from a bare checkout (e.g. a GPU machine); an installed e5x is never shadowed
    sys.path.insert(0, str(REPO / "python"))

import numpy as np
import torch
from e5x.model.attention import BACKENDS, enable_packing, resolve_backend
from e5x.model.embed import embed_length_grouped, embed_packed, embed_packed_inputs
from e5x.model.fast import apply_liger, set_checkpointing
from e5x.model.packing import length_grouped_chunks

EOS = 2


# ----------------------------------------------------------------------------- data


def draw_lengths(rng: np.random.Generator, n: int, median: float, sigma: float, lo: int, hi: int) -> list[int]:
    return np.clip(np.round(rng.lognormal(math.log(median), sigma, n)), lo, hi).astype(int).tolist()


def make_batches(
    n: int, *, queries: int, docs: int, vocab: int, seed: int, max_len: int = 512
) -> list[tuple[list[list[int]], list[list[int]]]]:
    """n steps of (query token lists, document token lists), EOS last in every sequence."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ql = draw_lengths(rng, queries, 24, 0.5, 8, min(64, max_len))
        dl = draw_lengths(rng, docs, 180, 0.6, 16, max_len)

        def seqs(lengths: list[int]) -> list[list[int]]:
            return [rng.integers(3, vocab, size=length - 1).tolist() + [EOS] for length in lengths]

        out.append((seqs(ql), seqs(dl)))
    return out


# ----------------------------------------------------------------------------- model


def build_model(shape: str, device: torch.device, layers: int | None) -> tuple[Any, dict[str, Any]]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, MistralConfig

    if shape == "mistral-7b":
        cfg = MistralConfig()  # the defaults are Mistral-7B-v0.1's shape
        dtype = torch.bfloat16
    else:
        cfg = MistralConfig(
            vocab_size=1000,
            hidden_size=64,
            intermediate_size=176,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=None,
        )
        dtype = torch.float32
    if layers:
        cfg.num_hidden_layers = layers
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModel.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, target_modules="all-linear", bias="none")
    )
    model.train()
    info = {
        "shape": shape,
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "weights_dtype": str(dtype).replace("torch.", ""),
        "vocab": cfg.vocab_size,
    }
    return model, info


def loss_fn(device: torch.device, hidden: int) -> tuple[Any, str]:
    """e5x's InfoNCE op (the same one for every variant) when it imports and passes a trial
    forward/backward here, else a torch reference: the loss is ~0.01% of a step, and a broken
    kernel must not cost a GPU session its benchmark."""
    import torch.nn.functional as F

    def ref(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        q, d = F.normalize(q.float(), dim=-1), F.normalize(d.float(), dim=-1)
        target = torch.arange(q.shape[0], device=q.device) * (d.shape[0] // q.shape[0])
        return F.cross_entropy(q @ d.T / 0.02, target)

    try:
        from e5x.kernels import info_nce

        def e5x_loss(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
            return info_nce(q.float(), d.float(), temperature=0.02)

        q = torch.randn(4, hidden, device=device, requires_grad=True)
        d = torch.randn(8, hidden, device=device)
        got = e5x_loss(q, d)
        got.backward()
        if not torch.allclose(got.detach(), ref(q, d).detach(), atol=1e-3, rtol=1e-3):
            raise ValueError(f"e5x info_nce {float(got):.5f} != reference {float(ref(q, d)):.5f}")
        return e5x_loss, "e5x.kernels.info_nce"
    except Exception as exc:  # noqa: BLE001 - report and carry on with the reference
        return ref, f"torch reference InfoNCE (e5x.kernels.info_nce unusable: {type(exc).__name__}: {exc})"


# ----------------------------------------------------------------------------- steps


def plain_embed(model: Any, seqs: list[list[int]]) -> torch.Tensor:
    """The plain loop's forward: pad to the longest (right), HF forward, gather each row's
    last real token. Plain torch on purpose: the baseline uses nothing of e5x."""
    from e5x.model.text import pad

    device = next(model.parameters()).device
    ids, mask = pad(seqs, 0, "right")
    ids, mask = ids.to(device), mask.to(device)
    hidden = model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    last = mask.sum(1) - 1
    return hidden[torch.arange(hidden.shape[0], device=device), last]


def run_variant(
    name: str,
    model: Any,
    batches: list,
    *,
    warmup: int,
    embed: Any,
    loss: Any,
    device: torch.device,
    computed_tokens: Any,
    initial: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    step: Any = None,
) -> dict[str, Any]:
    """Time len(batches) - warmup steps of forward + backward + AdamW.

    ``step(model, qs, ds, amp)``, when given, replaces embed + loss + backward: it returns
    the loss with the gradients already accumulated (the trainer's ``forward_backward``).

    Every variant starts from the same LoRA weights and RNG state, so the loss columns of
    the table are comparable (they differ only by numerics and dropout layout).
    """
    if initial is not None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in initial:
                    p.copy_(initial[n])
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, **({"fused": True} if device.type == "cuda" else {}))
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    useful = computed = 0
    elapsed = 0.0
    losses = []
    for i, (qs, ds) in enumerate(batches):
        _sync(device)
        t0 = time.perf_counter()
        if step is not None:
            value = step(model, qs, ds, amp)
        else:
            if amp is not None:
                with amp():
                    q, d = embed(model, qs, ds)
            else:
                q, d = embed(model, qs, ds)
            value = loss(q, d)
            value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        dt = time.perf_counter() - t0
        losses.append(float(value.detach()))
        if i >= warmup:
            elapsed += dt
            useful += sum(map(len, qs)) + sum(map(len, ds))
            computed += computed_tokens(qs, ds)
    steps = len(batches) - warmup
    del opt
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {
        "variant": name,
        "steps": steps,
        "step_s": elapsed / steps,
        "useful_tokens_per_s": useful / elapsed,
        "examples_per_s": steps * len(batches[0][0]) / elapsed,
        "padding_share": 1 - useful / computed,
        "peak_gib": peak,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "finite": all(math.isfinite(x) for x in losses),
    }


def trainer_step(device: torch.device, chunk_size: int | None, chunk_tokens: int | None) -> Any:
    """``forward_backward`` of e5x.train as ``e5x.train()`` calls it with packing on."""
    import inspect

    from e5x.data.batch import Batch
    from e5x.model.text import pad
    from e5x.training.step import forward_backward

    extra: dict[str, Any] = {}
    if chunk_tokens and "chunk_tokens" in inspect.signature(forward_backward).parameters:
        extra["chunk_tokens"] = chunk_tokens

    def step(model: Any, qs: list, ds: list, amp: Any) -> torch.Tensor:
        def side(seqs: list) -> dict[str, torch.Tensor]:
            ids, mask = pad(seqs, 0, "right")
            return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}

        batch = Batch(side(qs), side(ds))
        return forward_backward(
            model,
            batch,
            chunk_size=chunk_size or 1 << 30,
            temperature=0.02,
            autocast=amp,
            embed_fn=embed_packed_inputs,
            **extra,
        )

    return step


def recipe_chunking() -> tuple[int | None, int | None]:
    """(chunk_size, chunk_tokens) of the paper recipe, configs/e5-mistral.toml (TrainConfig's
    defaults where the file is missing or silent)."""
    import tomllib

    from e5x.training.config import TrainConfig

    cfg = TrainConfig()
    try:
        data = tomllib.loads((REPO / "configs" / "e5-mistral.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        data = {}
    return data.get("chunk_size", cfg.chunk_size), data.get("chunk_tokens", cfg.chunk_tokens)


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    """Rewritten after every variant: a run cut short by a time limit keeps its rows."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def padded_tokens(qs: list[list[int]], ds: list[list[int]]) -> int:
    return len(qs) * max(map(len, qs)) + len(ds) * max(map(len, ds))


# ----------------------------------------------------------------------------- main


def header(device: torch.device, info: dict[str, Any], args: argparse.Namespace, loss_name: str) -> str:
    import peft
    import transformers

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        dev = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    try:
        from importlib.metadata import version

        import liger_kernel  # noqa: F401

        liger = version("liger-kernel")
    except Exception:  # noqa: BLE001 - optional: any import failure means "not usable"
        liger = "not installed"
    try:
        import flash_attn

        fa = flash_attn.__version__
    except Exception:  # noqa: BLE001 - optional: any import failure means "not usable"
        fa = "not installed"
    lines = [
        f"# bench_train  device: {dev}",
        (
            f"# python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, peft {peft.__version__}, liger-kernel {liger}, "
            f"flash-attn {fa}"
        ),
        (
            f"# model: {info['shape']} shape, {info['layers']} layers, hidden {info['hidden']}, "
            f"{info['params_total'] / 1e9:.3f}B params ({info['weights_dtype']} weights), "
            f"LoRA r16 trainable {info['params_trainable'] / 1e6:.1f}M; loss: {loss_name}"
        ),
        (
            f"# batch: {args.queries} queries + {args.docs} documents per step, seed {args.seed}, "
            f"{args.warmup} warmup + {args.steps} timed steps per variant; "
            f"packed attention backend: {resolve_backend(args.attn, device)}"
        ),
    ]
    return "\n".join(lines)


def gpu_check(model: Any, batches: list, device: torch.device, backend: str) -> float:
    """Packed vs padded embeddings on this GPU's kernels (eval mode: no dropout). Returns
    the worst cosine similarity between the two; a wrong varlen path gives ~0."""
    qs, ds = batches[0]
    seqs = qs[:4] + ds[:4]
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        a = plain_embed(model, seqs).float()
        b = embed_packed(model, seqs, backend=backend).float()
    model.train(was_training)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


def plan_checkpointing(
    model: Any,
    batches: list,
    plain_peak: float,
    full_peak: float,
    n_layers: int,
    embed: Any,
    computed_tokens: Any,
    loss: Any,
    device: torch.device,
    notes: list[str],
    budget: str = "plain",
    fraction: float = 0.85,
) -> tuple[int, int]:
    """Spend the memory the packed stream saves (plain peak - packed full-checkpoint peak, 10%
    margin for step-to-step length changes) on less recompute. Two one-step probes measure
    what a kept layer and a matmul-saving layer cost here; whichever saves more recompute for
    the room wins. Per-layer costs are read conservatively (the peak may grow by k - 1 layers
    for k kept, as one layer's activations are live during any recompute), so the plan tends
    to stay under the plain peak rather than fill it.
    """
    probes = {}
    # keep counts the last layer, which trim_last_layer never checkpoints (and is cheap)
    for name, keep, sac, real in (("keep", 3, 0, 2), ("save_matmuls", 1, 4, 4)):
        set_checkpointing(model, keep=keep, save_matmuls=sac)
        r = run_variant(
            f"probe-{name}",
            model,
            batches[:2],
            embed=embed,
            computed_tokens=computed_tokens,
            warmup=1,
            loss=loss,
            device=device,
        )
        probes[name] = max((r["peak_gib"] - full_peak) / max(real - 1, 1), 1e-3)
    if budget == "device":  # what the card offers, not what the plain loop happened to use
        cap = fraction * torch.cuda.get_device_properties(device).total_memory / 2**30
    else:
        cap = 0.9 * plain_peak
    room = cap - full_peak
    n_keep = int(max(0, min(n_layers - 1, room // probes["keep"])))
    n_sac = int(max(0, min(n_layers - 1, room // probes["save_matmuls"])))
    # a matmul-saving layer still recomputes its elementwise work (~15% of a layer's recompute)
    keep, sac = (1, n_sac) if 0.85 * n_sac > n_keep else (1 + n_keep, 0)
    notes.append(
        f"checkpointing plan (budget: {budget}, cap {cap:.2f} GiB): packed full-checkpoint peak {full_peak:.2f} GiB, "
        f"plain {plain_peak:.2f} GiB; "
        f"a kept layer costs {probes['keep']:.2f} GiB, a matmul-saving layer {probes['save_matmuls']:.2f} GiB "
        f"-> keep {keep} (incl. the trimmed last layer), save_matmuls {sac}, of {n_layers} layers"
    )
    print(f"# {notes[-1]}", flush=True)
    return keep, sac


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument(
        "--shape", default="auto", choices=["auto", "tiny", "mistral-7b"], help="auto: mistral-7b on GPU, tiny on CPU"
    )
    ap.add_argument("--layers", type=int, default=None, help="override the layer count (quick checks)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (GPU 3, CPU 1)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--queries", type=int, default=None, help="queries per step (GPU 32; CPU 8)")
    ap.add_argument("--docs", type=int, default=None, help="documents per step (2 per query)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attn", default="auto", choices=list(BACKENDS))
    ap.add_argument(
        "--keep",
        default="auto",
        help="layers left uncheckpointed in the e5x variant: an int, or auto (GPU: "
        "this and --save-matmuls sized from measured peaks to stay under the "
        "plain loop's; CPU: 1 and 1)",
    )
    ap.add_argument(
        "--save-matmuls",
        type=int,
        default=0,
        help="with an int --keep: layers checkpointed but storing their big matmul outputs",
    )
    ap.add_argument("--group-tokens", type=int, default=8192, help="padded tokens per chunk, grouped variant")
    ap.add_argument(
        "--memory-budget",
        default="plain",
        choices=["plain", "device"],
        help="--keep auto plans checkpointing under 0.9x the plain loop's peak (plain: the "
        "'peak no higher' goal) or under --memory-fraction of the card (device)",
    )
    ap.add_argument("--memory-fraction", type=float, default=0.85)
    ap.add_argument("--variants", default="plain,grouped,packed,packed+trim,e5x,e5x+liger,e5x-train")
    ap.add_argument(
        "--gradcache-chunk",
        type=int,
        default=None,
        help="e5x-train: sequences per GradCache chunk (default: TrainConfig's)",
    )
    ap.add_argument(
        "--gradcache-tokens",
        type=int,
        default=None,
        help="e5x-train: tokens per GradCache chunk (default: TrainConfig's, where it has one)",
    )
    ap.add_argument("--no-check", action="store_true", help="skip the packed-vs-padded check on GPU")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    device = torch.device(
        "cuda"
        if (args.device == "auto" and torch.cuda.is_available())
        else (args.device if args.device != "auto" else "cpu")
    )
    shape = args.shape if args.shape != "auto" else ("mistral-7b" if device.type == "cuda" else "tiny")
    args.steps = args.steps or (3 if device.type == "cuda" else 1)
    # The CPU run is a smoke test of the code paths: a smaller step keeps it to minutes.
    args.queries = args.queries or (32 if device.type == "cuda" else 8)
    args.docs = args.docs or 2 * args.queries
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    model, info = build_model(shape, device, args.layers)
    loss, loss_name = loss_fn(device, info["hidden"])
    batches = make_batches(
        args.warmup + args.steps, queries=args.queries, docs=args.docs, vocab=info["vocab"], seed=args.seed
    )
    print(header(device, info, args, loss_name), flush=True)
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    results: list[dict[str, Any]] = []
    notes: list[str] = []

    def report(r: dict[str, Any]) -> None:
        results.append(r)
        base = results[0]["useful_tokens_per_s"]
        print(
            f"  done {r['variant']:<12} {r['useful_tokens_per_s']:>10.0f} tok/s  "
            f"{r['useful_tokens_per_s'] / base:5.2f}x  peak {r['peak_gib']:.2f} GiB",
            flush=True,
        )
        write_json(
            args.json,
            {
                "header": header(device, info, args, loss_name),
                "info": info,
                "results": results,
                "notes": notes,
                "complete": False,
            },
        )

    def both_padded(m: Any, qs: list, ds: list) -> tuple[torch.Tensor, torch.Tensor]:
        return plain_embed(m, qs), plain_embed(m, ds)

    def grouped(m: Any, qs: list, ds: list) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            embed_length_grouped(m, qs, max_tokens=args.group_tokens),
            embed_length_grouped(m, ds, max_tokens=args.group_tokens),
        )

    def packed_fn(trim: bool) -> Any:
        def fn(m: Any, qs: list, ds: list) -> tuple[torch.Tensor, torch.Tensor]:
            pooled = embed_packed(m, qs + ds, backend=args.attn, trim_last_layer=trim)
            return pooled[: len(qs)], pooled[len(qs) :]

        return fn

    def grouped_tokens(qs: list, ds: list) -> int:
        total = 0
        for side in (qs, ds):
            lengths = [len(s) for s in side]
            for c in length_grouped_chunks(lengths, args.group_tokens):
                total += len(c) * max(lengths[i] for i in c)
        return total

    def packed_tokens(qs: list, ds: list) -> int:
        return sum(map(len, qs)) + sum(map(len, ds))

    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    common = {"warmup": args.warmup, "loss": loss, "device": device, "initial": initial, "seed": args.seed}
    # 1. plain loop (HF checkpointing on every layer, SDPA, padded)
    set_checkpointing(model, keep=0)
    report(run_variant("plain", model, batches, embed=both_padded, computed_tokens=padded_tokens, **common))
    if "grouped" in wanted:
        report(run_variant("grouped", model, batches, embed=grouped, computed_tokens=grouped_tokens, **common))
    enable_packing(model)
    if device.type == "cuda" and not args.no_check:
        cos = gpu_check(model, batches, device, args.attn)
        notes.append(f"GPU check: packed vs padded embeddings, min cosine {cos:.5f} (bf16)")
        print(f"# {notes[-1]}", flush=True)
        if cos < 0.99:
            print("# packed attention disagrees with padded SDPA on this GPU: stopping", flush=True)
            return 2
    if "packed" in wanted:
        report(run_variant("packed", model, batches, embed=packed_fn(False), computed_tokens=packed_tokens, **common))
    if "packed+trim" in wanted or "e5x" in wanted or "e5x-train" in wanted:
        report(
            run_variant("packed+trim", model, batches, embed=packed_fn(True), computed_tokens=packed_tokens, **common)
        )
    full_ckpt_peak = results[-1]["peak_gib"]
    if "e5x" in wanted or "e5x+liger" in wanted or "e5x-train" in wanted:
        n_layers = info["layers"]
        if args.keep != "auto":
            keep, sac = int(args.keep), args.save_matmuls
        elif device.type != "cuda":
            keep, sac = 1, 1  # smoke-test both mechanisms
        else:
            keep, sac = plan_checkpointing(
                model,
                batches,
                results[0]["peak_gib"],
                full_ckpt_peak,
                n_layers,
                packed_fn(True),
                packed_tokens,
                loss,
                device,
                notes,
                args.memory_budget,
                args.memory_fraction,
            )
        set_checkpointing(model, keep=keep, save_matmuls=sac)
        plan = {"keep": keep, "save_matmuls": sac}
        if "e5x" in wanted:
            report(run_variant("e5x", model, batches, embed=packed_fn(True), computed_tokens=packed_tokens, **common))
            results[-1].update(plan)
        if "e5x-train" in wanted:  # before liger patches the model: the trainer's default path
            chunk, tokens = recipe_chunking()
            chunk = args.gradcache_chunk or chunk
            tokens = args.gradcache_tokens or (None if args.gradcache_chunk else tokens)
            report(
                run_variant(
                    "e5x-train",
                    model,
                    batches,
                    embed=None,
                    step=trainer_step(device, chunk, tokens),
                    computed_tokens=packed_tokens,
                    **common,
                )
            )
            results[-1].update(plan, gradcache_chunk=chunk, gradcache_tokens=tokens)
        if "e5x+liger" in wanted:
            try:
                applied = apply_liger(model)
                if applied:
                    if not args.no_check and device.type == "cuda":
                        cos = gpu_check(model, batches, device, args.attn)
                        notes.append(f"GPU check with liger kernels: min cosine {cos:.5f}")
                    report(
                        run_variant(
                            "e5x+liger", model, batches, embed=packed_fn(True), computed_tokens=packed_tokens, **common
                        )
                    )
                    results[-1].update(plan)
                    results[-1]["liger"] = applied
                else:
                    notes.append("e5x+liger skipped: liger-kernel not installed, model type unsupported, or no GPU")
            except Exception as exc:  # noqa: BLE001 - an optional library must not sink the run
                notes.append(f"e5x+liger failed: {type(exc).__name__}: {exc}")

    base = results[0]
    mem = "peak GiB" if device.type == "cuda" else "max RSS GiB"
    print()
    print(f"| variant | step s | useful tok/s | vs plain | examples/s | padding | {mem} | loss first→last |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(
            f"| {r['variant']} | {r['step_s']:.3f} | {r['useful_tokens_per_s']:.0f} | "
            f"{r['useful_tokens_per_s'] / base['useful_tokens_per_s']:.2f}x | {r['examples_per_s']:.2f} | "
            f"{r['padding_share']:.1%} | {r['peak_gib']:.2f} | {r['loss_first']:.3f}→{r['loss_last']:.3f} |"
        )
    for r in results[1:]:
        if device.type == "cuda" and r["peak_gib"] > base["peak_gib"]:
            notes.append(
                f"{r['variant']} peaked above the plain loop ({r['peak_gib']:.2f} > {base['peak_gib']:.2f} GiB)"
            )
    for n in notes:
        print(f"# {n}")
    if device.type != "cuda":
        print("# CPU smoke test: tiny model; max RSS is the process high-water mark so far, not per variant")
    write_json(
        args.json,
        {
            "header": header(device, info, args, loss_name),
            "info": info,
            "results": results,
            "notes": notes,
            "complete": True,
        },
    )
    return 0 if all(r["finite"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
