"""A small byte-level BPE for models trained from scratch (lalm's default model).

The Qwen vocabulary has 151,643 ranks: as embedding and lm_head rows of a decoder a few hundred
wide, it would be most of the model and most of the compute. `train_tokenizer` instead learns a
few thousand merges on the text the model will read and write, with Qwen's own pipeline around
them (the layout of Qwen2's ``tokenizer.json``, so `lalm.tokenizer.Tokenizer.from_hf` and
transformers read it):

* normaliser NFC; pre-tokenizer: Qwen's split regex (`lalm.tokenizer.QWEN_PATTERN`), then
  GPT-2 byte-to-unicode mapping; decoder: byte level. Every byte is in the base alphabet, so any
  text encodes (unseen characters fall back to their UTF-8 bytes).
* ids: the learned BPE ranks first (the 256 byte symbols included), then the special tokens of
  `SPECIAL_TOKENS` in order: ChatML and the Qwen2-Audio audio tokens (``<|endoftext|>``
  ``<|im_start|>`` ``<|im_end|>`` ``<|AUDIO|>`` ``<|audio_bos|>`` ``<|audio_eos|>``, so the
  tokenizer is of the Qwen2-Audio family), then Qwen-Audio's hierarchical tags (header, task,
  language, (no)timestamps, instruction, question/answer, entity, word and note-field tags of
  `lalm.prompt.QWEN_AUDIO_AUDIO_TOKENS`). A tag written in a chat turn is therefore one token,
  and a stage-1-style tag prompt can be trained and asked in the Qwen2-Audio chat.

  Left out: the 3,001 timestamp values ``<|0.00|>``..``<|30.00|>`` and the 256 MIDI values
  ``<|midi_pitch_i|>`` / ``<|midi_velocity_i|>`` (as tokens they would be two thirds of the
  vocabulary and ~20% of a small model's compute, while Qwen2-Audio-family targets write times
  and numbers as text; in a prompt they become a few BPE tokens each), and Qwen-Audio's slot
  tokens ``<audio>`` ``</audio>`` ``[[[AUDIO:modality]]]`` (v1 audio prompts need the v1
  family's model, with its learned BOS/EOS rows, and tokenizer).

`corpus` gives the texts of a manifest as the Qwen2-Audio family renders them (prompts with
their chat scaffolding, and targets), special tokens cut out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from lalm.data.manifest import Example
from lalm.data.render import render_prompt, render_target
from lalm.errors import TokenizerError
from lalm.files import atomic_write
from lalm.prompt import (
    AUDIO_END,
    AUDIO_PAD,
    AUDIO_START,
    QWEN2_AUDIO,
    QWEN2_AUDIO_SPECIAL_TOKENS,
    QWEN_AUDIO_AUDIO_TOKENS,
)
from lalm.tokenizer import QWEN_PATTERN, Tokenizer, load_tokenizer

_VALUE_TAG = re.compile(r"<\|(\d+\.\d\d|midi_(pitch|velocity)_\d+)\|>")
#: Special tokens, in id order after the BPE ranks (module docstring).
SPECIAL_TOKENS: tuple[str, ...] = (
    *QWEN2_AUDIO_SPECIAL_TOKENS,
    *(t for t in QWEN_AUDIO_AUDIO_TOKENS
      if t not in (AUDIO_PAD, AUDIO_START, AUDIO_END) and not _VALUE_TAG.fullmatch(t)),
)
_SPECIAL_RE = re.compile("|".join(map(re.escape, sorted(SPECIAL_TOKENS, key=len, reverse=True))))


def corpus(examples: Iterable[Example]) -> Iterator[str]:
    """Training text of examples: each rendered prompt (Qwen2-Audio chat) and target, split at
    special tokens (which the BPE never sees: they are whole tokens of their own)."""
    for example in examples:
        for text in (render_prompt(example, QWEN2_AUDIO).text,
                     render_target(example, QWEN2_AUDIO)):
            yield from (piece for piece in _SPECIAL_RE.split(text) if piece)


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 4096,
                    min_frequency: int = 2, specials: Sequence[str] = SPECIAL_TOKENS
                    ) -> Tokenizer:
    """Learn a byte-level BPE on `texts` and write it to `out_dir` (module docstring).

    Args:
        texts: training text (special tokens already removed, e.g. `corpus`).
        out_dir: folder for ``tokenizer.json`` and ``tokenizer_config.json`` (created).
        vocab_size: BPE ranks, the 256 byte symbols included; fewer if the text runs out of
            pairs seen `min_frequency` times. Special tokens come on top.
        min_frequency: a pair needs this many occurrences to become a merge.
        specials: special tokens appended after the ranks, in order; must include
            ``<|AUDIO|>`` (or the v1 ``<audio>``) for `lalm.tokenizer` to know the family.

    Returns:
        The written tokenizer, loaded by `lalm.tokenizer.load_tokenizer`.

    Raises:
        TokenizerError: vocab_size below the byte alphabet, or no text.
    """
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    if vocab_size < 256:
        raise TokenizerError(f"vocab_size {vocab_size} is below the 256 byte symbols")
    texts = list(texts)
    if not any(texts):
        raise TokenizerError("train_tokenizer got no text")
    hf = HFTokenizer(models.BPE(byte_fallback=False))
    hf.normalizer = normalizers.NFC()
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator(texts, trainer)
    hf.add_special_tokens(list(specials))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "tokenizer.json", hf.to_str().encode("utf-8"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None,
              "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "unk_token": None, "clean_up_tokenization_spaces": False,
              "model_max_length": 32768}
    atomic_write(out / "tokenizer_config.json",
                 (json.dumps(config, indent=2) + "\n").encode("utf-8"))
    return load_tokenizer(out)
