"""Upper bounds on a request's prompt tokens, for the token and cost caps.

Two modes, chosen per model:

- **tokenizer**: tiktoken is installed and knows the model (``tiktoken.encoding_name_for_model``,
  the OpenAI models) and its BPE file can be had: the content tokens are counted exactly, as
  the OpenAI API counts them (each message's content encoded alone, special-token text as
  plain text), plus the chat-template allowance below. tiktoken keeps the BPE file in its
  cache (``TIKTOKEN_CACHE_DIR``, else its default cache folder); on a cache miss it downloads
  it, unless ``E5X_OFFLINE`` or ``HF_HUB_OFFLINE`` is set, where no download is tried. A
  download that fails or takes longer than ``LOAD_TIMEOUT_S`` leaves the byte bound.
- **bytes**: otherwise, the UTF-8 bytes of the contents plus the same allowance: an upper
  bound for every tokenizer that emits at least one byte of text per token (byte-level BPE,
  SentencePiece with byte fallback), whatever the model.

The tokenizer is loaded once per model and process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tiktoken import Encoding

# Tokens a chat template may add around the messages (role markers, a default system
# prompt some templates insert). OpenAI's own format adds about 4 per message (the role
# included) and 3 per request.
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_PER_REQUEST = 64
# Longest wait for tiktoken to load (download) a BPE file before the byte bound is used.
LOAD_TIMEOUT_S = 10.0
OFFLINE_VARS = ("E5X_OFFLINE", "HF_HUB_OFFLINE")

Counter = Callable[[str], int]


def utf8_len(text: str | None) -> int:
    # Byte-level BPE emits at least one byte per token, so bytes bound tokens from above.
    return len(text.encode("utf-8", "surrogatepass")) if text else 0


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARS)


class _NoDownload(OSError):
    """Offline: the BPE file is not in tiktoken's cache and may not be downloaded."""


# One swap of tiktoken's read_file at a time, held by the loading thread itself so that a
# load outliving its caller's wait still restores the function before the next swap.
_swap_lock = threading.Lock()


def _load_encoding(name: str, offline: bool) -> Encoding:
    import tiktoken
    import tiktoken.load

    if not offline:
        return tiktoken.get_encoding(name)
    # tiktoken reads its cache first and calls read_file only on a miss: refusing URLs
    # there keeps a cached (or local) file usable and never touches the network.
    with _swap_lock:
        read_file = tiktoken.load.read_file

        def local_only(blobpath: str) -> bytes:
            if "://" in blobpath:
                raise _NoDownload(f"{blobpath} is not in tiktoken's cache")
            return read_file(blobpath)

        tiktoken.load.read_file = local_only
        try:
            return tiktoken.get_encoding(name)
        finally:
            tiktoken.load.read_file = read_file


@cache
def tokenizer(model: str) -> tuple[str, Counter | None]:
    """(mode, counter) for ``model``: ("tiktoken ENCODING", tokens of a text) where the
    model's tokenizer is available, else ("bytes", None). Never raises."""
    try:
        import tiktoken
    except ImportError:
        return "bytes", None
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return "bytes", None
    got: list[Encoding] = []
    offline = _offline()

    def load() -> None:
        try:
            got.append(_load_encoding(name, offline))
        except Exception:  # a failed download, a corrupt cache file: the byte bound holds
            pass

    # A thread, so that a download that hangs costs LOAD_TIMEOUT_S at most.
    t = threading.Thread(target=load, name=f"e5x-tiktoken-{name}", daemon=True)
    t.start()
    t.join(LOAD_TIMEOUT_S)
    if not got:
        return "bytes", None
    enc = got[0]
    return f"tiktoken {name}", lambda text: len(enc.encode(text, disallowed_special=()))


def prompt_tokens_bound(messages: Sequence[Mapping[str, Any]], model: str | None = None) -> int:
    """An upper bound on the prompt tokens of ``messages`` sent to ``model``: its content
    tokens where :func:`tokenizer` has the model's tokenizer, else its UTF-8 bytes; plus a
    chat template adding at most the constants above."""
    count = tokenizer(model)[1] if model else None
    size: Counter = count or utf8_len
    return (
        sum(size(m.get("content") or "") + TEMPLATE_TOKENS_PER_MESSAGE for m in messages) + TEMPLATE_TOKENS_PER_REQUEST
    )
