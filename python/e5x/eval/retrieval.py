"""Exact cosine search over a BEIR corpus, scored with pytrec_eval (trec_eval's C code).

The corpus is embedded and searched one chunk at a time, keeping only a running top-k
per query, so memory is bounded by ``corpus_chunk_size`` rather than the corpus size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from e5x.formats.benchmark import RetrievalData

if TYPE_CHECKING:
    import torch

    from e5x.model.embedder import Embedder

# Reported metric -> how it is computed (all in percent, averaged over judged queries).
RETRIEVAL_METRICS = ("ndcg_at_10", "recall_at_100", "mrr_at_10", "recall_at_10", "map_at_10")


def topk_merge(
    best_scores: torch.Tensor | None,
    best_index: torch.Tensor | None,
    scores: torch.Tensor,
    offset: int,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a chunk's scores [Q, n] (documents offset..offset+n) into a running top-k."""
    import torch

    k_chunk = min(k, scores.shape[1])
    vals, idx = torch.topk(scores, k_chunk, dim=1)
    idx = idx + offset
    if best_scores is None or best_index is None:
        return vals, idx
    vals = torch.cat([best_scores, vals], dim=1)
    idx = torch.cat([best_index, idx], dim=1)
    k_all = min(k, vals.shape[1])
    vals, pos = torch.topk(vals, k_all, dim=1)
    return vals, torch.gather(idx, 1, pos)


def exact_search(
    query_emb: torch.Tensor,
    embed_chunk: Any,
    n_docs: int,
    *,
    top_k: int = 100,
    corpus_chunk_size: int = 50_000,
    query_batch_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine scores and document indices [Q, k] for every query.

    ``embed_chunk(start, stop)`` returns the embeddings [stop-start, H] of that corpus
    slice; at most one chunk and one [query_batch_size, chunk] score block live at once.
    """
    import torch

    if n_docs < 1:
        raise ValueError("the corpus is empty")
    q = torch.nn.functional.normalize(query_emb.float(), dim=-1)
    best_s: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for start in range(0, n_docs, corpus_chunk_size):
        stop = min(start + corpus_chunk_size, n_docs)
        d = torch.nn.functional.normalize(embed_chunk(start, stop).float(), dim=-1)
        parts_s, parts_i = [], []
        for qs in range(0, q.shape[0], query_batch_size):
            block = q[qs : qs + query_batch_size] @ d.T
            s, i = topk_merge(
                None if best_s is None else best_s[qs : qs + query_batch_size],
                None if best_i is None else best_i[qs : qs + query_batch_size],
                block,
                start,
                top_k,
            )
            parts_s.append(s)
            parts_i.append(i)
        best_s, best_i = torch.cat(parts_s), torch.cat(parts_i)
    assert best_s is not None and best_i is not None
    return best_s, best_i


def retrieval_metrics(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query metrics (×100) of a run, computed by pytrec_eval.

    MRR@10 is trec_eval's reciprocal rank of the run cut to its ten best documents.
    Queries of ``qrels`` missing from the run count as zero.
    """
    import pytrec_eval

    run = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items()}
    for q in qrels:
        run.setdefault(q, {})
    judged = {q: qrels[q] for q in qrels}
    measures = {"ndcg_cut.10", "recall.10", "recall.100", "map_cut.10"}
    per_q = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(run)
    top10 = {q: dict(sorted(d.items(), key=lambda x: (-x[1], x[0]))[:10]) for q, d in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top10)
    per_query: dict[str, dict[str, float]] = {}
    for q in judged:
        m = per_q.get(q, {})
        per_query[q] = {
            "ndcg_at_10": 100 * m.get("ndcg_cut_10", 0.0),
            "recall_at_100": 100 * m.get("recall_100", 0.0),
            "mrr_at_10": 100 * rr.get(q, {}).get("recip_rank", 0.0),
            "recall_at_10": 100 * m.get("recall_10", 0.0),
            "map_at_10": 100 * m.get("map_cut_10", 0.0),
        }
    n = len(per_query)
    mean = {k: sum(v[k] for v in per_query.values()) / n for k in RETRIEVAL_METRICS}
    return mean, per_query


def evaluate_retrieval(
    embedder: Embedder,
    data: RetrievalData,
    *,
    instruction: str | None,
    top_k: int = 100,
    corpus_chunk_size: int = 50_000,
    batch_size: int | None = None,
    ignore_identical_ids: bool = False,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Embed queries (with ``instruction``) and the corpus (bare); search; score."""
    if not data.corpus_ids:
        raise ValueError(f"{data.name}: the corpus is empty")
    q_emb = cast(
        "torch.Tensor",
        embedder.encode_queries(
            data.query_texts,
            instruction=instruction,
            output="torch",
            batch_size=batch_size,
            desc=f"{data.name} queries",
        ),
    )

    def embed_chunk(start: int, stop: int) -> torch.Tensor:
        return embedder.encode_documents(  # type: ignore[return-value]
            data.corpus_texts[start:stop], output="torch", batch_size=batch_size, desc=f"{data.name} corpus"
        )

    # One extra hit per query so dropping a query's own id still leaves top_k.
    k = top_k + 1 if ignore_identical_ids else top_k
    scores, index = exact_search(q_emb, embed_chunk, len(data.corpus_ids), top_k=k, corpus_chunk_size=corpus_chunk_size)
    run: dict[str, dict[str, float]] = {}
    for row, qid in enumerate(data.query_ids):
        hits: dict[str, float] = {}
        for s, i in zip(scores[row].tolist(), index[row].tolist()):
            did = data.corpus_ids[i]
            if ignore_identical_ids and did == qid:
                continue
            hits[did] = s
        run[qid] = dict(list(hits.items())[:top_k])
    return retrieval_metrics(data.qrels, run)
