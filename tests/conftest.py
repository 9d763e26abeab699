"""Suite-wide settings: offline, CPU by default, Triton kernels through the interpreter."""

from __future__ import annotations

import os
from pathlib import Path

# Triton reads TRITON_INTERPRET when a kernel is decorated, so set it before any test
# imports e5x.kernels. E5X_TEST_GPU=1 runs the same tests on a real GPU instead.
if os.environ.get("E5X_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("E5X_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real evaluation data (SciFact, STS-B) kept beside the repository."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA} (set E5X_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """torch on one thread for the test: a loaded 2-core machine makes multi-threaded tiny
    matmuls ~50x slower (OpenMP threads spin on a core someone else holds)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
