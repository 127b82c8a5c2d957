"""lalm: large audio-language models of the Qwen-Audio kind."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Loaded on first use, so that `import lalm` (and the CLI's start) stays light.
_LAZY = {
    "load_model": "lalm.api",
    "transcribe": "lalm.api",
    "Pipeline": "lalm.generation",
    "GenerationOptions": "lalm.generation",
    "GenerationResult": "lalm.generation",
}
__all__ = ["GenerationOptions", "GenerationResult", "Pipeline", "__version__", "load_model",
           "transcribe"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lalm' has no attribute {name!r}")
