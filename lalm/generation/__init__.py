"""Generation: decoding policy (`GenerationOptions`), logits processors, the decode engine
(continuous batching: greedy and sampled decoding, streaming), beam search, and the pipeline
that runs the whole data path from audio and text to parsed output."""

from lalm.generation.conversation import Conversation
from lalm.generation.engine import Engine, Event, Generation, IncrementalDecoder
from lalm.generation.generate import PromptBatch, beam_search, generate, left_pad
from lalm.generation.options import GenerationOptions, GenerationResult, TokenLogprob
from lalm.generation.pipeline import (
    Pipeline,
    Request,
    Transcript,
    TranscriptionPlan,
    TranscriptSegment,
)

__all__ = [
    "Conversation",
    "Engine",
    "Event",
    "Generation",
    "GenerationOptions",
    "GenerationResult",
    "IncrementalDecoder",
    "Pipeline",
    "PromptBatch",
    "Request",
    "TokenLogprob",
    "Transcript",
    "TranscriptSegment",
    "TranscriptionPlan",
    "beam_search",
    "generate",
    "left_pad",
]
