"""Evaluation: the benchmarks' own scoring procedures as versioned, pure functions.

Scorers take lists of strings and return frozen result dataclasses with a ``version`` naming
the procedure. Modules: `normalizers` and `chinese` (text normalisation), `metrics` (WER/CER,
BLEU, accuracy, AQA), `analysis` (NSynth, SRWT), `caption` (CIDEr-D, SPICE, SPIDEr) and
`airbench` (AIR-Bench foundation, official and strict), `judge` (the LLM judge client), `mcq`
(MMAU, MMAR), `mmau_pro`, `voicebench` and `layouts` (corpus folders and HF datasets). The
suites and their procedures: docs/eval.md.
"""

from lalm.eval.airbench import FoundationResult, extract_choice, score_foundation
from lalm.eval.analysis import AverageShiftResult, NSynthResult, average_shift, nsynth_scores
from lalm.eval.caption import CaptionResult, cider_d, spice, spider
from lalm.eval.metrics import (
    ASR_QWEN2_AUDIO,
    ASR_QWEN_AUDIO,
    AccuracyResult,
    BleuResult,
    ErrorRateResult,
    accuracy,
    aqa_accuracy,
    bleu,
    error_rate,
    error_rate_by_source,
)

__all__ = [
    "ASR_QWEN2_AUDIO",
    "ASR_QWEN_AUDIO",
    "AccuracyResult",
    "AverageShiftResult",
    "BleuResult",
    "CaptionResult",
    "ErrorRateResult",
    "FoundationResult",
    "NSynthResult",
    "accuracy",
    "aqa_accuracy",
    "average_shift",
    "bleu",
    "cider_d",
    "error_rate",
    "error_rate_by_source",
    "extract_choice",
    "nsynth_scores",
    "score_foundation",
    "spice",
    "spider",
]
