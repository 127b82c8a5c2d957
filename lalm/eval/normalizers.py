"""Text normalisation applied before scoring, exactly as the official Qwen-Audio scripts apply it.

Two procedures exist, and they disagree (which is why published numbers are hard to compare):

* **Qwen-Audio (v1)**, ``QwenLM/Qwen-Audio eval_audio/evaluate_asr.py``: `strip_tags` (special
  ``<|...|>`` tags to spaces, whitespace collapsed, no space before ``!,.?;:``, leading spaces
  dropped, all whitespace dropped for Chinese), then `evaluation_tokens` with lowercasing and
  punctuation kept. ``"Hello , World."`` and ``"hello world"`` therefore differ by two words.
* **Qwen2-Audio**, ``QwenLM/Qwen2-Audio eval_audio/evaluate_asr.py``: `strip_tags`, then
  `qwen2_normalize` by language, then `evaluation_tokens` with lowercasing and removal of
  all-punctuation tokens. `qwen2_normalize` reproduces an oddity of the official script: English
  text goes through Whisper's English normaliser *and then* the basic normaliser (an ``if zh /
  else`` that follows an ``if en``), so e.g. ``$25`` ends as ``25``.

The Whisper normalisers come from the ``whisper-normalizer`` distribution pinned to 0.1.1, whose
English and basic normalisers equal the copies vendored in Qwen2-Audio (later releases add
rewrites such as "kinda" -> "kind of"). Cantonese is converted to simplified characters with
``zhconv`` before the basic normaliser, and Chinese uses `lalm.eval.chinese.normalize_chinese`.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import zhconv

from lalm.eval.chinese import normalize_chinese

# Punctuation after which the v1 cleanup removes the preceding space.
_ATTACHED_PUNCTUATION = "!,.?;:"
_SPECIAL_TAG = re.compile(r"<\|.*?\|>")
_SPACE_BEFORE_PUNCT = re.compile(f" ?([{_ATTACHED_PUNCTUATION}])")
_WHITESPACE = re.compile(r"\s+")

CHARACTER_LANGUAGES_V1 = frozenset({"zh"})
CHARACTER_LANGUAGES_V2 = frozenset({"zh", "yue"})


def strip_tags(text: str, language: str) -> str:
    """The shared pre-cleanup of both official ASR scripts (``remove_sp``).

    Args:
        text: a reference or a decoded hypothesis, possibly with ``<|...|>`` special tags.
        language: dataset language code; ``"zh"`` also removes every whitespace character.

    Returns:
        ``"<|en|>Hello , world !"`` -> ``"Hello, world!"``; Chinese ``"你 好"`` -> ``"你好"``.
    """
    text = _SPECIAL_TAG.sub(" ", text)
    text = _WHITESPACE.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = text.lstrip(" ")
    if language == "zh":
        text = _WHITESPACE.sub("", text)
    return text


def _is_punctuation_token(token: str) -> bool:
    # True for "" as well: splitting on single spaces yields empty tokens at double spaces, and
    # the official tokenizer drops them because all() of nothing is True.
    return all(unicodedata.category(c).startswith("P") for c in token)


def evaluation_tokens(text: str, *, remove_punctuation: bool, characters: bool) -> list[str]:
    """The official ``EvaluationTokenizer(tokenizer_type="none", lowercase=True)`` then split.

    Args:
        text: cleaned text.
        remove_punctuation: drop space-separated tokens made only of Unicode punctuation
            (``"hi , there"`` -> ``"hi there"``; ``"hi,"`` keeps its comma).
        characters: return characters of the joined tokens (Chinese/Cantonese scoring).

    Returns:
        Lowercased word tokens, or characters with spaces removed when ``characters``.
    """
    if remove_punctuation:
        text = " ".join(t for t in text.split(" ") if not _is_punctuation_token(t))
    tokens = text.lower().split()
    return list("".join(tokens)) if characters else tokens


@lru_cache(maxsize=1)
def _whisper_normalizers():  # noqa: ANN202 - third-party callables
    from whisper_normalizer.basic import BasicTextNormalizer
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer(), BasicTextNormalizer()


def basic_normalize(text: str) -> str:
    """Whisper's basic normaliser: lowercase, bracketed spans removed, symbols to spaces."""
    return _whisper_normalizers()[1](text)


def english_normalize(text: str) -> str:
    """Whisper's English normaliser (spelling, numbers, contractions, fillers)."""
    return _whisper_normalizers()[0](text)


def qwen2_normalize(text: str, language: str) -> str:
    """Qwen2-Audio's per-language normalisation, including its double English normalisation.

    Args:
        text: text after `strip_tags`.
        language: ``"en"``: English then basic normaliser; ``"zh"``: Chinese text normalisation;
            ``"yue"``: simplified conversion (zhconv ``zh-cn``) then basic; anything else: basic.

    Returns:
        The normalised text.
    """
    if language == "yue":
        text = zhconv.convert(text, "zh-cn")
    if language == "en":
        text = english_normalize(text)
    if language == "zh":
        return normalize_chinese(text)
    return basic_normalize(text)
