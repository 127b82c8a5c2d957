"""The Qwen BPE tokenizer with any registered family's special-token table.

One `Tokenizer` class, two constructors:

* `Tokenizer.from_tiktoken(path)`: Qwen-Audio (v1). The 151,643 BPE ranks of ``qwen.tiktoken``
  (tiktoken, Qwen pre-tokenizer regex), then the v1 special table from id 151643 on:
  ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, 205 ``<|extra_i|>``, and the 3,314 audio
  specials from ``[[[AUDIO:modality]]]`` (151851) to ``<audio>`` (155163) and ``</audio>``
  (155164): 155,165 ids.
  Text is NFC-normalised before encoding, as the reference ``QWenTokenizer`` does.
* `Tokenizer.from_hf(path)`: a Hugging Face ``tokenizer.json`` (Qwen2-Audio: the same ranks plus
  the added tokens 151643..151648; Qwen2.5-Omni and Qwen3-ASR: longer added tables), run by the ``tokenizers`` library with its own normaliser (NFC)
  and pre-tokenizer. Special tokens are matched in the raw text, the rest is normalised, as there.

`load_tokenizer(path)` picks the constructor by what a directory holds. The tag strings themselves
are written only in `lalm.prompt`; this module reads the tables from there.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Literal

from lalm.errors import PromptError, TokenizerError
from lalm.prompt import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    QWEN_AUDIO_SPECIAL_TOKENS,
    FamilySpec,
    detect_family,
    families,
    family_spec,
)

# The pre-tokenizer regex of Qwen's tiktoken tokenizer (PAT_STR), the same as Qwen2's
# PRETOKENIZE_REGEX: contractions, letter runs with one leading non-letter, single digits,
# punctuation runs, newline runs, and trailing-space-aware whitespace.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# How decode renders an id at or beyond len(tokenizer) (e.g. the padded embedding rows
# 155165..155946 of Qwen-Audio, which have no string): the same marker the v1 fixture's
# readable decodes use. `skip_special=True` drops such ids instead.
OUT_OF_VOCAB_FORMAT = "<|vocab_pad:{}|>"

AllowedSpecial = Literal["all"] | Collection[str]


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse a ``base64(token) rank`` file; ranks must be exactly 0..n-1."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise TokenizerError(f"cannot read tokenizer file {path}: {e.strerror or e}") from e
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected 'base64 rank'")
            ranks[base64.b64decode(parts[0], validate=True)] = int(parts[1])
        except (ValueError, binascii.Error) as e:
            raise TokenizerError(f"tokenizer file {path}, line {lineno}: not a tiktoken rank "
                                 f"line ({e})") from e
    if not ranks:
        raise TokenizerError(f"tokenizer file {path} holds no BPE ranks")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"tokenizer file {path}: ranks are not 0..{len(ranks) - 1} "
                             f"without gaps or duplicates")
    return ranks


class Tokenizer:
    """Text <-> token ids for Qwen-Audio (v1) and Qwen2-Audio, special tokens included.

    Build it with `from_tiktoken`, `from_hf` or `load_tokenizer`, not directly.

    Attributes:
        source: the file the BPE came from (named in every error).
        family: which checkpoint family's special table this is.
        special_tokens: special token string -> id.
    """

    def __init__(
        self,
        *,
        source: Path,
        special_tokens: Mapping[str, int],
        vocab_size: int,
        encode_ordinary: Callable[[str], list[int]],
        decode_known: Callable[[list[int]], str],
        normalize_first: bool,
        family: FamilySpec | str | None = None,
    ) -> None:
        self.source = source
        self.special_tokens: dict[str, int] = dict(special_tokens)
        self._vocab_size = vocab_size
        self._encode_ordinary = encode_ordinary
        self._decode_known = decode_known
        self._normalize_first = normalize_first
        self._special_by_id = {i: s for s, i in self.special_tokens.items()}
        try:
            family = detect_family(self.special_tokens) if family is None \
                else family_spec(family)
        except PromptError as e:
            raise TokenizerError(f"tokenizer {source}: {e}") from None
        if family is not None and not family.signature <= self.special_tokens.keys():
            missing = ", ".join(sorted(family.signature - self.special_tokens.keys()))
            raise TokenizerError(f"tokenizer {source} lacks {family.label}'s tokens {missing}: "
                                 f"not the tokenizer of a {family.label} checkpoint")
        if family is None:
            known = "; ".join(f"{f.label}: {', '.join(sorted(f.signature))}" for f in families())
            raise TokenizerError(f"tokenizer {source} holds no family's audio tokens ({known}): "
                                 f"not a tokenizer of a known family")
        self.family = family
        self._split_cache: dict[frozenset[str], re.Pattern[str] | None] = {}

    # ----------------------------------------------------------------- constructors

    @classmethod
    def from_tiktoken(cls, path: str | Path | None = None) -> Tokenizer:
        """The Qwen-Audio (v1) tokenizer from a ``qwen.tiktoken`` rank file.

        Args:
            path: the rank file; None fetches the real one (`lalm.assets`, ``"qwen.tiktoken"``).

        Raises:
            TokenizerError: the file is missing or is not a tiktoken rank file.
        """
        import tiktoken

        if path is None:
            from lalm.assets import asset_path

            path = asset_path("qwen.tiktoken")
        path = Path(path)
        ranks = _read_tiktoken_ranks(path)
        specials = {tok: len(ranks) + i for i, tok in enumerate(QWEN_AUDIO_SPECIAL_TOKENS)}
        enc = tiktoken.Encoding("qwen-audio", pat_str=QWEN_PATTERN, mergeable_ranks=ranks,
                                special_tokens=specials)

        def decode_known(ids: list[int]) -> str:
            return enc.decode(ids, errors="replace")

        return cls(source=path, special_tokens=specials, vocab_size=enc.n_vocab,
                   encode_ordinary=enc.encode_ordinary, decode_known=decode_known,
                   normalize_first=True)

    @classmethod
    def from_hf(cls, path: str | Path, family: FamilySpec | str | None = None) -> Tokenizer:
        """A tokenizer from a Hugging Face ``tokenizer.json`` (file or the directory holding it).

        Every added token of the file is a special token here (Qwen3-ASR's ``<asr_text>``, an
        added token that is not special, included). ``family``: the checkpoint's family (its
        format names it); None detects it from the special tokens (`detect_family`).

        Raises:
            TokenizerError: the file is missing or the ``tokenizers`` library cannot load it.
        """
        import tokenizers

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        try:
            hf = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises plain Exception subclasses for bad files
            raise TokenizerError(f"cannot load tokenizer file {path}: {e}") from e
        hf.encode_special_tokens = True  # lalm splits at the allowed specials itself
        specials = {t.content: i for i, t in hf.get_added_tokens_decoder().items()}

        def encode_ordinary(text: str) -> list[int]:
            return hf.encode(text, add_special_tokens=False).ids

        def decode_known(ids: list[int]) -> str:
            return hf.decode(ids, skip_special_tokens=False)

        return cls(source=path, special_tokens=specials,
                   vocab_size=hf.get_vocab_size(with_added_tokens=True),
                   encode_ordinary=encode_ordinary, decode_known=decode_known,
                   normalize_first=False, family=family)

    # ----------------------------------------------------------------- encode / decode

    def __len__(self) -> int:
        """Number of ids with a string: 155,165 (v1) or 151,649 (Qwen2-Audio)."""
        return self._vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(family={self.family.name!r}, len={len(self)}, source='{self.source}')"

    def _special_pattern(self, allowed: frozenset[str]) -> re.Pattern[str] | None:
        if allowed not in self._split_cache:
            # longest first, so that a special is never cut by a shorter one it starts with
            alts = sorted(allowed, key=len, reverse=True)
            self._split_cache[allowed] = (
                re.compile("|".join(map(re.escape, alts))) if alts else None)
        return self._split_cache[allowed]

    def encode(self, text: str, allowed_special: AllowedSpecial = "all") -> list[int]:
        """Token ids of ``text``.

        Args:
            text: any string.
            allowed_special: ``"all"``, or the special token strings that become their id when
                they occur in ``text``; any other special string is encoded as plain text.

        Returns:
            The ids, no BOS/EOS added.

        Raises:
            TokenizerError: ``text`` is not a str, or ``allowed_special`` names a non-special.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"{self.source}: encode takes a str, got {type(text).__name__}")
        if allowed_special == "all":
            allowed = frozenset(self.special_tokens)
        else:
            allowed = frozenset(allowed_special)
            unknown = allowed - self.special_tokens.keys()
            if unknown:
                raise TokenizerError(f"{self.source}: not special tokens of this tokenizer: "
                                     f"{sorted(unknown)[:5]}")
        if self._normalize_first:
            text = unicodedata.normalize("NFC", text)
        pattern = self._special_pattern(allowed)
        if pattern is None:
            return self._encode_ordinary(text) if text else []
        ids: list[int] = []
        start = 0
        for m in pattern.finditer(text):
            if m.start() > start:
                ids += self._encode_ordinary(text[start:m.start()])
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        if start < len(text):
            ids += self._encode_ordinary(text[start:])
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ``ids``; invalid UTF-8 byte sequences become U+FFFD.

        Args:
            ids: token ids (ints, or a 1-D integer tensor / array converted by the caller).
            skip_special: drop special ids and ids >= len(self) instead of rendering them.

        Returns:
            The text. An id >= len(self) (no string exists) is rendered as
            ``OUT_OF_VOCAB_FORMAT`` (``<|vocab_pad:ID|>``) unless skipped.

        Raises:
            TokenizerError: a negative id.
        """
        out: list[str] = []
        run: list[int] = []
        for i in map(int, ids):
            if i < 0:
                raise TokenizerError(f"{self.source}: negative token id {i}")
            known = i < self._vocab_size
            if skip_special and (not known or i in self._special_by_id):
                continue
            if known:
                run.append(i)
                continue
            if run:
                out.append(self._decode_known(run))
                run = []
            out.append(OUT_OF_VOCAB_FORMAT.format(i))
        if run:
            out.append(self._decode_known(run))
        return "".join(out)

    def token_id(self, token: str) -> int:
        """Id of a special token string.

        Raises:
            TokenizerError: this tokenizer has no such special token.
        """
        try:
            return self.special_tokens[token]
        except KeyError:
            raise TokenizerError(f"tokenizer {self.source} ({self.family.name}) has no special "
                                 f"token {token!r}") from None

    # ----------------------------------------------------------------- special ids

    @cached_property
    def eod_id(self) -> int:
        """``<|endoftext|>`` (151643): end of document; v1 EOS and PAD."""
        return self.token_id(ENDOFTEXT)

    @cached_property
    def im_start_id(self) -> int:
        """``<|im_start|>`` (151644)."""
        return self.token_id(IM_START)

    @cached_property
    def im_end_id(self) -> int:
        """``<|im_end|>`` (151645): end of a chat turn."""
        return self.token_id(IM_END)

    @cached_property
    def audio_start_id(self) -> int:
        """Token opening each clip: v1 ``<audio>`` (155163); Qwen2-Audio ``<|audio_bos|>``
        (151647)."""
        return self.token_id(self.family.audio_start)

    @cached_property
    def audio_end_id(self) -> int:
        """Token closing each clip: v1 ``</audio>`` (155164); Qwen2-Audio ``<|audio_eos|>``
        (151648)."""
        return self.token_id(self.family.audio_end)

    @cached_property
    def audio_pad_id(self) -> int:
        """Per-frame placeholder: v1 ``[[[AUDIO:modality]]]`` 151851, v2 ``<|AUDIO|>`` 151646."""
        return self.token_id(self.family.audio_pad)

    @cached_property
    def audio_slot_ids(self) -> frozenset[int]:
        """Ids whose positions receive audio rows (``torch.isin(ids, slot_ids)``).

        v1: ``<audio>``, ``[[[AUDIO:modality]]]`` x N, ``</audio>`` take the learned BOS row, the
        N frames and the EOS row. Qwen2-Audio: only ``<|AUDIO|>`` x N; its BOS/EOS are ordinary
        token embeddings (`FamilySpec.slot_tokens`).
        """
        return frozenset(map(self.token_id, self.family.slot_tokens))

    def audio_span_ids(self, n: int) -> list[int]:
        """The ids of one clip of ``n`` audio tokens (`FamilySpec.audio_span`)."""
        return [self.special_tokens[t] for t in self.family.audio_span(n)]

    @cached_property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end a chat reply (`FamilySpec.stop_tokens`): ``<|endoftext|>``,
        ``<|im_end|>``, ``<|im_start|>`` for both families.

        The v1 chat stops on EOS 151643 plus the stop words ``<|im_end|>`` and ``<|im_start|>``;
        Qwen2-Audio-Instruct ends on 151643 or 151645, and ``<|im_start|>`` never starts a reply.
        """
        return tuple(map(self.token_id, self.family.stop_tokens))


def load_tokenizer(path: str | Path | None = None,
                   family: FamilySpec | str | None = None) -> Tokenizer:
    """Load the tokenizer a checkpoint directory (or a tokenizer file) holds.

    Args:
        path: a directory with ``qwen.tiktoken`` (v1) or ``tokenizer.json`` (Hugging Face;
            Qwen2-Audio, Qwen2.5-Omni, Qwen3-ASR), one of those files itself, or None for the
            real v1 BPE from `lalm.assets`.
        family: the checkpoint's family for a ``tokenizer.json`` (its checkpoint format names
            it); None detects it from the special tokens.

    Raises:
        TokenizerError: the path does not exist or holds neither file, or the tokenizer lacks
            ``family``'s tokens.
    """
    if path is None:
        return Tokenizer.from_tiktoken(None)
    path = Path(path)
    if path.is_dir():
        if (path / "qwen.tiktoken").is_file():
            return Tokenizer.from_tiktoken(path / "qwen.tiktoken")
        if (path / "tokenizer.json").is_file():
            return Tokenizer.from_hf(path / "tokenizer.json", family)
        raise TokenizerError(f"tokenizer directory {path} has neither qwen.tiktoken nor "
                             f"tokenizer.json")
    if not path.exists():
        raise TokenizerError(f"tokenizer path {path} does not exist")
    if path.suffix == ".json":
        return Tokenizer.from_hf(path, family)
    return Tokenizer.from_tiktoken(path)
