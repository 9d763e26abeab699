"""Loading the decoder to train: a Hugging Face base model (no LM head) plus LoRA.

Also builds tiny randomly initialised Mistral/Llama models and a byte-level tokenizer
from a config, so tests and the tiny CPU recipe never download anything.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# All linear layers of a Mistral/Llama block, as in the E5-mistral recipe.
LORA_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of a randomly initialised decoder built in-process (no download)."""

    arch: Literal["mistral", "llama"] = "mistral"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    seed: int = 0


def build_byte_tokenizer() -> PreTrainedTokenizerBase:
    """A Llama-style tokenizer over raw bytes: ``<unk>``=0, ``<s>``=1, ``</s>``=2, 256 bytes.

    Like Mistral's, it prepends BOS and does not append EOS by itself; e5x appends EOS.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    alphabet = ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_tiny_model(cfg: TinyModelConfig, vocab_size: int) -> PreTrainedModel:
    """A randomly initialised decoder body (AutoModel class, no LM head)."""
    import torch
    from transformers import LlamaConfig, LlamaModel, MistralConfig, MistralModel

    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=1,
        eos_token_id=2,
    )
    config: Any  # of the class that goes with cls
    cls: type[PreTrainedModel]
    if cfg.arch == "mistral":
        config, cls = MistralConfig(**kwargs), MistralModel
    elif cfg.arch == "llama":
        config, cls = LlamaConfig(**kwargs), LlamaModel
    else:
        raise ValueError(f"tiny model arch must be 'mistral' or 'llama', got {cfg.arch!r}")
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = cls(config)
    return model


def load_base_model(name_or_path: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A pretrained decoder body via ``AutoModel`` (the LM head is never loaded)."""
    from transformers import AutoModel

    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return AutoModel.from_pretrained(name_or_path, **kwargs)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


def apply_lora(
    model: PreTrainedModel,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.1,
    target_modules: Sequence[str] = LORA_TARGETS,
    gradient_checkpointing: bool = True,
    fuse_dropout: bool = True,
) -> Any:
    """Wrap ``model`` in a peft LoRA adapter; only the adapter weights train.

    ``fuse_dropout`` runs each LoRA input dropout and ``lora_A`` as one op that saves a
    bool mask instead of two float copies of the input (``e5x.model.fast.fuse_lora_dropout``;
    bit-identical results, CPU only).
    """
    from peft import LoraConfig, get_peft_model

    if gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen embeddings (no input grads needed)
        # and replays dropout with the saved RNG state.
        ckpt_kwargs = {"use_reentrant": False}
        # transformers >= 5.x renamed the method; the old name warns.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
    )
    with warnings.catch_warnings():
        # peft still calls transformers' deprecated `is_gradient_checkpointing` (a warning
        # the user can do nothing about).
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    if fuse_dropout:
        from e5x.model.fast import fuse_lora_dropout

        fuse_lora_dropout(peft_model)  # same numbers, far fewer saved activations on CPU
    return peft_model


def trainable_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
