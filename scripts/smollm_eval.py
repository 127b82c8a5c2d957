"""The SmolLM2 audio model's quality bars (issue 18), measured in one run.

    python scripts/smollm_eval.py [--model DIR] [--out report.json] [--speech DIR]

* real recorded English speech (`lalm.testing.real_speech`: Debian's pocketsphinx-testdata):
  the model's WER next to Whisper tiny.en's own (its CTranslate2 weights, the encoder the model
  uses, with Whisper's decoder, greedy, through ctranslate2) on the same clips;
* text-only chat: 50 fixed questions (`lalm.smollm_chat.EVAL_QUESTIONS`), greedy; how many
  of the model's answers equal SmolLM2-135M-Instruct's own (the untrained `lalm from-parts`
  model: the same GGUF decoder, whose logits tests/parity/test_gguf_parity.py checks against
  transformers');
* held-out synthetic English speech: lalm-synth medium's ASR and srwt test items in English
  (`lalm.smollm_model.english_asr_manifest`: sentences of the test split, never trained on),
  transcribed greedily; WER (made or resumed at ``--speech``);
* held-out spoken natural sentences: `lalm.synth.sentences`' test items (sentences of its test
  split, eSpeak NG voices held out of training), greedy; WER (made or resumed at
  ``--sentences``);
* every lalm-synth family: read from the model's card (the lalm-synth test split, scored when
  the model was built), when the folder has one.

Prints the figures and writes them as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lalm.smollm_chat import EVAL_QUESTIONS as QUESTIONS



def whisper_tiny_transcripts(clips: list[Path]) -> list[str]:
    """Whisper tiny.en (its CTranslate2 weights, its own decoder) greedy, one 30-s window each."""
    import ctranslate2
    from tokenizers import Tokenizer

    from lalm.assets import asset_path
    from lalm.audio import load_audio, log_mel_padded

    folder = asset_path("whisper-tiny.en-ct2")
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32",
                                       intra_threads=1)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    prompt = ["<|startoftranscript|>", "<|notimestamps|>"]
    texts = []
    for clip in clips:
        mel = log_mel_padded(load_audio(str(clip)), 80).numpy()[None].astype(np.float32)
        result = model.generate(ctranslate2.StorageView.from_array(mel), [prompt],
                                beam_size=1, max_length=200)[0]
        texts.append(tokenizer.decode(result.sequences_ids[0]).strip())
    return texts


def main() -> None:
    from lalm.demo import CARD
    from lalm.eval.metrics import error_rate
    from lalm.generation import GenerationOptions, Pipeline
    from lalm.data.manifest import read_manifest
    from lalm.smollm_model import (SENTENCES, SPEECH_SIZE, SPEECH_TASKS, english_asr_manifest,
                                   init_from_parts, smollm_model_dir, synth_work_dir)
    from lalm.synth import generate
    from lalm.synth.sentences import make_sentence_speech
    from lalm.testing.real_speech import real_speech_clips

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="the model folder (default: lalm's cache)")
    ap.add_argument("--out", default="smollm_eval.json")
    ap.add_argument("--questions", type=int, default=50, help="the first N of the 50")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="greedy answer budget")
    ap.add_argument("--speech", default=None, help="lalm-synth medium asr+srwt folder "
                    "(default: lalm-synth-speech beside the default model's lalm-synth)")
    ap.add_argument("--sentences", default=None, help="lalm.synth.sentences folder (default: "
                    "lalm-synth-sentences beside the default model's lalm-synth)")
    args = ap.parse_args()
    folder = Path(args.model) if args.model else smollm_model_dir()
    pipe = Pipeline.from_pretrained(folder)
    greedy = GenerationOptions(max_new_tokens=args.max_new_tokens)
    report: dict = {"model": str(folder)}

    t = time.perf_counter()
    clips = real_speech_clips()
    paths, refs = [p for p, _ in clips], [r for _, r in clips]
    ours = [pipe.chat("Transcribe the speech.", [p], greedy).text for p in paths]
    theirs = whisper_tiny_transcripts(paths)
    report["real_speech"] = {
        "clips": len(paths), "wer": error_rate(ours, refs, "en").score,
        "whisper_tiny_en_wer": error_rate(theirs, refs, "en").score,
        "items": [{"clip": p.name, "reference": r, "model": o, "whisper_tiny_en": w}
                  for p, r, o, w in zip(paths, refs, ours, theirs)],
        "seconds": time.perf_counter() - t}
    print(f"real speech ({len(paths)} clips): WER {report['real_speech']['wer']:.3f}, Whisper "
          f"tiny.en {report['real_speech']['whisper_tiny_en_wer']:.3f}", flush=True)

    work = synth_work_dir()
    speech = Path(args.speech) if args.speech else work / "lalm-synth-speech"
    sentences = Path(args.sentences) if args.sentences else work / "lalm-synth-sentences"

    def transcribe(model: Pipeline, key: str, title: str, manifest: Path, t: float) -> None:
        items = read_manifest(manifest)
        heard = [model.chat(e.task.instruction, [manifest.parent / e.audios[0].path],
                           greedy).text for e in items]
        report[key] = {
            "items": len(items), "wer": error_rate(heard, [e.target for e in items], "en").score,
            "manifest": str(manifest),
            "answers": [{"id": e.id, "reference": e.target, "model": h}
                        for e, h in zip(items, heard)],
            "seconds": time.perf_counter() - t}
        print(f"{title} ({len(items)} items): WER {report[key]['wer']:.3f}", flush=True)

    t = time.perf_counter()
    generate(speech, SPEECH_SIZE, 0, list(SPEECH_TASKS))
    transcribe(pipe, "synthetic_english_asr", "held-out synthetic English ASR",
               english_asr_manifest(speech), t)
    t = time.perf_counter()
    make_sentence_speech(sentences, "test", SENTENCES[1])
    transcribe(pipe, "held_out_sentences", "held-out spoken sentences (held-out voices)",
               sentences / "test.jsonl", t)

    t = time.perf_counter()
    questions = QUESTIONS[: args.questions]
    answers = [pipe.chat(q, [], greedy).text for q in questions]
    del pipe
    reference_dir = folder.with_name(folder.name + ".reference")
    if not (reference_dir / "config.json").is_file():
        init_from_parts(reference_dir)
    reference = Pipeline.from_pretrained(reference_dir)
    own = [reference.chat(q, [], greedy).text for q in questions]
    agree = sum(a == b for a, b in zip(answers, own))
    report["text_chat"] = {"questions": len(questions), "agree": agree,
                           "items": [{"q": q, "model": a, "smollm2": b}
                                     for q, a, b in zip(questions, answers, own)],
                           "seconds": time.perf_counter() - t}
    print(f"text-only chat: {agree}/{len(questions)} answers equal SmolLM2-Instruct's own",
          flush=True)

    if (folder / CARD).is_file():  # the card of a published model: its lalm-synth scores
        scores = json.loads((folder / CARD).read_text(encoding="utf-8"))["scores"]
        report["lalm_synth"] = scores
    Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
