"""The layering rule of STYLE.md §5, checked by parsing every module's imports with `ast`.

L0 config, audio, tokenizer, prompt (and errors, assets) <- L1 model <- L2 checkpoint,
generation <- L3 data, training, eval <- L4 cli, serve. Imports go downward (or sideways)
only, and the model layer imports nothing but torch, the standard library and lalm.config.
Packages not in the table (lalm.testing, lalm.synth, the package root) are not layered.

No module-level import cycles either: the graph of imports that run when a module is imported
(module level, ``if TYPE_CHECKING:`` blocks and function bodies excluded; importing ``a.b.c``
also runs the packages ``a`` and ``a.b``) has no strongly connected component of two or more
modules. The checker is proved on a small synthetic package with a cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lalm"

LAYERS = {
    "lalm.errors": 0, "lalm.files": 0, "lalm.assets": 0, "lalm.config": 0, "lalm.audio": 0,
    "lalm.audio_decode": 0, "lalm.kernels": 0,
    "lalm.tokenizer": 0, "lalm.prompt": 0, "lalm.longform": 0, "lalm.subtitles": 0,
    "lalm.model": 1,
    "lalm.checkpoint": 2, "lalm.generation": 2, "lalm.api": 2,
    "lalm.data": 3, "lalm.training": 3, "lalm.eval": 3, "lalm.synth": 3,
    "lalm.cli": 4, "lalm.serve": 4, "lalm.__main__": 4, "lalm.demo": 4, "lalm.testing": 4,
    "lalm.smollm_model": 4, "lalm.smollm_chat": 4, "lalm.shipped": 0,
}
MODEL_MAY_IMPORT = {"torch", "lalm.config", "lalm.model", "lalm.kernels"}


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def _runtime_import_nodes(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported: module level, including ``if`` /
    ``try`` / ``with`` blocks, but not ``if TYPE_CHECKING:`` blocks or function / class bodies."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, ast.If):
                test = node.test
                if not (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
                        or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, *(h.body for h in node.handlers), node.orelse,
                              node.finalbody):
                    visit(block)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(tree.body)
    return out


def _imports(path: Path, package_root: Path = PACKAGE, runtime_only: bool = False) -> list[str]:
    """Absolute names of every module imported by the file (relative imports resolved); with
    ``runtime_only``, only the imports that run when it is imported."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path, package_root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = package_root.name
    names = []
    nodes = _runtime_import_nodes(tree) if runtime_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names += [f"{base}.{alias.name}" if base == top else base for alias in node.names]
    return names


def import_graph(package_root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules its import runs (`_runtime_import_nodes`): the imported
    module (``from a.b import c`` names the module ``a.b.c`` when there is one) and the packages
    above it that are not above the importer (those already run)."""
    files = {_module_name(p, package_root): p for p in sorted(package_root.rglob("*.py"))}
    top = package_root.name
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for imported in _imports(path, package_root, runtime_only=True):
            if imported != top and not imported.startswith(top + "."):
                continue
            while imported not in files and "." in imported:  # a name, not a module
                imported = imported.rpartition(".")[0]
            parts = imported.split(".")
            for i in range(1, len(parts) + 1):
                module = ".".join(parts[:i])
                above_importer = name == module or name.startswith(module + ".")
                if module in files and not above_importer:
                    targets.add(module)
        graph[name] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of two or more modules (each an import cycle), by
    Tarjan's algorithm, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


MODULES = [p for p in sorted(PACKAGE.rglob("*.py")) if _module_name(p) != "lalm"]


def test_every_module_has_a_layer() -> None:
    unplaced = [_module_name(p) for p in MODULES if _layer(_module_name(p)) is None]
    assert not unplaced, f"add these modules to LAYERS: {unplaced}"


def upward_imports(path: Path, package_root: Path = PACKAGE) -> list[str]:
    """The lalm modules of a higher layer that the file imports (anywhere in it)."""
    own = _layer(_module_name(path, package_root))
    assert own is not None
    return [name for name in _imports(path, package_root)
            if name.startswith("lalm") and (_layer(name) or 0) > own]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_go_downward(path: Path) -> None:
    upward = upward_imports(path)
    assert not upward, f"{_module_name(path)} (L{_layer(_module_name(path))}) imports higher " \
                       f"layers: {upward}"


def test_model_layer_is_pure() -> None:
    stdlib = sys.stdlib_module_names
    offenders = {}
    for path in sorted((PACKAGE / "model").rglob("*.py")):
        bad = [
            name for name in _imports(path)
            if name.split(".")[0] not in stdlib and name != "__future__"
            and not any(name == ok or name.startswith(ok + ".") for ok in MODEL_MAY_IMPORT)
        ]
        if bad:
            offenders[_module_name(path)] = bad
    assert not offenders, f"lalm.model may import only torch and lalm.config: {offenders}"


def test_no_import_cycles() -> None:
    cycles = import_cycles(import_graph(PACKAGE))
    assert not cycles, f"module-level import cycles (move a shared part into its own module): " \
                       f"{cycles}"


def _write_package(root: Path, files: dict[str, str]) -> Path:
    """Write the files (paths under ``root``) and return the package folder they share."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / next(iter(files)).split("/")[0]


def test_the_cycle_check_finds_cycles(tmp_path: Path) -> None:
    pkg = _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import f\n",
        "pkg/b.py": "from pkg import c\n",  # a name of a package: the module pkg.c
        "pkg/c.py": "from .a import g\n",  # relative: back to a (a -> b -> c -> a)
        "pkg/d.py": "from pkg.a import g\n",  # into the cycle, not part of it
        "pkg/sub/__init__.py": "from pkg.sub.x import y\n",
        "pkg/sub/x.py": "import pkg.e\n",  # runs pkg.e ...
        "pkg/e.py": "import pkg.sub.x\n",  # ... which runs the package pkg.sub: a cycle
    })
    assert import_cycles(import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.c"],
                                                ["pkg.e", "pkg.sub", "pkg.sub.x"]]


def test_the_cycle_check_ignores_imports_that_do_not_run_on_import(tmp_path: Path) -> None:
    pkg = _write_package(tmp_path, {
        "pkg/__init__.py": "from pkg.a import f\n",  # a package importing its own modules
        "pkg/a.py": ("from typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    from pkg.b import T\n"
                     "def f():\n    from pkg.b import g\n"),
        "pkg/b.py": "from pkg.a import f\n",
    })
    graph = import_graph(pkg)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": set(), "pkg.b": {"pkg.a"}}
    assert import_cycles(graph) == []
    (pkg / "a.py").write_text("try:\n    from pkg.b import g\nexcept ImportError:\n    pass\n")
    assert import_cycles(import_graph(pkg)) == [["pkg.a", "pkg.b"]]


def test_the_layer_check_finds_upward_imports(tmp_path: Path) -> None:
    # lalm's own rule on a copy of two real modules' import lines: config (L0) importing the
    # pipeline (L2) is refused, the pipeline importing config is not
    pkg = _write_package(tmp_path, {
        "lalm/__init__.py": "",
        "lalm/config.py": "from lalm.generation.pipeline import Pipeline\n",
        "lalm/generation/__init__.py": "",
        "lalm/generation/pipeline.py": "from lalm.config import ModelConfig\n",
    })
    upward = {_module_name(p, pkg): upward_imports(p, pkg)
              for p in sorted(pkg.rglob("*.py")) if p.parent != pkg or p.stem != "__init__"}
    assert upward == {"lalm.config": ["lalm.generation.pipeline"], "lalm.generation": [],
                      "lalm.generation.pipeline": []}
