"""Turn a GGUF file (llama.cpp's format) into a normal Hugging Face checkpoint, once.

transformers reads GGUF files (dequantising every tensor to float) when the ``gguf``
package is installed, but that takes a minute and the loaded model refuses
``save_pretrained`` because it still carries a "gguf quantization" marker. e5x converts
once, drops the marker (the weights are plain float tensors by then) and caches the
result under the user cache dir, keyed by the file's content hash, so every later
``from_pretrained(path)`` is an ordinary, fast load: training, LoRA and saving then work
as for any checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["cache_dir", "gguf_to_hf", "file_digest"]

# Written last into a converted directory: its presence means the conversion finished.
_DONE = ".e5x-gguf-complete"


def cache_dir() -> Path:
    """Where converted checkpoints live: $E5X_CACHE_DIR, else $XDG_CACHE_HOME/e5x, else ~/.cache/e5x."""
    env = os.environ.get("E5X_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "e5x"


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex); a changed file gets a fresh conversion."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (its first bytes are {magic!r}, expected b'GGUF')")


def gguf_to_hf(
    gguf_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Convert ``gguf_path`` to a HF model + tokenizer directory and return that directory.

    Without ``out_dir`` the result is cached at ``cache_dir()/models/<stem>-<sha256[:16]>``
    and reused on later calls. The model is saved in float32 (the dequantised values).
    """
    gguf_path = Path(gguf_path).expanduser().resolve()
    _check_gguf(gguf_path)
    if out_dir is None:
        out = cache_dir() / "models" / f"{gguf_path.stem}-{file_digest(gguf_path)[:16]}"
    else:
        out = Path(out_dir).expanduser()
    if (out / _DONE).is_file() and not overwrite:
        return out

    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as exc:
        raise ImportError(
            "reading a GGUF file needs the 'gguf' package: pip install 'e5x[local-llm]' (or pip install gguf)"
        ) from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # The tensors are already dequantised floats; the leftover quantizer only blocks saving.
    model.hf_quantizer = None  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = str(gguf_path)

    # Write beside the target and rename, so an interrupted conversion never looks finished.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE).write_text(f"{gguf_path}\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
