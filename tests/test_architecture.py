"""The package's import graph follows the pipeline: a stage never imports a later stage, and
the shared foundations import no stage (AST walk over python/e5x, no imports executed)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import e5x

PACKAGE = Path(e5x.__file__).parent
STAGES = ["tasks", "synth", "cleaning", "data", "training", "eval"]  # the order data flows in
# core.py wraps the native extension for every stage and schemas.py holds the built-in
# answer schemas it validates against by default: both take plain data, so no stage.
FOUNDATIONS = {"core", "schemas", "formats", "model", "kernels"}


def imports() -> dict[tuple[str, str], set[str]]:
    """(importing top-level module, imported top-level module) -> files, within e5x."""
    edges: dict[tuple[str, str], set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        src = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "e5x" and len(parts) > 1 and parts[1] != src:
                    edges.setdefault((src, parts[1]), set()).add(str(rel))
    return edges


def test_stages_flow_one_way_over_foundations() -> None:
    edges = imports()
    assert edges, "no imports found: the walk is broken"
    wrong = {}
    for (src, dst), files in edges.items():
        later = src in STAGES and dst in STAGES and STAGES.index(dst) > STAGES.index(src)
        foundation_on_stage = src in FOUNDATIONS and dst in STAGES
        if later or foundation_on_stage:
            wrong[f"{src} -> {dst}"] = sorted(files)
    assert not wrong, f"imports against the pipeline's direction: {wrong}"


def test_the_walk_sees_a_planted_violation(tmp_path, monkeypatch) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.py").write_text("from e5x.eval import evaluate\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path)
    assert imports() == {("data", "eval"): {"data/x.py"}}


def test_core_imports_no_stage(tmp_path, monkeypatch) -> None:
    """Even a lazy import inside a function counts (the walk reads every import node)."""
    assert not {dst for src, dst in imports() if src == "core"} & set(STAGES)
    (tmp_path / "core.py").write_text("def gate():\n    from e5x.cleaning import quality\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path)
    with pytest.raises(AssertionError, match="core -> cleaning"):
        test_stages_flow_one_way_over_foundations()


# e5x.model's packed forward, lowest layer first: each module imports only those before it.
PACKED_FORWARD = ["packing", "unwrap", "attention", "decoder", "embed"]


def model_imports(path: Path) -> set[str]:
    """The e5x.model submodules ``path`` imports (``from e5x.model.x import ...`` or
    ``from e5x.model import x``), at any depth (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[:2] == ["e5x", "model"]:
                found.update([parts[2]] if len(parts) > 2 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("e5x.model."))
    return found


def test_packed_forward_modules_import_downwards() -> None:
    seen = {name: model_imports(PACKAGE / "model" / f"{name}.py") for name in PACKED_FORWARD}
    assert {"attention", "packing"} <= seen["decoder"] | seen["embed"], "the walk is broken"
    wrong = {
        name: sorted(imported & set(PACKED_FORWARD[i:]))
        for i, (name, imported) in enumerate(seen.items())
        if imported & set(PACKED_FORWARD[i:])
    }
    assert not wrong, f"e5x.model imports against the packed forward's layering: {wrong}"


def test_model_walk_sees_lazy_and_module_imports(tmp_path) -> None:
    planted = tmp_path / "attention.py"
    planted.write_text("import e5x.model.packing\n\ndef f():\n    from e5x.model import embed\n")
    assert model_imports(planted) == {"packing", "embed"}
