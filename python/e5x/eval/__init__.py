"""Evaluation: BEIR-format retrieval and STS-Benchmark STS, plus an MTEB adapter.

``e5x.evaluate(EvalConfig(model=..., tasks=[...]))`` embeds, searches, scores and returns
an ``EvalReport`` (printable table, JSON). Tasks are paths: a folder with
``corpus.jsonl`` is a retrieval task; an STS-B file, or a folder with ``sts-{split}.csv``,
is an STS task. ``NAME=PATH`` names a task explicitly (the name picks its instruction). A
registered evaluation set's name (``scifact``, ``stsb``: ``e5x data list``) is fetched.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from annotated_types import Ge

from e5x._extras import require
from e5x.config import ConfigError, load
from e5x.formats.benchmark import FormatError, load_beir, load_sts
from e5x.tasks.instructions import TASK_INSTRUCTIONS, TYPE_DEFAULTS, canonical_task_name, instruction_for

if TYPE_CHECKING:
    from e5x.model.embedder import Embedder

log = logging.getLogger(__name__)

EvalDataError = FormatError  # the name evaluation callers know: a malformed BEIR/STS file

__all__ = [
    "EvalConfig",
    "EvalDataError",
    "EvalReport",
    "TaskResult",
    "TASK_INSTRUCTIONS",
    "TYPE_DEFAULTS",
    "evaluate",
    "instruction_for",
    "resolve_task",
    "E5xMTEBModel",
]


@dataclass
class EvalConfig:
    """What to evaluate and how.

    ``model`` is a path for ``Embedder.from_pretrained`` (or pass ``embedder=`` to
    ``evaluate``). ``use_instructions=False`` leaves queries bare (for models trained
    without instructions, e.g. all-MiniLM-L6-v2). ``instructions`` overrides the paper's
    per-task instruction by task name.
    """

    model: str | None = None  # saved e5x model, LoRA adapter dir, or any HF model dir
    # [NAME=]PATH: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or an STS-B file or
    # folder; or a registered evaluation set's name (scifact, stsb: fetched)
    tasks: list[str] = field(default_factory=list)
    split: str = "test"  # qrels/STS split
    use_instructions: bool = True  # false: bare queries (models trained without instructions)
    instructions: dict[str, str] = field(default_factory=dict)  # task name -> query instruction
    pooling: str | None = None  # override the model's pooling
    max_length: Annotated[int, Ge(2)] | None = None  # truncate texts to this many tokens
    truncate_dim: Annotated[int, Ge(1)] | None = None  # keep the first N embedding dimensions (Matryoshka)
    batch_size: Annotated[int, Ge(1)] = 32
    device: str | None = None  # cuda, cpu, cuda:1 ... (default: cuda if available)
    dtype: Literal["float32", "bfloat16", "float16"] | None = None  # default: bf16 on GPU, fp32 on CPU
    top_k: Annotated[int, Ge(10)] = 100  # documents kept per query (nDCG@10 and MRR@10 need 10)
    corpus_chunk_size: Annotated[int, Ge(1)] = 50_000  # documents embedded and searched at once
    ignore_identical_ids: bool = False  # drop hits whose id equals the query id
    output: str | None = None  # write the results as JSON here
    show_progress: bool = True

    def check(self) -> None:
        if not self.tasks:
            raise ConfigError("no tasks: give at least one BEIR folder, STS file or evaluation set name", field="tasks")


@dataclass
class TaskResult:
    task: str
    type: str  # "Retrieval" | "STS"
    split: str
    path: str
    instruction: str | None
    metrics: dict[str, float]
    main_score: str
    counts: dict[str, int]
    seconds: float

    @property
    def score(self) -> float:
        return self.metrics[self.main_score]


@dataclass
class EvalReport:
    model: str
    results: list[TaskResult]
    config: dict[str, Any]

    def __getitem__(self, task: str) -> TaskResult:
        for r in self.results:
            if r.task == task or r.task.lower() == task.lower():
                return r
        raise KeyError(f"no result for task {task!r}; have {[r.task for r in self.results]}")

    def table(self) -> str:
        cols = ["task", "type", "split", "main", "score", "other metrics", "s"]
        rows = []
        for r in self.results:
            other = ", ".join(f"{k} {v:.2f}" for k, v in r.metrics.items() if k != r.main_score)
            rows.append([r.task, r.type, r.split, r.main_score, f"{r.score:.2f}", other, f"{r.seconds:.1f}"])
        widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
        line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
        out = [f"model: {self.model}", line(cols), line(["-" * w for w in widths])]
        out += [line(row) for row in rows]
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "config": self.config, "results": [asdict(r) for r in self.results]}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text, encoding="utf-8")
        return text


def _registered_eval_set(spec: str) -> Path | None:
    """The fetched folder of the registered evaluation set called ``spec``, else None."""
    from e5x.data.registry import UnknownDataset, get

    try:
        ds = get(spec)
    except UnknownDataset:
        return None
    if ds.kind != "eval":
        return None
    from e5x.data.download import fetch

    return fetch(ds.name)


def resolve_task(spec: str, split: str = "test") -> tuple[str, str, Path]:
    """``[NAME=]PATH`` -> (canonical name, "Retrieval" | "STS", path)."""
    name: str | None = None
    if "=" in spec and not Path(spec).exists():
        name, spec = spec.split("=", 1)
    path = Path(spec)
    if not path.exists() and name is None:
        path = _registered_eval_set(spec) or path
    if not path.exists():
        raise FileNotFoundError(f"task path {path} does not exist")
    if path.is_dir() and (path / "corpus.jsonl").is_file():
        kind = "Retrieval"
        default_name = path.name
    elif path.is_file() or (path.is_dir() and (path / f"sts-{split}.csv").is_file()):
        kind = "STS"
        default_name = (
            path.parent.name
            if path.is_file() and path.name.startswith("sts-")
            else (path.stem if path.is_file() else path.name)
        )
    else:
        raise ValueError(
            f"{path}: not a task: expected a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) "
            f"or an STS-B file / folder with sts-{split}.csv"
        )
    return canonical_task_name(name or default_name), kind, path


def evaluate(
    config: EvalConfig | Mapping[str, Any] | str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    embedder: Embedder | None = None,
    **fields: Any,
) -> EvalReport:
    """Run every task of ``config`` (an EvalConfig, a dict or a TOML path) with ``overrides``
    (``"key=value"``) and ``fields`` applied; print and save results."""
    from e5x.eval.retrieval import evaluate_retrieval
    from e5x.eval.sts import evaluate_sts

    config = load(EvalConfig, config, overrides, fields=fields)
    tasks = [resolve_task(t, config.split) for t in config.tasks]  # fail fast on bad paths
    require("evaluation", "eval")
    if embedder is None:
        if not config.model:
            raise ValueError("EvalConfig.model is not set (or pass embedder=)")
        from e5x.model.embedder import Embedder

        embedder = Embedder.from_pretrained(
            config.model,
            pooling=config.pooling,
            max_length=config.max_length,
            truncate_dim=config.truncate_dim,
            device=config.device,
            dtype=config.dtype,
            batch_size=config.batch_size,
            show_progress=config.show_progress,
        )
    results: list[TaskResult] = []
    for name, kind, path in tasks:
        t0 = time.perf_counter()
        instruction = instruction_for(name, kind, config.instructions) if config.use_instructions else None
        if kind == "Retrieval":
            data = load_beir(path, config.split, name=name)
            metrics, _ = evaluate_retrieval(
                embedder,
                data,
                instruction=instruction,
                top_k=config.top_k,
                corpus_chunk_size=config.corpus_chunk_size,
                batch_size=config.batch_size,
                ignore_identical_ids=config.ignore_identical_ids,
            )
            counts = dict(data.stats, skipped_queries=data.skipped_queries, missing_docs=data.missing_docs)
            main = "ndcg_at_10"
        else:
            sts = load_sts(path, config.split, name=name)
            metrics = evaluate_sts(embedder, sts, instruction=instruction, batch_size=config.batch_size)
            counts = {"pairs": len(sts.scores)}
            main = "cosine_spearman"
        results.append(
            TaskResult(
                task=name,
                type=kind,
                split=config.split,
                path=str(path),
                instruction=instruction,
                metrics=metrics,
                main_score=main,
                counts=counts,
                seconds=time.perf_counter() - t0,
            )
        )
        log.info("%s %s: %s %.2f", name, config.split, main, metrics[main])
    report = EvalReport(model=str(config.model or embedder.name), results=results, config=asdict(config))
    if config.output:
        report.to_json(config.output)
    return report


def __getattr__(name: str) -> Any:
    if name == "E5xMTEBModel":  # imports mteb; only when asked for
        from e5x.eval.mteb_adapter import E5xMTEBModel

        return E5xMTEBModel
    raise AttributeError(f"module 'e5x.eval' has no attribute {name!r}")
