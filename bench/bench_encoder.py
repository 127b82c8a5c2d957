"""Audio encoder + projector: lalm (real length) vs transformers' Qwen2-Audio (30 s padded).

Same weights (a transformers model saved with `save_pretrained`, loaded by lalm's converter),
same clips. Each side gets its own front end's features (transformers: WhisperFeatureExtractor,
30 s pad; lalm: `batch_log_mel` over the real length); the timed part is the encoder and
projector. Outputs are checked equal on every clip's audio rows before timing.

Run:  PYTHONPATH=. .venv/bin/python bench/bench_encoder.py [--layers 4] [--dim 1280] [--repeats 3]
(the released encoder is 32 layers of width 1280: ratios barely depend on depth, so fewer layers
keep the run short on a shared CPU).
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers
from _common import best_alternating, clips, librispeech_like

from lalm.audio import batch_log_mel
from lalm.checkpoint import load_model
from lalm.testing.models import randomize_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = transformers.Qwen2AudioConfig(
        audio_config={"d_model": args.dim, "encoder_attention_heads": args.dim // 64,
                      "encoder_ffn_dim": 4 * args.dim, "encoder_layers": args.layers,
                      "num_mel_bins": 128, "max_source_positions": 1500},
        text_config={"model_type": "qwen2", "vocab_size": 1024, "hidden_size": 256,
                     "intermediate_size": 512, "num_hidden_layers": 1, "num_attention_heads": 4,
                     "num_key_value_heads": 4, "tie_word_embeddings": False})
    reference = transformers.Qwen2AudioForConditionalGeneration(config)
    randomize_(reference, seed=0, std=0.02)
    reference.eval()
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(tmp)
        model = load_model(tmp, dtype="fp32")
    extractor = transformers.WhisperFeatureExtractor(feature_size=128)
    tower, projector = reference.model.audio_tower, reference.model.multi_modal_projector

    def run_reference(feats: dict) -> torch.Tensor:
        lens = feats["attention_mask"].sum(-1)
        n = (lens - 1) // 2 + 1
        bias = torch.zeros(len(lens), 1500).masked_fill(
            torch.arange(1500)[None] >= n[:, None], torch.finfo(torch.float32).min)
        with torch.inference_mode():
            hidden = tower(feats["input_features"], bias[:, None, None]).last_hidden_state
            return projector(hidden)

    def run_lalm(features: torch.Tensor, lens: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode():
            return model.embed_audio(features, lens)

    mix = librispeech_like(8)
    cases = [("5 s clips x4", [5.0] * 4, False), ("30 s clips x2", [29.99] * 2, False),
             ("LibriSpeech-like mix x8", mix, False),
             ("same mix, lalm clip by clip", mix, True)]
    print(f"encoder {args.layers} layers x {args.dim}, {args.threads} threads, best of "
          f"{args.repeats} alternating rounds")
    print(f"{'case':28s} {'audio s':>8s} {'transformers s':>15s} {'lalm s':>8s} {'ratio':>6s} "
          f"{'max rel err':>11s}")
    for name, seconds, one_by_one in cases:
        audio = clips(seconds, seed=len(seconds))
        feats = extractor(audio, sampling_rate=16000, return_attention_mask=True,
                          padding="max_length", return_tensors="pt")
        # lalm: one padded batch, or (one_by_one) each clip alone: no padding at all
        groups = [[a] for a in audio] if one_by_one else [audio]
        inputs = [batch_log_mel(group, 128, "ceil") for group in groups]
        lens = torch.cat([n for _, n in inputs])
        assert lens.tolist() == feats["attention_mask"].sum(-1).tolist()

        def lalm_all(inputs=inputs) -> list[torch.Tensor]:
            return [rows for x, n in inputs for rows in run_lalm(x, n)]

        expected, ours = run_reference(feats), lalm_all()
        err = max(float((o - e[: o.shape[0]]).abs().max() / e[: o.shape[0]].abs().max())
                  for o, e in zip(ours, expected))
        assert err < 1e-4, f"outputs differ: {err:.2e}"
        best = best_alternating({"reference": lambda f=feats: run_reference(f),
                                 "lalm": lalm_all}, args.repeats)
        t_ref, t_ours = best["reference"], best["lalm"]
        print(f"{name:28s} {sum(seconds):8.1f} {t_ref:15.3f} {t_ours:8.3f} "
              f"{t_ref / t_ours:5.2f}x {err:11.1e}")


if __name__ == "__main__":
    main()
