"""Serving throughput and latency: `lalm serve` under 1, 4 and 16 concurrent clients.

Scenario ``batching`` (the default): each client sends chat requests (a short clip + a
question, ``max_tokens`` fixed, greedy) one after another over loopback. Reported per
concurrency: requests/s, generated tokens/s and the p50 / p99 request latency, for the
batching server (``--max-batch-size 16``) and for the same server forced to run one request at
a time (``--max-batch-size 1``); the headline figure is the batched / sequential throughput
ratio at 16 clients (goal >= 4x).

Scenario ``seeds``: the same load sampled (temperature 1), every request with its own seed,
against the same load greedy, on one server: the sampled / greedy throughput ratio (per-row
generators let distinct seeds share batches; they ran one batch each before, 0.14x).

Scenario ``load``: ``--requests`` (1,000) requests at 32-way concurrency, one in ten malformed
in one of ten ways (`lalm.testing.server.mixed_chat_bodies`, as tests/integration/
test_server_load.py sends 200 of them): seconds, requests/s, and the server's resident memory
after the first 30 % against the end (it should stay flat: measured +3 to +20 MiB for 700
requests, about 25 MB of bodies).

    .venv/bin/python bench/bench_serve.py                  # tiny random model (needs ../shared)
    .venv/bin/python bench/bench_serve.py --model DIR --max-tokens 32
    .venv/bin/python bench/bench_serve.py --scenario seeds
    .venv/bin/python bench/bench_serve.py --scenario load --requests 1000
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

from lalm.testing.server import (
    mixed_chat_bodies,
    post_json,
    running_server,
    save_tiny_checkpoint,
    wav_bytes,
)

REPO = Path(__file__).resolve().parents[1]


def _body(model: str, max_tokens: int, i: int, sampled: bool = False) -> bytes:
    clip = base64.b64encode(wav_bytes(1.0 + 0.25 * (i % 4), 300 + 40 * i, seed=i)).decode()
    sampling = {"temperature": 1.0, "seed": i} if sampled else {}
    return json.dumps({"model": model, "max_tokens": max_tokens, **sampling,
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
             max_tokens: int, sampled: bool = False) -> dict[str, float]:
    """``clients`` concurrent clients, ``per_client`` requests each."""
    plans = [[_body(model, max_tokens, c * per_client + k, sampled) for k in range(per_client)]
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


def _seeds(model_dir: Path, args: argparse.Namespace, log: Path) -> None:
    clients = max(int(c) for c in args.clients.split(","))
    with running_server(model_dir, "--max-batch-size", "16", "--served-model-name", "bench",
                        log=log) as server:
        url = f"{server.url}/v1/chat/completions"
        run_load(url, "bench", 2, 1, args.max_tokens)  # warm-up
        greedy = run_load(url, "bench", clients, args.per_client, args.max_tokens)
        sampled = run_load(url, "bench", clients, args.per_client, args.max_tokens, True)
    for name, r in (("greedy", greedy), ("sampled, a seed each", sampled)):
        print(f"{name:<22} clients={clients:<3} {r['req_s']:7.2f} req/s  p50 {r['p50']:6.2f} s")
    print(f"sampled / greedy throughput at {clients} clients: "
          f"{sampled['req_s'] / greedy['req_s']:.2f}x (goal ~1x)")


def _mixed_load(model_dir: Path, args: argparse.Namespace, log: Path) -> None:
    valid, bad = mixed_chat_bodies("bench")
    plan = [(valid[i % len(valid)], 200) if i % 10 else bad[(i // 10) % len(bad)][1:]
            for i in range(args.requests)]
    warm, rest = plan[:len(plan) * 3 // 10], plan[len(plan) * 3 // 10:]
    with running_server(model_dir, "--max-batch-size", "32", "--max-audio-seconds", "30",
                        "--served-model-name", "bench", log=log) as server:
        url = f"{server.url}/v1/chat/completions"

        def send(item: tuple[bytes, int]) -> bool:
            return post_json(url, item[0], timeout=600)[0] == item[1]

        start = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            ok = list(pool.map(send, warm))
            rss_warm = server.rss_bytes()
            ok += list(pool.map(send, rest))
        wall = time.perf_counter() - start
        rss_end = server.rss_bytes()
    print(f"{len(plan)} requests (one in ten malformed) in {wall:.1f} s: "
          f"{len(plan) / wall:.1f} req/s; {len(ok) - sum(ok)} unexpected statuses; RSS "
          f"{rss_warm / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB after warm-up "
          f"({(rss_end - rss_warm) / 2**20:+.1f} MiB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["batching", "seeds", "load"],
                        default="batching", help="what to measure (see the module docstring)")
    parser.add_argument("--model", default=None, help="checkpoint dir (default: tiny random)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per answer")
    parser.add_argument("--per-client", type=int, default=4, help="requests per client")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels")
    parser.add_argument("--requests", type=int, default=1000, help="requests (load)")
    args = parser.parse_args()
    concurrency = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else save_tiny_checkpoint(
            Path(tmp) / "tiny", REPO.parent / "shared" / "fixtures" / "qwen2_audio_tokenizer")
        if args.scenario == "seeds":
            _seeds(model_dir, args, Path(tmp) / "seeds.log")
            return 0
        if args.scenario == "load":
            _mixed_load(model_dir, args, Path(tmp) / "load.log")
            return 0
        batched = _measure(model_dir, 16, concurrency, args, Path(tmp) / "batched.log")
        sequential = _measure(model_dir, 1, [max(concurrency)], args,
                              Path(tmp) / "sequential.log")
    top = max(concurrency)
    ratio = batched[top]["req_s"] / sequential[top]["req_s"]
    print(f"batched / sequential throughput at {top} clients: {ratio:.2f}x (goal >= 4x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
