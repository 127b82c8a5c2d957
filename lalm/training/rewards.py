"""Verifiable rewards for GRPO: pure functions of (generated text, example) -> float in [0, 1].

Every answer reward first takes the final answer out of a "think then answer" output
(`final_answer`): the text after the last ``</think>``, and inside ``<answer>...</answer>`` when
those tags are there. The scores come from lalm's own scorers (`lalm.eval.metrics`,
`lalm.eval.airbench`), so a reward means what the evaluation means:

* ``exact_match``: the stripped answer equals the target (the official exact match);
* ``normalized_match``: equal after Whisper's basic normaliser (case, punctuation, spacing);
* ``choice``: a single-choice item answered with its choice's text or its letter (A-D in the
  order of ``task.choices``, read by the AIR-Bench rule);
* ``wer``: ``1 - min(1, WER)`` of the answer against the target (CER for character languages);
* ``format``: the whole output is ``<think>...</think>`` followed by a non-empty answer;
* ``timestamp_shift``: word timestamps (SRWT items, `Example.words`) scored as lalm-synth's
  SRWT row scores them: the ``wer`` reward of the answer's words times
  ``max(0, 1 - shift / SHIFT_SCALE)``, the shift being the SRWT average shift
  (`lalm.eval.analysis.average_shift`); 0 when no word aligns. The answer may be Qwen-Audio's
  timestamp tags (continuing the primed ``<|0.00|>``) or Qwen2-Audio's ``word (start-end)``
  text, as `lalm.synth.render.render_target` writes them.

A stage combines them with weights (``grpo.rewards: {exact_match: 1.0, format: 0.2}``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from lalm.data.manifest import Example
from lalm.errors import ConfigError, DataError, PromptError, ScoringError
from lalm.eval.airbench import CHOICE_LETTERS, extract_choice
from lalm.eval.analysis import average_shift, parse_word_timestamps
from lalm.eval.metrics import EXACT_MATCH, NORMALIZED_MATCH, accuracy, error_rate
from lalm.prompt import TimedWord, format_timed_words, timestamp_tag

Reward = Callable[[str, Example], float]

_THINK = re.compile(r"\s*<think>.*?</think>\s*\S", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_PLAIN_TIMED_WORD = re.compile(r"(\S+) \((\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)\)")  # word (s-e)
SHIFT_SCALE = 1.0  # seconds of average shift (|dstart| + |dend| a word) that zero the reward


def final_answer(text: str) -> str:
    """The answer part of an output: after the last ``</think>``, inside ``<answer>`` tags when
    present; the whole text otherwise. Stripped."""
    tail = text.rpartition("</think>")[2]
    tagged = _ANSWER.search(tail)
    return (tagged.group(1) if tagged else tail).strip()


def exact_match(text: str, example: Example) -> float:
    """1 when the answer equals the target exactly (module docstring)."""
    return accuracy([final_answer(text)], [example.target], EXACT_MATCH).score


def normalized_match(text: str, example: Example) -> float:
    """1 when the answer equals the target after basic normalisation."""
    return float(_same(final_answer(text), example.target))


def choice(text: str, example: Example) -> float:
    """1 when a single-choice item is answered with the right choice text or letter.

    Raises:
        DataError: the example is not a single-choice item with at most four choices.
    """
    choices, answer = example.task.choices, example.answer
    if not choices or answer is None or len(choices) > len(CHOICE_LETTERS):
        raise DataError(f"example {example.id!r}: the choice reward needs a single-choice item "
                        f"with 1-{len(CHOICE_LETTERS)} choices and an answer")
    said = final_answer(text)
    if _same(said, answer):
        return 1.0
    if any(_same(said, c) for c in choices):
        return 0.0  # another choice's text (which may begin with a letter)
    return float(extract_choice(said) == CHOICE_LETTERS[choices.index(answer)])


def _same(said: str, label: str) -> bool:
    return accuracy([said], [label], NORMALIZED_MATCH).score == 1.0


def wer(text: str, example: Example) -> float:
    """``1 - min(1, WER)`` against the target in the item's spoken language (``en`` if unset)."""
    language = example.task.audio_language or "en"
    return 1.0 - min(1.0, error_rate([final_answer(text)], [example.target], language).score)


def think_format(text: str, example: Example) -> float:
    """1 when the output is ``<think>...</think>`` followed by an answer."""
    return float(bool(_THINK.match(text)))


def _timestamp_tags(answer: str) -> str:
    """An answer's timed words as the tag string `average_shift` reads ("" if unusable)."""
    plain = _PLAIN_TIMED_WORD.findall(answer)
    try:
        if plain:
            return format_timed_words([TimedWord(w, float(a), float(b)) for w, a, b in plain])
    except PromptError:  # a time outside [0, 30] s
        return ""
    return answer if answer.startswith("<|") else timestamp_tag(0.0) + answer


def timestamp_shift(text: str, example: Example) -> float:
    """Words x timing of a timestamped answer (module docstring).

    Raises:
        DataError: the example has no timed words.
    """
    words = [TimedWord(w.word, w.start, w.end) for w in example.words if w.word is not None]
    if not words:
        raise DataError(f"example {example.id!r}: the timestamp_shift reward needs an item "
                        f"with timed words (SRWT)")
    answer = _timestamp_tags(final_answer(text))
    spans = parse_word_timestamps(answer)
    try:
        shift = average_shift([answer], [format_timed_words(words)]).score
    except ScoringError:  # unparsable, or no word aligned
        return 0.0
    said = " ".join(w for w, _, _ in spans or () if w.strip() and "<|" not in w)  # no silences
    return wer(said, example) * max(0.0, 1.0 - shift / SHIFT_SCALE)


REWARDS: dict[str, Reward] = {"exact_match": exact_match, "normalized_match": normalized_match,
                              "choice": choice, "wer": wer, "format": think_format,
                              "timestamp_shift": timestamp_shift}


def register_reward(name: str, reward: Reward) -> None:
    """Make `reward` usable as ``grpo.rewards.<name>`` in this process (e.g. a task's own
    scorer); an existing name is refused.

    Raises:
        ConfigError: the name is taken.
    """
    if name in REWARDS:
        raise ConfigError(f"reward {name!r} exists already")
    REWARDS[name] = reward


def check_rewards(weights: Mapping[str, float]) -> None:
    """Raise `ConfigError` unless `weights` names known rewards with finite numeric weights."""
    if not weights:
        raise ConfigError("grpo.rewards: give at least one reward")
    for name, weight in weights.items():
        if name not in REWARDS:
            raise ConfigError(f"grpo.rewards: unknown reward {name!r}; known: {sorted(REWARDS)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"grpo.rewards.{name}: weight must be a number, got {weight!r}")


def score(texts: Sequence[str], examples: Sequence[Example],
          weights: Mapping[str, float]) -> tuple[list[float], dict[str, float]]:
    """Weighted rewards of N outputs and each reward's mean over them.

    Args:
        texts: N generated answers (stop token removed).
        examples: the N examples they answer.
        weights: reward name -> weight.

    Returns:
        (N total rewards, {"reward_<name>": mean of that reward}).
    """
    parts = {name: [REWARDS[name](t, e) for t, e in zip(texts, examples)] for name in weights}
    totals = [sum(weights[name] * parts[name][i] for name in weights) for i in range(len(texts))]
    means = {f"reward_{name}": sum(v) / len(v) for name, v in parts.items() if v}
    return totals, means
