"""Training stages as configuration: typed dataclasses filled from YAML plus ``key=value`` overrides.

A stage says which parts train and how (`PartsConfig`: each of encoder / projector / decoder is
``frozen``, ``full`` or ``lora``), what data it reads and in which mix (`DataConfig`), the
optimiser and its warmup-cosine schedule (`OptimConfig`), the objective (``lm``: next-token loss
on the targets only; ``dpo``: preference pairs against a frozen reference, `DpoConfig`; ``grpo``:
sampled answers scored by verifiable rewards, `GrpoConfig`) and how
the run goes (`RunConfig`: steps, precision, checkpoints, logs, evaluation, distribution).

YAML mirrors the dataclasses one to one (sections = fields); defaults live only here. Overrides
use dotted paths, list items by index, values parsed as YAML; a manifest path stands for a data
source (``data.train=FILE`` replaces the whole mix by that one file)::

    lalm train sft --set optim.lr=3e-5 --set data.train.0.weight=2
    lalm train sft --set data.train=my.jsonl --set data.valid=null

The shipped stage configs are package data (``lalm/training/configs/*.yaml``, `stage_configs`):
``lalm train NAME`` takes a file or one of their names (``sft`` for ``stage2_sft``), and
``lalm config list`` / ``lalm config show NAME`` print them.

Every bad field raises `ConfigError` naming it (and the file).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lalm.errors import ConfigError

PartMode = Literal["frozen", "full", "lora"]
Objective = Literal["lm", "dpo", "grpo"]
Strategy = Literal["ddp", "fsdp"]
OnNonfinite = Literal["stop", "skip"]
OnBadItem = Literal["fail", "skip"]
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PARTS = ("encoder", "projector", "decoder")
LORA_TARGETS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down",
                "attn.query", "attn.key", "attn.value", "attn.out", "mlp.0", "mlp.2", "proj")


@dataclass
class ModelSource:
    """Where the starting weights come from: a checkpoint folder, or a preset with random init."""

    checkpoint: str | None = None  # checkpoint folder (any lalm.checkpoint format)
    preset: str | None = None  # or: a lalm.config preset name, weights drawn from init_seed
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # preset fields by section
    init_seed: int = 0  # seed of the random weights of a preset

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.preset is None):
            raise ConfigError("model: give exactly one of model.checkpoint and model.preset")
        if self.checkpoint is not None and self.overrides:
            raise ConfigError("model.overrides only apply to model.preset")


@dataclass
class PartsConfig:
    """How each part trains: ``frozen`` (no gradients), ``full`` or ``lora`` (adapters only)."""

    encoder: PartMode = "full"  # Whisper-style audio encoder
    projector: PartMode = "full"  # pool + ln_post + proj (+ v1 audio BOS/EOS rows)
    decoder: PartMode = "frozen"  # the LLM, lm_head and embeddings included

    def __post_init__(self) -> None:
        for part in PARTS:
            if getattr(self, part) not in typing.get_args(PartMode):
                raise ConfigError(f"parts.{part} must be frozen, full or lora, "
                                  f"got {getattr(self, part)!r}")
        if all(getattr(self, part) == "frozen" for part in PARTS):
            raise ConfigError("parts: every part is frozen; nothing would train")

    def uses_lora(self) -> bool:
        """True when some part trains through LoRA adapters."""
        return any(getattr(self, part) == "lora" for part in PARTS)

    def adapter_only(self) -> bool:
        """Whether LoRA adapters are all the stage trains (the other parts frozen): then the
        adapters alone, on the starting weights, are the trained model."""
        modes = {getattr(self, part) for part in PARTS}
        return "lora" in modes and "full" not in modes


@dataclass
class LoraConfig:
    """Low-rank adapters on the Linear layers of the parts set to ``lora``."""

    rank: int = 8  # r: width of the low-rank update
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input
    # module-name suffixes of the adapted Linear layers (empty: every Linear, lm_head included);
    # default: the attention and MLP projections of both stacks and the projector's proj
    targets: tuple[str, ...] = LORA_TARGETS
    # the frozen base weights of the decoder's adapted layers: the model's dtype, or int8
    # (QLoRA-style, lalm.training.qlora: per-channel int8, a quarter of fp32's bytes; the
    # adapters stay in the model dtype; needs parts.decoder: lora and every decoder Linear
    # among the targets)
    base_precision: Literal["model", "int8"] = "model"
    # which sequences the decoder's adapters act on: "all", or "audio" (only those that hold
    # audio; text-only ones run the base decoder exactly: lalm.model.lora.gate_adapters; the
    # model is then saved as its base weights plus a PEFT adapter, lalm.checkpoint.peft)
    applies_to: Literal["all", "audio"] = "all"

    def __post_init__(self) -> None:
        if self.rank <= 0 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ConfigError(f"lora: need rank > 0, alpha > 0, 0 <= dropout < 1; got "
                              f"rank={self.rank} alpha={self.alpha} dropout={self.dropout}")
        if self.applies_to not in ("all", "audio"):
            raise ConfigError(f"lora.applies_to must be all or audio, got {self.applies_to!r}")


@dataclass
class DataSource:
    """One manifest of the mix."""

    manifest: str  # manifest file (lalm JSONL, or any lalm.data.formats format; DPO: pairs JSONL)
    weight: float = 1.0  # items taken per epoch = weight x manifest size (repeats above 1)
    format: str | None = None  # manifest format; None: guessed from the file
    audio_root: str | None = None  # DPO pairs: folder relative audio paths start from (None:
    # the manifest's); other manifests always resolve against their own folder
    split: str | None = None  # keep only examples of this split; None: all

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ConfigError(f"data source {self.manifest}: weight must be > 0, got {self.weight}")

    def root(self) -> Path:
        """The folder relative audio paths of this source start from."""
        return Path(self.audio_root) if self.audio_root else Path(self.manifest).parent


@dataclass
class DataConfig:
    """Training mix, held-out data, tokenizer and batching budgets."""

    train: list[DataSource] = field(default_factory=list)  # the mix
    valid: DataSource | None = None  # held-out set: validation loss and task metrics
    tokenizer: str | None = None  # tokenizer folder/file; None: model.checkpoint's
    max_tokens: int = 4096  # per batch: items x longest item's tokens
    max_frames: int = 12000  # per batch: clips x (longest clip's mel frames + 2)
    max_items: int | None = None  # per batch: at most this many items
    bucket_ratio: float = 1.2  # size ratio of the length buckets (lalm.data.sampler)
    max_audio_seconds: float = 30.0  # longer clips are an error
    num_workers: int = 0  # DataLoader worker processes
    # compute the frozen encoder's output of every clip once, at the start, and train from it
    # (lalm.training.encoder_cache: exact; needs parts.encoder frozen and objective lm or grpo)
    encoder_cache: bool = False
    # where the loss falls in a chat: every assistant turn (as ms-swift and LLaMA-Factory do)
    # or only the last one (its answer); prompts, audio slots and the other roles never
    loss_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    # an item that cannot be read (a malformed record, an unreadable or too-long clip): fail
    # the run naming it, or skip it with a warning, counted in the run's summary
    on_bad_item: OnBadItem = "fail"
    # sequence packing (objective lm): each batch's items go into rows of at most this many
    # tokens, kept apart by segment ids (each item attends to itself only, positions restart):
    # the same batches, loss and gradients as unpacked, without the padding; None: one item a row
    pack_tokens: int | None = None

    def __post_init__(self) -> None:
        if not self.train:
            raise ConfigError("data.train: the mix needs at least one manifest")
        if self.max_tokens <= 0 or self.max_frames <= 0 or self.num_workers < 0:
            raise ConfigError("data: max_tokens and max_frames must be > 0, num_workers >= 0")
        if self.pack_tokens is not None and self.pack_tokens <= 0:
            raise ConfigError(f"data.pack_tokens must be > 0 (or null: no packing), got "
                              f"{self.pack_tokens}")


@dataclass
class OptimConfig:
    """AdamW (no decay on norms, biases, embeddings' special rows) with warmup-cosine."""

    lr: float = 1e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine ends at lr x min_lr_ratio
    warmup_steps: int = 100  # linear warmup from 0
    weight_decay: float = 0.1  # decoupled decay on matrices only
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    eps: float = 1e-8  # AdamW eps
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    grad_accum: int = 1  # micro-batches per optimizer step (per rank)

    def __post_init__(self) -> None:
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim: need lr > 0 and 0 <= min_lr_ratio <= 1, got lr={self.lr} "
                              f"min_lr_ratio={self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.grad_accum < 1 or self.grad_clip < 0:
            raise ConfigError("optim: need warmup_steps >= 0, grad_accum >= 1, grad_clip >= 0")


@dataclass
class DpoConfig:
    """Direct preference optimisation (Rafailov et al. 2023), the Qwen2-Audio third stage."""

    beta: float = 0.1  # strength of the implicit KL penalty
    reference: str | None = None  # checkpoint of the frozen reference; None: the starting weights

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"dpo.beta must be > 0, got {self.beta}")


@dataclass
class GrpoConfig:
    """Group relative policy optimisation (Shao et al. 2024) on verifiable rewards
    (`lalm.training.grpo`): G sampled answers per prompt, advantages relative to the group."""

    group_size: int = 4  # G: answers sampled per prompt
    prompts: int = 2  # prompts per micro-batch, G rows each (data.max_tokens etc. do not apply)
    # reward name -> weight (lalm.training.rewards: exact_match, normalized_match, choice, wer,
    # format, timestamp_shift)
    rewards: dict[str, float] = field(default_factory=lambda: {"exact_match": 1.0})
    temperature: float = 1.0  # sampling temperature of the answers
    top_p: float = 1.0  # nucleus sampling of the answers
    top_k: int = 0  # top-k sampling of the answers (0: all)
    max_new_tokens: int = 64  # answer budget
    scale_rewards: bool = True  # divide advantages by the group's reward std (Dr. GRPO: false)
    clip_low: float = 0.2  # PPO ratio clip: lower bound 1 - clip_low
    clip_high: float | None = None  # upper bound 1 + clip_high (DAPO clip-higher); None: clip_low
    loss_agg: Literal["sequence", "token"] = "sequence"  # mean per answer, or per token (DAPO)
    kl_coef: float = 0.0  # weight of the KL to the reference; 0: no reference at all
    # the frozen KL reference of full fine-tuning (None: the starting weights); LoRA-only
    # stages use the base weights with the adapters switched off
    reference: str | None = None

    def __post_init__(self) -> None:
        if self.group_size < 2 or self.prompts < 1 or self.max_new_tokens < 1:
            raise ConfigError("grpo: need group_size >= 2, prompts >= 1, max_new_tokens >= 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError("grpo: need temperature > 0, 0 < top_p <= 1, top_k >= 0")
        high = self.clip_low if self.clip_high is None else self.clip_high
        if not 0 < self.clip_low < 1 or high <= 0 or self.kl_coef < 0:
            raise ConfigError("grpo: need 0 < clip_low < 1, clip_high > 0, kl_coef >= 0")


@dataclass
class RunConfig:
    """Steps, precision, checkpoints, logs, evaluation and distribution of one run."""

    out_dir: str = "runs/train"  # checkpoints, logs and the export go here
    max_steps: int = 1000  # optimizer steps of the run (unless epochs is set)
    # or: the run's length in passes over the training mix; the steps are derived at the start
    # (epochs x this rank's micro-batches per epoch / optim.grad_accum, rounded up; GRPO: its
    # prompts per epoch / grpo.prompts) and replace max_steps; None: max_steps
    epochs: int | None = None
    seed: int = 0  # data order, dropout and every other random draw
    precision: str = "fp32"  # fp32 | bf16 | fp16 autocast (CPU without bf16 units: fp32)
    device: str = "auto"  # auto (cuda if present, else cpu), cpu, cuda
    grad_checkpointing: bool = False  # recompute encoder/decoder blocks in backward
    log_every: int = 10  # steps between log lines (JSONL, TensorBoard, tqdm)
    eval_every: int = 0  # steps between validations; 0: only at the end
    eval_batches: int = 20  # held-out batches, spread over its lengths, the same every time
    metric_items: int = 16  # held-out items decoded for task metrics (0: none)
    max_new_tokens: int = 64  # decoding budget of the metric items
    save_every: int = 100  # steps between full-state checkpoints (0: only at the end)
    keep_last: int = 2  # full-state checkpoints kept
    tensorboard: bool = False  # also write TensorBoard events (needs the tensorboard package)
    # also log to an experiment tracker: Weights & Biases or SwanLab (needs its package; its own
    # settings say online or offline, e.g. WANDB_MODE=offline)
    tracker: Literal["none", "wandb", "swanlab"] = "none"
    tracker_project: str = "lalm"  # the tracker's project name
    progress: bool = True  # tqdm progress bar on rank 0
    strategy: Strategy = "ddp"  # under torchrun with > 1 rank: ddp or fsdp (FSDP2)
    # DDP's find_unused_parameters; None: auto (on when the mix has text-only items and the
    # encoder or projector trains: such a batch leaves them without gradients)
    find_unused_parameters: bool | None = None
    export: bool = True  # write out_dir/export (Qwen2-Audio HF layout, LoRA merged) at the end
    # a step whose loss (or, unclipped, gradient) is NaN/inf: stop the run with an error before
    # the update, or skip the update and count it (log.jsonl, the summary)
    on_nonfinite: OnNonfinite = "stop"
    # torch CPU threads; None: as many as the CPUs this process may use that other work leaves
    # idle (`lalm.training.distributed.choose_threads`; never more than torch's default)
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.max_steps <= 0:
            raise ConfigError(f"run.max_steps must be > 0, got {self.max_steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"run.epochs must be > 0 (or null: run.max_steps), got "
                              f"{self.epochs}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"run.threads must be >= 1 (or null: auto), got {self.threads}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"run.precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.strategy not in typing.get_args(Strategy):
            raise ConfigError(f"run.strategy must be ddp or fsdp, got {self.strategy!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"run.device must be auto, cpu or cuda, got {self.device!r}")
        if min(self.log_every, self.keep_last, self.eval_batches) < 1 \
                or min(self.eval_every, self.save_every) < 0:
            raise ConfigError("run: log_every, keep_last and eval_batches must be >= 1, "
                              "eval_every and save_every >= 0")


@dataclass
class TrainConfig:
    """One training stage."""

    stage: str  # name in logs (e.g. stage1_pretrain)
    model: ModelSource
    data: DataConfig
    objective: Objective = "lm"  # lm: next-token loss on targets; dpo: preference pairs; grpo
    parts: PartsConfig = field(default_factory=PartsConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.objective not in typing.get_args(Objective):
            raise ConfigError(f"objective must be lm, dpo or grpo, got {self.objective!r}")
        if self.data.tokenizer is None and self.model.checkpoint is None:
            raise ConfigError("data.tokenizer is needed when the model starts from a preset")
        if self.data.encoder_cache and (self.parts.encoder != "frozen"
                                        or self.objective not in ("lm", "grpo")):
            raise ConfigError("data.encoder_cache needs parts.encoder: frozen and objective: lm "
                              "or grpo "
                              f"(got {self.parts.encoder}, {self.objective})")
        if self.lora.base_precision == "int8" and self.parts.decoder != "lora":
            raise ConfigError(f"lora.base_precision=int8 quantises the decoder under its "
                              f"adapters: it needs parts.decoder: lora (got "
                              f"{self.parts.decoder})")
        if self.data.pack_tokens is not None and self.objective != "lm":
            raise ConfigError(f"data.pack_tokens packs lm batches only (objective "
                              f"{self.objective!r} builds its own rows)")
        if self.run.epochs is None:  # else once the steps are derived (`with_steps`)
            self.check_schedule(self.run.max_steps)

    def check_schedule(self, steps: int) -> None:
        """Warn when the warmup would keep the learning rate low for most of `steps`."""
        warmup = self.optim.warmup_steps
        if warmup > steps / 2:
            low = (f"never reaches optim.lr (at most x{steps / (warmup + 1):.2f} of it)"
                   if warmup >= steps else f"is below optim.lr for {warmup} of them")
            warnings.warn(
                f"optim.warmup_steps={warmup} in a run of run.max_steps={steps} optimizer steps "
                f"(each of optim.grad_accum={self.optim.grad_accum} micro-batches): the learning "
                f"rate {low}; lower optim.warmup_steps or raise run.max_steps", stacklevel=3)

    def with_steps(self, micro_batches_per_epoch: int) -> TrainConfig:
        """This config with ``run.max_steps`` derived from ``run.epochs`` (itself when unset):
        ``ceil(epochs x micro_batches_per_epoch / optim.grad_accum)``.

        Args:
            micro_batches_per_epoch: micro-batches of one pass over the mix on one rank.
        """
        if self.run.epochs is None:
            return self
        steps = max(1, math.ceil(self.run.epochs * micro_batches_per_epoch
                                 / self.optim.grad_accum))
        self.check_schedule(steps)
        return dataclasses.replace(self, run=dataclasses.replace(self.run, max_steps=steps))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-ready; tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from nested dicts (the YAML form).

        Raises:
            ConfigError: unknown or missing fields, wrong kinds or bad values, named with
                `source` and the dotted field path.
        """
        try:
            return _build(cls, data, "")
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str],
                  overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
        """Read a YAML stage file (or a shipped config by name: `resolve_config`) and apply
        ``key=value`` overrides (module docstring).

        Raises:
            ConfigError: a missing or unparsable file, a bad override, or a bad field.
        """
        path = resolve_config(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read training config {path}: {e.strerror or e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of config sections")
        for item in overrides:
            apply_override(data, item)
        return cls.from_dict(data, str(path))


def stage_configs() -> dict[str, Path]:
    """The shipped stage configs by name: each file's stem (``stage2_sft``) and the stem without
    its ``stageN_`` prefix (``sft``)."""
    names: dict[str, Path] = {}
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        names[path.stem] = path
        short = path.stem.partition("_")[2]
        if path.stem.startswith("stage") and short:
            names[short] = path
    return names


def resolve_config(name_or_path: str | os.PathLike[str]) -> Path:
    """A stage config file: `name_or_path` itself when it is a file, else the shipped config of
    that name (`stage_configs`).

    Raises:
        ConfigError: neither, listing the shipped names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = stage_configs()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    hint = f"; did you mean {path.stem!r}?" if path.stem in shipped else ""
    raise ConfigError(f"cannot read training config {name_or_path}: no such file, nor a shipped "
                      f"config of that name ({', '.join(shipped)}; lalm config list){hint}")


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set one dotted ``key=value`` in nested dicts/lists (value parsed as YAML), in place.

    Raises:
        ConfigError: no ``=``, an empty key, or a path through something that is not a mapping
            or a list index.
    """
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not key=value")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not YAML: {e}") from e
    *parents, last = key.split(".")
    node: Any = data
    for part in parents:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"override {item!r}: {part!r} is not a section or list index")
        if node is None:
            raise ConfigError(f"override {item!r}: {part!r} is empty")
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {item!r}: cannot set {last!r} there")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    """A dataclass from a mapping, converting nested dataclasses, lists and tuples by type hint."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} in {where or 'config'}; "
                          f"known: {sorted(names)}")
    kwargs = {name: _convert(hints[name], value, f"{where}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a missing required field
        raise ConfigError(f"{where or 'config'}: {e}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if hint is DataSource and isinstance(value, str):
        value = {"manifest": value}  # a manifest path stands for a source of weight 1
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{where}.")
    if origin is list:
        if args[0] is DataSource and isinstance(value, str):
            value = [value]  # data.train=FILE: the mix is that one manifest
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list")
        return [_convert(args[0], v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} items")
        return tuple(_convert(a, v, where) for a, v in zip(args, value))
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping")
        return value
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads 3e-4 (no dot) as a string
            return float(value)
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value
