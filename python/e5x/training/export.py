"""The final model directory: merged HF model + tokenizer, ``adapter/``,
``e5x.json`` and the sentence-transformers files.

The saved tokenizer appends EOS itself (a post-processor in tokenizer.json), so plain
``SentenceTransformer(path)`` tokenises exactly like e5x; it is saved as a generic fast
tokenizer because model-specific classes (Llama/Mistral under transformers >= 5) rebuild
their post-processor on load and drop the EOS again.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from e5x.model.config import CONFIG_NAME, EmbeddingSpec
from e5x.model.pooling import sentence_transformers_config
from e5x.model.text import QUERY_TEMPLATE, eos_token_id, format_query


def eos_appending_tokenizer(tokenizer: Any) -> Any:
    """A copy of a fast tokenizer whose own post-processing appends EOS (keeping BOS)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("saving for sentence-transformers needs a fast tokenizer")
    eos_id = eos_token_id(tokenizer)
    eos = tokenizer.convert_ids_to_tokens(eos_id)
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos_id = tokenizer.bos_token_id
    adds_bos = bos_id is not None and bool(probe) and probe[0] == bos_id
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    special = [(eos, eos_id)]
    single = "$A " + eos
    pair = "$A " + eos + " $B:1 " + eos + ":1"
    if adds_bos:
        bos = tokenizer.convert_ids_to_tokens(bos_id)
        special.append((bos, bos_id))
        single = f"{bos} {single}"
        pair = f"{bos} $A {eos} {bos}:1 $B:1 {eos}:1"
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    kwargs = {
        name: getattr(tokenizer, name)
        for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        if getattr(tokenizer, name, None) is not None
    }
    # sentence-transformers pads; decoder LLMs often have no pad token (pad rows are masked).
    kwargs.setdefault("pad_token", kwargs["eos_token"])
    out = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    out.padding_side = tokenizer.padding_side
    out.model_max_length = tokenizer.model_max_length
    return out


def write_sentence_transformers(
    directory: Path,
    hidden_size: int,
    max_length: int,
    prompts: dict[str, str],
    pooling: str = "last_token",
) -> None:
    """The sentence-transformers layout: Transformer -> Pooling (``pooling``, an
    ``e5x.model.pooling`` entry) -> Normalize."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (directory / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_length, "do_lower_case": False}, indent=2) + "\n"
    )
    pooling_config = sentence_transformers_config(pooling, hidden_size)
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config, indent=2) + "\n")
    (directory / "2_Normalize").mkdir(exist_ok=True)
    config = {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    (directory / "config_sentence_transformers.json").write_text(json.dumps(config, indent=2) + "\n")


def query_prompt(instruction: str) -> str:
    """The text before the query, as a sentence-transformers prompt."""
    marker = "\x00"
    prompt = format_query(marker, instruction)
    assert prompt.endswith(marker) and QUERY_TEMPLATE.endswith("{query}")
    return prompt[: -len(marker)]


def save_model(
    peft_model: Any,
    tokenizer: Any,
    directory: str | Path,
    *,
    max_length: int,
    padding_side: str,
    prompts: dict[str, str],
    matryoshka_dims: Sequence[int] = (),
    pooling: str = "last_token",
) -> Path:
    """Write adapter, merged model, tokenizer, e5x.json and sentence-transformers files;
    both pool with ``pooling`` (an ``e5x.model.pooling`` entry), as training did.

    Everything is written to ``<directory>.partial`` first and renamed into place at the end,
    so a failure never leaves a directory that looks like a whole model; an earlier model
    saved there is replaced. Merging modifies ``peft_model`` in place; call it once, at the
    end of training.
    """
    final = Path(directory)
    if final.exists() and any(final.iterdir()) and not (final / CONFIG_NAME).is_file():
        raise FileExistsError(f"{final} exists and holds no e5x model ({CONFIG_NAME}); not replacing it")
    directory = final.with_name(final.name + ".partial")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    peft_model.save_pretrained(directory / "adapter")
    merged = peft_model.merge_and_unload()
    merged.eval()
    merged.config.use_cache = False
    merged.save_pretrained(directory)
    tok = eos_appending_tokenizer(tokenizer)
    tok.padding_side = padding_side
    tok.model_max_length = max_length
    tok.save_pretrained(directory)
    EmbeddingSpec(
        pooling=pooling,
        max_length=max_length,
        padding_side=padding_side,  # type: ignore[arg-type]
        matryoshka_dims=tuple(matryoshka_dims),
    ).save(directory)
    write_sentence_transformers(directory, merged.config.hidden_size, max_length, prompts, pooling)
    shutil.rmtree(final, ignore_errors=True)
    directory.rename(final)
    return final
