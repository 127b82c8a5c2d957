"""Checkpoint formats: lalm's own (safetensors + config) and the foreign ones mapped onto it."""

from lalm.checkpoint.load import load_config, load_model
from lalm.checkpoint.save import save_model

__all__ = ["load_config", "load_model", "save_model"]
