"""The `lalm` command. Thin: each subcommand parses its arguments, calls one library function
and formats the result. Subcommands register themselves in `_COMMANDS` below, one entry each."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from lalm import __version__
from lalm.errors import LalmError

# name -> (help, add_arguments(parser), run(args) -> exit code)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                           Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register `run(args) -> int` as the subcommand `name`."""
    def register(run: Callable[[argparse.Namespace], int]):
        _COMMANDS[name] = (help, add_arguments, run)
        return run
    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lalm", description="Large audio-language models of the Qwen-Audio kind.")
    parser.add_argument("--version", action="version", version=f"lalm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add_arguments, run) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `lalm` command line; returns the exit code (2 for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except LalmError as e:
        print(f"lalm {args.command}: error: {e}", file=sys.stderr)
        return 2


def _synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (created; reruns resume)")
    p.add_argument("--size", default="small", help="tiny, small, medium or large")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (same seed, same bytes)")
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")


@command("synth", "generate the lalm-synth dataset (exact answers, deterministic)",
         _synth_arguments)
def _synth(args: argparse.Namespace) -> int:
    from lalm.synth import generate

    tasks = args.tasks.split(",") if args.tasks else None
    report = generate(args.out, args.size, args.seed, tasks, args.workers)
    sizes = ", ".join(f"{k} {v}" for k, v in report.per_split.items())
    print(f"lalm-synth in {args.out}: {report.made} items made, {report.skipped} already there; "
          f"{sizes}; {report.airbench} AIR-Bench items")
    return 0


def _from_whisper_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("whisper", help="Whisper checkpoint: CTranslate2 folder, transformers folder "
                                   "or openai-whisper .pt")
    p.add_argument("out", help="output folder (a Qwen2-Audio checkpoint)")
    p.add_argument("--decoder-preset", default="tiny-random",
                   help="model preset whose decoder section sizes the new decoder")
    p.add_argument("--decoder", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one decoder field, e.g. --decoder n_layer=4 (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new weights")


@command("from-whisper", "build a new model: a real Whisper encoder + a fresh random decoder",
         _from_whisper_arguments)
def _from_whisper(args: argparse.Namespace) -> int:
    import json

    from lalm.checkpoint.whisper import build_from_whisper
    from lalm.config import ModelConfig

    overrides = {}
    for item in args.decoder:
        field, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"lalm from-whisper: --decoder expects FIELD=VALUE, got {item!r}")
        try:
            overrides[field] = json.loads(value)  # numbers and booleans
        except json.JSONDecodeError:
            overrides[field] = value
    try:
        decoder = ModelConfig.from_name(args.decoder_preset, decoder=overrides).decoder
    except (KeyError, ValueError, TypeError) as e:
        raise SystemExit(f"lalm from-whisper: {e}") from e
    files = build_from_whisper(args.whisper, decoder, args.out, seed=args.seed)
    print(f"wrote {len(files)} files to {args.out}")
    return 0


def _data_arguments(p: argparse.ArgumentParser) -> None:
    from lalm.data.formats import FORMATS

    sub = p.add_subparsers(dest="data_command", required=True)
    check = sub.add_parser("check", help="decode every audio of a manifest and list what is bad "
                           "(exit 1 if anything is)")
    check.add_argument("manifest", help="manifest file (or hf dataset folder)")
    check.add_argument("--format", choices=list(FORMATS), default=None,
                       help="manifest format (default: guessed)")
    check.add_argument("--audio-dir", default=None,
                       help="where audio embedded in the manifest (hf) is extracted to")
    check.add_argument("--max-seconds", type=float, default=30.0,
                       help="report clips longer than this (the encoder's window)")
    convert = sub.add_parser("convert", help="convert a manifest to another format")
    convert.add_argument("src", help="source manifest")
    convert.add_argument("dst", help="destination file (or hf dataset folder)")
    convert.add_argument("--from", dest="src_format", choices=list(FORMATS), default=None,
                         help="source format (default: guessed)")
    convert.add_argument("--to", dest="dst_format", choices=list(FORMATS), required=True,
                         help="destination format")
    convert.add_argument("--audio-dir", default=None,
                         help="where embedded source audio is extracted to "
                              "(default: <dst>_audio beside the destination)")


@command("data", "check manifests and convert them between formats", _data_arguments)
def _data(args: argparse.Namespace) -> int:
    if args.data_command == "check":
        from lalm.data.check import check_manifest

        report = check_manifest(args.manifest, args.format, args.audio_dir, args.max_seconds)
        print(report.summary())
        return 0 if report.ok else 1
    from lalm.data.formats import convert

    n = convert(args.src, args.src_format, args.dst, args.dst_format, args.audio_dir)
    print(f"wrote {n} examples to {args.dst} ({args.dst_format})")
    return 0


def _generation_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by chat and transcribe; each maps onto one GenerationOptions field."""
    p.add_argument("--model", required=True, help="checkpoint directory (weights, config.json, "
                                                  "tokenizer files)")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy; > 0: sampling")
    p.add_argument("--top-k", type=int, default=0, help="sampling: keep the k best tokens")
    p.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus probability")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 1 discourages repeated tokens")
    p.add_argument("--num-beams", type=int, default=1, help="beam search width")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop sequence (repeatable)")
    p.add_argument("--json", action="store_true", help="print results as JSON")


def _options(args: argparse.Namespace):
    from lalm.generation import GenerationOptions

    return GenerationOptions(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, repetition_penalty=args.repetition_penalty, num_beams=args.num_beams,
        seed=args.seed, stop_sequences=tuple(args.stop))


def _result_json(result, **extra: object) -> dict:
    parsed = result.parsed
    return {**extra, "text": parsed.text if parsed else result.text, "raw": result.text,
            "language": parsed.language if parsed else None, "tokens": result.tokens,
            "finish_reason": result.finish_reason, "avg_logprob": result.avg_logprob}


def _chat_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("question", nargs="?", default="", help="the question (may be empty with "
                                                           "--audio: voice chat)")
    p.add_argument("--audio", action="append", default=[], metavar="FILE",
                   help="an audio file for the turn (repeatable, in order); longer than 30 s: "
                        "split into 30-s windows, 25 audio tokens per second")
    p.add_argument("--max-audio-seconds", type=float, default=None,
                   help="longest clip accepted, in seconds (default: the pipeline's, 300)")
    p.add_argument("--interactive", action="store_true",
                   help="after the answer, read follow-up questions from stdin, one per line "
                        "(until an empty line or EOF); the audio is encoded once")
    _generation_arguments(p)


@command("chat", "ask a question about one or more audio files", _chat_arguments)
def _chat(args: argparse.Namespace) -> int:
    import json

    from lalm.api import load_model
    from lalm.generation import Conversation

    options = _options(args)
    pipe = load_model(args.model, dtype=args.dtype)
    if args.max_audio_seconds is not None:
        pipe.max_audio_seconds = args.max_audio_seconds
    conversation = Conversation(pipe)
    question, audios = args.question, args.audio
    while True:
        if args.json or options.num_beams > 1:
            result = conversation.ask(question, audios, options)
            print(json.dumps(_result_json(result), ensure_ascii=False) if args.json
                  else result.text, flush=True)
        else:
            for piece in conversation.stream(question, audios, options):
                print(piece, end="", flush=True)
            print(flush=True)
        question, audios = (sys.stdin.readline().strip() if args.interactive else ""), []
        if not question:
            return 0


def _transcribe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", help="audio files")
    p.add_argument("--language", default="en", help="language of the speech (a language tag)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts (files or windows) per "
                                                            "batch")
    p.add_argument("--timestamps", action="store_true",
                   help="words with start and end seconds (Qwen-Audio v1 checkpoints)")
    p.add_argument("--format", choices=["text", "json", "srt", "vtt"], default="text",
                   help="output: text (with --timestamps one 'start end word' line per word), "
                        "json lines, or SRT / VTT subtitles (need --timestamps)")
    p.add_argument("--output-dir", default=None,
                   help="write one <file stem>.<format> per input here instead of printing")
    p.add_argument("--long-form", choices=["vad", "fixed", "off"], default="vad",
                   help="audio longer than 30 s: windows cut in pauses (vad), fixed windows "
                        "with overlap (fixed), or one prompt (off)")
    p.add_argument("--overlap", type=float, default=None,
                   help="seconds of overlap between windows that cannot meet in a pause "
                        "(default: the pipeline's, 5)")
    _generation_arguments(p)


def _transcript(path: str, result, fmt: str, timestamps: bool, language: str) -> str:
    """One file's transcription in the output format (ends with a newline)."""
    import json

    from lalm.prompt import SPACELESS_LANGUAGES
    from lalm.subtitles import format_srt, format_vtt, group_cues

    parsed = result.parsed
    words = list(parsed.words) if parsed is not None else []
    if fmt == "json":
        extra = {"words": [{"word": w.word, "start": w.start, "end": w.end} for w in words]} \
            if timestamps else {}
        return json.dumps(_result_json(result, file=path, **extra), ensure_ascii=False) + "\n"
    if fmt in ("srt", "vtt"):
        cues = group_cues(words, spaceless=language in SPACELESS_LANGUAGES)
        return format_srt(cues) if fmt == "srt" else format_vtt(cues)
    if timestamps:
        return f"{path}\n" + "".join(f"{w.start:8.2f} {w.end:8.2f}  {w.word}\n" for w in words)
    return f"{path}\t{parsed.text if parsed else result.text}\n"


@command("transcribe", "transcribe audio files (batched; long audio in windows)",
         _transcribe_arguments)
def _transcribe(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from lalm.api import load_model

    fmt = "json" if args.json else args.format
    if fmt in ("srt", "vtt") and not args.timestamps:
        raise LalmError(f"--format {fmt} needs --timestamps (word times)")
    if fmt in ("srt", "vtt") and len(args.files) > 1 and args.output_dir is None:
        raise LalmError(f"--format {fmt} with several files needs --output-dir")
    options = _options(args)
    pipe = load_model(args.model, dtype=args.dtype)
    long_form = {"long_form": None if args.long_form == "off" else args.long_form}
    if args.overlap is not None:
        long_form["overlap_s"] = args.overlap
    with tqdm(total=len(args.files), unit="file", file=sys.stderr) as bar:
        results = pipe.transcribe(args.files, args.language, options, args.batch_size,
                                  progress=bar.update, timestamps=args.timestamps, **long_form)
    outputs = [_transcript(path, result, fmt, args.timestamps, args.language)
               for path, result in zip(args.files, results)]
    if args.output_dir is None:
        print("".join(outputs), end="")
        return 0
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in zip(args.files, outputs):
        target = folder / f"{Path(path).stem}.{'txt' if fmt == 'text' else fmt}"
        partial = target.with_name(target.name + ".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(target)  # never a half-written file under the final name
        print(target)
    return 0


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="stage YAML (configs/train/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one config field by dotted path, e.g. --set optim.lr=3e-5 "
                        "(repeatable; values are YAML)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in run.out_dir")


@command("train", "train one stage from a YAML config (under torchrun for several ranks)",
         _train_arguments)
def _train(args: argparse.Namespace) -> int:
    from lalm.training import TrainConfig, train

    result = train(TrainConfig.from_file(args.config, args.overrides), resume=args.resume)
    if not result.main:  # under torchrun, rank 0 reports for the job
        return 0
    summary = {"step": result.step, "loss": result.losses[-1] if result.losses else None,
               "tokens_per_s": round(result.tokens_per_s, 1), **result.validation}
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in summary.items()))
    if result.export_dir is not None:
        print(f"exported to {result.export_dir}")
    return 0


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `lalm serve`; the limits map onto `lalm.serve.Limits` fields."""
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients pass (default: the directory's name)")
    p.add_argument("--api-key", default=os.environ.get("LALM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $LALM_API_KEY; none)")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--max-batch-size", type=int, default=16, help="requests per forward pass")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests (more: 429)")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds (then 504)")
    p.add_argument("--max-body-mb", type=float, default=25.0, help="request body limit, MiB")
    p.add_argument("--max-audio-seconds", type=float, default=None,
                   help="longest clip, in seconds, for chat and transcription (default: the "
                        "pipeline's, 300); past 30 s a chat clip is split into 30-s windows "
                        "(25 audio tokens per second) and an upload is transcribed window by "
                        "window")
    p.add_argument("--max-audios", type=int, default=8, help="clips per request")
    p.add_argument("--max-tokens-limit", type=int, default=1024,
                   help="largest max_tokens a request may ask for")
    p.add_argument("--default-max-tokens", type=int, default=256,
                   help="max_tokens when a request gives none")
    p.add_argument("--allow-audio-url", action="append", default=[], metavar="PREFIX",
                   help="allow audio_url fetches under this http(s) prefix (repeatable)")
    p.add_argument("--allow-audio-dir", action="append", default=[], metavar="DIR",
                   help="allow audio_url local paths inside this folder (repeatable)")
    p.add_argument("--access-log", action="store_true", help="log every request")


@command("serve", "serve a model over an OpenAI-compatible HTTP API with a web page",
         _serve_arguments)
def _serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lalm.api import load_model
    from lalm.serve import AudioAccess, Limits
    from lalm.serve.app import ServerConfig, serve

    pipe = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.max_audio_seconds is not None:  # one limit: the server's and the pipeline's
        pipe.max_audio_seconds = args.max_audio_seconds
    limits = Limits(max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                    max_audio_seconds=pipe.max_audio_seconds, max_audios=args.max_audios,
                    max_new_tokens=args.max_tokens_limit,
                    default_max_tokens=args.default_max_tokens)
    access = AudioAccess(tuple(args.allow_audio_url),
                         tuple(Path(d) for d in args.allow_audio_dir))
    config = ServerConfig(args.served_model_name or Path(args.model).resolve().name,
                          args.api_key, limits, access, args.max_batch_size, args.max_queue,
                          args.request_timeout)
    serve(pipe, config, args.host, args.port, args.access_log)
    return 0


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--task", required=True,
                   help="a built-in task (lalm.eval.tasks), e.g. librispeech, covost2, meld, "
                        "airbench-foundation, lalm-synth; an unknown name lists them all")
    p.add_argument("--data", required=True,
                   help="the task's data: its JSONL / meta file / manifest, or the folder of it")
    p.add_argument("--out", default=None,
                   help="output folder (default: runs/eval/<task>; reruns resume)")
    p.add_argument("--scoring", choices=["official", "strict"], default="official",
                   help="official: each benchmark's procedure; strict: nothing dropped")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="override the official decoding budget of the task")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--judge-url", default=None,
                   help="judged tasks (airbench-chat, voicebench-open/-qa, mmau-pro): "
                        "OpenAI-compatible API root of the judge, e.g. a lalm serve")
    p.add_argument("--judge-model", default=None,
                   help="judge model id (default: the suite's official judge)")
    p.add_argument("--judge-api-key-env", default="LALM_JUDGE_API_KEY",
                   help="environment variable holding the judge's API key")
    p.add_argument("--judge-cache", default=None,
                   help="judgement cache (default: <out>/judgements.jsonl)")
    p.add_argument("--judge-temperature", type=float, default=None,
                   help="override the suite's judge temperature")
    p.add_argument("--judge-samples", type=int, default=None,
                   help="override the suite's judge samples per request")
    p.add_argument("--judge-seed", type=int, default=0, help="judge request seed")
    p.add_argument("--embed-url", default=None,
                   help="mmau-pro: OpenAI-compatible embeddings API root (official matching)")
    p.add_argument("--embed-model", default="nvidia/NV-Embed-v2", help="mmau-pro: embedder")


@command("eval", "evaluate a model on a benchmark (batched, resumable, versioned scores)",
         _eval_arguments)
def _eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from lalm.api import load_model
    from lalm.eval.evaluate import evaluate
    from lalm.eval.judge import NEEDS_JUDGE, OFFICIAL_JUDGES, ChatJudge, EmbeddingClient
    from lalm.eval.tasks import get_task

    task = get_task(args.task)  # an unknown name fails before the model loads
    out = Path(args.out or Path("runs") / "eval" / args.task)
    judge = None
    if args.task in NEEDS_JUDGE and not args.judge_url:
        raise LalmError(f"{args.task} is scored by an LLM judge: give --judge-url (and "
                        f"--judge-model, default {OFFICIAL_JUDGES[args.task]})")
    if args.embed_url and not args.judge_url:
        raise LalmError("--embed-url is used with a judge: give --judge-url too")
    if args.judge_url:
        model = args.judge_model or OFFICIAL_JUDGES.get(args.task, "gpt-4o-mini")
        key = os.environ.get(args.judge_api_key_env)
        cache = Path(args.judge_cache or out / "judgements.jsonl")
        embedder = (EmbeddingClient(args.embed_url, args.embed_model, key,
                                    cache.with_name(cache.stem + "-embeddings.jsonl"))
                    if args.embed_url else None)
        judge = ChatJudge(args.judge_url, model, key, cache, temperature=args.judge_temperature,
                          seed=args.judge_seed, samples=args.judge_samples, embedder=embedder)
    pipe = load_model(args.model, dtype=args.dtype, device=args.device)
    summary = evaluate(pipe, task, args.data, out, args.scoring, args.batch_size,
                       args.limit, judge, model=args.model, max_new_tokens=args.max_new_tokens)
    print(json.dumps(summary["scores"], indent=1, ensure_ascii=False))
    print(f"predictions and summary in {out}")
    return 0


def _bench_synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--data", required=True, help="lalm-synth folder (test.jsonl, airbench/)")
    p.add_argument("--out", default="runs/bench-synth", help="output folder (reruns resume)")
    p.add_argument("--scoring", choices=["official", "strict"], default="official",
                   help="scoring mode of the per-task rows (AIR-Bench shows both)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    p.add_argument("--limit", type=int, default=None, help="only the first N items of each set")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="override the official decoding budget of the task")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")


@command("bench-synth", "evaluate a model on every lalm-synth task: table, Markdown/JSON, chart",
         _bench_synth_arguments)
def _bench_synth(args: argparse.Namespace) -> int:
    from lalm.api import load_model
    from lalm.eval.synth_bench import markdown_table, run_synth_bench

    pipe = load_model(args.model, dtype=args.dtype, device=args.device)
    report = run_synth_bench(pipe, args.data, args.out, args.scoring, args.batch_size,
                             args.limit, model=args.model, max_new_tokens=args.max_new_tokens)
    print(markdown_table(report.rows), end="")
    print(f"wrote {report.markdown}, {report.json} and {report.chart}")
    return 0


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audio", default=None, metavar="FILE",
                   help="ask about this clip (default: a lalm-synth test clip)")
    p.add_argument("--question", default=None, help="the question (default: the clip's task)")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="a default-model folder (default: lalm's cache, made on first run)")
    p.add_argument("--retrain", action="store_true",
                   help="make the default model again even if it is cached")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: fastest on 2 busy cores)")


@command("demo", "lalm's default model: on first run synthesise data, train, evaluate (about "
         "10 min on 2 cores); then answer a question about an audio clip", _demo_arguments)
def _demo(args: argparse.Namespace) -> int:
    from lalm.demo import run_demo

    run_demo(args.model, args.audio, args.question, args.retrain, args.threads)
    return 0
