"""lalm's Whisper tiny.en encoder (real weights) against CTranslate2's ``encode``, on CPU.

Both engines get the same log-mel features of the same real speech (piper, ~10 s) from lalm's
front end. CTranslate2's Whisper (like every Whisper runtime) is fed the 30 s padded window;
lalm runs that window too (same work, so the ratio compares the engines) and its own real-length
path (what lalm does in practice: only the clip's frames). Time is CPU time of this process
(all threads) per second of speech, the median of ``--repeats`` runs after one warm-up run;
both engines use ``--threads`` threads.

fp32: lalm float32 vs CTranslate2 ``compute_type="float32"`` (the file's fp16 weights upcast).
int8: lalm with torch dynamic int8 quantization of its Linear layers, one scale per output row
(convolutions stay fp32)
vs CTranslate2 ``compute_type="int8"`` (int8 weights, including the convolutions).

Run:  .venv/bin/python bench/bench_whisper_encoder.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lalm.assets import asset_path
from lalm.audio import HOP_LENGTH, SAMPLE_RATE, log_mel_padded, log_mel_spectrogram
from lalm.checkpoint.whisper import build_whisper_encoder, load_whisper_encoder
from lalm.testing.speech import synthesize_speech


def measure(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (process CPU time, wall time) of ``run()`` over ``repeats`` calls, in seconds,
    after one warm-up call."""
    run()
    cpu, wall = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        run()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return statistics.median(cpu), statistics.median(wall)


def relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for both engines")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case")
    args = parser.parse_args(argv)
    import ctranslate2

    torch.set_num_threads(args.threads)
    model_dir = str(asset_path("whisper-tiny.en-ct2"))
    audio = synthesize_speech()
    speech_s = audio.shape[0] / SAMPLE_RATE
    length = audio.shape[0] // HOP_LENGTH
    padded = log_mel_padded(audio, 80)[None]  # [1, 80, 3000]
    padded_lalm = F.pad(padded, (0, 2))  # + the conv stem's zero padding as lookahead frames
    real = log_mel_spectrogram(audio, 80, lookahead=2)[None]  # [1, 80, L + 2]
    padded_lens, real_lens = torch.tensor([3000]), torch.tensor([length])

    encoder, ln_post = build_whisper_encoder(load_whisper_encoder(model_dir))
    with warnings.catch_warnings():  # torch marks its eager int8 quantization as deprecated
        warnings.simplefilter("ignore")
        encoder_int8 = torch.ao.quantization.quantize_dynamic(  # per-row scales, as CT2's
            copy.deepcopy(encoder), {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig})

    def lalm(model: nn.Module, features: Tensor, lens: Tensor) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with torch.inference_mode():
                return ln_post(model(features, lens)[0])
        return run

    def ct2(compute_type: str) -> Callable[[], Tensor]:
        model = ctranslate2.models.Whisper(model_dir, device="cpu", compute_type=compute_type,
                                           intra_threads=args.threads)
        view = ctranslate2.StorageView.from_array(padded.numpy())

        def run() -> Tensor:
            return torch.from_numpy(np.array(model.encode(view, to_cpu=True)))
        return run

    cases = {
        "ctranslate2 fp32, 30 s window": ct2("float32"),
        "lalm fp32, 30 s window": lalm(encoder, padded_lalm, padded_lens),
        "lalm fp32, real length": lalm(encoder, real, real_lens),
        "ctranslate2 int8, 30 s window": ct2("int8"),
        "lalm int8, 30 s window": lalm(encoder_int8, padded_lalm, padded_lens),
        "lalm int8, real length": lalm(encoder_int8, real, real_lens),
    }
    print(f"Whisper tiny.en encoder, {speech_s:.2f} s of speech, {args.threads} threads, "
          f"torch {torch.__version__}, ctranslate2 {ctranslate2.__version__}")
    times = {}
    for name, run in cases.items():
        times[name], wall = measure(run, args.repeats)
        print(f"  {name:30s} {times[name] / speech_s:7.4f} s CPU per audio second "
              f"({times[name]:6.3f} s CPU, {wall:6.3f} s wall)")
    for kind in ("fp32", "int8"):
        reference = times[f"ctranslate2 {kind}, 30 s window"]
        print(f"  ratio lalm / ctranslate2 ({kind}): same 30 s window "
              f"{times[f'lalm {kind}, 30 s window'] / reference:.2f}, lalm real length "
              f"{times[f'lalm {kind}, real length'] / reference:.2f}")

    outputs = {name: run() for name, run in cases.items()}
    n = (length - 1) // 2 + 1
    ct2_fp32 = outputs["ctranslate2 fp32, 30 s window"]
    print("Agreement (relative L2 error):")
    print(f"  lalm fp32 vs ctranslate2 fp32, 30 s window: "
          f"{relative_error(outputs['lalm fp32, 30 s window'], ct2_fp32):.2e}")
    print(f"  ctranslate2 int8 vs its fp32:                "
          f"{relative_error(outputs['ctranslate2 int8, 30 s window'], ct2_fp32):.2e}")
    print(f"  lalm int8 vs lalm fp32:                      "
          f"{relative_error(outputs['lalm int8, 30 s window'], outputs['lalm fp32, 30 s window']):.2e}")
    print(f"  lalm real length vs 30 s window (first {n} rows): "
          f"{relative_error(outputs['lalm fp32, real length'], ct2_fp32[:, :n]):.2e}")


if __name__ == "__main__":
    main()
