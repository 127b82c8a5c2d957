"""scripts/smollm_ceiling.py's stand-in projector: the transcript's token embeddings in the
audio slot, as many rows as the real projector makes of the clip."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lalm.testing.models import random_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from smollm_ceiling import TranscriptRows  # noqa: E402  (scripts/ is not a package)


@pytest.mark.parametrize("layout", ["once", "stretch"])
def test_transcript_rows_fill_the_clips_rows_with_the_transcripts_embeddings(
        layout: str) -> None:
    model = random_model()
    embed = model.decoder.embed.weight.detach()
    rows = TranscriptRows(model.projector, embed, space=7, layout=layout)
    rows.ids = [3, 5, 9]
    x_lens = torch.tensor([21])
    n = int(model.projector.row_counts(x_lens)[0])
    (out,) = rows(torch.zeros(1, 21, model.config.encoder.dim), x_lens)
    assert out.shape == (n, embed.shape[1]) and n > len(rows.ids)
    picked = [int((embed == row).all(dim=1).nonzero()[0]) for row in out]
    if layout == "once":
        assert picked == [3, 5, 9] + [7] * (n - 3)
    else:  # each token in order, spread evenly over the rows
        assert sorted(set(picked), key=picked.index) == [3, 5, 9]
        assert picked == sorted(picked, key=[3, 5, 9].index)
        assert max(picked.count(i) for i in (3, 5, 9)) - min(
            picked.count(i) for i in (3, 5, 9)) <= 1


def test_transcript_rows_need_one_clip_and_its_ids() -> None:
    model = random_model()
    rows = TranscriptRows(model.projector, model.decoder.embed.weight.detach(), 7, "once")
    with pytest.raises(ValueError, match="transcript ids"):
        rows(torch.zeros(1, 9, model.config.encoder.dim), torch.tensor([9]))
    rows.ids = [1]
    with pytest.raises(ValueError, match="one clip"):
        rows(torch.zeros(2, 9, model.config.encoder.dim), torch.tensor([9, 9]))
