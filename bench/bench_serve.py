"""Serving throughput and latency: `lalm serve` under 1, 4 and 16 concurrent clients.

Each client sends chat requests (a short clip + a question, ``max_tokens`` fixed, greedy)
one after another over loopback. Reported per concurrency: requests/s, generated tokens/s and
the p50 / p99 request latency, for the batching server (``--max-batch-size 16``) and for the
same server forced to run one request at a time (``--max-batch-size 1``); the headline figure
is the batched / sequential throughput ratio at 16 clients (goal >= 4x).

    .venv/bin/python bench/bench_serve.py                  # tiny random model (needs ../shared)
    .venv/bin/python bench/bench_serve.py --model DIR --max-tokens 32
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lalm.testing.server import running_server, save_tiny_checkpoint, wav_bytes

REPO = Path(__file__).resolve().parents[1]


def _body(model: str, max_tokens: int, i: int) -> bytes:
    clip = base64.b64encode(wav_bytes(1.0 + 0.25 * (i % 4), 300 + 40 * i, seed=i)).decode()
    return json.dumps({"model": model, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": [
                           {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
                           {"type": "text", "text": f"What is in clip {i}?"}]}]}).encode()


def _client(url: str, bodies: list[bytes]) -> tuple[list[float], int]:
    """Send bodies one after another: (latencies in s, completion tokens)."""
    latencies, tokens = [], 0
    for body in bodies:
        request = urllib.request.Request(url, body, {"content-type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as response:
            reply = json.load(response)
        latencies.append(time.perf_counter() - start)
        tokens += reply["usage"]["completion_tokens"]
    return latencies, tokens


def run_load(url: str, model: str, clients: int, per_client: int,
             max_tokens: int) -> dict[str, float]:
    """``clients`` concurrent clients, ``per_client`` requests each."""
    plans = [[_body(model, max_tokens, c * per_client + k) for k in range(per_client)]
             for c in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(lambda plan: _client(url, plan), plans))
    wall = time.perf_counter() - start
    latencies = sorted(t for lat, _ in outcomes for t in lat)
    tokens = sum(n for _, n in outcomes)
    return {"req_s": len(latencies) / wall, "tok_s": tokens / wall,
            "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]}


def _measure(model_dir: Path, batch: int, concurrency: list[int], args: argparse.Namespace,
             log: Path) -> dict[int, dict[str, float]]:
    results = {}
    with running_server(model_dir, "--max-batch-size", str(batch), "--served-model-name",
                        "bench", log=log) as server:
        url = f"{server.url}/v1/chat/completions"
        run_load(url, "bench", 2, 1, args.max_tokens)  # warm-up
        for c in concurrency:
            results[c] = run_load(url, "bench", c, args.per_client, args.max_tokens)
            r = results[c]
            print(f"max_batch={batch:<3} clients={c:<3} {r['req_s']:7.2f} req/s "
                  f"{r['tok_s']:8.1f} tok/s  p50 {r['p50']:6.2f} s  p99 {r['p99']:6.2f} s",
                  flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint dir (default: tiny random)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per answer")
    parser.add_argument("--per-client", type=int, default=4, help="requests per client")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels")
    args = parser.parse_args()
    concurrency = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else save_tiny_checkpoint(
            Path(tmp) / "tiny", REPO.parent / "shared" / "fixtures" / "qwen2_audio_tokenizer")
        batched = _measure(model_dir, 16, concurrency, args, Path(tmp) / "batched.log")
        sequential = _measure(model_dir, 1, [max(concurrency)], args,
                              Path(tmp) / "sequential.log")
    top = max(concurrency)
    ratio = batched[top]["req_s"] / sequential[top]["req_s"]
    print(f"batched / sequential throughput at {top} clients: {ratio:.2f}x (goal >= 4x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
