"""Deterministic, resumable batch plan over a mix of sources.

Every batch is a pure function of (seed, step): resuming at step N needs nothing but N,
and every rank of a distributed run computes the same global batch and takes its shard.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np


class BatchPlan:
    """Global batches of ``(source, row)`` pairs.

    One epoch draws ``round(ratio * size)`` rows from each source (without replacement up
    to the size, whole extra copies above it), shuffles them and cuts batches, dropping the
    incomplete last one. With ``task_homogeneous`` every batch comes from one source (cut
    per source, then the batch order is shuffled), so in-batch negatives share a task.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        ratios: Sequence[float],
        batch_size: int,
        seed: int = 0,
        task_homogeneous: bool = False,
    ) -> None:
        if len(sizes) != len(ratios):
            raise ValueError("sizes and ratios must have the same length")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sizes = [int(s) for s in sizes]
        self.ratios = [float(r) for r in ratios]
        self.batch_size = batch_size
        self.seed = seed
        self.task_homogeneous = task_homogeneous
        self.counts = [max(1, round(r * n)) if n else 0 for n, r in zip(self.sizes, self.ratios)]
        if task_homogeneous:
            self.steps_per_epoch = sum(c // batch_size for c in self.counts)
        else:
            self.steps_per_epoch = sum(self.counts) // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {batch_size} is larger than the data: one epoch draws "
                f"{self.counts} rows per source"
                + (" (task-homogeneous batches need that many rows per source)" if task_homogeneous else "")
            )

    def total_steps(self, epochs: float, max_steps: int | None = None) -> int:
        """Steps of a run: ``max_steps`` when set, else ``epochs`` epochs (at least one step)."""
        return max_steps or max(1, math.ceil(epochs * self.steps_per_epoch))

    def _draw(self, epoch: int, source: int) -> np.ndarray:
        n, count = self.sizes[source], self.counts[source]
        rng = np.random.default_rng([self.seed, epoch, source])
        full, rest = divmod(count, n)
        parts = [rng.permutation(n) for _ in range(full)]
        parts.append(rng.permutation(n)[:rest])
        return np.concatenate(parts)

    @lru_cache(maxsize=2)  # noqa: B019 - a plan lives as long as its run
    def epoch(self, epoch: int) -> np.ndarray:
        """``[steps_per_epoch, batch_size, 2]`` int64 array of (source, row)."""
        rng = np.random.default_rng([self.seed, epoch, 1 << 20])
        per_source = [
            np.stack([np.full(self.counts[s], s), self._draw(epoch, s)], axis=1) for s in range(len(self.sizes))
        ]
        b = self.batch_size
        if self.task_homogeneous:
            batches = [p[: (len(p) // b) * b].reshape(-1, b, 2) for p in per_source if len(p) >= b]
            out = np.concatenate(batches)
            return out[rng.permutation(len(out))]
        pairs = np.concatenate(per_source)
        pairs = pairs[rng.permutation(len(pairs))]
        return pairs[: self.steps_per_epoch * b].reshape(-1, b, 2)

    def batch(self, step: int) -> np.ndarray:
        """The global batch of ``step`` (0-based) as ``[batch_size, 2]``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        return self.epoch(epoch)[i]
