"""``e5x bench NAME [ARGS...]``: run ``benches/bench_NAME.py`` (or ``benches/NAME.py``).

The benchmarks live in the source repository, not in the wheel. The folder is
``--benches-dir``, else ``$E5X_BENCHES_DIR``, else ``./benches``, else the checkout an
editable install points at. ARGS go to the benchmark unchanged, so
``e5x bench kernels --help`` prints the benchmark's own options.

Examples::

    e5x bench --list
    e5x bench clean --help
    e5x bench clean --rows 100000
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("name", nargs="?", metavar="NAME", help="benchmark to run (see --list)")
    parser.add_argument(
        "args", nargs=argparse.REMAINDER, metavar="ARGS",
        help="passed to the benchmark unchanged (e.g. --help for its own options)",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--benches-dir", type=Path, metavar="DIR",
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


def run(args: argparse.Namespace) -> int:
    folder, looked = find_benches_dir(args.benches_dir)
    if folder is None:
        print(
            "e5x bench: no benches/ folder found; looked at:\n  " + "\n  ".join(looked)
            + "\nThe benchmarks are not shipped in the wheel: clone the e5x source repository and "
            "run from its root, or pass --benches-dir DIR / set E5X_BENCHES_DIR.",
            file=sys.stderr,
        )
        return 2
    benches = available(folder)
    if args.list or args.name is None:
        print(f"benchmarks in {folder} (run: e5x bench NAME [ARGS...]; NAME --help for options)")
        width = max((len(n) for n in benches), default=0)
        for name, path in benches.items():
            print(f"  {name:<{width}}  {summary(path)}")
        if not benches:
            print("  (none)")
        return 0
    script = benches.get(args.name)
    if script is None:
        names = ", ".join(benches) or "(none)"
        print(f"e5x bench: unknown benchmark {args.name!r} in {folder}; available: {names}", file=sys.stderr)
        return 2
    sys.stdout.flush()  # keep our output ahead of the child's
    proc = subprocess.Popen([sys.executable, str(script), *args.args])
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        # The terminal's Ctrl-C reached the benchmark too; let it clean up (servers, files).
        rc = proc.wait()
    return rc if rc >= 0 else 128 - rc  # killed by signal N -> 128+N, like a shell
