"""Scorers for ASR, speech translation and classification, each a pure function with a version.

Every scorer takes lists of strings (hypotheses and references in the same order) and returns a
small frozen result dataclass carrying the score, the counts it came from and a ``version``
naming the exact procedure, so a number in a summary file says how it was computed.

=========================  ==========================================================
version                    procedure
=========================  ==========================================================
``qwen-audio-asr-v1``      Qwen-Audio ``evaluate_asr.py``: `strip_tags`, lowercase,
                           punctuation kept, Chinese by character
``qwen2-audio-asr-v1``     Qwen2-Audio ``evaluate_asr.py``: `strip_tags`,
                           `qwen2_normalize`, punctuation tokens removed, Chinese and
                           Cantonese by character
``sacrebleu-corpus-v1``    ``sacrebleu.corpus_bleu`` with ``13a`` / ``zh`` /
                           ``ja-mecab`` chosen by target language (both official scripts)
``exact-match-v1``         sklearn ``accuracy_score``: stripped output == label (official)
``normalized-match-v1``    exact match after Whisper's basic normaliser (lalm's lenient)
=========================  ==========================================================

Error rates are corpus rates: total edit distance over total reference length, computed per
``source`` by the official scripts (`error_rate_by_source`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import editdistance
from sacrebleu.metrics import BLEU

from lalm.errors import ScoringError
from lalm.eval.normalizers import (
    CHARACTER_LANGUAGES_V1,
    CHARACTER_LANGUAGES_V2,
    basic_normalize,
    evaluation_tokens,
    qwen2_normalize,
    strip_tags,
)
from lalm.prompt import QWEN2_AUDIO, QWEN_AUDIO

# The ASR scoring procedures of the two families' official scripts (`FamilySpec.asr_scoring`).
ASR_QWEN_AUDIO = QWEN_AUDIO.asr_scoring  # "qwen-audio-asr-v1"
ASR_QWEN2_AUDIO = QWEN2_AUDIO.asr_scoring  # "qwen2-audio-asr-v1"
BLEU_VERSION = "sacrebleu-corpus-v1"
EXACT_MATCH = "exact-match-v1"
NORMALIZED_MATCH = "normalized-match-v1"


@dataclass(frozen=True)
class ErrorRateResult:
    """A corpus error rate.

    Attributes:
        score: ``errors / reference_length`` (a fraction, not a percentage).
        errors: summed edit distance (substitutions + deletions + insertions).
        reference_length: summed number of reference units.
        count: number of utterances.
        unit: ``"word"`` or ``"char"``.
        version: the procedure, e.g. ``"qwen2-audio-asr-v1"``.
    """

    score: float
    errors: int
    reference_length: int
    count: int
    unit: str
    version: str


@dataclass(frozen=True)
class BleuResult:
    """A corpus BLEU score.

    Attributes:
        score: BLEU in 0-100.
        count: number of segments.
        tokenizer: sacrebleu tokenizer name (``"13a"``, ``"zh"``, ``"ja-mecab"``).
        signature: sacrebleu's reproducibility signature.
        version: the procedure.
    """

    score: float
    count: int
    tokenizer: str
    signature: str
    version: str


@dataclass(frozen=True)
class AccuracyResult:
    """A fraction of exact matches.

    Attributes:
        score: ``correct / count``.
        correct: number of matching pairs.
        count: number of pairs.
        version: the procedure.
    """

    score: float
    correct: int
    count: int
    version: str


def check_pairs(hyps: Sequence[object], refs: Sequence[object], what: str) -> None:
    """Raise `ScoringError` unless hypotheses and references are non-empty and aligned."""
    if len(hyps) != len(refs):
        raise ScoringError(f"{what}: {len(hyps)} hypotheses but {len(refs)} references")
    if not refs:
        raise ScoringError(f"{what}: nothing to score (no references)")


def _asr_units(text: str, language: str, version: str) -> list[str]:
    text = strip_tags(text, language)
    if version == ASR_QWEN_AUDIO:
        chars = language in CHARACTER_LANGUAGES_V1
        return evaluation_tokens(text, remove_punctuation=False, characters=chars)
    chars = language in CHARACTER_LANGUAGES_V2
    return evaluation_tokens(qwen2_normalize(text, language), remove_punctuation=True,
                             characters=chars)


def error_rate(
    hyps: Sequence[str], refs: Sequence[str], language: str, version: str = ASR_QWEN2_AUDIO
) -> ErrorRateResult:
    """Corpus WER (or CER for Chinese/Cantonese) by an official Qwen-Audio procedure.

    Args:
        hyps: decoded model outputs, special tags allowed.
        refs: ground-truth transcripts, in the same order.
        language: the dataset's language code (``"en"``, ``"zh"``, ``"yue"``, ``"fr"``...).
        version: `ASR_QWEN_AUDIO` or `ASR_QWEN2_AUDIO`.

    Returns:
        The corpus error rate; unit ``"char"`` for languages scored by character.

    Raises:
        ScoringError: unknown version, misaligned or empty inputs, or references that are
            empty after normalisation (the rate would divide by zero).
    """
    if version not in (ASR_QWEN_AUDIO, ASR_QWEN2_AUDIO):
        raise ScoringError(f"unknown ASR scoring version {version!r}")
    check_pairs(hyps, refs, version)
    errors = length = 0
    for hyp, ref in zip(hyps, refs):
        ref_units = _asr_units(ref, language, version)
        errors += editdistance.eval(ref_units, _asr_units(hyp, language, version))
        length += len(ref_units)
    if length == 0:
        raise ScoringError(f"{version}: every reference is empty after normalisation")
    chars = language in (CHARACTER_LANGUAGES_V1 if version == ASR_QWEN_AUDIO
                         else CHARACTER_LANGUAGES_V2)
    return ErrorRateResult(errors / length, errors, length, len(refs), "char" if chars else "word",
                           version)


def error_rate_by_source(
    hyps: Sequence[str],
    refs: Sequence[str],
    sources: Sequence[str],
    language: str,
    version: str = ASR_QWEN2_AUDIO,
) -> dict[str, ErrorRateResult]:
    """`error_rate` per ``source`` field, as the official scripts report it.

    Args:
        hyps: decoded model outputs.
        refs: references.
        sources: the manifest's ``source`` of each pair (e.g. ``"librispeech_test_clean"``).
        language: the dataset's language code.
        version: the procedure.

    Returns:
        Source -> its corpus error rate, in order of first appearance.
    """
    check_pairs(hyps, refs, version)
    if len(sources) != len(refs):
        raise ScoringError(f"{version}: {len(sources)} sources for {len(refs)} references")
    groups: dict[str, list[int]] = {}
    for i, source in enumerate(sources):
        groups.setdefault(source, []).append(i)
    return {s: error_rate([hyps[i] for i in idx], [refs[i] for i in idx], language, version)
            for s, idx in groups.items()}


def bleu_tokenizer(target_language: str) -> str:
    """The sacrebleu tokenizer the official scripts use for a target language."""
    return {"ja": "ja-mecab", "zh": "zh"}.get(target_language, "13a")


def bleu(hyps: Sequence[str], refs: Sequence[str], target_language: str) -> BleuResult:
    """Corpus BLEU with one reference per segment, tokenised for the target language.

    Args:
        hyps: translations.
        refs: reference translations.
        target_language: ISO code of the translation's language (``"ja"`` needs the
            ``mecab-python3`` and ``ipadic`` packages: ``pip install 'lalm[eval]'``).

    Returns:
        The score with sacrebleu's signature.

    Raises:
        ScoringError: misaligned or empty inputs, or the Japanese tokenizer is missing.
    """
    check_pairs(hyps, refs, BLEU_VERSION)
    tokenizer = bleu_tokenizer(target_language)
    try:
        metric = BLEU(tokenize=tokenizer)
    except (ImportError, RuntimeError) as e:
        raise ScoringError(
            f"BLEU tokenizer {tokenizer!r} is unavailable ({e}); install lalm[eval]"
        ) from e
    score = metric.corpus_score(list(hyps), [list(refs)])
    return BleuResult(score.score, len(refs), tokenizer, str(metric.get_signature()),
                      BLEU_VERSION)


def accuracy(
    hyps: Sequence[str], refs: Sequence[str], version: str = EXACT_MATCH
) -> AccuracyResult:
    """Classification accuracy.

    Args:
        hyps: predicted labels (decoded outputs).
        refs: true labels.
        version: `EXACT_MATCH` (official: the stripped output equals the label exactly, case
            included; the label itself is not stripped, as in the official scripts) or
            `NORMALIZED_MATCH` (both sides through Whisper's basic normaliser and stripped:
            case, punctuation and spacing ignored).

    Returns:
        The accuracy and counts.

    Raises:
        ScoringError: unknown version, misaligned or empty inputs.
    """
    if version not in (EXACT_MATCH, NORMALIZED_MATCH):
        raise ScoringError(f"unknown accuracy version {version!r}")
    check_pairs(hyps, refs, version)
    if version == EXACT_MATCH:
        correct = sum(h.strip() == r for h, r in zip(hyps, refs))
    else:
        correct = sum(basic_normalize(h).strip() == basic_normalize(r).strip()
                      for h, r in zip(hyps, refs))
    return AccuracyResult(correct / len(refs), correct, len(refs), version)


def aqa_accuracy(
    hyps: Sequence[str], refs: Sequence[str], version: str = EXACT_MATCH
) -> tuple[AccuracyResult, AccuracyResult | None]:
    """ClothoAQA scoring: accuracy on all questions and on the yes/no subset.

    The subset holds the pairs whose reference is ``yes`` or ``no`` in any case, as in the
    official ``evaluate_aqa.py``.

    Returns:
        ``(all questions, yes/no questions)``; the second is None when no reference is yes/no.
    """
    overall = accuracy(hyps, refs, version)
    binary = [(h, r) for h, r in zip(hyps, refs) if r.lower() in ("yes", "no")]
    if not binary:
        return overall, None
    return overall, accuracy([h for h, _ in binary], [r for _, r in binary], version)
