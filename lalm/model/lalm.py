"""AudioLanguageModel: audio encoder -> projector -> audio rows spliced into the decoder input.

One model for both checkpoint families. Audio splicing is family-agnostic: the prompt's token
ids carry one "audio slot" per audio row, and the rows go into the slots in row-major order
(`audio_slot_mask = torch.isin(ids, slot_ids)`; Qwen2-Audio: the `<|AUDIO|>` run of each clip;
Qwen-Audio v1: `<audio>`, the placeholder run and `</audio>`, filled by BOS, frames, EOS).

Shape alphabet: B batch, S text positions, M mel bins, T mel frames, R audio rows, D width,
V vocab.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lalm.config import ModelConfig
from lalm.model.decoder import (
    DecoderOutput,
    TextDecoder,
    positions_from_mask,
    positions_from_segments,
)
from lalm.model.encoder import AudioEncoder
from lalm.model.projector import Projector

IGNORE_INDEX = -100  # label value that the loss skips

#: `AudioLanguageModel.forward` outputs: the decoder's, or "targets" (logits only at the positions
#: that have a label: the training loss without the [B, S, V] tensor).
ModelOutputKind = DecoderOutput | Literal["targets"]


@dataclass
class ModelOutput:
    """Result of `AudioLanguageModel.forward`.

    Attributes:
        logits: [B, S, V] float32 (or what `output` asked for: [B, V], [B, S, D], or [N, V] at
            the N positions s whose next label labels[:, s + 1] is not -100, row-major).
        loss: scalar float32 mean next-token cross-entropy over labels != -100, or None.
    """

    logits: Tensor
    loss: Tensor | None


def audio_rows_mask(audio_slot_mask: Tensor, segment_ids: Tensor | None = None) -> Tensor:
    """Which sequences hold audio: [B] bool per row, or with [B, S] int64 `segment_ids`
    (packed rows) [B, S] bool per position, True where its segment holds an audio slot.

    Args:
        audio_slot_mask: [B, S] bool audio slots.
    """
    if segment_ids is None:
        return audio_slot_mask.any(dim=1)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, S, S]
    return (same & audio_slot_mask[:, None, :]).any(dim=2)


class AudioLanguageModel(nn.Module):
    """Encoder, projector and decoder with the narrow protocol generation needs:
    `embed_audio`, `embed_prompt`, `decoder.setup_caches`, `decoder(embeds, input_pos, ...)`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = AudioEncoder(config.encoder)
        self.projector = Projector(config.projector, config.encoder.dim, config.decoder.dim)
        self.decoder = TextDecoder(config.decoder)

    def audio_row_counts(self, feature_lens: Tensor) -> Tensor:
        """[B] int64 audio rows `embed_audio` gives clips of [B] real mel lengths L: the number
        of audio slots each clip needs in the prompt."""
        return self.projector.row_counts(self.encoder.output_lengths(feature_lens))

    def embed_audio(self, features: Tensor, feature_lens: Tensor) -> list[Tensor]:
        """Audio rows of each clip, ready to splice.

        Args:
            features: [B, M, T] log-mel batch (`lalm.audio.batch_log_mel`; T >= max(L) + 2).
            feature_lens: [B] int64 real mel lengths L.

        Returns:
            One [R_b, D] tensor per clip in the model dtype: R_b = N audio tokens (Qwen2-Audio)
            or N + 2 with the learned BOS/EOS rows (v1), N = ((L - 1) // 2 + 1) // 2
            (`audio_row_counts` for every encoder and projector kind).
        """
        x, x_lens = self.encoder(features, feature_lens)
        return self.projector(x, x_lens)

    def embed_prompt(
        self, ids: Tensor, audio_rows: Tensor | Sequence[Tensor], audio_slot_mask: Tensor
    ) -> Tensor:
        """Token embeddings with audio rows written into the audio slots.

        Args:
            ids: [B, S] int64 token ids.
            audio_rows: [R, D] rows of every clip in prompt order (row-major over the batch),
                or a list of per-clip [R_i, D] tensors in that order (`embed_audio`'s output).
            audio_slot_mask: [B, S] bool, True at the R slot positions.

        Returns:
            [B, S, D] embeddings in the model dtype.

        Raises:
            ValueError: the number of slots differs from the number of audio rows.
        """
        embeds = self.decoder.embed(ids)
        rows = audio_rows if isinstance(audio_rows, Tensor) else torch.cat(list(audio_rows))
        n_slots = int(audio_slot_mask.sum())
        if n_slots != rows.shape[0]:
            raise ValueError(
                f"prompt has {n_slots} audio slots but {rows.shape[0]} audio rows were given"
            )
        return embeds.masked_scatter(audio_slot_mask[..., None], rows.to(embeds.dtype))

    def forward(
        self,
        ids: Tensor,
        features: Tensor | None = None,
        feature_lens: Tensor | None = None,
        audio_slot_mask: Tensor | None = None,
        token_mask: Tensor | None = None,
        labels: Tensor | None = None,
        output: ModelOutputKind = "logits",
        segment_ids: Tensor | None = None,
        encoder_states: Tensor | None = None,
        encoder_state_lens: Tensor | None = None,
    ) -> ModelOutput:
        """Full forward without KV cache (training, scoring, reference comparisons).

        Args:
            ids: [B, S] int64 token ids (padded left or right; see `token_mask`).
            features, feature_lens: the batch's clips, as for `embed_audio`; None for text only.
            audio_slot_mask: [B, S] bool audio slots (needed with `features`).
            token_mask: [B, S] bool, True for real tokens; default all True. Positions count
                real tokens only, so a padded row computes what it computes alone.
            labels: [B, S] int64 targets aligned with `ids` (shifted inside: position s
                predicts labels[:, s + 1]); -100 marks positions without a target.
            output: "logits" unless only the last position is needed ("last_logits"), the final
                hidden states ("hidden"), or only the loss: "targets" runs `lm_head` on the N
                positions with a target and returns those [N, V] logits (the same values and
                loss as "logits" without the B x S x V tensor; needs `labels`).
            segment_ids: [B, S] int64 for rows packing several items: each segment attends
                only to itself and its positions start at 0, so it computes what it computes
                alone (`TextDecoder.forward`). A segment's first label must be -100 (a prompt).
            encoder_states, encoder_state_lens: instead of `features`, the encoder's output of
                the batch's clips, computed beforehand ([C, N, D_enc] float, rows >= lens[c]
                ignored; [C] int64): a frozen encoder's cache (`lalm.training.encoder_cache`).
                The projector and decoder then run as with `features`.

        Returns:
            `ModelOutput` with logits ([B, S, V]; [B, V] for "last_logits"; [N, V] for "targets";
            float32) and the loss when labels are given. Gated decoder adapters
            (`lalm.model.lora.gate_adapters`) act on the rows (segments) holding audio.
        """
        if labels is not None and output not in ("logits", "targets"):
            raise ValueError("a loss needs output='logits' or 'targets'")
        if output == "targets" and labels is None:
            raise ValueError("output='targets' needs labels")
        if features is not None and encoder_states is not None:
            raise ValueError("give features or encoder_states, not both")
        if features is None and encoder_states is None:
            embeds = self.decoder.embed(ids)
        else:
            lens = feature_lens if encoder_states is None else encoder_state_lens
            if lens is None or audio_slot_mask is None:
                raise ValueError("features (or encoder_states) need their lens and "
                                 "audio_slot_mask")
            rows = (self.embed_audio(features, lens) if encoder_states is None
                    else self.projector(encoder_states, lens))
            embeds = self.embed_prompt(ids, rows, audio_slot_mask)
        if token_mask is None:
            token_mask = torch.ones_like(ids, dtype=torch.bool)
        if segment_ids is None:
            input_pos = positions_from_mask(token_mask)
        else:
            input_pos = positions_from_segments(segment_ids, token_mask)
        adapter_mask = None
        if self.decoder.adapter_gate is not None:  # gated adapters act where audio is
            audio = torch.zeros_like(token_mask) if audio_slot_mask is None or \
                (features is None and encoder_states is None) else audio_slot_mask
            adapter_mask = audio_rows_mask(audio, segment_ids)
        if output == "targets" and labels is not None:
            hidden = self.decoder(embeds, input_pos, token_mask, output="hidden",
                                  segment_ids=segment_ids, adapter_mask=adapter_mask)
            keep = labels[:, 1:] != IGNORE_INDEX  # [B, S - 1]: position s predicts s + 1
            logits = self.decoder.lm_head(hidden[:, :-1][keep]).float()  # [N, V]
            return ModelOutput(logits=logits, loss=F.cross_entropy(logits, labels[:, 1:][keep]))
        logits = self.decoder(embeds, input_pos, token_mask, output=output,
                              segment_ids=segment_ids, adapter_mask=adapter_mask)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        return ModelOutput(logits=logits, loss=loss)

    def set_trainable(
        self,
        *,
        encoder: bool | None = None,
        projector: bool | None = None,
        decoder: bool | None = None,
    ) -> None:
        """Switch gradients on/off per part (None leaves a part as it is)."""
        for part, flag in ((self.encoder, encoder), (self.projector, projector),
                           (self.decoder, decoder)):
            if flag is not None:
                part.requires_grad_(flag)

    def freeze_encoder(self) -> None:
        """Stop gradients into the audio encoder (stage-1 projector training)."""
        self.set_trainable(encoder=False)

    def freeze_projector(self) -> None:
        """Stop gradients into the projector."""
        self.set_trainable(projector=False)

    def freeze_decoder(self) -> None:
        """Stop gradients into the decoder LLM."""
        self.set_trainable(decoder=False)
