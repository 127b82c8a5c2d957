"""Realtime transcription latency: end of speech to the final transcript, over /v1/realtime.

A real ``lalm serve`` on loopback (a tiny random Qwen2-Audio by default, or ``--model DIR``)
gets real English speech (the Piper voice, sentences with 0.4-0.9 s pauses:
`lalm.testing.speech.speech_recording`) as base64 PCM16 in 100-ms chunks, paced at real time
(``--speed 2`` sends twice as fast). For each utterance (a segment that voice activity ended,
``silence_duration_ms`` 400) it prints:

* **end of speech -> completed**: from sending the chunk that holds the utterance's last speech
  sample to receiving its ``...transcription.completed`` event: what a user waits. It includes
  the silence the voice-activity detector must hear before it ends the segment;
* **end of speech -> first delta**: the same, to the item's first ``...transcription.delta``
  (the first words on screen);
* **committed -> completed**: from the ``input_audio_buffer.committed`` event to
  ``completed``: the model run through the server's batcher, plus the protocol;
* **offline**: `Pipeline.transcribe` of the same samples (one prompt, same max_new_tokens) in
  this process, on the same machine, in the same run: the model run alone.

The ratio (committed -> completed) / offline is the realtime path's overhead over the model run.

    .venv/bin/python bench/bench_realtime.py                      # tiny random model
    .venv/bin/python bench/bench_realtime.py --model DIR --max-tokens 64 --sentences 10
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from websockets.sync.client import connect

from lalm.testing.server import running_server, save_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
CHUNK = 1600  # 100 ms at 16 kHz
SILENCE_MS = 400


def stream(url: str, audio: np.ndarray, speed: float) -> tuple[list[float], list[tuple]]:
    """Send ``audio`` in real-time-paced chunks; (send time of each chunk, received events as
    (arrival time, event))."""
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2").tobytes()
    received: list[tuple[float, dict]] = []
    sent: list[float] = []
    with connect(url, open_timeout=60, max_size=None) as ws:
        json.loads(ws.recv(timeout=60))  # session.created
        ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {
            "turn_detection": {"type": "server_vad", "silence_duration_ms": SILENCE_MS}}}}}))
        json.loads(ws.recv(timeout=60))

        def receive() -> None:
            try:
                while True:
                    event = json.loads(ws.recv(timeout=30))
                    received.append((time.perf_counter(), event))
            except Exception:  # noqa: BLE001 (the socket closed or went quiet: done)
                return

        reader = threading.Thread(target=receive)
        reader.start()
        start = time.perf_counter()
        for k, lo in enumerate(range(0, len(pcm), 2 * CHUNK)):
            wait = start + k * CHUNK / 16000 / speed - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sent.append(time.perf_counter())
            ws.send(json.dumps({"type": "input_audio_buffer.append",
                                "audio": base64.b64encode(pcm[lo:lo + 2 * CHUNK]).decode()}))
        reader.join()
    return sent, received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: tiny)")
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--speed", type=float, default=1.0, help="x real time")
    args = parser.parse_args()

    from lalm.generation import Pipeline
    from lalm.testing.speech import speech_recording

    audio, _ = speech_recording(args.sentences, seed=11)
    audio = np.concatenate([audio, np.zeros(16000, np.float32)])
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else save_tiny_checkpoint(
            Path(tmp) / "tiny", REPO.parent / "shared" / "fixtures" / "qwen2_audio_tokenizer")
        with running_server(model, "--default-max-tokens", str(args.max_tokens),
                            log=Path(tmp) / "server.log") as server:
            url = server.url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
            sent, received = stream(url, audio, args.speed)
        pipe = Pipeline.from_pretrained(model)
    at: dict[tuple[str, str | None], tuple[float, dict]] = {}
    for t, e in received:  # the first event of each type per item
        at.setdefault((e["type"], e.get("item_id")), (t, e))
    received_pcm = np.frombuffer(np.clip(np.round(audio * 32767), -32768, 32767)
                                 .astype("<i2").tobytes(), "<i2").astype(np.float32) / 32768
    rows = []
    for t_stop, stop in ((t, e) for t, e in received
                         if e["type"] == "input_audio_buffer.speech_stopped"):
        item = stop["item_id"]
        if ("conversation.item.input_audio_transcription.completed", item) not in at:
            continue
        t_done, _ = at["conversation.item.input_audio_transcription.completed", item]
        t_first, _ = at.get(("conversation.item.input_audio_transcription.delta", item),
                            (t_done, None))
        t_commit, commit = at["input_audio_buffer.committed", item]
        last_speech = stop["audio_end_ms"] * 16 - 1
        t_speech_end = sent[last_speech // CHUNK]
        clip = received_pcm[commit["audio_start_ms"] * 16:commit["audio_end_ms"] * 16]
        start = time.perf_counter()
        pipe.transcribe([clip], long_form=None, max_new_tokens=args.max_tokens)
        offline = time.perf_counter() - start
        rows.append((clip.shape[0] / 16000, t_done - t_speech_end, t_first - t_speech_end,
                     t_done - t_commit, offline))
    print(f"model {model.name if args.model else 'tiny random'}, {len(rows)} utterances, "
          f"{audio.shape[0] / 16000:.1f} s of speech at {args.speed:g}x real time, "
          f"silence_duration_ms {SILENCE_MS}, max_tokens {args.max_tokens}")
    print("segment s | end of speech -> completed ms | -> first delta ms | "
          "committed -> completed ms | offline ms")
    for seconds, eos, first, commit, offline in rows:
        print(f"{seconds:9.2f} | {1000 * eos:29.0f} | {1000 * first:17.0f} | "
              f"{1000 * commit:25.0f} | {1000 * offline:10.0f}")
    if not rows:
        sys.exit("no utterance completed")
    med = [statistics.median(col) for col in list(zip(*rows))[1:]]
    print(f"median: end of speech -> completed {1000 * med[0]:.0f} ms, -> first delta "
          f"{1000 * med[1]:.0f} ms, committed -> completed {1000 * med[2]:.0f} ms, offline "
          f"{1000 * med[3]:.0f} ms; (committed -> completed) / offline = {med[2] / med[3]:.2f}")


if __name__ == "__main__":
    main()
