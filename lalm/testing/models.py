"""Tiny random models and inputs for tests (deterministic for a given seed).

Every bias and norm weight gets a random value, not the usual 0 / 1, so a test comparing two
implementations notices a missing bias or norm weight.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lalm.config import ModelConfig
from lalm.model import AudioLanguageModel


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Fill every parameter in place: weights and biases ~ N(0, std), norm weights ~ 1 + N(0, 0.1).

    Buffers (the sinusoidal positional table) are left as they are.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            is_norm = name.rsplit(".", 2)[-2].endswith(("norm", "_ln", "ln_post"))
            if is_norm and name.endswith("weight"):
                value = 1.0 + 0.1 * noise
            else:
                value = std * noise
            param.copy_(value.to(param.dtype))


def randomize_adapters_(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Fill both factors of every `LoRALinear` under `model` ~ N(0, std) in place (B too, so
    the adapters change the output, unlike their zero-B start)."""
    from lalm.model.lora import LoRALinear

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_a.copy_(std * torch.randn(module.lora_a.shape, generator=gen))
                module.lora_b.copy_(std * torch.randn(module.lora_b.shape, generator=gen))


def random_model(
    config: ModelConfig | str = "tiny-random", seed: int = 0, dtype: torch.dtype = torch.float32
) -> AudioLanguageModel:
    """An `AudioLanguageModel` with deterministic random weights, in eval mode.

    Args:
        config: a config or a preset name.
        seed: weight seed.
        dtype: parameter dtype.
    """
    if isinstance(config, str):
        config = ModelConfig.from_name(config)
    model = AudioLanguageModel(config)
    randomize_(model, seed)
    return model.to(dtype).eval()


def random_features(feature_lens: list[int], n_mels: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A padded log-mel-like batch in the contract's layout.

    Args:
        feature_lens: real length L of each clip.
        n_mels: mel bins.
        seed: value seed.

    Returns:
        (features [B, n_mels, max(L) + 2] float32, feature_lens [B] int64): each clip has random
        values on frames < L + 2 (the real frames and 2 lookahead frames) and zeros after.
    """
    gen = torch.Generator().manual_seed(seed)
    lens = torch.tensor(feature_lens, dtype=torch.int64)
    n_frames = max(feature_lens) + 2
    values = torch.randn(len(feature_lens), n_mels, n_frames, generator=gen)
    keep = torch.arange(n_frames)[None, None, :] < (lens + 2)[:, None, None]
    return values * keep, lens


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max |expected|: the parity tests' measure of closeness."""
    return float((actual - expected).abs().max() / expected.abs().max())


def tone_clips(seconds: list[float], seed: int = 0) -> list[Tensor]:
    """16 kHz float32 clips: a random-pitch tone plus a little noise, one per duration."""
    gen = torch.Generator().manual_seed(seed)
    clips = []
    for duration in seconds:
        t = torch.arange(int(duration * 16000)) / 16000
        pitch = 100 + 1900 * torch.rand((), generator=gen)
        noise = torch.randn(t.shape, generator=gen)
        clips.append(0.3 * torch.sin(2 * torch.pi * pitch * t) + 0.05 * noise)
    return clips


def random_text_ids(n: int, seed: int) -> list[int]:
    """n random ordinary-text ids of the Qwen BPE (below its first special id, 151643)."""
    return torch.randint(0, 151643, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def audio_span(model: AudioLanguageModel, length: int, start: int, slot: int, end: int
               ) -> list[int]:
    """The prompt ids of one clip of `length` mel frames: start, one slot per audio row, end."""
    n = int(model.audio_row_counts(torch.tensor([length])))
    return [start, *[slot] * n, end]


def greedy_tokens(model: AudioLanguageModel, ids: Tensor, token_mask: Tensor, features: Tensor,
                  feature_lens: Tensor, slot: int, max_new_tokens: int) -> list[list[int]]:
    """Greedy tokens of a left-padded batch through lalm's generation loop, without stop ids.

    Args:
        ids, token_mask: [B, S] left-padded prompts (`lalm.generation.generate.left_pad`).
        features, feature_lens: the clips of the batch, in prompt order.
        slot: the audio slot id.
        max_new_tokens: tokens to generate per row.
    """
    from lalm.generation.generate import PromptBatch, generate
    from lalm.generation.options import GenerationOptions

    with torch.no_grad():
        embeds = model.embed_prompt(ids, model.embed_audio(features, feature_lens), ids == slot)
        results = generate(model, PromptBatch(ids, token_mask, embeds),
                           GenerationOptions(max_new_tokens=max_new_tokens), stop_ids=())
    return [r.tokens for r in results]
