"""STS: correlation of cosine similarity with human scores (×100), as MTEB reports it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from e5x.formats.benchmark import STSData

if TYPE_CHECKING:
    import numpy as np

    from e5x.model.embedder import Embedder


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import numpy as np

    a = a.astype(np.float64)
    b = b.astype(np.float64)
    na = np.linalg.norm(a, axis=1).clip(min=1e-12)
    nb = np.linalg.norm(b, axis=1).clip(min=1e-12)
    return (a * b).sum(1) / (na * nb)


def sts_metrics(predicted: np.ndarray, gold: list[float] | np.ndarray) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    return {
        "cosine_spearman": 100 * float(spearmanr(predicted, gold).statistic),
        "cosine_pearson": 100 * float(pearsonr(predicted, gold).statistic),
    }


def evaluate_sts(
    embedder: Embedder, data: STSData, *, instruction: str | None, batch_size: int | None = None
) -> dict[str, float]:
    """Both sentences of a pair are queries of a symmetric task: both get the instruction."""
    e1 = embedder.encode_queries(
        data.sentences1, instruction=instruction, batch_size=batch_size, desc=f"{data.name} s1"
    )
    e2 = embedder.encode_queries(
        data.sentences2, instruction=instruction, batch_size=batch_size, desc=f"{data.name} s2"
    )
    return sts_metrics(cosine_pairs(e1, e2), data.scores)  # type: ignore[arg-type]
