"""What a training run tells people: the log sinks, throughput and ETA, the start line.

`RunLog` is rank 0's sinks: ``log.jsonl`` (always), TensorBoard (``run.tensorboard``), a tqdm
bar (``run.progress``), and an experiment tracker when ``run.tracker`` asks for one: Weights &
Biases (``wandb``) or SwanLab (``swanlab``), used only through their ``init`` / ``log`` /
``finish`` functions and only when the package is installed (`ConfigError` otherwise); where
they write (online, offline) is their own settings' business (``WANDB_MODE=offline``,
``SWANLAB_MODE``). `Throughput` turns the run's global token and item counts into
``tokens_per_s``, ``samples_per_s`` and ``eta_s`` for each log line.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from lalm.files import atomic_write
from lalm.errors import ConfigError
from lalm.training.distributed import DistInfo
from lalm.training.stages import TrainConfig

#: run.tracker -> (module, init keyword of the run's name, init keyword of its folder)
TRACKERS = {"wandb": ("wandb", "name", "dir"), "swanlab": ("swanlab", "experiment_name", "logdir")}


def truncate_log(path: Path, step: int) -> None:
    """Keep the records of steps <= `step` in a JSONL log (atomically; a line torn by a kill is
    dropped): a run resumed from the step-`step` checkpoint logs the later steps again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line + "\n")
    atomic_write(path, "".join(kept).encode("utf-8"))


def _tracker(config: TrainConfig, out_dir: Path) -> Any:
    """The ``run.tracker`` module, initialised for this run (None for ``none``)."""
    if config.run.tracker == "none":
        return None
    name, name_key, dir_key = TRACKERS[config.run.tracker]
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise ConfigError(f"run.tracker={config.run.tracker} needs the {name} package "
                          f"(pip install {name}), or set run.tracker=none") from e
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    module.init(project=config.run.tracker_project, config=config.to_dict(),
                **{name_key: config.stage, dir_key: str(folder)})
    return module


class RunLog:
    """Rank 0's log sinks (module docstring): JSONL (``log.jsonl``, first cut back to step
    `start`), optional TensorBoard, tracker and tqdm."""

    def __init__(self, out_dir: Path, config: TrainConfig, dist: DistInfo, start: int,
                 max_steps: int) -> None:
        self.enabled = dist.main
        self.path = out_dir / "log.jsonl"
        self.writer = self.bar = self.tracker = None
        if not self.enabled:
            return
        truncate_log(self.path, start)
        if config.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError("run.tensorboard needs the tensorboard package "
                                  "(pip install tensorboard)") from e
            self.writer = SummaryWriter(str(out_dir / "tensorboard"))
        self.tracker = _tracker(config, out_dir)
        if config.run.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=start, unit="step", desc=config.stage)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (it carries its ``step``) to every sink."""
        if not self.enabled:
            return
        # strict JSON: a skipped step's non-finite loss is written as null (jq, node read it)
        line = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, allow_nan=False) + "\n")
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, record["step"])
        if self.tracker is not None and scalars:
            self.tracker.log(scalars, step=record["step"])
        if self.bar is not None and "loss" in record:
            postfix = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}"}
            if "samples_per_s" in record:
                postfix["samples/s"] = f"{record['samples_per_s']:.1f}"
            self.bar.set_postfix(postfix)

    def note(self, text: str) -> None:
        """One line for people on stderr (above the progress bar)."""
        if self.enabled:
            (print if self.bar is None else self.bar.write)(text, file=sys.stderr)

    def start(self, config: TrainConfig, trainable: int, total: int, max_steps: int,
              details: str) -> None:
        """The run's first line: trainable and total parameters, steps, and `details`; the
        counts also go to the tracker's summary."""
        self.note(f"lalm train {config.stage}: {trainable:,} of {total:,} parameters train "
                  f"({trainable / max(total, 1):.2%}; parts {config.parts.encoder}/"
                  f"{config.parts.projector}/{config.parts.decoder}); {max_steps} steps"
                  + (f" ({config.run.epochs} epochs)" if config.run.epochs else "")
                  + f"; {details}")
        if self.tracker is not None:
            self.tracker.log({"trainable_params": trainable, "total_params": total}, step=0)

    def advance(self) -> None:
        """One step done."""
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        """Flush and close the sinks."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None


class Throughput:
    """Rates of this call of the run from its global counters (`TrainerState.tokens` /
    ``samples``, every rank's): since the call started (a resumed run's earlier part is not
    timed)."""

    def __init__(self, step: int, tokens: int, samples: int) -> None:
        self.t_start = time.perf_counter()
        self.step, self.tokens, self.samples = step, tokens, samples

    def elapsed(self) -> float:
        """Seconds since the call started (> 0)."""
        return max(time.perf_counter() - self.t_start, 1e-9)

    def rates(self, step: int, tokens: int, samples: int, max_steps: int) -> dict[str, float]:
        """``tokens_per_s``, ``samples_per_s``, ``eta_s`` (the remaining steps at this call's
        mean step time) and ``elapsed_s`` at `step` with the counters at `tokens` / `samples`."""
        elapsed = self.elapsed()
        per_step = elapsed / max(step - self.step, 1)
        return {"tokens_per_s": (tokens - self.tokens) / elapsed,
                "samples_per_s": (samples - self.samples) / elapsed,
                "eta_s": per_step * (max_steps - step), "elapsed_s": elapsed}
