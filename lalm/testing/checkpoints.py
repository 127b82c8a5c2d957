"""Tiny Qwen2-Audio checkpoint directories saved by transformers itself (tests and benches).

`save_reference_checkpoint` builds `Qwen2AudioForConditionalGeneration` with a shrunken config
that keeps the released quirks (vocab 156,032, untied lm_head, n_kv_head == n_head unless told),
fills it with deterministic random weights, saves it with `save_pretrained` and copies the
tokenizer / processor files beside it: a directory laid out as a published checkpoint.
transformers is imported lazily; it is a test-only dependency.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lalm.testing.models import randomize_

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "chat_template.json", "preprocessor_config.json")


def reference_config(n_kv_head: int = 4, encoder_dim: int = 32, decoder_dim: int = 64,
                     n_layer: int = 2, vocab_size: int = 156032) -> Any:
    """A shrunken `transformers.Qwen2AudioConfig` (128 mel bins, 1500 encoder positions)."""
    import transformers

    return transformers.Qwen2AudioConfig(
        audio_config={"d_model": encoder_dim, "encoder_attention_heads": 4,
                      "encoder_ffn_dim": 2 * encoder_dim, "encoder_layers": n_layer,
                      "num_mel_bins": 128, "max_source_positions": 1500},
        text_config={"model_type": "qwen2", "vocab_size": vocab_size,
                     "hidden_size": decoder_dim, "intermediate_size": 3 * decoder_dim // 2,
                     "num_hidden_layers": n_layer, "num_attention_heads": 4,
                     "num_key_value_heads": n_kv_head, "rms_norm_eps": 1e-5,
                     "max_position_embeddings": 8192, "tie_word_embeddings": False},
    )


def save_reference_checkpoint(directory: str | Path, tokenizer_dir: str | Path,
                              config: Any = None, seed: int = 0, std: float = 0.1) -> Any:
    """Save a random transformers Qwen2-Audio model plus tokenizer files into ``directory``.

    Args:
        directory: target folder.
        tokenizer_dir: folder with the Qwen2-Audio tokenizer/processor files (`TOKENIZER_FILES`).
        config: a `Qwen2AudioConfig` (default `reference_config()`).
        seed: weight seed.
        std: weight scale (0.1 gives peaked, untied next-token distributions).

    Returns:
        The reference model in eval mode.
    """
    import transformers

    model = transformers.Qwen2AudioForConditionalGeneration(config or reference_config())
    randomize_(model, seed=seed, std=std)
    model.save_pretrained(directory)
    for name in TOKENIZER_FILES:
        source = Path(tokenizer_dir) / name
        if source.is_file():
            shutil.copy(source, Path(directory) / name)
    return model.eval()
