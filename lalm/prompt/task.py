"""The v1 hierarchical-tag task prompt (`TaskSpec`), as the official evaluation scripts write
it: ``<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>`` after the
``<audio>path</audio>`` of its clip (`TaskSpec.asr`, `.s2tt`, `.srwt`, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from lalm.errors import PromptError
from lalm.prompt.tokens import (
    LANGUAGE_TAGS,
    UNKNOWN_LANGUAGE,
    V1_SLOT_TOKENS,
    Header,
    Instruction,
    Seconds,
    Task,
    check_text,
    tag,
    timestamp_tag,
)


@dataclass(frozen=True)
class TaskSpec:
    """A v1 hierarchical-tag task prompt.

    Rendered as ``<|header|><|audio_language|>`` then either ``<|question|>{question}<|answer|>``
    (Task.QUESTION) or ``<|task|><|text_language|><|(no)timestamps|>[<|first_timestamp|>]
    [<|instruction|>]``.

    Attributes:
        task: the task tag.
        audio_language: language spoken in the audio, a `LANGUAGE_TAGS` name ("unknown" for sounds).
        text_language: language of the output (required except for Task.QUESTION).
        timestamps: ask for word timestamps (``<|timestamps|>``) instead of ``<|notimestamps|>``.
        instruction: the output-instruction tag, if any.
        first_timestamp: a timestamp that primes the output (the SRWT evaluation primes 0.00).
        question: the question of Task.QUESTION (AQA).
        header: first tag; None = TRANSCRIPT for transcribe/translate, ANALYSIS otherwise.
    """

    task: Task
    audio_language: str = UNKNOWN_LANGUAGE
    text_language: str | None = None
    timestamps: bool = False
    instruction: Instruction | None = None
    first_timestamp: Seconds | None = None
    question: str | None = None
    header: Header | None = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> PromptError:
            return PromptError(f"TaskSpec: {msg}")

        if not isinstance(self.task, Task):
            raise bad(f"task must be a Task, got {self.task!r}")
        for name in ("audio_language", "text_language"):
            lang = getattr(self, name)
            if lang is not None and lang not in LANGUAGE_TAGS:
                raise bad(f"unknown {name} {lang!r}; known: {', '.join(LANGUAGE_TAGS)}")
        if self.instruction is not None and not isinstance(self.instruction, Instruction):
            raise bad(f"instruction must be an Instruction, got {self.instruction!r}")
        if self.header is not None and not isinstance(self.header, Header):
            raise bad(f"header must be a Header, got {self.header!r}")
        if self.task is Task.QUESTION:
            if not isinstance(self.question, str) or not self.question.strip():
                raise bad("task QUESTION needs a non-empty question")
            if (self.text_language, self.timestamps, self.instruction,
                    self.first_timestamp) != (None, False, None, None):
                raise bad("task QUESTION takes no text_language, timestamps, instruction or "
                          "first_timestamp")
            check_text(self.question, V1_SLOT_TOKENS, "TaskSpec.question")
            return
        if self.question is not None:
            raise bad(f"question is only for task QUESTION, not {self.task.value}")
        if self.text_language is None:
            raise bad(f"task {self.task.value} needs a text_language")
        if self.first_timestamp is not None:
            if not self.timestamps:
                raise bad("first_timestamp needs timestamps=True")
            timestamp_tag(self.first_timestamp)

    @property
    def header_tag(self) -> Header:
        """The header in effect."""
        if self.header is not None:
            return self.header
        transcript = self.task in (Task.TRANSCRIBE, Task.TRANSLATE)
        return Header.TRANSCRIPT if transcript else Header.ANALYSIS

    def render(self) -> str:
        """The tag string that follows ``<audio>path</audio>``."""
        head = tag(self.header_tag.value) + tag(self.audio_language)
        if self.task is Task.QUESTION:
            return f"{head}{tag('question')}{self.question}{tag('answer')}"
        assert self.text_language is not None  # checked in __post_init__
        out = head + tag(self.task.value) + tag(self.text_language)
        out += tag("timestamps" if self.timestamps else "notimestamps")
        if self.first_timestamp is not None:
            out += timestamp_tag(self.first_timestamp)
        if self.instruction is not None:
            out += tag(self.instruction.value)
        return out

    # The official evaluation scripts' prompts (QwenLM/Qwen-Audio eval_audio/evaluate_*.py).
    @classmethod
    def asr(cls, language: str = "en") -> TaskSpec:
        """Speech recognition (evaluate_asr.py): no ITN, no timestamps."""
        return cls(Task.TRANSCRIBE, language, language, instruction=Instruction.WO_ITN)

    @classmethod
    def s2tt(cls, source: str, target: str) -> TaskSpec:
        """Speech translation ``source`` -> ``target`` (evaluate_st.py), with ITN."""
        return cls(Task.TRANSLATE, source, target, instruction=Instruction.ITN)

    @classmethod
    def srwt(cls, language: str = "en") -> TaskSpec:
        """Speech recognition with word timestamps (evaluate_srwt.py), primed with 0.00."""
        return cls(Task.TRANSCRIBE, language, language, timestamps=True, first_timestamp=0.0)

    @classmethod
    def aac(cls, style: Instruction = Instruction.CAPTION_CLOTHO) -> TaskSpec:
        """Audio captioning (evaluate_caption.py); style CAPTION_CLOTHO/_AUDIOCAPS/_PLAIN."""
        return cls(Task.CAPTION, UNKNOWN_LANGUAGE, "en", instruction=style)

    @classmethod
    def scene(cls) -> TaskSpec:
        """Acoustic scene classification (evaluate_scene.py: CochlScene, TUT)."""
        return cls(Task.KEYWORD, UNKNOWN_LANGUAGE, "en", instruction=Instruction.SCENE)

    @classmethod
    def emotion(cls) -> TaskSpec:
        """Speech emotion recognition (evaluate_emotion.py: MELD)."""
        return cls(Task.KEYWORD, "en", "en", instruction=Instruction.EMOTION_RECOGNITION)

    @classmethod
    def vocal_sound(cls) -> TaskSpec:
        """Vocal sound classification (evaluate_vocal_sound.py: VocalSound)."""
        return cls(Task.KEYWORD, "en", "en", instruction=Instruction.VOCAL_CLASSIFICATION)

    @classmethod
    def aqa(cls, question: str) -> TaskSpec:
        """Audio question answering (evaluate_aqa.py: ClothoAQA)."""
        return cls(Task.QUESTION, "en", question=question)

    @classmethod
    def note_analysis(cls) -> TaskSpec:
        """Music note analysis (evaluate_note_analysis.py: NSynth pitch, velocity, instrument)."""
        return cls(Task.KEYWORD, UNKNOWN_LANGUAGE, "en", instruction=Instruction.NOTE_ANALYSIS)
