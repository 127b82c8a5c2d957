"""LLM judges: any OpenAI-compatible chat endpoint, cached on disk and recorded in the report.

One client (`ChatJudge`) serves every judge-scored suite (AIR-Bench chat, VoiceBench open and
sd-qa, MMAU-Pro open questions). A suite states its official request settings as a
`JudgeSettings` (system prompt, temperature, top_p, sample count, token budget); settings the
user fixed on the judge (``--judge-temperature``, ``--judge-samples``, ``--judge-seed``) win over
the suite's. Every request is cached in a JSONL file keyed by the SHA-256 of the full request
body (model, messages, every setting), so a rerun sends nothing and reproduces the same scores;
`ChatJudge.describe` writes what a report needs to reproduce the judgement: endpoint, model id,
prompt template hash, temperature, sample count and seed (``requests`` and ``cache_hits`` count
what this process sent and reused, and stay out of the report so a cached rerun writes the same
summary).

A `lalm serve`d model works as a judge (``--judge-url http://127.0.0.1:8000/v1``).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lalm.errors import ScoringError


@dataclass(frozen=True)
class JudgeSettings:
    """A suite's request settings for its judge.

    Attributes:
        temperature: sampling temperature.
        samples: completions per request (the API's ``n``).
        max_tokens: reply budget.
        top_p: nucleus mass (None: not sent).
        system: system message (None: no system turn).
    """

    temperature: float = 0.0
    samples: int = 1
    max_tokens: int = 16
    top_p: float | None = None
    system: str | None = None


def text_sha256(text: str) -> str:
    """SHA-256 hex digest of a prompt text (UTF-8), as written into reports."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RefusedRequest(ScoringError):
    """The endpoint answered 4xx: the request is wrong for it (retrying cannot help)."""


class _CachedEndpoint:
    """POSTs JSON to one OpenAI-compatible route; replies cached in JSONL by request hash."""

    def __init__(self, url: str, api_key: str | None, cache: str | os.PathLike[str] | None,
                 timeout: float, retries: int) -> None:
        self.url, self.api_key = url, api_key
        self.timeout, self.retries = timeout, max(1, retries)
        self.cache_path = Path(cache) if cache is not None else None
        self.requests = self.cache_hits = 0
        self._cache: dict[str, Any] = {}
        if self.cache_path is not None and self.cache_path.exists():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                try:  # a line cut short by an interruption is skipped
                    row = json.loads(line)
                    # "content": AIR-Bench caches written before the judge took n samples
                    self._cache[row["key"]] = (row["value"] if "value" in row else
                                               row.get("contents", [row.get("content")]))
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    continue

    @staticmethod
    def _key(body: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()

    def _post(self, body: dict[str, Any], parse: Callable[[dict[str, Any]], Any]) -> Any:
        """``parse(reply)`` of the endpoint's reply to ``body`` (cached by the full body).

        Raises:
            ScoringError: the endpoint failed `retries` times or answered malformed JSON.
        """
        key = self._key(body)
        if key in self._cache:
            self.cache_hits += 1
            return self._cache[key]
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode("utf-8"), headers)
        error: Exception | None = None
        for _ in range(self.retries):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    value = parse(json.loads(response.read().decode("utf-8")))
                break
            except urllib.error.HTTPError as e:
                if 400 <= e.code < 500:  # the request itself was refused: no retry
                    detail = e.read().decode("utf-8", "replace")[:500]
                    raise RefusedRequest(f"{self.url} refused the request ({e.code}): "
                                         f"{detail}") from e
                error = e
            except (OSError, json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
                error = e
        else:
            raise ScoringError(f"{self.url} failed {self.retries} times: {error}")
        self.requests += 1
        self._cache[key] = value
        if self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.cache_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
        return value


class ChatJudge(_CachedEndpoint):
    """An LLM judge behind any endpoint that speaks the OpenAI chat-completions API.

    Args:
        base_url: API root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``
            (``/chat/completions`` is appended).
        model: the judge model id.
        api_key: sent as ``Authorization: Bearer``; None sends none.
        cache: JSONL cache file (created); None caches in memory only.
        temperature: overrides every suite's temperature (None: the suite's).
        seed: request seed (part of the cache key; endpoints that honour it sample
            reproducibly).
        max_tokens: default reply budget for `complete` without settings.
        samples: overrides every suite's sample count (None: the suite's).
        timeout: seconds per HTTP request.
        retries: attempts per request before giving up.
        embedder: an `EmbeddingClient` for suites that match answers by embedding (MMAU-Pro).
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 cache: str | os.PathLike[str] | None = None, temperature: float | None = None,
                 seed: int = 0, max_tokens: int = 16, samples: int | None = None,
                 timeout: float = 120.0, retries: int = 3,
                 embedder: EmbeddingClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        super().__init__(self.base_url + "/chat/completions", api_key, cache, timeout, retries)
        self.model, self.seed, self.embedder = model, seed, embedder
        self.temperature, self.samples, self.max_tokens = temperature, samples, max_tokens
        #: True once the endpoint refused ``n`` > 1: samples go as n=1 requests, seeds
        #: ``seed + i`` (recorded by `describe`).
        self.separate_samples = False

    def settings(self, suite: JudgeSettings | None = None) -> JudgeSettings:
        """The settings a request gets: the suite's, with the user's overrides applied."""
        s = suite or JudgeSettings(max_tokens=self.max_tokens)
        if self.temperature is not None:
            s = replace(s, temperature=self.temperature)
        if self.samples is not None:
            s = replace(s, samples=self.samples)
        return s

    def _body(self, prompt: str, s: JudgeSettings) -> dict[str, Any]:
        messages = ([{"role": "system", "content": s.system}] if s.system is not None else [])
        body: dict[str, Any] = {"model": self.model,
                                "messages": [*messages, {"role": "user", "content": prompt}],
                                "temperature": s.temperature, "seed": self.seed,
                                "max_tokens": s.max_tokens}
        if s.top_p is not None:
            body["top_p"] = s.top_p
        if s.samples != 1:
            body["n"] = s.samples
        return body

    def sample(self, prompt: str, settings: JudgeSettings | None = None) -> list[str]:
        """The judge's replies to one prompt (``settings.samples`` of them; cached).

        Raises:
            ScoringError: the endpoint failed `retries` times, answered malformed JSON, or
                returned fewer completions than asked for.
        """
        s = self.settings(settings)

        def parse(n: int) -> Callable[[dict[str, Any]], list[str]]:
            def read(reply: dict[str, Any]) -> list[str]:
                contents = [str(c["message"]["content"]) for c in reply["choices"]]
                if len(contents) < n:
                    raise ScoringError(f"judge {self.url} returned {len(contents)} "
                                       f"completions for n={n}")
                return contents[:n]
            return read
        if s.samples == 1:
            return [str(c) for c in self._post(self._body(prompt, s), parse(1))]
        one = replace(s, samples=1)
        # one request per sample, seeds seed, seed+1, ... so the samples differ
        each = [{**self._body(prompt, one), "seed": self.seed + i} for i in range(s.samples)]
        together = self._body(prompt, s)
        if all(self._key(b) in self._cache for b in each) and self._key(together) not in \
                self._cache:
            self.separate_samples = True  # a rerun of a run that had to split
        if not self.separate_samples:
            try:
                return [str(c) for c in self._post(together, parse(s.samples))]
            except RefusedRequest:  # a server that takes n=1 only
                self.separate_samples = True
        return [str(self._post(b, parse(1))[0]) for b in each]

    def complete(self, prompt: str, settings: JudgeSettings | None = None) -> str:
        """The judge's first reply to one prompt (cached)."""
        return self.sample(prompt, settings)[0]

    def describe(self, template: str, settings: JudgeSettings | None = None) -> dict[str, Any]:
        """What a report records about the judging: enough to reproduce it.

        Args:
            template: the suite's judge prompt template (hashed, not copied).
            settings: the suite's settings (the recorded ones have the overrides applied).
        """
        s = self.settings(settings)
        return {"base_url": self.base_url, "model": self.model,
                "prompt_sha256": text_sha256(template),
                "system_sha256": text_sha256(s.system) if s.system is not None else None,
                **{k: v for k, v in asdict(s).items() if k != "system"}, "seed": self.seed,
                "samples_as": "separate requests, seeds seed+i" if self.separate_samples
                else "one request with n",
                "cache": str(self.cache_path) if self.cache_path else None}


class EmbeddingClient(_CachedEndpoint):
    """Text embeddings from an OpenAI-compatible ``/embeddings`` endpoint (cached per request).

    Args:
        base_url: API root (``/embeddings`` is appended).
        model: the embedding model id (MMAU-Pro's official one is ``nvidia/NV-Embed-v2``).
        api_key, cache, timeout, retries: as for `ChatJudge`.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 cache: str | os.PathLike[str] | None = None, timeout: float = 120.0,
                 retries: int = 3) -> None:
        self.base_url = base_url.rstrip("/")
        super().__init__(self.base_url + "/embeddings", api_key, cache, timeout, retries)
        self.model = model

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order.

        Raises:
            ScoringError: the endpoint failed, or returned another number of vectors.
        """
        def parse(reply: dict[str, Any]) -> list[list[float]]:
            rows = sorted(reply["data"], key=lambda d: d.get("index", 0))
            if len(rows) != len(texts):
                raise ScoringError(f"{self.url} returned {len(rows)} embeddings for "
                                   f"{len(texts)} texts")
            return [[float(x) for x in d["embedding"]] for d in rows]
        return self._post({"model": self.model, "input": list(texts)}, parse)

    def describe(self) -> dict[str, Any]:
        """The endpoint and model, for reports."""
        return {"base_url": self.base_url, "model": self.model,
                "cache": str(self.cache_path) if self.cache_path else None}


#: Tasks that cannot be scored without a judge (the CLI refuses them before loading a model).
NEEDS_JUDGE = frozenset({"airbench-chat", "voicebench-open", "voicebench-qa"})
#: The judge model each suite's own scripts use (the ``--judge-model`` default).
OFFICIAL_JUDGES = {"airbench-chat": "gpt-4-0125-preview", "voicebench-open": "gpt-4o-mini",
                   "voicebench-qa": "gpt-4o-mini", "mmau-pro": "Qwen/Qwen2.5-7B-Instruct"}
