"""Left-padded prompt batches, `generate` over them (on the engine) and beam search.

`generate` runs greedy and sampled decoding on a `lalm.generation.engine.Engine`, the one
decode loop. Beam search keeps its own loop here (its beams reorder each other's caches every
step, so they cannot join an engine's slots); it talks to the model through the narrow
protocol only: ``model.decoder.setup_caches``, ``model.decoder(embeds, input_pos, token_mask,
output="last_logits")`` and ``model.decoder.embed``. Prompts arrive as embeddings (audio
already spliced in by the pipeline), left-padded, with a token mask; every row gets the RoPE
positions and keys it has alone, so a row's tokens do not depend on the rest of the batch.

Shape alphabet: B prompts, K beams, S prompt positions, D width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lalm.errors import GenerationError
from lalm.generation.engine import Decode, Engine, _StopSequences, check_room
from lalm.generation.options import GenerationOptions, GenerationResult
from lalm.generation.sampling import process_logits
from lalm.model import AudioLanguageModel, positions_from_mask

@dataclass
class PromptBatch:
    """Left-padded prompts ready for the decoder.

    Attributes:
        ids: [B, S] int64 token ids (pad ids where `token_mask` is False).
        token_mask: [B, S] bool, True for real tokens; every row's last column is real.
        embeds: [B, S, D] input embeddings in the model dtype (audio rows spliced in).
        adapted: [B] bool, the rows a model's gated adapters act on (`lalm.model.lora`: the
            rows holding audio); None: not said (a model with gated adapters refuses it).
    """

    ids: Tensor
    token_mask: Tensor
    embeds: Tensor
    adapted: Tensor | None = None

    @property
    def lengths(self) -> Tensor:
        """[B] int64 real prompt lengths."""
        return self.token_mask.sum(dim=1)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token id lists into a batch.

    Args:
        rows: B non-empty id lists.
        pad_id: id written into pad columns (never attended to).

    Returns:
        (ids [B, S] int64, token_mask [B, S] bool) with S = the longest row.

    Raises:
        GenerationError: no rows, or an empty row.
    """
    if not rows or any(len(r) == 0 for r in rows):
        raise GenerationError("every prompt needs at least one token")
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], dtype=torch.int64)
    mask = torch.arange(width)[None, :] >= torch.tensor([width - len(r) for r in rows])[:, None]
    return ids, mask


def _seen_mask(prompt: PromptBatch, vocab_size: int) -> Tensor:
    """[B, V] bool: ids present in each row's real prompt tokens."""
    # pads scatter into an extra column that is dropped
    ids = torch.where(prompt.token_mask, prompt.ids.clamp(max=vocab_size - 1), vocab_size)
    seen = torch.zeros(ids.shape[0], vocab_size + 1, dtype=torch.bool, device=ids.device)
    return seen.scatter_(1, ids, True)[:, :vocab_size]


def _prefill(model: AudioLanguageModel, prompt: PromptBatch, columns: int) -> Tensor:
    """Set up a cache of `columns` columns and run the prompts: [B, V] float32 last logits."""
    model.decoder.setup_caches(prompt.ids.shape[0], columns)
    return model.decoder(prompt.embeds, positions_from_mask(prompt.token_mask),
                         prompt.token_mask, output="last_logits", adapter_mask=prompt.adapted)


def _step(model: AudioLanguageModel, tokens: Tensor, input_pos: Tensor,
          adapted: Tensor | None) -> Tensor:
    """Feed one token per row at `input_pos` [B] (gated adapters acting on [B] `adapted`):
    [B, V] float32 next logits."""
    embeds = model.decoder.embed(tokens[:, None])
    return model.decoder(embeds, input_pos[:, None], output="last_logits",
                         adapter_mask=adapted)


def _banned(options: GenerationOptions, stop_ids: Sequence[int], n_done: int) -> list[int]:
    banned = list(options.suppress_token_ids)
    return banned + list(stop_ids) if n_done < options.min_new_tokens else banned


def generate(
    model: AudioLanguageModel,
    prompt: PromptBatch,
    options: GenerationOptions,
    stop_ids: Sequence[int],
    decode: Decode | None = None,
    seeds: Sequence[int | None] | None = None,
) -> list[GenerationResult]:
    """Generate for every prompt of the batch (greedy, sampling or beam search).

    Greedy and sampled decoding run on a `lalm.generation.engine.Engine` made for the call
    (one slot per prompt): rows stop independently (a stop id, kept as the row's last token; a
    stop sequence; ``max_new_tokens``), and each row gets the tokens it gets alone. Sampling
    draws each seeded row with its own generator (``seeds``, else ``options.seed`` for every
    row). ``num_beams > 1`` runs `beam_search`, which draws nothing. (A `Pipeline` keeps one
    engine for all its calls; this function is for model-level callers such as GRPO.)

    Args:
        model: the model.
        prompt: the left-padded prompts.
        options: decoding policy.
        stop_ids: ids that end a row.
        decode: ids -> text, needed for ``options.stop_sequences``.
        seeds: per row, its sampling seed (None: torch's global generator); default
            ``options.seed`` for every row.

    Returns:
        One `GenerationResult` per prompt, in order (`text` still empty: the pipeline decodes).

    Raises:
        GenerationError: a prompt + max_new_tokens beyond the model's max_seq_len, or seeds
            that do not match the batch.
    """
    if options.num_beams > 1:
        return beam_search(model, prompt, options, stop_ids, decode)
    batch = prompt.ids.shape[0]
    seeds = [options.seed] * batch if seeds is None else list(seeds)
    if len(seeds) != batch:
        raise GenerationError(f"{len(seeds)} seeds for a batch of {batch} prompts")
    engine = Engine(model, decode, slots=batch)
    adapted = [None] * batch if prompt.adapted is None else prompt.adapted.tolist()
    gens = [engine.submit(prompt.embeds[b][prompt.token_mask[b]],
                          prompt.ids[b][prompt.token_mask[b]], options, stop_ids, seed,
                          adapted=adapted[b])
            for b, seed in enumerate(seeds)]
    engine.run(gens)
    return [g.result for g in gens]


@dataclass
class _Hypothesis:
    tokens: list[int]
    logprob: float
    score: float
    finish_reason: str


@torch.inference_mode()
def beam_search(
    model: AudioLanguageModel,
    prompt: PromptBatch,
    options: GenerationOptions,
    stop_ids: Sequence[int],
    decode: Decode | None = None,
) -> list[GenerationResult]:
    """Beam search with ``options.num_beams`` beams per prompt.

    A beam that emits a stop id (or completes a stop sequence) becomes a finished hypothesis
    scored ``logprob / len ** length_penalty``; a prompt is done when it holds K finished
    hypotheses and no running beam can still beat the worst of them (transformers' default
    ``early_stopping=False`` rule), or at ``max_new_tokens`` (running beams then count as
    finished with reason "length").

    Args: as `generate_steps`.

    Returns:
        The best hypothesis per prompt.
    """
    beams, batch = options.num_beams, prompt.ids.shape[0]
    columns = check_room(prompt.ids.shape[1], options, model.config.decoder.max_seq_len)
    stops = _StopSequences(options.stop_sequences, decode)
    stop_set = set(stop_ids)
    vocab = model.config.decoder.vocab_size
    seen = _seen_mask(prompt, vocab) if options.repetition_penalty != 1.0 else None
    expand = torch.arange(batch, device=prompt.ids.device).repeat_interleave(beams)  # [B*K]
    input_pos = prompt.lengths[expand]
    adapted = None if prompt.adapted is None else prompt.adapted[expand]  # beams keep their row's
    # 1. beam k of prompt b lives in row b * K + k; all start from the prompt, and only beam 0
    #    may extend at the first step (the others are its copies)
    scores = torch.full((batch, beams), float("-inf"), device=prompt.ids.device)
    scores[:, 0] = 0.0
    running: list[list[list[int]]] = [[[] for _ in range(beams)] for _ in range(batch)]
    finished: list[list[_Hypothesis]] = [[] for _ in range(batch)]
    done = [False] * batch

    def rank(logprob: float, length: int) -> float:
        return logprob / max(length, 1) ** options.length_penalty

    try:
        logits = _prefill(model, prompt, columns)[expand]
        model.decoder.cache.reorder(expand)
        seen = None if seen is None else seen[expand]
        for n_done in range(options.max_new_tokens):
            # 2. every beam's continuations, scored by the beam's total log-probability
            processed = process_logits(logits, options, seen, _banned(options, stop_ids, n_done))
            cand = scores.view(-1, 1) + processed.log_softmax(dim=-1)  # [B*K, V]
            top_scores, top_index = cand.view(batch, -1).topk(min(2 * beams, cand.shape[-1]),
                                                                 dim=-1)  # [B, 2K]
            next_rows, next_tokens, next_scores = [], [], []
            for b in range(batch):
                kept: list[tuple[int, int, float]] = []
                for r, (score, index) in enumerate(zip(top_scores[b].tolist(),
                                                       top_index[b].tolist())):
                    if done[b] or score == float("-inf"):
                        break
                    beam, token = divmod(index, vocab)
                    tokens = running[b][beam] + [token]
                    # 3. a stop ends a hypothesis (only from the K best candidates, as upstream)
                    reason = ("stop" if token in stop_set else
                              "stop_sequence" if stops.hit(tokens) else None)
                    if reason is not None:
                        if r < beams:
                            finished[b].append(_Hypothesis(tokens, score,
                                                           rank(score, len(tokens)), reason))
                        continue
                    kept.append((beam, token, score))
                    if len(kept) == beams:
                        break
                while len(kept) < beams:  # a done prompt (or too few candidates): filler rows
                    kept.append((0, 0, float("-inf")))
                running[b] = [running[b][beam] + [token] for beam, token, _ in kept]
                next_rows += [b * beams + beam for beam, _, _ in kept]
                next_tokens += [token for _, token, _ in kept]
                next_scores += [score for _, _, score in kept]
                # 4. done when K hypotheses are finished and no running beam can beat them
                if not done[b] and len(finished[b]) >= beams:
                    finished[b] = sorted(finished[b], key=lambda h: -h.score)[:beams]
                    best_running = rank(max(next_scores[-beams:]), n_done + 1)
                    done[b] = best_running <= finished[b][-1].score
            if all(done) or n_done + 1 == options.max_new_tokens:
                break
            rows = torch.tensor(next_rows, device=prompt.ids.device)
            chosen = torch.tensor(next_tokens, device=prompt.ids.device)
            scores = torch.tensor(next_scores, device=prompt.ids.device).view(batch, beams)
            model.decoder.cache.reorder(rows)
            if seen is not None:
                seen = seen[rows]
                seen[torch.arange(batch * beams), chosen] = True
            logits = _step(model, chosen, input_pos, adapted)
            input_pos += 1
    finally:
        model.decoder.clear_caches()
    results = []
    for b in range(batch):
        pool = list(finished[b])
        if not done[b]:  # 5. out of tokens: running beams compete as "length" hypotheses
            for beam, score in enumerate(next_scores[b * beams:(b + 1) * beams]):
                if score > float("-inf"):
                    tokens = running[b][beam]
                    pool.append(_Hypothesis(tokens, score, rank(score, len(tokens)), "length"))
        best = max(pool, key=lambda h: h.score)
        results.append(GenerationResult(tokens=best.tokens, finish_reason=best.finish_reason,
                                        logprob=best.logprob))
    return results
