"""Renaming state dicts with key maps (data): ``{"src.layers.{}.w": "dst.blocks.{}.w", ...}``.

A `{}` stands for a layer index (digits) and is carried over. One map serves both directions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TypeVar

from lalm.errors import CheckpointError

V = TypeVar("V")


class KeyMap:
    """A compiled one-to-one key map.

    Args:
        mapping: source pattern -> target pattern, each with the same number of `{}` slots.
        name: what the map converts (used in error messages).
    """

    def __init__(self, mapping: Mapping[str, str], name: str) -> None:
        self.mapping = dict(mapping)
        self.name = name
        self._forward = _compile(self.mapping)
        self._inverse = _compile({dst: src for src, dst in self.mapping.items()})
        if len(self._inverse) != len(self._forward):
            raise ValueError(f"{name} key map is not one-to-one")

    def convert(self, state: Mapping[str, V], *, inverse: bool = False) -> dict[str, V]:
        """Rename every key of `state` (source -> target, or back with `inverse=True`).

        Raises:
            CheckpointError: a key that no pattern matches (listing up to 10 of them).
        """
        rules = self._inverse if inverse else self._forward
        out: dict[str, V] = {}
        unknown: list[str] = []
        for key, value in state.items():
            new = _rename(key, rules)
            if new is None:
                unknown.append(key)
            else:
                out[new] = value
        if unknown:
            direction = "lalm" if inverse else self.name
            raise CheckpointError(
                f"{len(unknown)} unexpected {direction} keys for the {self.name} key map, e.g. "
                f"{sorted(unknown)[:10]}"
            )
        return out


def _compile(mapping: Mapping[str, str]) -> list[tuple[re.Pattern[str], str]]:
    rules = []
    for src, dst in mapping.items():
        if src.count("{}") != dst.count("{}"):
            raise ValueError(f"key map entry {src!r} -> {dst!r}: placeholder counts differ")
        pattern = re.compile("^" + re.escape(src).replace(r"\{\}", r"(\d+)") + "$")
        rules.append((pattern, dst))
    return rules


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, dst in rules:
        match = pattern.match(key)
        if match:
            return dst.format(*match.groups())
    return None


def rename_prefix(key: str, prefixes: Sequence[tuple[str, str]]) -> str:
    """``key`` with the first matching (old, new) prefix replaced; unchanged if none matches."""
    for old, new in prefixes:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def decoder_keys(prefix: str, lm_head: str, layer: Mapping[str, str]) -> dict[str, str]:
    """Key-map entries of a Hugging Face Qwen/Llama text model stored under ``prefix``
    (``{prefix}embed_tokens``, ``{prefix}layers.{i}.*`` renamed by ``layer``, ``{prefix}norm``)
    with its head at ``lm_head``, onto lalm's decoder."""
    return {
        f"{prefix}embed_tokens.weight": "decoder.embed.weight",
        **{f"{prefix}layers.{{}}.{hf}": f"decoder.layers.{{}}.{ours}"
           for hf, ours in layer.items()},
        f"{prefix}norm.weight": "decoder.norm.weight",
        lm_head: "decoder.lm_head.weight",
    }
