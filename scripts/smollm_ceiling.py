"""How well can the frozen SmolLM2-135M-Instruct decoder transcribe at all? (issue 18)

    python scripts/smollm_ceiling.py [--model DIR] [--out ceiling.json] [--speech DIR]

A projector (or an adapted encoder) in front of a frozen decoder can at best hand it the words.
This measures what the decoder makes of the words when it is handed them exactly, on the bars'
own items (`lalm.testing.real_speech`'s 10 clips and the 55 held-out synthetic English items of
`lalm.smollm_model.english_asr_manifest`), greedy, scored by the bars' WER:

* ``text``: the reference transcript written into the prompt as text, after each instruction
  of `TEMPLATES` (no audio);
* ``embeddings``: the audio slot filled with the transcript's own token embeddings, in place
  of the projector's rows (`TranscriptRows`), laid out ``once`` (each token once, then the
  embedding of a space up to the clip's row count) or ``stretch`` (each token repeated evenly
  over the clip's rows, as speech spreads over time); the prompt is the training one.

The text figures are the same for any model folder whose SmolLM2 decoder is frozen; the
embedding figures also depend on the model's audio BOS/EOS rows around the slot. Prints the
figures and writes them as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor, nn

#: Instructions the reference text follows in the ``text`` ceiling ({t}: the transcript).
TEMPLATES = ("Transcribe the speech.\n{t}", "Repeat exactly: {t}",
             'Write this sentence again, exactly: "{t}"')


class TranscriptRows(nn.Module):
    """A stand-in projector whose rows are the token embeddings of `ids` (set per clip), as many
    as the real projector `base` makes of the clip.

    Args:
        base: the model's projector (its row count rule is kept).
        embed: [V, D] the decoder's input embedding.
        space: the id whose row pads ``once`` layouts.
        layout: ``once`` or ``stretch``.
    """

    def __init__(self, base: nn.Module, embed: Tensor, space: int, layout: str) -> None:
        super().__init__()
        self.base, self.embed, self.space, self.layout = base, embed, space, layout
        self.ids: list[int] = []

    def row_counts(self, x_lens: Tensor) -> Tensor:
        """[B] rows per clip of [B] encoder lengths: the real projector's."""
        return self.base.row_counts(x_lens)

    def forward(self, x: Tensor, x_lens: Tensor) -> list[Tensor]:
        """[1, N, D_enc] encoder output -> one [R, D] tensor of transcript rows (R:
        `row_counts`)."""
        if len(x_lens) != 1 or not self.ids:
            raise ValueError("TranscriptRows: one clip at a time, with its transcript ids set")
        n = int(self.row_counts(x_lens)[0])
        ids = torch.tensor(self.ids)
        if self.layout == "stretch":
            idx = ids[(torch.arange(n) * len(ids)) // n]
        else:
            idx = torch.cat([ids, torch.full((max(0, n - len(ids)),), self.space)])[:n]
        return [self.embed[idx]]


def main() -> None:
    from lalm.data.manifest import read_manifest
    from lalm.eval.metrics import error_rate
    from lalm.generation import GenerationOptions, Pipeline
    from lalm.generation.encoder_cache import EncoderCache
    from lalm.smollm_model import (SPEECH_SIZE, SPEECH_TASKS, english_asr_manifest,
                                   smollm_model_dir, synth_work_dir)
    from lalm.synth import generate
    from lalm.testing.real_speech import real_speech_clips

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="the model folder (default: lalm's cache)")
    ap.add_argument("--out", default="smollm_ceiling.json")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="greedy answer budget")
    ap.add_argument("--speech", default=None, help="lalm-synth medium asr+srwt folder "
                    "(default: lalm-synth-speech beside the default model's lalm-synth)")
    args = ap.parse_args()
    pipe = Pipeline.from_pretrained(Path(args.model) if args.model else smollm_model_dir())
    greedy = GenerationOptions(max_new_tokens=args.max_new_tokens)
    work = synth_work_dir()
    speech = Path(args.speech) if args.speech else work / "lalm-synth-speech"
    generate(speech, SPEECH_SIZE, 0, list(SPEECH_TASKS))
    manifest = english_asr_manifest(speech)
    sets = {"real_speech": [(p, "Transcribe the speech.", r) for p, r in real_speech_clips()],
            "synthetic_english_asr": [(manifest.parent / e.audios[0].path, e.task.instruction,
                                       e.target) for e in read_manifest(manifest)]}
    report: dict = {"model": args.model, "text": {}, "embeddings": {}}

    def score(kind: str, name: str, answers: dict[str, list[str]]) -> None:
        report[kind][name] = {
            key: {"wer": error_rate(answers[key], [r for _, _, r in items], "en").score,
                  "answers": answers[key]} for key, items in sets.items()}
        print(f"{kind} {name}: " + ", ".join(
            f"{key} WER {v['wer']:.3f}" for key, v in report[kind][name].items()), flush=True)

    for template in TEMPLATES:
        score("text", template, {key: [pipe.chat(template.format(t=r.strip()), [], greedy).text
                                       for _, _, r in items] for key, items in sets.items()})
    model, tokenizer = pipe.model, pipe.tokenizer
    projector = model.projector
    pipe.encoder_cache = EncoderCache(0)  # every clip's rows made anew: they are per layout
    for layout in ("once", "stretch"):
        rows = TranscriptRows(projector, model.decoder.embed.weight.detach(),
                              tokenizer.encode(" ")[-1], layout)
        model.projector = rows
        answers = {}
        for key, items in sets.items():
            answers[key] = []
            for clip, instruction, reference in items:
                rows.ids = tokenizer.encode(" " + reference.strip())
                answers[key].append(pipe.chat(instruction, [clip], greedy).text)
        score("embeddings", layout, answers)
    model.projector = projector
    Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
