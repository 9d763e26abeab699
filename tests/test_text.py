"""EOS handling for Mistral/Llama-style tokenizers (built in-test, no downloads)."""

from __future__ import annotations

import pytest

from _tiny import llama_style_tokenizer, tiny_tokenizer
from e5x.model.text import encode, format_query, tokenize


@pytest.mark.parametrize("make", [llama_style_tokenizer, tiny_tokenizer])
def test_eos_appended_once_and_survives_truncation(make) -> None:
    tok = make()
    eos = tok.eos_token_id
    texts = ["the cat sat on the mat", "hello", "the dog " * 50]
    for ids in encode(tok, texts, max_length=12):
        assert ids[-1] == eos
        assert ids.count(eos) == 1
        assert ids[0] == tok.bos_token_id  # the tokenizer's own BOS is kept
        assert len(ids) <= 12
    long_ids = encode(tok, texts, max_length=12)[2]
    assert len(long_ids) == 12  # truncated to the limit, EOS still last


@pytest.mark.parametrize("add_eos_token", [False, True])
def test_one_eos_whatever_add_eos_token_says(add_eos_token: bool) -> None:
    # The trap e5x guards against: whether the tokenizer appends EOS varies by version and
    # flag; e5x's ids are the same either way, with exactly one EOS at the end.
    tok = llama_style_tokenizer(add_eos_token)
    ours = encode(tok, ["the cat"])[0]
    assert ours == [
        tok.bos_token_id,
        tok.convert_tokens_to_ids("the"),
        tok.convert_tokens_to_ids("cat"),
        tok.eos_token_id,
    ]


def test_padding_sides_keep_eos_at_last_real_position() -> None:
    tok = tiny_tokenizer()
    texts = [format_query("cat", "Find it"), "a much longer document text"]
    for side in ("left", "right"):
        batch = tokenize(tok, texts, 64, side)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        for row in range(len(texts)):
            last = int(mask[row].nonzero().max())
            assert int(ids[row, last]) == tok.eos_token_id


def test_exported_tokenizer_appends_eos_itself(tmp_path) -> None:
    from transformers import AutoTokenizer

    from e5x.training.export import eos_appending_tokenizer

    for make in (llama_style_tokenizer, tiny_tokenizer):
        tok = make()
        eos_appending_tokenizer(tok).save_pretrained(tmp_path / make.__name__)
        again = AutoTokenizer.from_pretrained(tmp_path / make.__name__)
        ids = again("the cat sat")["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        # e5x's own encode gives the same ids with the re-saved tokenizer (no double EOS)
        assert encode(again, ["the cat sat"])[0] == encode(tok, ["the cat sat"])[0]
        # truncation by the tokenizer keeps the EOS, like e5x's
        cut = again("the cat sat on the mat the dog", truncation=True, max_length=5)["input_ids"]
        assert cut == encode(tok, ["the cat sat on the mat the dog"], 5)[0]
