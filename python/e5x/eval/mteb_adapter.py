"""An ``mteb`` encoder (mteb >= 2: ``mteb.models.EncoderProtocol``) over ``e5x.Embedder``.

Queries, and both sides of symmetric tasks (STS, classification, clustering, pair
classification, bitext), get the task's instruction; retrieval documents stay bare, as in
training. The instruction is, in order: ``instructions[task name]``, the paper's
instruction for the task (``e5x.tasks.instructions``), the task type default, and last
the task's own ``metadata.prompt``/description.

The rest of the paper's evaluation protocol: embeddings of classification tasks are not
L2-normalised (the logistic-regression probe is fit on the raw last-token states), every
other task's are; texts are truncated at 512 tokens (``max_length``, capped by the
model's own limit).

    import mteb
    from e5x.eval.mteb_adapter import E5xMTEBModel
    model = E5xMTEBModel.from_pretrained("runs/e5x-mistral")
    mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]), cache=None)

Importing this module imports ``mteb`` (``pip install mteb``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from e5x.tasks.instructions import instruction_for

if TYPE_CHECKING:
    import numpy as np
    from mteb.abstasks.task_metadata import TaskMetadata
    from torch.utils.data import DataLoader

    from e5x.model.embedder import Embedder

log = logging.getLogger(__name__)

#: mteb task types whose embeddings the paper's protocol leaves unnormalised.
UNNORMALIZED_TASK_TYPES = frozenset({"Classification", "MultilabelClassification"})


class E5xMTEBModel(AbsEncoder):
    """Wraps an ``Embedder`` for ``mteb.evaluate``."""

    def __init__(
        self,
        model_name: str | Embedder,
        revision: str | None = None,
        *,
        device: str | None = None,
        use_instructions: bool = True,
        instructions: dict[str, str] | None = None,
        max_length: int | None = 512,
        normalize_classification: bool = False,
        **kwargs: Any,
    ) -> None:
        from e5x.model.embedder import Embedder

        if isinstance(model_name, Embedder):
            self.embedder = model_name
        else:
            self.embedder = Embedder.from_pretrained(model_name, device=device, **kwargs)
        self.model = self.embedder
        self.use_instructions = use_instructions
        self.instructions = dict(instructions or {})
        spec = self.embedder.spec
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1 or None, got {max_length}")
        # Never beyond what the model was trained for.
        self.max_length = spec.max_length if max_length is None else min(max_length, spec.max_length)
        self.normalize_classification = normalize_classification
        self.calls: list[tuple[str, str | None, int]] = []  # (task, instruction, n) per encode call
        self.mteb_model_meta = ModelMeta.create_empty(
            {
                "name": f"e5x/{_short_name(self.embedder.name)}",
                "revision": revision or "local",
                "embed_dim": self.embedder.dim,
                "max_tokens": self.max_length,
                "similarity_fn_name": ScoringFunction.COSINE,
                "use_instructions": use_instructions,
                "framework": ["PyTorch"],
            }
        )

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> E5xMTEBModel:
        return cls(path, **kwargs)

    def task_instruction(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str | None:
        """The instruction to prepend for this task and side (None: leave texts bare)."""
        if not self.use_instructions or prompt_type == PromptType.document:
            return None
        try:
            return instruction_for(task_metadata.name, task_metadata.type, self.instructions)
        except KeyError:
            # A task the paper never evaluated: its own prompt, else its description.
            prompt = task_metadata.prompt
            if isinstance(prompt, dict):
                prompt = prompt.get((prompt_type or PromptType.query).value)
            return prompt or task_metadata.description

    def normalizes(self, task_metadata: TaskMetadata) -> bool:
        """Whether this task's embeddings are L2-normalised (the model's own setting otherwise)."""
        if task_metadata.type in UNNORMALIZED_TASK_TYPES and not self.normalize_classification:
            return False
        return self.embedder.spec.normalize

    def encode(
        self,
        inputs: DataLoader[Any],
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        instruction = self.task_instruction(task_metadata, prompt_type)
        self.calls.append((task_metadata.name, instruction, len(texts)))
        batch_size = kwargs.get("batch_size")
        show = kwargs.get("show_progress_bar")
        enc_kw: dict[str, Any] = {"batch_size": batch_size, "desc": f"{task_metadata.name} {prompt_type or ''}".strip()}
        if show is not None:
            enc_kw["show_progress"] = bool(show)
        spec = self.embedder.spec
        if self.max_length != spec.max_length:  # else the embedder's own limit already applies
            enc_kw["max_length"] = self.max_length
        normalize = self.normalizes(task_metadata)
        # The Embedder reads normalisation from its spec: swap in a copy for this call only.
        self.embedder.spec = dataclasses.replace(spec, normalize=normalize)
        try:
            if prompt_type == PromptType.document:
                return self.embedder.encode_documents(texts, **enc_kw)  # type: ignore[return-value]
            return self.embedder.encode_queries(texts, instruction=instruction, **enc_kw)  # type: ignore[return-value]
        finally:
            self.embedder.spec = spec


def _short_name(name: str) -> str:
    parts = [p for p in str(name).replace("\\", "/").split("/") if p]
    return parts[-1] if parts else "model"
