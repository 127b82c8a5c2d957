"""DPO (Rafailov et al. 2023) on preference pairs: the record, its dataset and the loss.

A pair is a prompt example (its audio and task/conversation; the target is ignored) with a
preferred (`chosen`) and a dispreferred (`rejected`) answer. Pairs live in their own JSONL, one
object per line, keeping lalm's `Example` record as it is::

    {"id": "p1", "prompt": {<Example.to_dict()>}, "chosen": "...", "rejected": "..."}

Both answers are written in the rendered-target form (what the model should write after the
prompt, as `lalm.data.render.render_target` gives it). The loss, with policy log-likelihoods
``pi_c, pi_r`` and frozen-reference ones ``ref_c, ref_r`` of the two answers (sums over the
answer tokens and the end token)::

    loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from lalm.data.collate import collate
from lalm.data.dataset import AudioTextDataset
from lalm.data.manifest import Example, ExampleTurn
from lalm.errors import DataError
from lalm.files import atomic_write
from lalm.model.lalm import IGNORE_INDEX
from lalm.tokenizer import Tokenizer


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair (module docstring).

    Attributes:
        id: unique id in its file.
        prompt: the example whose prompt both answers follow (its target is not used).
        chosen: the preferred answer text.
        rejected: the dispreferred answer text.
    """

    id: str
    prompt: Example
    chosen: str
    rejected: str

    def __post_init__(self) -> None:
        if self.chosen == self.rejected:
            raise DataError(f"preference pair {self.id!r}: chosen and rejected are equal")

    def answered(self, answer: str) -> Example:
        """The prompt example with `answer` as its target (and last assistant turn)."""
        example = self.prompt
        messages = example.messages
        if messages and messages[-1].role == "assistant":
            messages = (*messages[:-1], ExampleTurn("assistant", answer, messages[-1].audios))
        task = dataclasses.replace(example.task, timestamps=False)
        return dataclasses.replace(example, target=answer, messages=messages, task=task,
                                   words=(), answer=None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"id": self.id, "prompt": self.prompt.to_dict(), "chosen": self.chosen,
                "rejected": self.rejected}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreferencePair:
        """Build from the JSON form.

        Raises:
            DataError: missing fields or a malformed prompt example.
        """
        try:
            return cls(str(d["id"]), Example.from_dict(d["prompt"]), str(d["chosen"]),
                       str(d["rejected"]))
        except (KeyError, TypeError) as e:
            raise DataError(f"preference pair {d.get('id', '?')!r} is malformed: {e!r}") from e


def write_pairs(path: str | os.PathLike[str], pairs: Sequence[PreferencePair]) -> None:
    """Write pairs as JSONL, atomically."""
    lines = [json.dumps(p.to_dict(), ensure_ascii=False, sort_keys=True) + "\n" for p in pairs]
    atomic_write(path, "".join(lines).encode("utf-8"))


def read_pairs(path: str | os.PathLike[str]) -> list[PreferencePair]:
    """The pairs of a JSONL file.

    Raises:
        DataError: a missing file, or a bad line (named by file and line number).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"preference file {path} does not exist")
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                pairs.append(PreferencePair.from_dict(json.loads(line)))
            except (json.JSONDecodeError, DataError, AttributeError) as e:
                raise DataError(f"{path}:{n}: {e}") from e
    return pairs


class PreferenceDataset(Dataset):
    """Pairs as (chosen item, rejected item) tuples of `AudioTextDataset` item dicts.

    Args:
        pairs: the pairs.
        tokenizer, n_mels, audio_root, max_audio_seconds, row_counts: as for
            `AudioTextDataset`.
    """

    def __init__(self, pairs: Sequence[PreferencePair], tokenizer: Tokenizer, n_mels: int,
                 audio_root: str | os.PathLike[str] = ".",
                 max_audio_seconds: float | None = 30.0,
                 row_counts: Callable[[Tensor], Tensor] | None = None) -> None:
        examples = [p.answered(a) for p in pairs for a in (p.chosen, p.rejected)]
        # DPO compares the final answers; the shared history carries no labels
        self.items = AudioTextDataset(examples, tokenizer, n_mels, audio_root, max_audio_seconds,
                                      all_turns=False, row_counts=row_counts)

    def __len__(self) -> int:
        return len(self.items) // 2

    def __getitem__(self, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.items[2 * index], self.items[2 * index + 1]

    @property
    def lengths(self) -> tuple[list[int], list[list[int]]]:
        """Sizes for `BucketBatchSampler`: a pair counts as two rows of its longer answer's
        tokens and as both copies of its clips."""
        tokens, frames = self.items.lengths
        return ([2 * max(tokens[i], tokens[i + 1]) for i in range(0, len(tokens), 2)],
                [frames[i] + frames[i + 1] for i in range(0, len(frames), 2)])


@dataclass(frozen=True)
class PairCollator:
    """Collate pairs into one batch of 2P rows: the P chosen items, then the P rejected ones."""

    pad_id: int

    def __call__(self, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
        return collate([c for c, _ in pairs] + [r for _, r in pairs], self.pad_id)


def token_logprobs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Log-likelihood of each target token.

    Args:
        logits: [B, S, V]; position s predicts labels[:, s + 1].
        labels: [B, S] int64, -100 where there is no target.

    Returns:
        (logp [B, S - 1] float32, 0 where there is no target; keep [B, S - 1] bool, the
        target positions): entry s is log p(labels[:, s + 1]).
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = logits[:, :-1].float()
    picked = logits.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (picked - torch.logsumexp(logits, dim=-1)) * keep, keep


def sequence_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """Summed log-likelihood of each row's targets.

    Args:
        logits: [B, S, V] float32; position s predicts labels[:, s + 1].
        labels: [B, S] int64, -100 where there is no target.

    Returns:
        [B] float32 sums of log p(label) over the target positions.
    """
    return token_logprobs(logits, labels)[0].sum(-1)


@dataclass
class DpoOutput:
    """Per-pair DPO terms ([P] float32 each).

    Attributes:
        losses: -log sigmoid(beta * margin).
        chosen_rewards: beta * (pi_c - ref_c), detached.
        rejected_rewards: beta * (pi_r - ref_r), detached.
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor,
             ref_rejected: Tensor, beta: float) -> DpoOutput:
    """The DPO loss of P pairs from [P] summed log-likelihoods (module docstring)."""
    chosen = policy_chosen - ref_chosen
    rejected = policy_rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen - rejected))
    return DpoOutput(losses, beta * chosen.detach(), beta * rejected.detach())
