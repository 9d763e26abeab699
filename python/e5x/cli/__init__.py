"""The ``e5x`` command: one subcommand per stage, each a thin shell over the stage's function.

Every subcommand lives in its own module ``e5x.cli.<name>`` exposing
``configure(parser)`` and ``run(args) -> int``; modules are imported only when their
subcommand runs (or for ``--help``), so ``e5x --help`` stays fast.

Exit status, the same for every command:

    0    done
    1    a stage failed at run time (network, endpoint, fetch, a file that cannot be written)
    2    bad usage, configuration or input; the one-line message names the file, row or field
    3    incomplete: the run stopped early and the same command resumes it (synth budget
         spent, training diverged and checkpointed)
    130  interrupted (Ctrl-C); what was already produced is kept

Errors are one line on stderr, never a traceback (E5X_DEBUG=1 shows it).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# subcommand -> one-line help, naming the extra a command needs beyond `pip install e5x`;
# the module is e5x.cli.<subcommand>
SUBCOMMANDS: dict[str, str] = {
    "synth": "generate synthetic training data with an OpenAI-compatible LLM (needs e5x[synth])",
    "clean": "validate, deduplicate and convert LLM responses into training triples",
    "data": "list, fetch and prepare the public datasets e5x knows by name",
    "decontaminate": "drop training rows that appear in evaluation sets (case and spacing ignored)",
    "convert": "turn public datasets (BEIR folders, STS files, tables) into training triples",
    "mine": "add mined hard negatives to training triples that have none (needs e5x[mine])",
    "train": "train an embedding model with the E5-mistral recipe (needs e5x[train])",
    "eval": "evaluate a model on BEIR-format retrieval and STS data (needs e5x[eval])",
    "encode": "embed texts with a trained model (needs e5x[train])",
    "bench": "run a benchmark shipped in the package (kernels: needs e5x[train]) or in a checkout's benches/",
    "quickstart": "the whole recipe on embedded defaults: local LLM, synth, clean, train, eval "
    "(needs e5x[all,local-llm])",
    "demo": "a few-second demo of the Rust data core on a generated sample",
}


def _available() -> dict[str, str]:
    """Subcommands whose module exists in this installation."""
    out = {}
    for name, help_text in SUBCOMMANDS.items():
        if importlib.util.find_spec(f"e5x.cli.{name}") is not None:
            out[name] = help_text
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from e5x import __version__
    from e5x._extras import MissingExtra, missing_module_message

    parser = argparse.ArgumentParser(
        prog="e5x",
        description=__doc__.splitlines()[0],
        epilog=__doc__[__doc__.index("Exit status") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"e5x {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in _available().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported (its options need it).
        if name == chosen:
            importlib.import_module(f"e5x.cli.{name}").configure(p)
    args, extra = parser.parse_known_args(argv)
    words = getattr(args, "config_words", None)  # a stage's [CONFIG.toml] [key=value ...]
    if extra and isinstance(words, list) and not any(e.startswith("-") for e in extra):
        words += extra  # argparse collects positional words only up to the first flag
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    module = importlib.import_module(f"e5x.cli.{args.command}")
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"e5x {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `e5x data list | head`: the reader has what it wanted
        try:  # stdout to /dev/null, so that the flush at exit does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file descriptor (captured)
            pass
        return EXIT_OK
    except (OSError, ValueError, KeyError, ImportError) as exc:
        # What a command did not turn into its own message: one line, the usual exit code.
        if os.environ.get("E5X_DEBUG"):
            raise
        usage = isinstance(exc, (ValueError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError))
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        if isinstance(exc, ImportError) and not isinstance(exc, MissingExtra):
            text = missing_module_message(exc, prefer=args.command) or text  # a heavy import not checked first
        print(f"e5x {args.command}: error: {' '.join(text.split()) or type(exc).__name__}", file=sys.stderr)
        return EXIT_USAGE if usage else EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, with how to see more
        if os.environ.get("E5X_DEBUG"):
            raise
        print(f"e5x {args.command}: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
              "(E5X_DEBUG=1 shows the traceback; please report it)", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
