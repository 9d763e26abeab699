"""``e5x.Embedder``: text in, embeddings out, the way the model was trained.

Loads three kinds of directories:

- a saved e5x model (``e5x.json`` beside a merged HF model + tokenizer): pooling, EOS rule,
  padding side, max length and query template come from the ``EmbeddingSpec``;
- a LoRA adapter directory (``adapter_config.json``): the base model named in it (or
  ``base_model=``) plus the adapter, merged for inference;
- any Hugging Face encoder/decoder, with the pooling you choose (``last_token`` by
  default; a sentence-transformers directory's own pooling when it declares one).

Poolings are those of ``e5x.model.pooling``. Queries get
``Instruct: {instruction}\\nQuery: {query}``; documents stay bare. Saved e5x models are
tokenized as in training (``append_eos`` in ``e5x.json``); other models get an EOS appended
(``e5x.model.text.encode``) when their pooling reads the last token only, and are tokenized
normally otherwise (mean/cls pooled BERT-style encoders).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from e5x._extras import require
from e5x.model.config import CONFIG_NAME, EmbeddingSpec
from e5x.model.pooling import from_sentence_transformers, get_pooling
from e5x.model.text import QUERY_TEMPLATE, encode, pad_token_id

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger(__name__)

OutputKind = Literal["numpy", "torch"]


def _sentence_transformers_spec(path: Path) -> dict[str, Any]:
    """Pooling/normalize/max length declared by a sentence-transformers directory, if any."""
    out: dict[str, Any] = {}
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return out
    modules = json.loads(modules_file.read_text())
    types = {m.get("type", "").rsplit(".", 1)[-1]: m for m in modules}
    if "Normalize" in types:
        out["normalize"] = True
    pooling_module = types.get("Pooling")
    if pooling_module is not None:
        cfg_file = path / pooling_module.get("path", "") / "config.json"
        if cfg_file.is_file():
            name = from_sentence_transformers(json.loads(cfg_file.read_text()))
            if name is not None:
                out["pooling"] = name
    sbert = path / "sentence_bert_config.json"
    if sbert.is_file():
        max_len = json.loads(sbert.read_text()).get("max_seq_length")
        if max_len:
            out["max_length"] = int(max_len)
    return out


def _find_spec(path: Path) -> EmbeddingSpec | None:
    """``e5x.json`` of the directory, or of the model directory an ``adapter/`` sits in."""
    dirs = [path]
    if (path / "adapter_config.json").is_file():
        dirs.append(path.parent)
    for d in dirs:
        if (d / CONFIG_NAME).is_file():
            return EmbeddingSpec.load(d)
    return None


class Embedder:
    """Encode queries (with an instruction) and documents (bare) into embeddings."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        spec: EmbeddingSpec | None = None,
        *,
        batch_size: int = 32,
        show_progress: bool = True,
        name: str | None = None,
        truncate_dim: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = spec or EmbeddingSpec()
        self.pooling = get_pooling(self.spec.pooling)
        hidden = int(model.config.hidden_size)
        if truncate_dim is not None and not 1 <= truncate_dim <= hidden:
            raise ValueError(f"truncate_dim must be in 1..{hidden} (the model's hidden size), got {truncate_dim}")
        if truncate_dim is not None and truncate_dim < hidden and truncate_dim not in self.spec.matryoshka_dims:
            log.warning(
                "truncate_dim=%d: the model was not trained for it (matryoshka_dims %s); "
                "expect lower quality than a trained size",
                truncate_dim,
                list(self.spec.matryoshka_dims),
            )
        # The first truncate_dim dimensions, renormalised: a Matryoshka-trained prefix.
        self.truncate_dim = truncate_dim
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or "e5x-model"

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        append_eos: bool | None = None,
        padding_side: str | None = None,
        query_template: str | None = None,
        base_model: str | Path | None = None,
        device: str | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 32,
        show_progress: bool = True,
        trust_remote_code: bool = False,
        truncate_dim: int | None = None,
    ) -> Embedder:
        """Load a saved e5x model, a base model + LoRA adapter, or any HF model.

        Keyword arguments left ``None`` come from ``e5x.json`` (or a sentence-transformers
        config), else the e5x defaults (last-token pooling, normalised, EOS appended).
        ``dtype`` defaults to bfloat16 on GPU and float32 on CPU. ``truncate_dim`` keeps the
        first dimensions of each embedding (renormalised), for a model trained with
        ``matryoshka_dims`` (its ``e5x.json`` lists them).
        """
        require("loading a model", "train")
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"model directory {path} does not exist")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype is None:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)

        spec = _find_spec(path)
        if spec is None:
            st = _sentence_transformers_spec(path)
            chosen = pooling or st.get("pooling", "last_token")
            spec = EmbeddingSpec(
                pooling=chosen,
                normalize=st.get("normalize", True),
                max_length=st.get("max_length", 512),
                # EOS is the pooled token only for last-token pooling; BERT-style encoders
                # already end with their own [SEP] and are tokenized as they were trained.
                append_eos=get_pooling(chosen).last_token_only,
            )
        overrides: dict[str, Any] = {
            k: v
            for k, v in dict(
                pooling=pooling,
                normalize=normalize,
                max_length=max_length,
                append_eos=append_eos,
                padding_side=padding_side,
                query_template=query_template,
            ).items()
            if v is not None
        }
        if "pooling" in overrides and "append_eos" not in overrides and overrides["pooling"] != spec.pooling:
            # another pooling than the model's: tokenize as that pooling needs
            overrides["append_eos"] = get_pooling(overrides["pooling"]).last_token_only
        spec = replace(spec, **overrides)

        adapter_dir = path if (path / "adapter_config.json").is_file() else None
        load_kw: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
        if adapter_dir is not None:
            adapter_cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
            base = str(base_model or adapter_cfg.get("base_model_name_or_path") or "")
            if not base:
                raise ValueError(
                    f"{adapter_dir / 'adapter_config.json'} names no base_model_name_or_path; pass base_model="
                )
            model = _load_with_adapter(AutoModel.from_pretrained(base, **load_kw), adapter_dir)
            # The adapter's own tokenizer, else the e5x model dir it was saved in, else the base.
            tok_src = next(
                (d for d in (adapter_dir, adapter_dir.parent) if (d / "tokenizer_config.json").is_file()),
                Path(base),
            )
        else:
            model = AutoModel.from_pretrained(str(path), **load_kw)
            tok_src = path
        tokenizer = AutoTokenizer.from_pretrained(str(tok_src), trust_remote_code=trust_remote_code)
        model.to(device)
        return cls(
            model,
            tokenizer,
            spec,
            batch_size=batch_size,
            show_progress=show_progress,
            name=str(path),
            truncate_dim=truncate_dim,
        )

    # ---------------------------------------------------------------- encoding
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        return self.truncate_dim or int(self.model.config.hidden_size)

    def format_query(self, query: str, instruction: str | None) -> str:
        if not instruction:
            return query
        return self.spec.query_template.format(instruction=instruction.strip(), query=query)

    def encode_queries(
        self, texts: Sequence[str], instruction: str | None = None, **kwargs: Any
    ) -> np.ndarray | torch.Tensor:
        """Embed queries as ``Instruct: {instruction}\\nQuery: {query}`` (bare without one)."""
        return self.encode([self.format_query(t, instruction) for t in _as_list(texts)], **kwargs)

    def encode_documents(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray | torch.Tensor:
        """Embed documents as they are (the index is shared by every task)."""
        return self.encode(_as_list(texts), **kwargs)

    def _token_ids(self, texts: list[str], max_length: int) -> list[list[int]]:
        if self.spec.append_eos:
            return encode(self.tokenizer, texts, max_length)
        return [
            list(ids)
            for ids in self.tokenizer(
                texts, add_special_tokens=True, truncation=True, max_length=max_length, padding=False
            )["input_ids"]
        ]

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        max_length: int | None = None,
        output: OutputKind = "numpy",
        show_progress: bool | None = None,
        desc: str = "encode",
    ) -> np.ndarray | torch.Tensor:
        """Embed texts as given: float32 ``[N, H]`` numpy array (or torch tensor on CPU)."""
        import torch
        from tqdm.auto import tqdm

        from e5x.model.text import pad

        texts = _as_list(texts)
        if output not in ("numpy", "torch"):
            raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
        bs = batch_size or self.batch_size
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {bs}")
        out = torch.empty((len(texts), self.dim), dtype=torch.float32)
        if texts:
            ids = self._token_ids(texts, max_length or self.spec.max_length)
            # Longest first: similar lengths share a batch (little padding), and an
            # out-of-memory error shows up on the first batch, not the last.
            order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
            pad_id = pad_token_id(self.tokenizer) if self.spec.append_eos else int(self.tokenizer.pad_token_id or 0)
            progress = self.show_progress if show_progress is None else show_progress
            bar = tqdm(total=len(texts), desc=desc, disable=not progress, unit="text")
            with torch.inference_mode():
                for start in range(0, len(order), bs):
                    rows = order[start : start + bs]
                    input_ids, mask = pad([ids[i] for i in rows], pad_id, self.spec.padding_side)
                    emb = self._embed(input_ids.to(self.device), mask.to(self.device))
                    out[torch.as_tensor(rows)] = emb.float().cpu()
                    bar.update(len(rows))
            bar.close()
        return out if output == "torch" else out.numpy()

    __call__ = encode

    def _embed(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        import torch

        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        emb = self.pooling.pool(hidden, mask).float()
        if self.truncate_dim is not None:
            emb = emb[:, : self.truncate_dim]
        if self.spec.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
        return emb

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"Embedder({self.name!r}, pooling={s.pooling}, normalize={s.normalize}, "
            f"max_length={s.max_length}, append_eos={s.append_eos}, dim={self.dim}, device={self.device})"
        )


def _as_list(texts: Sequence[str] | str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("expected a sequence of texts, got a single str (wrap it in a list)")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, expected str")
    return out


def _load_with_adapter(base: Any, adapter_dir: Path) -> Any:
    """Apply a LoRA adapter and merge it; every adapter weight must land in the model."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    config = LoraConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = True
    peft_model = get_peft_model(base, config)
    weights = load_peft_weights(str(adapter_dir), device="cpu")
    result = set_peft_model_state_dict(peft_model, weights)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        # Typically an adapter trained on a *ForCausalLM model loaded into AutoModel (or the
        # reverse): the key prefixes differ and the adapter would silently do nothing.
        raise ValueError(
            f"{adapter_dir}: {len(unexpected)} adapter weights match no module of "
            f"{type(base).__name__} (e.g. {unexpected[0]!r}); was it trained on another model class?"
        )
    return peft_model.merge_and_unload()


__all__ = ["Embedder", "QUERY_TEMPLATE"]
