"""The layering rule of STYLE.md §5, checked by parsing every module's imports with `ast`.

L0 config, audio, tokenizer, prompt (and errors, assets) <- L1 model <- L2 checkpoint,
generation <- L3 data, training, eval <- L4 cli, serve. Imports go downward (or sideways)
only, and the model layer imports nothing but torch, the standard library and lalm.config.
Packages not in the table (lalm.testing, lalm.synth, the package root) are not layered.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lalm"

LAYERS = {
    "lalm.errors": 0, "lalm.assets": 0, "lalm.config": 0, "lalm.audio": 0,
    "lalm.audio_decode": 0,
    "lalm.tokenizer": 0, "lalm.prompt": 0, "lalm.longform": 0, "lalm.subtitles": 0,
    "lalm.model": 1,
    "lalm.checkpoint": 2, "lalm.generation": 2, "lalm.api": 2,
    "lalm.data": 3, "lalm.training": 3, "lalm.eval": 3, "lalm.synth": 3,
    "lalm.cli": 4, "lalm.serve": 4, "lalm.__main__": 4, "lalm.demo": 4, "lalm.testing": 4,
    "lalm.smollm_model": 4, "lalm.shipped": 0,
}
MODEL_MAY_IMPORT = {"torch", "lalm.config", "lalm.model"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def _imports(path: Path) -> list[str]:
    """Absolute names of every module imported by the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names += [f"{base}.{alias.name}" if base == "lalm" else base for alias in node.names]
    return names


MODULES = [p for p in sorted(PACKAGE.rglob("*.py")) if _module_name(p) != "lalm"]


def test_every_module_has_a_layer() -> None:
    unplaced = [_module_name(p) for p in MODULES if _layer(_module_name(p)) is None]
    assert not unplaced, f"add these modules to LAYERS: {unplaced}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_go_downward(path: Path) -> None:
    own = _layer(_module_name(path))
    assert own is not None
    upward = [
        name for name in _imports(path)
        if name.startswith("lalm") and (_layer(name) or 0) > own
    ]
    assert not upward, f"{_module_name(path)} (L{own}) imports higher layers: {upward}"


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
