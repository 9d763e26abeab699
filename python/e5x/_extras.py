"""The optional extras: which importable modules each one brings, and the one-line error a
stage raises when the extra it needs is not installed.

``pip install e5x`` is the data core (tasks, clean, data, convert, decontaminate); the
stages that need heavy packages check for them here before importing them, so a missing
extra reads ``pip install 'e5x[train]'`` instead of a bare ModuleNotFoundError. The pip
requirements of each extra are in pyproject.toml; this table lists what must import.
"""

from __future__ import annotations

import importlib.util

# extra -> modules that must be importable for what the extra enables (its optional
# speed-ups, such as aiohttp for synth, are not checked)
EXTRAS: dict[str, tuple[str, ...]] = {
    "synth": ("openai",),
    "train": ("torch", "transformers", "peft"),
    "eval": ("torch", "transformers", "peft", "scipy", "pytrec_eval"),
    "mine": ("sentence_transformers", "datasets"),
    "local-llm": ("llama_cpp", "gguf"),
    "gpu": ("liger_kernel",),
    "bench": ("psutil", "orjson", "jsonschema_rs", "xxhash"),
}
EXTRAS["all"] = tuple(dict.fromkeys(EXTRAS["synth"] + EXTRAS["train"] + EXTRAS["eval"]))


class MissingExtra(ImportError):
    """An optional extra a stage needs is not installed; the message says what to install."""


def install_hint(*extras: str) -> str:
    return f"pip install 'e5x[{','.join(extras)}]'"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed installation
        return False


def require(needed_by: str, *extras: str) -> None:
    """Raise MissingExtra naming the absent modules and the pip command, unless every module
    of ``extras`` can be imported. ``needed_by`` is what needs them, e.g. "training"."""
    missing = [m for extra in extras for m in EXTRAS[extra] if not _importable(m)]
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        raise MissingExtra(f"{needed_by} needs {names} (not installed): {install_hint(*extras)}", name=missing[0])


def missing_module_message(exc: ImportError, prefer: str | None = None) -> str | None:
    """The message "torch is not installed: pip install 'e5x[train]'" for an ImportError of a module that
    an extra brings, else None; ``prefer`` (e.g. the running command) wins when it has it."""
    module = (exc.name or "").split(".")[0]
    extras = [prefer] if prefer in EXTRAS else []
    for extra in [*extras, *EXTRAS]:
        if module in EXTRAS[extra]:
            return f"{module} is not installed: {install_hint(extra)}"
    return None
