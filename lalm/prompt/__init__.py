"""Prompt formats of every family, and the parser of what the model writes back.

The package writes every tag string (`tokens`) and holds:

* `family`: `FamilySpec`, the one frozen object per checkpoint family that the tokenizer,
  pipeline, evaluator, data renderer and server ask about special and slot tokens, the
  real-length rule, boundary rows, stops, timestamps, the ASR and task prompts, the chat
  template and output parsing; `family_spec(name)` finds one by its serialisable name;
* one module per family building and registering its instance: `qwen_audio` (v1 task-tag
  prompts, `build_prompt`; the Qwen-Audio-Chat template), `qwen2_audio` (base-model
  prompts, `build_base_prompt`; the Qwen2-Audio-Instruct template), `qwen2_5_omni` (the
  Omni thinker's ChatML, `chatml_template`) and `qwen3_asr` (its ChatML with a prefilled
  language header; `parse_asr_output`);
* `task`: v1 hierarchical task prompts, `TaskSpec` -> ``<|startoftranscript|>...``, exactly
  as the official evaluation scripts write them (`TaskSpec.asr`, `.s2tt`, `.srwt`, ...);
* `parts`: chat messages (`Message` with `TextPart` / `AudioPart` content); `fill_audio_tags`
  and `user_message` put each audio where an ``<audio>`` tag stands in plain text (as
  ms-swift / LLaMA-Factory rows mark it);
* `build`: `Prompt` and `Prompt.encode` (token ids with each audio expanded to its N frame
  tokens, `PromptIds`), `build_chat_prompt`;
* `parse`: `parse_output` (generated text -> plain text, language, SRWT words with times,
  timestamps, note-analysis fields); `format_timed_words` / `format_note_analysis` write such
  targets.

A new family is one new module here (its tokens, templates and `FamilySpec` instance) plus its
import below. The prompt layer never loads audio: an `AudioPart` only refers to its source.
"""

from lalm.prompt.build import Piece, Prompt, PromptIds, TextPiece, build_chat_prompt
from lalm.prompt.family import (
    FamilySpec,
    check_timestamps,
    detect_family,
    families,
    family_spec,
    register_family,
)
from lalm.prompt.parse import (
    NoteAnalysis,
    ParsedOutput,
    TimedWord,
    format_note_analysis,
    format_timed_words,
    parse_output,
)
from lalm.prompt.parts import (
    TEXT_AUDIO_TAG,
    AudioPart,
    AudioSource,
    Message,
    Part,
    Role,
    TextPart,
    fill_audio_tags,
    split_audio_tags,
    user_message,
)
from lalm.prompt.qwen2_5_omni import OMNI_SYSTEM_PROMPT, QWEN2_5_OMNI
from lalm.prompt.qwen2_audio import QWEN2_ASR_INSTRUCTION, QWEN2_AUDIO, build_base_prompt
from lalm.prompt.qwen3_asr import QWEN3_ASR, parse_asr_output
from lalm.prompt.qwen_audio import QWEN_AUDIO, build_prompt
from lalm.prompt.task import TaskSpec
from lalm.prompt.tokens import (
    AUDIO_END,
    AUDIO_PAD,
    AUDIO_START,
    DEFAULT_SYSTEM_PROMPT,
    ENDOFTEXT,
    EXTRA_TOKENS,
    IM_END,
    IM_START,
    LANGUAGE_TAGS,
    LANGUAGES,
    MAX_TIMESTAMP,
    QWEN2_AUDIO_BOS,
    QWEN2_AUDIO_EOS,
    QWEN2_AUDIO_SPECIAL_TOKENS,
    QWEN2_AUDIO_TOKEN,
    QWEN_AUDIO_AUDIO_TOKENS,
    QWEN_AUDIO_SPECIAL_TOKENS,
    SPACELESS_LANGUAGES,
    UNKNOWN_LANGUAGE,
    V1_SLOT_TOKENS,
    V1_TEXT_SPECIALS,
    Header,
    Instruction,
    Seconds,
    Task,
    check_text,
    tag,
    timestamp_tag,
)

__all__ = [
    "AUDIO_END", "AUDIO_PAD", "AUDIO_START", "DEFAULT_SYSTEM_PROMPT", "ENDOFTEXT", "EXTRA_TOKENS",
    "IM_END", "IM_START", "LANGUAGES", "LANGUAGE_TAGS", "MAX_TIMESTAMP", "OMNI_SYSTEM_PROMPT", "QWEN2_ASR_INSTRUCTION",
    "QWEN2_5_OMNI", "QWEN2_AUDIO", "QWEN2_AUDIO_BOS", "QWEN2_AUDIO_EOS", "QWEN2_AUDIO_SPECIAL_TOKENS",
    "QWEN2_AUDIO_TOKEN", "QWEN3_ASR", "QWEN_AUDIO", "QWEN_AUDIO_AUDIO_TOKENS", "QWEN_AUDIO_SPECIAL_TOKENS",
    "SPACELESS_LANGUAGES", "TEXT_AUDIO_TAG", "UNKNOWN_LANGUAGE", "V1_SLOT_TOKENS",
    "V1_TEXT_SPECIALS", "AudioPart", "AudioSource", "FamilySpec", "Header", "Instruction",
    "Message", "NoteAnalysis", "ParsedOutput", "Part", "Piece", "Prompt", "PromptIds", "Role",
    "Seconds", "Task", "TaskSpec", "TextPart", "TextPiece", "TimedWord", "build_base_prompt",
    "build_chat_prompt", "build_prompt", "check_text", "check_timestamps", "detect_family",
    "families", "family_spec", "parse_asr_output", "fill_audio_tags", "format_note_analysis", "format_timed_words",
    "parse_output", "register_family", "split_audio_tags", "tag", "timestamp_tag",
    "user_message",
]
