"""lalm-synth's tasks: each draws one item (audio + typed task + exact answer) from a Generator.

A task function takes (rng, split) and returns an `Item`; the generator core (`generate.py`)
gives it an id, writes its audio and turns it into a manifest `Example`. Everything an answer
states is a parameter the function drew, never something measured from the audio.

Classification items carry a single-choice form (`ExampleTask.choices`, the answer among them)
always in valid/test (these feed the AIR-Bench export) and half of the time in train.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lalm.data.manifest import LANGUAGES, ExampleTask, ExampleTurn, TimedWord
from lalm.synth import music, sounds
from lalm.synth.mixing import concat, mix_at_snr, normalize, overlay, seconds, silence
from lalm.synth.phrasebook import LANGUAGE_NAMES, phrase, phrases_for
from lalm.synth.speech import RATES, random_voice, synthesize, synthesize_words, word_gaps
from lalm.synth.text import english_sentence, number_words, split_of


@dataclass
class Item:
    """One drawn item before it has an id or files.

    Attributes:
        audios: the clips, float32 [N_i] at 16 kHz.
        task: the typed task.
        target: exact expected output text.
        answer: short exact answer, if any.
        words: exact word spans of the (single) audio.
        messages: chat turns (for chat tasks).
        metadata: drawn parameters (JSON values).
    """

    audios: list[np.ndarray]
    task: ExampleTask
    target: str
    answer: str | None = None
    words: tuple[TimedWord, ...] = ()
    messages: tuple[ExampleTurn, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


def _pick(rng: np.random.Generator, options: list[Any] | tuple[Any, ...]) -> Any:
    return options[int(rng.integers(len(options)))]


def _choices(rng: np.random.Generator, answer: str, pool: list[str], k: int = 4) -> tuple[str, ...]:
    """`answer` and up to k - 1 distractors from `pool`, shuffled."""
    others = [p for p in pool if p != answer]
    picked = [str(others[i]) for i in rng.permutation(len(others))[: k - 1]]
    options = [answer, *picked]
    return tuple(options[i] for i in rng.permutation(len(options)))


def _with_choices(question: str, choices: tuple[str, ...]) -> str:
    """The instruction text: the question, then the options (``;``-separated) if any."""
    return question + (f" Choose one of: {'; '.join(choices)}." if choices else "")


def _classify(rng: np.random.Generator, split: str, name: str, question: str, answer: str,
              pool: list[str], audio_language: str | None = None) -> ExampleTask:
    """A classification task spec: open question, or single choice (always off train)."""
    single = split != "train" or rng.random() < 0.5
    choices = _choices(rng, answer, pool) if single else ()
    return ExampleTask(name, audio_language, "en", instruction=_with_choices(question, choices),
                    question=question, choices=choices)


def _spoken_text(rng: np.random.Generator, split: str, language: str) -> tuple[str, dict]:
    """A sentence in `language` for `split`: templated English, or a phrasebook row."""
    if language == "en" and rng.random() < 0.6:
        family, text = english_sentence(rng, split)
        return text, {"template": family}
    index = int(_pick(rng, phrases_for(split)))
    return phrase(index, language), {"phrase": index}


# --- speech ---------------------------------------------------------------------------------

def asr(rng: np.random.Generator, split: str) -> Item:
    language = str(_pick(rng, LANGUAGES))
    text, meta = _spoken_text(rng, split, language)
    voice = random_voice(rng, language)
    task = ExampleTask("asr", language, language, instruction="Transcribe the speech.")
    return Item([synthesize(text, voice)], task, text, metadata={**meta, "voice": voice.to_dict()})


def s2tt(rng: np.random.Generator, split: str) -> Item:
    source, target = (str(x) for x in rng.choice(LANGUAGES, size=2, replace=False))
    index = int(_pick(rng, phrases_for(split)))
    voice = random_voice(rng, source)
    task = ExampleTask("s2tt", source, target,
                    instruction=f"Translate the speech into {LANGUAGE_NAMES[target]}.")
    return Item([synthesize(phrase(index, source), voice)], task, phrase(index, target),
                metadata={"phrase": index, "source_text": phrase(index, source),
                          "voice": voice.to_dict()})


def srwt(rng: np.random.Generator, split: str) -> Item:
    family, text = english_sentence(rng, split)
    words = text.split()
    voice = random_voice(rng, "en", rate="normal")
    audio, spans = synthesize_words(words, voice, word_gaps(rng, len(words)))
    task = ExampleTask("srwt", "en", "en", timestamps=True,
                    instruction="Transcribe the speech with the start and end time of each word.")
    return Item([audio], task, text, words=spans,
                metadata={"template": family, "voice": voice.to_dict()})


def language_id(rng: np.random.Generator, split: str) -> Item:
    language = str(_pick(rng, LANGUAGES))
    text, meta = _spoken_text(rng, split, language)
    voice = random_voice(rng, language, piper_share=0.0)
    answer = LANGUAGE_NAMES[language]
    task = _classify(rng, split, "language_id", "Which language is spoken?", answer,
                     list(LANGUAGE_NAMES.values()), audio_language=language)
    return Item([synthesize(text, voice)], task, answer, answer,
                metadata={**meta, "text": text, "voice": voice.to_dict()})


def speaker_gender(rng: np.random.Generator, split: str) -> Item:
    language = str(_pick(rng, LANGUAGES))
    text, meta = _spoken_text(rng, split, language)
    voice = random_voice(rng, language, piper_share=0.0)
    task = _classify(rng, split, "speaker_gender", "Is the speaker male or female?", voice.gender,
                     ["male", "female"], audio_language=language)
    return Item([synthesize(text, voice)], task, voice.gender, voice.gender,
                metadata={**meta, "text": text, "voice": voice.to_dict()})


def speaking_rate(rng: np.random.Generator, split: str) -> Item:
    language = str(_pick(rng, LANGUAGES))
    text, meta = _spoken_text(rng, split, language)
    rate = str(_pick(rng, list(RATES)))
    voice = random_voice(rng, language, rate=rate, piper_share=0.0)
    task = _classify(rng, split, "speaking_rate", "Is the speech slow, normal or fast?", rate,
                     list(RATES), audio_language=language)
    return Item([synthesize(text, voice)], task, rate, rate,
                metadata={**meta, "text": text, "voice": voice.to_dict(),
                          "words_per_minute": RATES[rate]})


# --- sounds ---------------------------------------------------------------------------------

def _quiet_bed(rng: np.random.Generator, duration: float) -> np.ndarray:
    return 0.02 * sounds.colored_noise(rng, duration, 1.0)


def sound_event(rng: np.random.Generator, split: str) -> Item:
    label = str(_pick(rng, list(sounds.EVENTS)))
    clip, params = sounds.event(label, rng)
    lead = float(rng.integers(100, 800)) / 1000
    audio = overlay(_quiet_bed(rng, seconds(clip.size) + lead + 0.5), clip, int(lead * 16000))
    task = _classify(rng, split, "sound_event", "What sound is heard?", label, list(sounds.EVENTS))
    return Item([normalize(audio)], task, label, label,
                metadata={"event": label, "params": params, "onset_s": lead})


def acoustic_scene(rng: np.random.Generator, split: str) -> Item:
    label = str(_pick(rng, list(sounds.SCENES)))
    duration = float(rng.integers(30, 70)) / 10
    task = _classify(rng, split, "acoustic_scene", "Where was this recorded?", label,
                     list(sounds.SCENES))
    return Item([sounds.scene(label, rng, duration)], task, label, label,
                metadata={"scene": label, "duration_s": duration})


def _sequence(rng: np.random.Generator, clips: list[np.ndarray]) -> tuple[np.ndarray, list[float]]:
    """Clips one after another with random gaps over a quiet bed; returns audio and onsets."""
    parts = [silence(float(rng.integers(200, 600)) / 1000)]
    onsets: list[float] = []
    cursor = parts[0].size
    for clip in clips:
        onsets.append(seconds(cursor))
        gap = silence(float(rng.integers(250, 700)) / 1000)
        parts += [clip, gap]
        cursor += clip.size + gap.size
    audio = concat(parts)
    return normalize(audio + _quiet_bed(rng, seconds(audio.size))), onsets


def event_count(rng: np.random.Generator, split: str) -> Item:
    label = str(_pick(rng, sounds.COUNTABLE))
    count = int(rng.integers(1, 6))
    audio, onsets = _sequence(rng, [sounds.event(label, rng)[0] for _ in range(count)])
    answer = str(count)
    task = _classify(rng, split, "event_count", f"How many times do you hear the {label}?", answer,
                     [str(n) for n in range(1, 7)])
    return Item([audio], task, answer, answer,
                metadata={"event": label, "count": count, "onsets_s": onsets})


def event_order(rng: np.random.Generator, split: str) -> Item:
    labels = [str(x) for x in rng.choice(list(sounds.EVENTS), size=3, replace=False)]
    audio, onsets = _sequence(rng, [sounds.event(x, rng)[0] for x in labels])
    answer = ", then ".join(labels)
    orders = [", then ".join(labels[i] for i in p) for p in
              ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))]
    task = _classify(rng, split, "event_order", "In what order do the sounds occur?", answer,
                     orders)
    return Item([audio], task, answer, answer, metadata={"events": labels, "onsets_s": onsets})


# --- music ----------------------------------------------------------------------------------

def music_pitch(rng: np.random.Generator, split: str) -> Item:
    midi, instrument = int(rng.integers(48, 85)), str(_pick(rng, list(music.INSTRUMENTS)))
    audio = music.note(midi, instrument, float(rng.integers(8, 20)) / 10, rng)
    answer = str(midi)
    task = _classify(rng, split, "music_pitch", "What is the MIDI pitch of the note?", answer,
                     [str(m) for m in range(midi - 7, midi + 8)])
    return Item([audio], task, answer, answer,
                metadata={"midi": midi, "note": music.note_name(midi), "instrument": instrument,
                          "hz": music.midi_to_hz(midi)})


def music_instrument(rng: np.random.Generator, split: str) -> Item:
    midi, instrument = int(rng.integers(48, 80)), str(_pick(rng, list(music.INSTRUMENTS)))
    audio = music.note(midi, instrument, float(rng.integers(8, 20)) / 10, rng)
    task = _classify(rng, split, "music_instrument", "Which instrument plays?", instrument,
                     list(music.INSTRUMENTS))
    return Item([audio], task, instrument, instrument, metadata={"midi": midi,
                                                                 "instrument": instrument})


def chord_quality(rng: np.random.Generator, split: str) -> Item:
    root, quality = int(rng.integers(48, 68)), str(_pick(rng, list(music.CHORDS)))
    instrument = str(_pick(rng, ["sine wave", "organ", "plucked string", "sawtooth wave"]))
    audio = music.chord(root, quality, instrument, float(rng.integers(15, 25)) / 10, rng)
    task = _classify(rng, split, "chord_quality", "What is the quality of this chord?", quality,
                     list(music.CHORDS))
    return Item([audio], task, quality, quality,
                metadata={"root_midi": root, "root": music.note_name(root), "quality": quality,
                          "intervals": list(music.CHORDS[quality]), "instrument": instrument})


def tempo(rng: np.random.Generator, split: str) -> Item:
    bpm = int(rng.integers(12, 37)) * 5  # 60..180 in steps of 5
    instrument = str(_pick(rng, ["sine wave", "bell", "plucked string"]))
    audio = music.beat_pattern(bpm, 12, instrument, rng)
    answer = str(bpm)
    task = _classify(rng, split, "tempo", "What is the tempo in beats per minute?", answer,
                     [str(b) for b in range(60, 185, 20) if abs(b - bpm) >= 20])
    return Item([audio], task, answer, answer, metadata={"bpm": bpm, "instrument": instrument})


# --- mixed audio ----------------------------------------------------------------------------

def _mixture(rng: np.random.Generator, split: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Speech over an event over a scene; the metadata is every fact about the mixture."""
    language = str(_pick(rng, LANGUAGES))
    text, _ = _spoken_text(rng, split, language)
    voice = random_voice(rng, language, piper_share=0.3)
    speech = synthesize(text, voice)
    label = str(_pick(rng, list(sounds.EVENTS)))
    clip, _ = sounds.event(label, rng)
    scene = str(_pick(rng, list(sounds.SCENES)))
    lead = silence(0.5)
    fg = overlay(concat([lead, speech, silence(0.5)]), 0.5 * clip,
                 int(rng.integers(0, max(speech.size, 1))))
    audio = mix_at_snr(fg, sounds.scene(scene, rng, seconds(fg.size)), float(rng.integers(8, 16)))
    facts = {"text": text, "language": language, "gender": voice.gender, "event": label,
             "scene": scene, "voice": voice.to_dict()}
    return audio, facts


def _caption(f: dict[str, Any]) -> str:
    who = "A man" if f["gender"] == "male" else "A woman"
    return (f'{who} speaking {LANGUAGE_NAMES[f["language"]]} says "{f["text"]}", with the sound '
            f'of {f["event"]} over a {f["scene"]} background.')


def mixed_caption(rng: np.random.Generator, split: str) -> Item:
    audio, facts = _mixture(rng, split)
    task = ExampleTask("mixed_caption", None, "en",
                       instruction="Describe the audio in one sentence.")
    return Item([audio], task, _caption(facts), metadata=facts)


_MIXED_QUESTIONS = {  # fact -> (question, pool of answers)
    "text": ("What does the speaker say?", None),
    "event": ("What sound can be heard besides the speech?", list(sounds.EVENTS)),
    "gender": ("Is the speaker male or female?", ["male", "female"]),
    "scene": ("Where does this take place?", list(sounds.SCENES)),
    "language": ("Which language is spoken?", list(LANGUAGE_NAMES.values())),
}


def _mixed_question(rng: np.random.Generator, split: str, name: str, single: bool) -> Item:
    audio, facts = _mixture(rng, split)
    keys = [k for k, (_, pool) in _MIXED_QUESTIONS.items() if pool is not None or not single]
    key = str(_pick(rng, keys))
    question, pool = _MIXED_QUESTIONS[key]
    answer = LANGUAGE_NAMES[facts[key]] if key == "language" else str(facts[key])
    choices = _choices(rng, answer, pool) if single and pool else ()
    task = ExampleTask(name, None, "en", instruction=_with_choices(question, choices),
                    question=question, choices=choices)
    return Item([audio], task, answer, answer, metadata={**facts, "asked": key})


def mixed_qa(rng: np.random.Generator, split: str) -> Item:
    return _mixed_question(rng, split, "mixed_qa", single=False)


def mixed_choice(rng: np.random.Generator, split: str) -> Item:
    return _mixed_question(rng, split, "mixed_choice", single=True)


# --- chat -----------------------------------------------------------------------------------

def chat(rng: np.random.Generator, split: str) -> Item:
    event = str(_pick(rng, list(sounds.EVENTS)))
    instrument, midi = str(_pick(rng, list(music.INSTRUMENTS))), int(rng.integers(55, 80))
    clips = [normalize(sounds.event(event, rng)[0]), music.note(midi, instrument, 1.2, rng)]
    q1, q2 = "What sound is in Audio 1?", "And which instrument plays in Audio 2?"
    a1, a2 = f"The sound in Audio 1 is: {event}.", f"The instrument in Audio 2 is: {instrument}."
    messages = (ExampleTurn("user", q1, (0, 1)), ExampleTurn("assistant", a1),
                ExampleTurn("user", q2), ExampleTurn("assistant", a2))
    task = ExampleTask("chat", None, "en", instruction=q2, question=q2)
    return Item(clips, task, a2, instrument, messages=messages,
                metadata={"event": event, "instrument": instrument, "midi": midi})


def _arithmetic(rng: np.random.Generator, split: str) -> tuple[str, int]:
    """A spoken-style sum or difference whose text falls in `split`."""
    while True:
        a, b = int(rng.integers(2, 50)), int(rng.integers(2, 50))
        if rng.random() < 0.5:
            text, value = f"What is {number_words(a)} plus {number_words(b)}?", a + b
        else:
            a, b = max(a, b), min(a, b)
            text, value = f"What is {number_words(a)} minus {number_words(b)}?", a - b
        if split_of(text) == split:
            return text, value


def voice_chat(rng: np.random.Generator, split: str) -> Item:
    question, value = _arithmetic(rng, split)
    voice = random_voice(rng, "en")
    answer = f"{number_words(value).capitalize()}."
    messages = (ExampleTurn("user", "", (0,)), ExampleTurn("assistant", answer))
    task = ExampleTask("voice_chat", "en", "en", question=question)
    return Item([synthesize(question, voice)], task, answer, str(value), messages=messages,
                metadata={"spoken_question": question, "voice": voice.to_dict()})


def text_chat(rng: np.random.Generator, split: str) -> Item:
    if rng.random() < 0.5:
        question, value = _arithmetic(rng, split)
        answer, short = f"{number_words(value).capitalize()}.", str(value)
    else:
        index = int(_pick(rng, phrases_for(split)))
        target = str(_pick(rng, LANGUAGES[1:]))
        question = (f'Translate "{phrase(index, "en")}" into {LANGUAGE_NAMES[target]}.')
        answer = short = phrase(index, target)
    messages = (ExampleTurn("user", question), ExampleTurn("assistant", answer))
    task = ExampleTask("text_chat", None, "en", instruction=question, question=question)
    return Item([], task, answer, short, messages=messages)


TaskFn = Callable[[np.random.Generator, str], Item]

#: Every task: name -> (category, function). Categories follow AIR-Bench's (speech, sound,
#: music, mixed) plus chat.
TASKS: dict[str, tuple[str, TaskFn]] = {
    "asr": ("speech", asr), "s2tt": ("speech", s2tt), "srwt": ("speech", srwt),
    "language_id": ("speech", language_id), "speaker_gender": ("speech", speaker_gender),
    "speaking_rate": ("speech", speaking_rate),
    "sound_event": ("sound", sound_event), "acoustic_scene": ("sound", acoustic_scene),
    "event_count": ("sound", event_count), "event_order": ("sound", event_order),
    "music_pitch": ("music", music_pitch), "music_instrument": ("music", music_instrument),
    "chord_quality": ("music", chord_quality), "tempo": ("music", tempo),
    "mixed_caption": ("mixed", mixed_caption), "mixed_qa": ("mixed", mixed_qa),
    "mixed_choice": ("mixed", mixed_choice),
    "chat": ("chat", chat), "voice_chat": ("chat", voice_chat), "text_chat": ("chat", text_chat),
}
