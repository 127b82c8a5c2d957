"""The family object: `FamilySpec`, one frozen description of what a checkpoint family changes
on the text side, and the registry of families by name (`family_spec`, `families`,
`detect_family`). Each family is one module of this package (`qwen_audio`, `qwen2_audio`)
that builds and registers its instance."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from lalm.errors import PromptError
from lalm.prompt.parse import ParsedOutput, parse_output
from lalm.prompt.task import TaskSpec
from lalm.prompt.tokens import DEFAULT_SYSTEM_PROMPT, tag

if TYPE_CHECKING:
    from lalm.prompt.build import Piece, Prompt
    from lalm.prompt.parts import AudioPart, Message


#: (messages with a leading system message, add_generation_prompt) -> the prompt's pieces.
ChatTemplate = Callable[[Sequence["Message"], bool], tuple["Piece", ...]]
#: (the task spec, the clip) -> a task-tag prompt.
TagPrompt = Callable[[TaskSpec, "AudioPart"], "Prompt"]
#: (clips, instruction) -> a base-model prompt asking a task in natural language.
InstructionPrompt = Callable[[Sequence["AudioPart"], str], "Prompt"]
#: (the clip, a language code) -> a family's own speech-recognition prompt.
AsrChatPrompt = Callable[["AudioPart", str], "Prompt"]
#: (generated text, the task spec it answers) -> what it says.
OutputParser = Callable[[str, "TaskSpec | None"], ParsedOutput]


@dataclass(frozen=True, eq=False)
class FamilySpec:
    """Everything a checkpoint family changes on the text side, in one frozen object.

    The tokenizer, pipeline, evaluator, data renderer and server ask this object (its fields
    and methods) instead of testing which family they have; a new family is one new instance,
    registered with `register_family`. Instances are singletons: they compare by identity and
    unpickle to the registered instance (`family_spec(name)`).

    Attributes:
        name: the serialisable key configs, manifests, reports and checkpoints store.
        label: the family's name for people (error messages).
        signature: special tokens a tokenizer must hold to be of this family; a tokenizer
            matching several families is of the one with the largest signature.
        audio_start: token opening each clip (v1 ``<audio>``; Qwen2-Audio ``<|audio_bos|>``).
        audio_pad: the per-frame placeholder, repeated N times for a clip of N audio tokens.
        audio_end: token closing each clip (v1 ``</audio>``; Qwen2-Audio ``<|audio_eos|>``).
        boundary_rows: rows the model writes over ``audio_start`` / ``audio_end`` around each
            clip: 2 for v1's learned BOS/EOS rows (those tokens are then part of the clip's
            span); 0 where they are ordinary tokens the prompt writes as text.
        labelled_audio: the prompt text names each clip (v1 ``<audio>path</audio>``) rather than
            writing its placeholder alone.
        real_length: how the family's reference counts a clip's real mel frames
            (`lalm.audio.RealLength`): transformers' processor rounds a last partial hop up
            ("ceil"), Qwen-Audio v1 drops it ("floor").
        stop_tokens: tokens that end a reply.
        timestamps: the family has timestamp tags (word times, SRWT).
        text_specials: specials message text and training targets may hold as tokens (v1: its
            task, timestamp and value tags); any other special in text is an error or plain text.
        response_skips_special: the official evaluation scripts decode a response without its
            special tokens (Qwen2-Audio) rather than keeping them (v1).
        asr_scoring: the ASR scoring procedure of the family's official scripts
            (`lalm.eval.metrics.error_rate` version).
        chat_template: (messages with a leading system message, add_generation_prompt) -> the
            prompt pieces; `build_chat_prompt` checks the conversation first.
        tag_prompt: (task spec, clip) -> a v1 hierarchical task-tag prompt, for a family whose
            prompts are task tags where a task has one (`task_tags`); None: a task is asked in
            natural language.
        asr_instruction: the natural-language ASR instruction, before the language tag (None
            for a family whose ASR prompt is a task-tag prompt).
        instruction_prompt: (clips, instruction) -> a base-model prompt asking a task in
            natural language; None for a family that only asks by task tags.
        parse: (generated text, its task spec) -> `ParsedOutput`.
        default_system: the system prompt `build_chat_prompt` inserts when a conversation
            has none ("You are a helpful assistant."; Qwen2.5-Omni its own, Qwen3-ASR empty).
        asr_chat: (clip, language code) -> the family's own speech-recognition prompt, for a
            family that asks ASR in a chat of its own (Qwen2.5-Omni, Qwen3-ASR); it comes
            before `asr_instruction` unless an instruction is given.
    """

    name: str
    label: str
    signature: frozenset[str]
    audio_start: str
    audio_pad: str
    audio_end: str
    boundary_rows: int
    labelled_audio: bool
    real_length: Literal["floor", "ceil"]
    stop_tokens: tuple[str, ...]
    timestamps: bool
    text_specials: frozenset[str]
    response_skips_special: bool
    asr_scoring: str
    chat_template: ChatTemplate
    tag_prompt: TagPrompt | None = None
    asr_instruction: str | None = None
    instruction_prompt: InstructionPrompt | None = None
    parse: OutputParser = parse_output
    default_system: str = DEFAULT_SYSTEM_PROMPT
    asr_chat: AsrChatPrompt | None = None

    def __post_init__(self) -> None:
        if self.boundary_rows not in (0, 2):
            raise PromptError(f"FamilySpec {self.name}: boundary_rows must be 0 or 2, got "
                              f"{self.boundary_rows!r}")
        if self.real_length not in ("floor", "ceil"):
            raise PromptError(f"FamilySpec {self.name}: real_length must be floor or ceil")

    def __reduce__(self) -> tuple[Callable[[str], FamilySpec], tuple[str]]:
        return family_spec, (self.name,)

    def __repr__(self) -> str:
        return f"FamilySpec({self.name!r})"

    @property
    def task_tags(self) -> bool:
        """The family's prompts are v1 hierarchical task tags (`TaskSpec`) where a task has one;
        otherwise a task is asked in natural language."""
        return self.tag_prompt is not None

    @property
    def slot_tokens(self) -> tuple[str, ...]:
        """Tokens whose positions receive a clip's rows; never allowed in text."""
        if self.boundary_rows:
            return (self.audio_start, self.audio_pad, self.audio_end)
        return (self.audio_pad,)

    def audio_span(self, n: int) -> list[str]:
        """The tokens a clip of ``n`` audio tokens occupies in the ids (each takes one row)."""
        frames = [self.audio_pad] * n
        return [self.audio_start, *frames, self.audio_end] if self.boundary_rows else frames

    def audio_text(self, label: str) -> str:
        """How `Prompt.text` writes one clip."""
        return f"{self.audio_start}{label}{self.audio_end}" if self.labelled_audio \
            else self.audio_pad

    @property
    def audio_text_pattern(self) -> str:
        """A regex with one group (the label) matching each clip in `Prompt.text`."""
        if self.labelled_audio:
            return f"{re.escape(self.audio_start)}(.*?){re.escape(self.audio_end)}"
        return f"{re.escape(self.audio_pad)}()"

    def task_prompt(self, audio: AudioPart, spec: TaskSpec | None, instruction: str | None
                    ) -> tuple[Prompt, TaskSpec | None]:
        """A one-clip task prompt from the task described both ways: as a v1 `TaskSpec` (used
        by families with `task_tags`) and as a natural-language ``instruction`` (the others).

        Returns:
            The prompt, and the task spec its output is parsed with (None for an instruction).

        Raises:
            PromptError: the family has no prompt for the task as given (no spec for a task-tag
                family, no instruction for the others).
        """
        if self.tag_prompt is not None and spec is not None:
            return self.tag_prompt(spec, audio), spec
        if self.instruction_prompt is None or instruction is None:
            raise PromptError(f"{self.label} has no prompt for this task: it needs "
                              f"{'a task spec' if self.task_tags else 'an instruction'}")
        return self.instruction_prompt([audio], instruction), None

    def asr_prompt(self, audio: AudioPart, language: str = "en", timestamps: bool = False,
                   instruction: str | None = None) -> tuple[Prompt, TaskSpec | None]:
        """The family's speech-recognition prompt for one clip.

        v1: the official ``TaskSpec.asr`` task prompt, or ``TaskSpec.srwt`` (words with start
        and end times) with ``timestamps``. Qwen2-Audio: the base model's
        ``<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech: <|en|>``
        (``instruction`` replaces the instruction text of a family without task tags).

        Raises:
            PromptError: ``timestamps`` on a family without timestamp tags.
        """
        check_timestamps(self, timestamps)
        if self.asr_chat is not None and instruction is None:
            return self.asr_chat(audio, language), None
        spec = TaskSpec.srwt(language) if timestamps else TaskSpec.asr(language)
        if instruction is None and self.asr_instruction is not None:
            instruction = self.asr_instruction + tag(language)
        return self.task_prompt(audio, spec, instruction)


_FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add a family to the registry (`family_spec`, `families`, tokenizer detection).

    Raises:
        PromptError: another family already has that name.
    """
    if spec.name in _FAMILIES and _FAMILIES[spec.name] is not spec:
        raise PromptError(f"a family named {spec.name!r} is already registered")
    _FAMILIES[spec.name] = spec
    return spec


def families() -> tuple[FamilySpec, ...]:
    """Every registered family, in registration order."""
    return tuple(_FAMILIES.values())


def family_spec(family: FamilySpec | str) -> FamilySpec:
    """The registered family of a name (or the family itself).

    Raises:
        PromptError: no family has that name.
    """
    if isinstance(family, FamilySpec):
        return family
    try:
        return _FAMILIES[family]
    except (KeyError, TypeError):
        raise PromptError(f"unknown family {family!r}; known: {', '.join(_FAMILIES)}") from None


def detect_family(special_tokens: Collection[str]) -> FamilySpec | None:
    """The family of a tokenizer with these special tokens: of the families whose signature it
    holds, the one with the largest signature; None when it holds none.

    Raises:
        PromptError: two matching families have equally large signatures.
    """
    held = set(special_tokens)
    matches = sorted((f for f in _FAMILIES.values() if f.signature <= held),
                     key=lambda f: len(f.signature), reverse=True)
    if len(matches) > 1 and len(matches[0].signature) == len(matches[1].signature):
        raise PromptError(f"special tokens match families {matches[0].name} and "
                          f"{matches[1].name} equally")
    return matches[0] if matches else None


def check_timestamps(family: FamilySpec, timestamps: bool) -> None:
    """Refuse word timestamps on a family without timestamp tags.

    Raises:
        PromptError: naming the families that have them.
    """
    if timestamps and not family.timestamps:
        having = " or ".join(f.label for f in families() if f.timestamps)
        raise PromptError(f"word timestamps need a {having} checkpoint; this one is "
                          f"{family.name} (its subtitles have one cue per segment)")
