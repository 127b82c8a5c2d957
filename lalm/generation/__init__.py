"""Generation: decoding policy (`GenerationOptions`), logits processors, the prefill + KV-cache
decode loop (greedy, sampling, beam search, streaming), and the pipeline that runs the whole
data path from audio and text to parsed output."""

from lalm.generation.conversation import Conversation
from lalm.generation.generate import (
    PromptBatch,
    Step,
    beam_search,
    generate,
    generate_steps,
    left_pad,
)
from lalm.generation.options import GenerationOptions, GenerationResult
from lalm.generation.pipeline import (
    IncrementalDecoder,
    Pipeline,
    Request,
    Transcript,
    TranscriptionPlan,
    TranscriptSegment,
)

__all__ = [
    "Conversation",
    "GenerationOptions",
    "GenerationResult",
    "IncrementalDecoder",
    "Pipeline",
    "PromptBatch",
    "Request",
    "Step",
    "Transcript",
    "TranscriptSegment",
    "TranscriptionPlan",
    "beam_search",
    "generate",
    "generate_steps",
    "left_pad",
]
