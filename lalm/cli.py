"""The `lalm` command. Thin: each subcommand parses its arguments, calls one library function
and formats the result. Subcommands register themselves in `_COMMANDS` below, one entry each."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """``--help`` shows each option's default, unless there is none to show (None, False, an
    empty list) or the help text already says what it is; descriptions and epilogs (lalm
    train's key list) keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], "", argparse.SUPPRESS):
            return text
        return super()._get_help_string(action) or text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lalm", description="Large audio-language models of the Qwen-Audio kind.")
    parser.add_argument("--version", action="version", version=f"lalm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add_arguments, run) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add_arguments(p)
        p.set_defaults(_run=run)
    _set_formatter(parser)
    return parser


def _set_formatter(parser: argparse.ArgumentParser) -> None:
    """`_HelpFormatter` for a parser and all its subcommands, nested ones (lalm data check)
    included."""
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                _set_formatter(p)


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
    p.add_argument("--tokenizer", required=True, metavar="DIR",
                   help="tokenizer files to put beside the weights: a Qwen2-Audio checkpoint "
                        "or tokenizer folder (tokenizer.json ...), e.g. Qwen2-Audio-7B-Instruct "
                        "or one lalm learned (lalm.training.bpe); the decoder's vocab_size "
                        "becomes its size rounded up to 64 unless --decoder vocab_size=N")
    p.add_argument("--decoder-preset", default="tiny-random",
                   help="model preset whose decoder section sizes the new decoder")
    p.add_argument("--decoder", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one decoder field, e.g. --decoder n_layer=4 (repeatable; "
                        "an unknown field lists the valid ones)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new weights")


@command("from-whisper", "build a new model: a real Whisper encoder + a fresh random decoder",
         _from_whisper_arguments)
def _from_whisper(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from lalm.checkpoint.whisper import build_from_whisper
    from lalm.config import DecoderConfig, ModelConfig
    from lalm.errors import ConfigError
    from lalm.tokenizer import load_tokenizer

    overrides = {}
    valid = [f.name for f in dataclasses.fields(DecoderConfig)]
    for item in args.decoder:
        field, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--decoder expects FIELD=VALUE, got {item!r}")
        if field not in valid:
            raise ConfigError(f"--decoder {item}: unknown decoder field {field!r}; valid: "
                              f"{', '.join(valid)}")
        try:
            overrides[field] = json.loads(value)  # numbers and booleans
        except json.JSONDecodeError:
            overrides[field] = value
    tokenizer = load_tokenizer(args.tokenizer)  # a bad folder fails before any weights
    overrides.setdefault("vocab_size", -(-len(tokenizer) // 64) * 64)
    try:
        decoder = ModelConfig.from_name(args.decoder_preset, decoder=overrides).decoder
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"--decoder-preset {args.decoder_preset} with --decoder "
                          f"{overrides}: {e}") from e
    files = build_from_whisper(args.whisper, decoder, args.out, seed=args.seed,
                               tokenizer=args.tokenizer)
    print(f"wrote {len(files)} files to {args.out} (open it with lalm chat --model {args.out})")
    return 0


def _from_parts_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", required=True, metavar="WHISPER",
                   help="Whisper checkpoint: CTranslate2 folder, transformers folder or "
                        "openai-whisper .pt")
    p.add_argument("--decoder", required=True, metavar="FILE.gguf",
                   help="a GGUF LLM file (llama or qwen2 architecture, any tensor type the "
                        "gguf package dequantizes); needs pip install 'lalm[gguf]'")
    p.add_argument("out", help="output folder (a Qwen2-Audio checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new projector weights")


@command("from-parts", "build a model from real parts: a Whisper encoder + a GGUF decoder LLM "
         "(fresh projector)", _from_parts_arguments)
def _from_parts(args: argparse.Namespace) -> int:
    from lalm.checkpoint.gguf import build_from_parts

    files = build_from_parts(args.encoder, args.decoder, args.out, seed=args.seed)
    print(f"wrote {len(files)} files to {args.out} (open it with lalm chat --model {args.out})")
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


# Decoding flags: (flag, GenerationOptions field, type, help). Unset flags keep the checkpoint's
# defaults (its generation_config.json, as transformers reads it; else GenerationOptions').
_DECODING_FLAGS = (
    ("--max-new-tokens", "max_new_tokens", int, "tokens to generate at most"),
    ("--temperature", "temperature", float, "0: greedy; > 0: sampling"),
    ("--top-k", "top_k", int, "sampling: keep the k best tokens, 0: all"),
    ("--top-p", "top_p", float, "sampling: nucleus probability"),
    ("--repetition-penalty", "repetition_penalty", float, "> 1 discourages repeated tokens"),
    ("--num-beams", "num_beams", int, "beam search width"),
)


def _precision_argument(p: argparse.ArgumentParser) -> None:
    """``--precision`` (alias ``--dtype``): how the weights are held and computed."""
    from lalm.config import PRECISIONS

    p.add_argument("--precision", "--dtype", dest="precision", default="auto",
                   choices=PRECISIONS,
                   help="weights in memory: auto (the checkpoint's own dtype: a bf16 download "
                        "stays bf16), fp32, bf16 or fp16; where the device has no fast "
                        "kernels for it (bf16 on a CPU without bf16 units) the products "
                        "compute in float32; int8 / int4: auto with a weight-only int8 / "
                        "int4 decoder (default: auto)")


def _generation_arguments(p: argparse.ArgumentParser, formats: Sequence[str],
                          greedy: bool = False) -> None:
    """Flags shared by chat and transcribe; each maps onto one GenerationOptions field
    (``greedy``: temperature 0 unless given, whatever the checkpoint says)."""
    import dataclasses

    from lalm.generation import GenerationOptions

    defaults = {f.name: f.default for f in dataclasses.fields(GenerationOptions)}
    p.add_argument("--model", required=True, help="checkpoint directory (weights, config.json, "
                                                  "tokenizer files)")
    _precision_argument(p)
    for flag, name, kind, text in _DECODING_FLAGS:
        where = "0" if greedy and name == "temperature" else \
            f"the checkpoint's generation_config.json, else {defaults[name]:g}"
        p.add_argument(flag, type=kind, default=None, dest=name, help=f"{text} (default: {where})")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: none)")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   dest="stop_sequences", help="stop sequence (repeatable)")
    p.add_argument("--format", choices=list(formats), default=None,
                   help=f"output format (default: {formats[0]})")
    p.add_argument("--json", action="store_true",
                   help="deprecated: the same as --format json")


def _option_changes(args: argparse.Namespace) -> dict:
    """The decoding fields the command line sets, checked (before the model loads).

    Raises:
        GenerationError: a bad value (the field is named).
    """
    from lalm.generation import GenerationOptions
    from lalm.generation.options import resolve_options

    names = [name for _, name, _, _ in _DECODING_FLAGS] + ["seed", "stop_sequences"]
    changes = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    resolve_options(GenerationOptions(), **changes)
    return changes


def _output_format(args: argparse.Namespace, command: str) -> str:
    """``--format``, with the deprecated ``--json`` as ``--format json``."""
    if not args.json:
        return args.format or "text"
    if args.format not in (None, "json"):
        raise LalmError(f"--json is --format json; it cannot go with --format {args.format}")
    print(f"lalm {command}: warning: --json is deprecated, use --format json", file=sys.stderr)
    return "json"


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
                        "(until an empty line or EOF; with no question and no audio, the "
                        "first one too); the audio is encoded once. When stdin is a terminal, "
                        "'> ' on stderr asks for each line")
    _generation_arguments(p, ["text", "json"])


def _read_question() -> str:
    """The next line of stdin (stripped), after a '> ' prompt on stderr when a person types
    (stdin is a terminal); piped input gets no prompt, so stdout and stderr stay clean."""
    if sys.stdin.isatty():
        print("> ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip()


@command("chat", "ask a question about one or more audio files", _chat_arguments)
def _chat(args: argparse.Namespace) -> int:
    import json

    from lalm.api import load_model
    from lalm.generation import Conversation

    from lalm.generation.options import resolve_options

    fmt, changes = _output_format(args, "chat"), _option_changes(args)
    pipe = load_model(args.model, precision=args.precision)
    if args.max_audio_seconds is not None:
        pipe.max_audio_seconds = args.max_audio_seconds
    options = resolve_options(pipe.options, **changes)
    conversation = Conversation(pipe)
    question, audios = args.question, args.audio
    if args.interactive and not question and not audios:
        question = _read_question()
        if not question:
            return 0
    while True:
        if fmt == "json" or options.num_beams > 1:
            result = conversation.ask(question, audios, options)
            print(json.dumps(_result_json(result), ensure_ascii=False) if fmt == "json"
                  else result.text, flush=True)
        else:
            for piece in conversation.stream(question, audios, options):
                print(piece, end="", flush=True)
            print(flush=True)
        question, audios = (_read_question() if args.interactive else ""), []
        if not question:
            return 0


def _transcribe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", help="audio files")
    p.add_argument("--language", default="en", help="language of the speech (a language tag)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts (files or windows) per "
                                                            "batch")
    p.add_argument("--timestamps", action="store_true",
                   help="words with start and end seconds (Qwen-Audio v1 checkpoints only; "
                        "refused on others before the model loads)")
    p.add_argument("--output-dir", default=None,
                   help="write one <file stem>.<format> per input here instead of printing")
    p.add_argument("--long-form", choices=["vad", "fixed", "off"], default="vad",
                   help="audio longer than 30 s: windows cut in pauses (vad), fixed windows "
                        "with overlap (fixed), or one prompt (off)")
    p.add_argument("--overlap", type=float, default=None,
                   help="seconds of overlap between windows that cannot meet in a pause "
                        "(default: the pipeline's, 5)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="longest file accepted, in seconds, checked before decoding (default: "
                        "the pipeline's, 14400 = 4 h); long files are decoded window by window")
    _generation_arguments(p, ["text", "json", "srt", "vtt"], greedy=True)
    p.epilog = ("Output formats: text (with --timestamps one 'start end word' line per word), "
                "json lines (with 'segments': the whole clip or one per window), or SRT / VTT "
                "subtitles: one cue per segment, as the server's srt / vtt, or with --timestamps "
                "(v1) the words grouped into cues (a window without word times: its text).")


def _transcript(path: str, transcript, fmt: str, timestamps: bool, language: str) -> str:
    """One file's transcription in the output format (ends with a newline)."""
    import json

    from lalm.prompt import SPACELESS_LANGUAGES
    from lalm.subtitles import format_srt, format_vtt, transcript_cues

    result = transcript.result
    parsed = result.parsed
    words = list(parsed.words) if parsed is not None else []
    if fmt == "json":
        extra = {"words": [{"word": w.word, "start": w.start, "end": w.end} for w in words]} \
            if timestamps else {}
        segments = [{"start": round(seg.start, 3), "end": round(seg.end, 3),
                     "text": seg.text.strip()} for seg in transcript.segments]
        return json.dumps(_result_json(result, file=path, segments=segments, **extra),
                          ensure_ascii=False) + "\n"
    if fmt in ("srt", "vtt"):
        cues = transcript_cues(transcript.segments, language in SPACELESS_LANGUAGES,
                               by_words=timestamps)
        if not cues:
            print(f"lalm transcribe: warning: {path}: nothing transcribed, the {fmt} file has "
                  f"no cues", file=sys.stderr)
        return format_srt(cues) if fmt == "srt" else format_vtt(cues)
    if timestamps:
        return f"{path}\n" + "".join(f"{w.start:8.2f} {w.end:8.2f}  {w.word}\n" for w in words)
    return f"{path}\t{parsed.text if parsed else result.text}\n"


@command("transcribe", "transcribe audio files (batched; long audio in windows)",
         _transcribe_arguments)
def _transcribe(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from lalm.api import check_transcription, load_model

    fmt = _output_format(args, "transcribe")
    if fmt in ("srt", "vtt") and len(args.files) > 1 and args.output_dir is None:
        raise LalmError(f"--format {fmt} with several files needs --output-dir")
    changes = _option_changes(args)
    long_form = {"long_form": None if args.long_form == "off" else args.long_form}
    if args.overlap is not None:
        long_form["overlap_s"] = args.overlap
    check_transcription(args.model, timestamps=args.timestamps, **long_form)  # before loading
    if args.max_seconds is not None:
        long_form["max_seconds"] = args.max_seconds
    pipe = load_model(args.model, precision=args.precision)
    with tqdm(total=len(args.files), unit="file", file=sys.stderr) as bar:
        transcripts = pipe.transcribe_segments(
            args.files, args.language, None, args.batch_size, progress=bar.update,
            timestamps=args.timestamps, **long_form, **changes)
    outputs = [_transcript(path, transcript, fmt, args.timestamps, args.language)
               for path, transcript in zip(args.files, transcripts)]
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


_TRAIN_EPILOG = """\
configs: a YAML file, or a shipped stage by name (lalm config list; lalm config show NAME):
  pretrain (stage1_pretrain), sft (stage2_sft), dpo (stage3_dpo), default_model

examples:
  # LoRA fine-tuning on your own chats (messages JSONL as ms-swift / LLaMA-Factory write it)
  lalm train sft --set model.checkpoint=Qwen2-Audio-7B-Instruct --set data.train=my.jsonl \\
    --set data.valid=held_out.jsonl --set parts.decoder=lora --set run.out_dir=runs/my_sft
  lalm train sft ... --resume           # go on from the newest intact checkpoint

useful keys (--set KEY=VALUE; every field: lalm config show sft, lalm/training/stages.py):
  data.train=FILE        replaces the whole mix by one manifest (or a YAML list of files)
  data.valid=FILE|null   held-out set (validation loss, task metrics)
  parts.encoder|projector|decoder=frozen|full|lora   what trains; lora: adapters only
  lora.rank=8 lora.alpha=16 lora.targets=[attn.q, attn.v]
  optim.lr=1e-5 optim.warmup_steps=200 optim.grad_accum=8 run.max_steps=5000
  run.out_dir=DIR        checkpoints, log.jsonl and export/ (Hugging Face layout, LoRA merged)
  run.threads=N          torch CPU threads (default: the idle CPUs, logged at the start)
  run.on_nonfinite=stop|skip   data.on_bad_item=fail|skip
  run.epochs=E           the run's length in passes over the mix (instead of run.max_steps)
  run.tracker=wandb|swanlab    also log there (needs the package)
  data.pack_tokens=N     pack each batch into rows of <= N tokens (lm stages; same loss)
  lora.base_precision=int8     QLoRA-style: frozen int8 decoder base under the adapters
"""


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = _TRAIN_EPILOG
    p.add_argument("config", help="stage YAML file or shipped stage name (e.g. sft)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one config field by dotted path, e.g. --set optim.lr=3e-5 "
                        "(repeatable; values are YAML)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest intact checkpoint in run.out_dir")


@command("train", "train one stage from a YAML config (under torchrun for several ranks)",
         _train_arguments)
def _train(args: argparse.Namespace) -> int:
    from lalm.training import TrainConfig, train

    result = train(TrainConfig.from_file(args.config, args.overrides), resume=args.resume)
    if not result.main:  # under torchrun, rank 0 reports for the job
        return 0
    summary = {"step": result.step, "loss": result.losses[-1] if result.losses else None,
               "tokens_per_s": round(result.tokens_per_s, 1), **result.validation,
               "skipped_steps": result.skipped_steps, "skipped_items": result.skipped_items}
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in summary.items()))
    if result.export_dir is not None:
        print(f"exported to {result.export_dir}")
    return 0


def _config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "show"],
                   help="list: the shipped stage configs; show: print one (YAML with comments)")
    p.add_argument("name", nargs="?", help="show: a shipped name (e.g. sft) or a file")


@command("config", "list or print the shipped training stage configs", _config_arguments)
def _config(args: argparse.Namespace) -> int:
    from lalm.errors import ConfigError
    from lalm.training.stages import resolve_config, stage_configs

    if args.action == "show":
        if not args.name:
            raise ConfigError("config show needs a NAME (lalm config list)")
        print(resolve_config(args.name).read_text(encoding="utf-8"), end="")
        return 0
    by_file: dict[str, list[str]] = {}
    for name, path in stage_configs().items():
        by_file.setdefault(str(path), []).append(name)
    for path, names in by_file.items():
        print(f"{', '.join(names):28s} {path}")
    return 0


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a training checkpoint (RUN/checkpoints/step-*)")
    p.add_argument("out", help="folder for export/ (LoRA merged) and, for LoRA-only stages, "
                              "adapter/ (PEFT format)")


@command("export", "write a training checkpoint as a merged model (and its PEFT adapter)",
         _export_arguments)
def _export(args: argparse.Namespace) -> int:
    from lalm.training.exports import export_checkpoint

    for folder in export_checkpoint(args.checkpoint, args.out):
        print(f"wrote {folder}")
    return 0


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `lalm serve`; the limits map onto `lalm.serve.Limits` fields."""
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients pass (default: the directory's name; for a "
                        "training run's runs/NAME/export folder, NAME)")
    p.add_argument("--api-key", default=os.environ.get("LALM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/*, /metrics and "
                        "/openapi.json (default: $LALM_API_KEY; none); /health and the web "
                        "page stay open unless --protect-all")
    p.add_argument("--protect-all", action="store_true",
                   help="with --api-key, require the key on every route, /health included")
    p.add_argument("--allowed-hosts", action="append", default=[], metavar="HOST",
                   help="Host header names the server answers, against DNS rebinding "
                        "(repeatable; '*' for any; default: the --host address, plus "
                        "localhost, 127.0.0.1 and ::1 on loopback; any when --host binds "
                        "every interface)")
    p.add_argument("--read-timeout", type=float, default=60.0,
                   help="seconds a client has to send a request's line and headers, and "
                        "again its body (then the connection is closed / 408)")
    p.add_argument("--fetch-timeout", type=float, default=10.0,
                   help="seconds for a whole allowlisted audio_url download")
    _precision_argument(p)
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
    p.add_argument("--realtime-max-session-seconds", type=float, default=3600.0,
                   help="audio one /v1/realtime session may send, in seconds")
    p.add_argument("--realtime-max-segment-seconds", type=float, default=15.0,
                   help="longest stretch of live speech transcribed at once (cut in a pause, "
                        "else with 2 s of overlap), at most 30")
    p.add_argument("--realtime-idle-timeout", type=float, default=120.0,
                   help="seconds a /v1/realtime session may send nothing before it is closed")
    p.add_argument("--encoder-cache-mib", type=float, default=64.0,
                   help="MiB of encoded clips kept by a hash of their samples (0: none)")
    p.add_argument("--prefix-cache-slots", type=int, default=4,
                   help="finished sequences whose KV cache is kept for prefix reuse (0: none)")
    p.add_argument("--access-log", action="store_true", help="log every request")


@command("serve", "serve a model over an OpenAI-compatible HTTP API with a web page",
         _serve_arguments)
def _serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lalm.api import load_model
    from lalm.serve import AudioAccess, Limits
    from lalm.serve.app import ServerConfig, serve, served_model_name
    from lalm.serve.middleware import default_allowed_hosts
    from lalm.serve.realtime import RealtimeLimits

    from lalm.generation import Pipeline

    loaded = load_model(args.model, precision=args.precision, device=args.device)
    pipe = Pipeline(loaded.model, loaded.tokenizer, loaded.options, loaded.max_audio_seconds,
                    encoder_cache_mib=args.encoder_cache_mib,
                    prefix_slots=args.prefix_cache_slots)
    if args.max_audio_seconds is not None:  # one limit: the server's and the pipeline's
        pipe.max_audio_seconds = args.max_audio_seconds
    limits = Limits(max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                    max_audio_seconds=pipe.max_audio_seconds, max_audios=args.max_audios,
                    max_new_tokens=args.max_tokens_limit,
                    default_max_tokens=args.default_max_tokens)
    access = AudioAccess(tuple(args.allow_audio_url),
                         tuple(Path(d) for d in args.allow_audio_dir), args.fetch_timeout)
    hosts = tuple(args.allowed_hosts) or default_allowed_hosts(args.host)
    config = ServerConfig(args.served_model_name or served_model_name(args.model),
                          args.api_key, limits, access, args.max_batch_size, args.max_queue,
                          args.request_timeout, args.protect_all,
                          None if hosts is None or "*" in hosts else hosts, args.read_timeout,
                          RealtimeLimits(max_session_s=args.realtime_max_session_seconds,
                                         max_segment_s=args.realtime_max_segment_seconds,
                                         idle_timeout_s=args.realtime_idle_timeout))
    serve(pipe, config, args.host, args.port, args.access_log)
    return 0


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint directory (required)")
    p.add_argument("--task", default=None,
                   help="a built-in task (lalm.eval.tasks), e.g. librispeech, covost2, meld, "
                        "airbench-foundation, lalm-synth; an unknown name lists them all "
                        "(required)")
    p.add_argument("--data", default=None,
                   help="the task's data: its JSONL / meta file / manifest, or the folder of it "
                        "(required)")
    p.add_argument("--out", default=None,
                   help="output folder (default: runs/eval/<model folder>-<weights hash>/<task>; "
                        "reruns with the same model, data and options resume)")
    p.add_argument("--scoring", choices=["official", "strict"], default="official",
                   help="official: each benchmark's procedure; strict: nothing dropped")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="override the official decoding budget of the task")
    _precision_argument(p)
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
    sub = p.add_subparsers(dest="eval_command", metavar="{compare}")
    compare = sub.add_parser(
        "compare", help="the per-task metrics of several runs side by side",
        description="Print and write (Markdown, JSON, bar-chart PNG) the per-task metrics of "
                    "several `lalm eval` runs side by side. Runs of a task on other data or "
                    "with other scorers are refused unless --force.")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR",
                         help="a `lalm eval` output folder, or a folder of them (one model's "
                              "runs); one column each")
    compare.add_argument("--out", dest="compare_out", metavar="DIR",
                         default="runs/eval/compare",
                         help="where compare.md, compare.json and compare.png go")
    compare.add_argument("--force", action="store_true",
                         help="compare runs whose data or scorer versions differ (listed)")


@command("eval", "evaluate a model on a benchmark (batched, resumable, self-describing "
         "report); `lalm eval compare RUN_DIR...` puts runs side by side", _eval_arguments)
def _eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    if args.eval_command == "compare":
        return _eval_compare(args)
    missing = [f"--{n}" for n in ("model", "task", "data") if getattr(args, n) is None]
    if missing:
        print(f"lalm eval: error: the following arguments are required: {', '.join(missing)}",
              file=sys.stderr)
        return 2
    from lalm.api import load_model
    from lalm.eval.evaluate import evaluate
    from lalm.eval.judge import NEEDS_JUDGE, OFFICIAL_JUDGES, ChatJudge, EmbeddingClient
    from lalm.eval.report import describe_model
    from lalm.eval.tasks import get_task

    task = get_task(args.task)  # an unknown name fails before the model loads
    if args.task in NEEDS_JUDGE and not args.judge_url:
        raise LalmError(f"{args.task} is scored by an LLM judge: give --judge-url (and "
                        f"--judge-model, default {OFFICIAL_JUDGES[args.task]})")
    if args.embed_url and not args.judge_url:
        raise LalmError("--embed-url is used with a judge: give --judge-url too")
    pipe = load_model(args.model, precision=args.precision, device=args.device)
    model = describe_model(pipe, args.model)
    out = Path(args.out or Path("runs") / "eval" / model.label / args.task)
    judge = None
    if args.judge_url:
        judge_model = args.judge_model or OFFICIAL_JUDGES.get(args.task, "gpt-4o-mini")
        key = os.environ.get(args.judge_api_key_env)
        cache = Path(args.judge_cache or out / "judgements.jsonl")
        embedder = (EmbeddingClient(args.embed_url, args.embed_model, key,
                                    cache.with_name(cache.stem + "-embeddings.jsonl"))
                    if args.embed_url else None)
        judge = ChatJudge(args.judge_url, judge_model, key, cache,
                          temperature=args.judge_temperature, seed=args.judge_seed,
                          samples=args.judge_samples, embedder=embedder)
    summary = evaluate(pipe, task, args.data, out, args.scoring, args.batch_size,
                       args.limit, judge, model=model, max_new_tokens=args.max_new_tokens)
    print(json.dumps(summary["scores"], indent=1, ensure_ascii=False))
    print(f"predictions and summary in {out}")
    return 0


def _eval_compare(args: argparse.Namespace) -> int:
    from lalm.eval.compare import compare_runs, markdown, write_comparison

    comparison = compare_runs(args.runs, force=args.force)
    paths = write_comparison(comparison, args.compare_out)
    print(markdown(comparison), end="")
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _bench_synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--data", required=True, help="lalm-synth folder (test.jsonl, airbench/)")
    p.add_argument("--out", default=None,
                   help="output folder (default: runs/bench-synth/<model folder>-<weights "
                        "hash>; reruns with the same model, data and options resume)")
    p.add_argument("--scoring", choices=["official", "strict"], default="official",
                   help="scoring mode of the per-task rows (AIR-Bench shows both)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    p.add_argument("--limit", type=int, default=None, help="only the first N items of each set")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="override the official decoding budget of the task")
    _precision_argument(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")


@command("bench-synth", "evaluate a model on every lalm-synth task: table, Markdown/JSON, chart",
         _bench_synth_arguments)
def _bench_synth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lalm.api import load_model
    from lalm.eval.report import describe_model
    from lalm.eval.synth_report import markdown_table, run_synth_bench

    pipe = load_model(args.model, precision=args.precision, device=args.device)
    model = describe_model(pipe, args.model)
    out = args.out or Path("runs") / "bench-synth" / model.label
    report = run_synth_bench(pipe, args.data, out, args.scoring, args.batch_size,
                             args.limit, model=model, max_new_tokens=args.max_new_tokens)
    print(markdown_table(report.rows), end="")
    print(f"wrote {report.markdown}, {report.json} and {report.chart}")
    return 0


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audio", default=None, metavar="FILE",
                   help="ask about this clip (default: a lalm-synth test clip)")
    p.add_argument("--question", default=None, help="the question (default: the clip's task)")
    p.add_argument("--model", default=None, metavar="NAME|DIR",
                   help="default (lalm's default model, made on first run), smollm (Whisper "
                        "tiny.en + SmolLM2-135M-Instruct + lalm's shipped trained parts, "
                        "assembled on first run) or a default-model folder")
    p.add_argument("--retrain", action="store_true",
                   help="make the model again even if it is cached (smollm: train its parts "
                        "by its two stage configs)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: fastest on 2 busy cores)")


@command("demo", "lalm's default model: on first run synthesise data, train, evaluate (about "
         "10 min on 2 cores); then answer a question about an audio clip", _demo_arguments)
def _demo(args: argparse.Namespace) -> int:
    from lalm.demo import run_demo

    run_demo(args.model, args.audio, args.question, args.retrain, args.threads)
    return 0
