"""Tiny models, tokenizers and toy training data for CPU tests (no downloads).

Reusable by any test: ``from _tiny import tiny_tokenizer, tiny_model, toy_triples``
(tests/ is on sys.path under pytest's default rootdir-relative imports).
Run as a script to regenerate the toy data the tiny recipe trains on:
``python tests/_tiny.py configs/data/tiny-triples.parquet``.
"""

from __future__ import annotations

import random
import string
import sys
from pathlib import Path
from typing import Any

import polars as pl

from e5x.model.loading import TinyModelConfig, build_byte_tokenizer, build_tiny_model

TINY = TinyModelConfig(
    arch="mistral",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def tiny_tokenizer() -> Any:
    """Byte-level Llama-style tokenizer: prepends <s>, does not append </s> by itself."""
    return build_byte_tokenizer()


def tiny_model(cfg: TinyModelConfig = TINY) -> Any:
    return build_tiny_model(cfg, len(tiny_tokenizer()))


def llama_style_tokenizer(add_eos_token: bool = False) -> Any:
    """A WordLevel model inside LlamaTokenizerFast, like Mistral's (BOS, EOS only if asked)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [w for w in "the a cat dog sat on mat query instruct : hello world".split()]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return LlamaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=add_eos_token,
    )


def _code(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(4))


def toy_triples(n: int = 256, seed: int = 0, negatives: bool = True, source: str = "toy") -> pl.DataFrame:
    """A learnable retrieval task: find the sentence that contains the query's code word."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        code, other = _code(rng), _code(rng)
        rows.append(
            {
                "instruction": "Find the code",
                "query": code,
                "positive": f"the code {code} is here",
                "negative": f"the code {other} is here" if negatives else None,
                "task_type": "short_short",
                "language": "English",
                "model": "toy",
                "source": source,
            }
        )
    return pl.DataFrame(rows, schema={c: pl.Utf8 for c in rows[0]})


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    toy_triples(512, seed=0).write_parquet(out)
    print(f"wrote {out}")
