"""Task metrics during training: decode a held-out slice through the pipeline and score it.

The slice's examples are rendered exactly as the dataset renders them for training
(`lalm.data.render.render_prompt`), decoded greedily by `lalm.generation.pipeline.Pipeline` (the
one place that knows the whole inference path) and scored with `lalm.eval.metrics`:

* ``wer_<lang>``: ASR items, word (or character) error rate per spoken language;
* ``bleu_<lang>``: speech translation items, corpus BLEU per target language;
* ``accuracy``: items with a short exact answer (classification, single choice, counting),
  exact match of the output with the target.

Other items (captions, chat, timestamps) are decoded by nothing here; evaluate them with
``lalm eval``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from lalm.data.manifest import Example
from lalm.data.render import render_prompt, task_spec
from lalm.eval.metrics import accuracy, bleu, error_rate
from lalm.generation import GenerationOptions
from lalm.generation.pipeline import Pipeline, Request
from lalm.model import AudioLanguageModel
from lalm.tokenizer import Tokenizer


def metric_kind(example: Example) -> str | None:
    """The metric an example counts towards (``wer_en``, ``bleu_de``, ``accuracy``) or None."""
    task = example.task
    if example.messages or task.timestamps:
        return None
    if task.name == "asr" and task.audio_language:
        return f"wer_{task.audio_language}"
    if task.name == "s2tt":
        return f"bleu_{task.output_language}"
    if example.answer is not None or task.choices:
        return "accuracy"
    return None


@torch.no_grad()
def task_metrics(model: AudioLanguageModel, tokenizer: Tokenizer, examples: Sequence[Example],
                 max_new_tokens: int = 64, batch_size: int = 8) -> dict[str, float]:
    """Decode the scorable examples and score them (module docstring).

    Args:
        model: the model (unwrapped); put in eval mode for decoding, back in train mode after.
        tokenizer: its tokenizer (the family picks the prompts).
        examples: held-out examples with absolute audio paths.
        max_new_tokens: decoding budget per item.
        batch_size: prompts decoded together.

    Returns:
        ``{metric: value}`` for every metric with at least one item; WER as a fraction, BLEU in
        0-100, accuracy in 0-1.
    """
    scorable = [(e, kind) for e in examples if (kind := metric_kind(e)) is not None]
    if not scorable:
        return {}
    was_training = model.training
    model.eval()
    try:
        pipe = Pipeline(model, tokenizer, GenerationOptions(max_new_tokens=max_new_tokens))
        requests = [Request(render_prompt(e, tokenizer.family), task_spec(e, tokenizer.family))
                    for e, _ in scorable]
        results = pipe.generate(requests, batch_size=batch_size)
    finally:
        model.train(was_training)
    groups: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for (example, kind), result in zip(scorable, results):
        text = result.parsed.text if result.parsed is not None else result.text
        groups[kind][0].append(text.strip())
        groups[kind][1].append(example.target)
    scores = {}
    for kind, (hyps, refs) in sorted(groups.items()):
        if kind.startswith("wer_"):
            scores[kind] = error_rate(hyps, refs, kind[4:]).score
        elif kind.startswith("bleu_"):
            scores[kind] = bleu(hyps, refs, kind[5:]).score
        else:
            scores[kind] = accuracy(hyps, refs).score
    return scores
