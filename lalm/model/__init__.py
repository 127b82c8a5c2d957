"""The pure model layer (torch + lalm.config only): encoder, projector, decoder, KV cache."""

from lalm.model.decoder import TextDecoder, positions_from_mask
from lalm.model.encoder import AudioEncoder, conv_output_lengths
from lalm.model.kv_cache import KVCache
from lalm.model.lalm import IGNORE_INDEX, AudioLanguageModel, ModelOutput
from lalm.model.projector import Projector, audio_row_counts

__all__ = [
    "IGNORE_INDEX",
    "AudioEncoder",
    "AudioLanguageModel",
    "KVCache",
    "ModelOutput",
    "Projector",
    "TextDecoder",
    "audio_row_counts",
    "conv_output_lengths",
    "positions_from_mask",
]
