"""The layout's rules, checked on the source: imports run one way down the flow, modules and
functions stay small, and the library draws nothing (rich only in the application layer)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Installed names of the source folders (pyproject's package-dir).
SOURCES = {
    "ceds_deploy": ROOT / "ceds_deploy",
    "ceds_deploy.training": ROOT / "training",
    "ceds_deploy.export": ROOT / "export",
}

# Lower layers never import higher ones; a layer may import itself and anything below.
LAYERS = [
    ("core", ["errors", "spec", "volume", "progress", "memory", "machine", "__init__"]),
    ("io and network", ["io", "network"]),
    ("grids and artifacts", ["transforms", "checkpoint", "artifacts"]),
    ("phantoms and qa", ["synthetic", "qa"]),
    ("backends", ["backends"]),
    ("inference", ["inference"]),
    ("export", ["export"]),
    ("models", ["models"]),
    ("training", ["training"]),
    ("application", ["cli", "demo"]),
]
LAYER_OF = {part: index for index, (_, parts) in enumerate(LAYERS) for part in parts}
# The torchrun entry point `python -m ceds_deploy.training` is the CLI's train command.
ALLOWED = {("ceds_deploy.training.__main__", "ceds_deploy.cli.app")}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def modules() -> list[tuple[str, Path]]:
    found = []
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder).with_suffix("")
            parts = (
                [p for p in relative.parts if p != "__init__"] if relative.name == "__init__" else list(relative.parts)
            )
            found.append((".".join([package, *parts]), path))
    return found


def top_part(module: str) -> str:
    """The first part after ceds_deploy: its layer's key."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(path: Path, module: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("ceds_deploy"))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.startswith("ceds_deploy")
        ):
            names.add(node.module)
    return names


def test_every_source_folder_has_a_layer():
    unknown = sorted({top_part(m) for m, _ in modules()} - set(LAYER_OF))
    assert not unknown, f"modules outside every layer of the architecture test: {unknown}"


def test_imports_run_one_way_down_the_flow():
    upward = []
    for module, path in modules():
        here = LAYER_OF[top_part(module)]
        for target in imported_modules(path, module):
            there = LAYER_OF.get(top_part(target))
            if there is not None and there > here and (module, target) not in ALLOWED:
                upward.append(f"{module} ({LAYERS[here][0]}) imports {target} ({LAYERS[there][0]})")
    assert not upward, "imports against the flow:\n" + "\n".join(upward)


def test_the_library_draws_nothing():
    """rich belongs to the application layer; the library reports through logging and
    ProgressEvent callbacks."""
    drawing = []
    for module, path in modules():
        if LAYER_OF[top_part(module)] == len(LAYERS) - 1:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            drawing += [f"{module} imports {n}" for n in names if n == "rich" or n.startswith("rich.")]
    assert not drawing, "\n".join(drawing)


def test_modules_are_small():
    large = [
        f"{m}: {len(p.read_text(encoding='utf-8').splitlines())} lines"
        for m, p in modules()
        if len(p.read_text(encoding="utf-8").splitlines()) > MAX_MODULE_LINES
    ]
    assert not large, "\n".join(large)


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body after its docstring: a Typer command's signature (one typed
    option a line or two) is declaration, not logic, and is not counted."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 1 if body and node.end_lineno else 0


def test_long_functions_say_why():
    """A function whose body runs over MAX_FUNCTION_LINES lines carries its reason in its docstring
    ("Long: ...")."""
    unexplained = []
    for module, path in modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = body_lines(node)
                if length > MAX_FUNCTION_LINES and "Long:" not in (ast.get_docstring(node) or ""):
                    unexplained.append(f"{module}.{node.name}: {length} lines")
    assert not unexplained, "\n".join(unexplained)


@pytest.mark.parametrize("planted", ["from ceds_deploy.cli.segment import run_segment", "import rich.console"])
def test_the_rules_catch_a_planted_violation(tmp_path, monkeypatch, planted):
    """The import rules can fail: a core module importing the CLI or rich is caught."""
    fake = tmp_path / "ceds_deploy"
    fake.mkdir()
    (fake / "spec.py").write_text(planted + "\n")
    monkeypatch.setitem(SOURCES, "ceds_deploy", fake)
    monkeypatch.setitem(SOURCES, "ceds_deploy.training", tmp_path / "none")
    monkeypatch.setitem(SOURCES, "ceds_deploy.export", tmp_path / "none")
    check = (
        test_the_library_draws_nothing if planted.startswith("import rich") else test_imports_run_one_way_down_the_flow
    )
    with pytest.raises(AssertionError):
        check()
