"""``e5x bench NAME [ARGS...]``: run a benchmark shipped in the package (``e5x.bench.NAME``)
or one of a source checkout's ``benches/bench_NAME.py`` (or ``benches/NAME.py``).

The package ships the benchmarks a user of the wheel needs (``e5x bench --list`` shows
them); the others (synth, train, quality, ablations) live in the source repository. Their
folder is ``--benches-dir``, else ``$E5X_BENCHES_DIR``, else ``./benches``, else the
checkout an editable install points at. A name the package ships runs from the package.
ARGS go to the benchmark unchanged, so ``e5x bench kernels --help`` prints the
benchmark's own options.

Examples::

    e5x bench --list
    e5x bench kernels --help
    e5x bench kernels --device cpu --sizes 16 --hidden 64 --budget 0.1
    e5x bench clean --rows 100000
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import pkgutil
import subprocess
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("name", nargs="?", metavar="NAME", help="benchmark to run (see --list)")
    parser.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="ARGS",
        help="passed to the benchmark unchanged (e.g. --help for its own options)",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--benches-dir",
        type=Path,
        metavar="DIR",
        help="folder holding the benchmarks (default: $E5X_BENCHES_DIR, ./benches, the checkout)",
    )


def _has_benches(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("bench_*.py"))


def _checkout_benches() -> Path | None:
    """benches/ of the checkout an editable install runs from (python/e5x/cli/bench.py)."""
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").is_file() and _has_benches(root / "benches"):
        return root / "benches"
    return None


def find_benches_dir(explicit: Path | None = None) -> tuple[Path | None, list[str]]:
    """The benches folder, or None plus the places looked at (for the error message)."""
    # An explicit choice is final: a typo must not silently fall back to another folder.
    if explicit is not None:
        return (explicit if explicit.is_dir() else None), [f"--benches-dir {explicit}"]
    env = os.environ.get("E5X_BENCHES_DIR")
    if env:
        return (Path(env) if Path(env).is_dir() else None), [f"$E5X_BENCHES_DIR={env}"]
    local = Path.cwd() / "benches"
    if _has_benches(local):
        return local, []
    checkout = _checkout_benches()
    if checkout is not None:
        return checkout, []
    return None, [f"{local} (./benches)", f"{Path(__file__).resolve().parents[3]} (above the installed package)"]


def available(folder: Path) -> dict[str, Path]:
    """name -> script: bench_NAME.py as NAME, any other public NAME.py (e.g. quality.py) as NAME."""
    out: dict[str, Path] = {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        name = path.stem.removeprefix("bench_")
        out.setdefault(name, path)
    return dict(sorted(out.items()))


def summary(path: Path) -> str:
    """First line of the script's module docstring, read without importing it."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    except (SyntaxError, UnicodeDecodeError, OSError) as e:
        return f"(docstring unreadable: {type(e).__name__})"
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


def packaged() -> dict[str, Path]:
    """name -> source file of each benchmark module in e5x.bench (found without importing it)."""
    import e5x.bench

    out = {}
    for info in pkgutil.iter_modules(e5x.bench.__path__):
        spec = None if info.name.startswith("_") else importlib.util.find_spec(f"e5x.bench.{info.name}")
        if spec is not None and spec.origin:
            out[info.name] = Path(spec.origin)
    return dict(sorted(out.items()))


def run(args: argparse.Namespace) -> int:
    shipped = packaged()
    explicit = args.benches_dir is not None or bool(os.environ.get("E5X_BENCHES_DIR"))
    folder, looked = find_benches_dir(args.benches_dir)
    if folder is None and explicit:  # a wrong explicit choice is an error, not a silent fallback
        print(
            f"e5x bench: no benchmarks folder at {looked[0]}; clone the e5x source repository "
            "for the benchmarks that are not shipped in the package",
            file=sys.stderr,
        )
        return 2
    # A checkout's benches/bench_NAME.py for a shipped NAME is the entry point to the same code.
    scripts = {n: p for n, p in available(folder).items() if n not in shipped} if folder else {}
    if args.list or args.name is None:
        where = f"the e5x package and {folder}" if folder else "the e5x package"
        print(f"benchmarks in {where} (run: e5x bench NAME [ARGS...]; NAME --help for options)")
        rows = {**shipped, **scripts}
        width = max((len(n) for n in rows), default=0)
        for name, path in sorted(rows.items()):
            print(f"  {name:<{width}}  {summary(path)}")
        if folder is None:
            print(
                "the other benchmarks (synth, train, quality, ...) need a clone of the e5x source repository: "
                "run them from its root or pass --benches-dir DIR"
            )
        return 0
    if args.name in shipped:
        sys.stdout.flush()
        return int(importlib.import_module(f"e5x.bench.{args.name}").main(args.args) or 0)
    script = scripts.get(args.name)
    if script is None:
        names = ", ".join(sorted({*shipped, *scripts}))
        others = (
            ""
            if folder
            else (
                " (the others are not shipped in the package: clone the e5x source repository "
                f"and run from its root, or pass --benches-dir DIR; looked at {'; '.join(looked)})"
            )
        )
        print(f"e5x bench: unknown benchmark {args.name!r}; available: {names}{others}", file=sys.stderr)
        return 2
    sys.stdout.flush()  # keep our output ahead of the child's
    proc = subprocess.Popen([sys.executable, str(script), *args.args])
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        # The terminal's Ctrl-C reached the benchmark too; let it clean up (servers, files).
        rc = proc.wait()
    return rc if rc >= 0 else 128 - rc  # killed by signal N -> 128+N, like a shell
