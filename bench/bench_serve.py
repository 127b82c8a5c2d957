"""Serving throughput and latency: `lalm serve` under 1, 4, 16 and 32 concurrent clients.

Scenario ``batching`` (the default): each client sends chat requests (a short clip + a
question, greedy, ``max_tokens`` drawn per request between ``--min-tokens`` and
``--max-tokens``, so answers end at different steps) one after another over loopback. Three
servers on the same checkpoint, with the same requests:

* ``continuous``: this checkout (the decode engine: a request joins the running ones at the
  next step and leaves when it ends; ``--max-batch-size 16``);
* ``dynamic``: the last commit with dynamic batching (`DYNAMIC_COMMIT`, extracted with
  ``git archive`` into a temporary folder and run from there: a batch runs until its last
  row ends, newcomers wait for the next batch; ``--max-batch-size 16``);
* ``sequential``: this checkout with ``--max-batch-size 1`` (one request at a time).

Reported per mode and concurrency: requests/s, generated tokens/s, p50 / p99 request latency;
the headline ratios are continuous / sequential and continuous / dynamic throughput at 16
clients (goal >= 4x sequential). Every mode's answers are compared (greedy: they must be the
same text for the same request).

Scenario ``turns``: conversations of ``--turns`` turns (a clip in the first, then text), one
client, each turn sending the whole history: turn latency with prefix reuse (the default
server) and without (``--prefix-cache-slots 0``), and the prefill tokens each computed
(``lalm_prefill_tokens_total``).

Scenario ``profile``: the per-row cost of a decode step's vocabulary work (the lm_head product,
the log-softmax and argmax over the vocabulary) at batch sizes 1..32 on the model's shape: the
part that does not get cheaper per row bounds what batching can gain.

Scenario ``seeds``: the same load sampled (temperature 1), every request with its own seed,
against the same load greedy, on one server: the sampled / greedy throughput ratio.

Scenario ``load``: ``--requests`` (1,000) requests at 32-way concurrency, one in ten malformed
in one of ten ways (`lalm.testing.server.mixed_chat_bodies`, as tests/integration/
test_server_load.py sends 200 of them): seconds, requests/s, and the server's resident memory
after the first 30 % against the end (it should stay flat).

    nice -n 19 .venv/bin/python bench/bench_serve.py          # tiny random model (needs ../shared)
    nice -n 19 .venv/bin/python bench/bench_serve.py --model DIR --max-tokens 32
    nice -n 19 .venv/bin/python bench/bench_serve.py --scenario turns
    nice -n 19 .venv/bin/python bench/bench_serve.py --scenario seeds
    nice -n 19 .venv/bin/python bench/bench_serve.py --scenario load --requests 1000
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
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
# The last commit whose server batched dynamically (lalm/serve/batcher.py before the engine).
DYNAMIC_COMMIT = "f6fb0a7"


def _max_tokens(i: int, low: int, high: int) -> int:
    return random.Random(i).randint(low, high)


def _body(model: str, max_tokens: int, i: int, sampled: bool = False) -> bytes:
    clip = base64.b64encode(wav_bytes(1.0 + 0.25 * (i % 4), 300 + 40 * i, seed=i)).decode()
    sampling = {"temperature": 1.0, "seed": i} if sampled else {}
    return json.dumps({"model": model, "max_tokens": max_tokens, **sampling,
                       "messages": [{"role": "user", "content": [
                           {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
                           {"type": "text", "text": f"What is in clip {i}?"}]}]}).encode()


def _client(url: str, bodies: list[tuple[int, bytes]]
            ) -> tuple[list[float], int, dict[int, str]]:
    """Send bodies one after another: (latencies in s, completion tokens, answers)."""
    latencies, tokens, answers = [], 0, {}
    for i, body in bodies:
        request = urllib.request.Request(url, body, {"content-type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as response:
            reply = json.load(response)
        latencies.append(time.perf_counter() - start)
        tokens += reply["usage"]["completion_tokens"]
        answers[i] = reply["choices"][0]["message"]["content"]
    return latencies, tokens, answers


def run_load(url: str, model: str, clients: int, per_client: int, min_tokens: int,
             max_tokens: int, sampled: bool = False) -> dict:
    """``clients`` concurrent clients, ``per_client`` requests each."""
    plans = [[(i, _body(model, _max_tokens(i, min_tokens, max_tokens), i, sampled))
              for i in range(c * per_client, (c + 1) * per_client)] for c in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(lambda plan: _client(url, plan), plans))
    wall = time.perf_counter() - start
    latencies = sorted(t for lat, _, _ in outcomes for t in lat)
    tokens = sum(n for _, n, _ in outcomes)
    return {"req_s": len(latencies) / wall, "tok_s": tokens / wall,
            "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
            "answers": {i: a for _, _, answers in outcomes for i, a in answers.items()}}


@contextlib.contextmanager
def _dynamic_checkout(tmp: Path, undo: bool = False) -> Iterator[None]:
    """Start servers from `DYNAMIC_COMMIT`'s lalm (PYTHONPATH) while the block runs (with
    ``undo``: from this checkout's, as the bench was started)."""
    folder = tmp / "dynamic"
    if not folder.exists():
        folder.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", DYNAMIC_COMMIT, "lalm"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(REPO) if undo else str(folder)
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def _measure(servers: dict[str, str], concurrency: list[int], args: argparse.Namespace
             ) -> dict[str, dict[int, dict]]:
    """Every mode at every concurrency, the modes interleaved ``--rounds`` times (a busy
    machine's load drifts: each mode sees the same drift); per mode and load, the round
    with the median throughput."""
    runs: dict[str, dict[int, list[dict]]] = {m: {c: [] for c in concurrency} for m in servers}
    for url in servers.values():
        run_load(url, "bench", 2, 1, 2, 2)  # warm-up
    for c in concurrency:
        for _ in range(args.rounds):
            for mode, url in servers.items():
                runs[mode][c].append(run_load(url, "bench", c, args.per_client,
                                              args.min_tokens, args.max_tokens))
        for mode in servers:
            ordered = sorted(runs[mode][c], key=lambda r: r["req_s"])
            r = ordered[len(ordered) // 2]
            rounds = ", ".join(f"{x['req_s']:.2f}" for x in runs[mode][c])
            print(f"{mode:<10} clients={c:<3} {r['req_s']:7.2f} req/s "
                  f"{r['tok_s']:8.1f} tok/s  p50 {r['p50']:6.2f} s  p99 {r['p99']:6.2f} s  "
                  f"(rounds: {rounds} req/s)",
                  flush=True)
    return {m: {c: sorted(rs, key=lambda r: r["req_s"])[len(rs) // 2] for c, rs in by.items()}
            for m, by in runs.items()}


def _profile(model_dir: Path) -> None:
    """Per-row cost of the vocabulary work of one decode step at batch sizes 1..32: the
    lm_head product and the log-softmax + argmax every row needs (the part of a step that
    does not get cheaper per row with batching bounds the batching gain)."""
    import torch

    from lalm.checkpoint import load_model

    head = load_model(model_dir).decoder
    head.use_decode_layout()
    weight = head.lm_head.weight
    print(f"lm_head {tuple(weight.shape)}, {torch.get_num_threads()} thread(s)")
    with torch.inference_mode():
        for batch in (1, 4, 16, 32):
            x = torch.randn(batch, weight.shape[1])
            for _ in range(3):
                logits = head.lm_head(x)
            start = time.perf_counter()
            for _ in range(20):
                logits = head.lm_head(x)
            product = (time.perf_counter() - start) / 20
            start = time.perf_counter()
            for _ in range(20):
                logits.log_softmax(-1)
                logits.argmax(-1)
            rest = (time.perf_counter() - start) / 20
            print(f"batch {batch:<3} lm_head {product / batch * 1000:6.2f} ms/row   "
                  f"log-softmax + argmax {rest / batch * 1000:6.2f} ms/row   "
                  f"step cost per row {(product + rest) / batch * 1000:6.2f} ms")


def _conversation(url: str, clip: str, conv: int, args: argparse.Namespace
                  ) -> tuple[list[float], list[str]]:
    """One conversation of ``--turns`` turns, each sending the whole history: (each turn's
    latency, the answers)."""
    system = {"role": "system", "content": "You are a careful listener who answers briefly."}
    messages = [system, {"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
        {"type": "text", "text": f"Conversation {conv}: what do you hear?"}]}]
    latencies, answers = [], []
    for turn in range(args.turns):
        body = json.dumps({"model": "bench", "max_tokens": args.max_tokens,
                           "messages": messages}).encode()
        request = urllib.request.Request(url, body, {"content-type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as response:
            reply = json.load(response)
        latencies.append(time.perf_counter() - start)
        answers.append(reply["choices"][0]["message"]["content"])
        messages += [{"role": "assistant", "content": answers[-1]},
                     {"role": "user", "content": f"Tell me more ({turn})."}]
    return latencies, answers


def _turns(model_dir: Path, args: argparse.Namespace, tmp: Path) -> None:
    """Multi-turn chat: each turn's latency with and without prefix reuse (the two servers'
    conversations interleaved, so both see the same machine load)."""
    clip = base64.b64encode(wav_bytes(2.0, 440.0, seed=1)).decode()
    modes = {"reuse": (), "no reuse": ("--prefix-cache-slots", "0")}
    latencies = {m: [[] for _ in range(args.turns)] for m in modes}
    answers: dict[str, list[str]] = {m: [] for m in modes}
    prefilled = {}
    with contextlib.ExitStack() as stack:
        servers = {m: stack.enter_context(running_server(
            model_dir, "--served-model-name", "bench", *flags, log=tmp / f"turns{i}.log"))
            for i, (m, flags) in enumerate(modes.items())}
        before = {m: srv.metrics()["lalm_prefill_tokens_total"] for m, srv in servers.items()}
        for conv in range(args.conversations):
            for mode, server in servers.items():
                lat, said = _conversation(f"{server.url}/v1/chat/completions", clip, conv, args)
                for t, x in enumerate(lat):
                    latencies[mode][t].append(x)
                answers[mode] += said
        for mode, server in servers.items():
            prefilled[mode] = server.metrics()["lalm_prefill_tokens_total"] - before[mode]
    for mode in modes:
        print(f"{mode:<9} " + "  ".join(f"turn {t + 1}: {statistics.median(lat) * 1000:6.1f} ms"
                                          for t, lat in enumerate(latencies[mode]))
              + f"   prefill tokens {prefilled[mode]:.0f}", flush=True)
    last = (statistics.median(latencies["no reuse"][-1])
            / statistics.median(latencies["reuse"][-1]))
    print(f"turn {args.turns} latency without / with prefix reuse: {last:.2f}x; prefill tokens "
          f"{prefilled['no reuse'] / max(prefilled['reuse'], 1):.2f}x; answers identical: "
          f"{answers['reuse'] == answers['no reuse']}")


def _seeds(model_dir: Path, args: argparse.Namespace, log: Path) -> None:
    clients = max(int(c) for c in args.clients.split(","))
    with running_server(model_dir, "--max-batch-size", "16", "--served-model-name", "bench",
                        log=log) as server:
        url = f"{server.url}/v1/chat/completions"
        run_load(url, "bench", 2, 1, 2, 2)  # warm-up
        greedy = run_load(url, "bench", clients, args.per_client, args.min_tokens,
                          args.max_tokens)
        sampled = run_load(url, "bench", clients, args.per_client, args.min_tokens,
                           args.max_tokens, True)
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
    parser.add_argument("--scenario", choices=["batching", "turns", "profile", "seeds", "load"],
                        default="batching", help="what to measure (see the module docstring)")
    parser.add_argument("--model", default=None, help="checkpoint dir (default: tiny random)")
    parser.add_argument("--min-tokens", type=int, default=4, help="fewest tokens per answer")
    parser.add_argument("--max-tokens", type=int, default=32, help="most tokens per answer")
    parser.add_argument("--per-client", type=int, default=4, help="requests per client")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (batching)")
    parser.add_argument("--clients", default="1,4,16,32", help="concurrency levels")
    parser.add_argument("--modes", default="continuous,dynamic,sequential",
                        help="servers to compare (batching)")
    parser.add_argument("--requests", type=int, default=1000, help="requests (load)")
    parser.add_argument("--turns", type=int, default=4, help="turns per conversation (turns)")
    parser.add_argument("--conversations", type=int, default=5, help="conversations (turns)")
    args = parser.parse_args()
    concurrency = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = Path(args.model) if args.model else save_tiny_checkpoint(
            tmp / "tiny", REPO.parent / "shared" / "fixtures" / "qwen2_audio_tokenizer")
        if args.scenario == "seeds":
            _seeds(model_dir, args, tmp / "seeds.log")
            return 0
        if args.scenario == "load":
            _mixed_load(model_dir, args, tmp / "load.log")
            return 0
        if args.scenario == "profile":
            _profile(model_dir)
            return 0
        if args.scenario == "turns":
            _turns(model_dir, args, tmp)
            return 0
        with contextlib.ExitStack() as stack:
            servers = {}
            for mode in args.modes.split(","):
                batch = "1" if mode == "sequential" else "16"
                if mode == "dynamic":
                    stack.enter_context(_dynamic_checkout(tmp))
                server = stack.enter_context(running_server(
                    model_dir, "--max-batch-size", batch, "--served-model-name", "bench",
                    log=tmp / f"{mode}.log"))
                if mode == "dynamic":  # later servers run this checkout again
                    stack.enter_context(_dynamic_checkout(tmp, undo=True))
                servers[mode] = f"{server.url}/v1/chat/completions"
            results = _measure(servers, concurrency, args)
    reference: dict[int, str] = {}  # request i's body depends on i only: one answer each
    for by_load in results.values():
        for r in by_load.values():
            for i, answer in r["answers"].items():
                reference.setdefault(i, answer)
    for mode, by_load in results.items():  # greedy: every mode and load gives the same text
        for c, r in by_load.items():
            differ = sum(r["answers"][i] != reference[i] for i in r["answers"])
            if differ:
                print(f"{mode} at {c} clients: {differ} of {len(r['answers'])} answers differ")
    same = all(r["answers"][i] == reference[i] for by_load in results.values()
               for r in by_load.values() for i in r["answers"])
    print(f"answers identical across modes and loads: {same}")
    for c in concurrency:
        base = results.get("continuous", {}).get(c)
        if base is None:
            continue
        for other in ("sequential", "dynamic"):
            if other in results:
                print(f"continuous / {other} throughput at {c} clients: "
                      f"{base['req_s'] / results[other][c]['req_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
