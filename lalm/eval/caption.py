"""Audio-captioning scorers: CIDEr-D, SPICE and SPIDEr as the COCO caption tools compute them.

Qwen-Audio's ``evaluate_caption.py`` (Clotho) scores with the COCO caption tools: captions are
first tokenised by the Stanford PTB tokenizer (lowercased, punctuation tokens dropped), then

* **CIDEr-D** (`cider_d`, version ``coco-cider-d-v1``), implemented here: for n = 1..4, TF-IDF
  vectors of n-gram counts whose document frequencies come from the references of the scored
  corpus (``idf = log(#clips) - log(max(1, df))``); per reference, the sum over n-grams of
  ``min(cand, ref) * ref`` divided by both vector norms (clipping), times a Gaussian length
  penalty ``exp(-(l_c - l_r)^2 / (2 * 6^2))``; averaged over n and references, times 10, and
  averaged over clips. The COCO code measures a sentence's length as its number of *bigrams*;
  this is kept (it only matters for one-word captions).
* **SPICE** (`spice`): the COCO tools' Java scorer, which needs Java and the Stanford CoreNLP
  models that its first run downloads; lalm calls it when both are present and otherwise
  raises `ScoringError` saying so (lalm never downloads at run time).
* **SPIDEr** (`spider`): ``(CIDEr-D + SPICE) / 2``.

Tokenisation: ``tokenize="ptb"`` runs the PTB tokenizer jar shipped in the ``pycocoevalcap``
wheel (needs ``java`` on PATH and ``pip install 'lalm[eval]'``); ``tokenize="none"`` takes the
captions as already tokenised (split on whitespace).
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lalm.errors import ScoringError
from lalm.eval.metrics import check_pairs

CIDER_D_VERSION = "coco-cider-d-v1"
SPICE_VERSION = "coco-spice-v1"
SPIDER_VERSION = "coco-spider-v1"
_MAX_N = 4
_SIGMA = 6.0


@dataclass(frozen=True)
class CaptionResult:
    """A corpus captioning score.

    Attributes:
        score: the corpus score (mean of ``per_clip``).
        per_clip: one score per candidate, in input order.
        count: number of clips.
        version: the procedure.
    """

    score: float
    per_clip: tuple[float, ...]
    count: int
    version: str


def _java_tools(what: str) -> None:
    if shutil.which("java") is None:
        raise ScoringError(f"{what} needs Java (`java` on PATH) for the COCO caption tools")
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError as e:
        raise ScoringError(f"{what} needs pycocoevalcap: pip install 'lalm[eval]'") from e


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Tokenise captions with the Stanford PTB tokenizer as the COCO tools do.

    Returns:
        One space-joined, lowercased token string per caption, punctuation tokens removed.

    Raises:
        ScoringError: Java or pycocoevalcap is missing.
    """
    _java_tools("PTB tokenisation")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if not texts:
        return []
    out = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    return [out[i][0] for i in range(len(texts))]


def _tokenized(candidates: Sequence[str], references: Sequence[Sequence[str]], tokenize: str
               ) -> tuple[list[str], list[list[str]]]:
    check_pairs(candidates, references, "captioning")
    if any(not refs for refs in references):
        raise ScoringError("captioning: every clip needs at least one reference caption")
    if tokenize == "none":
        return list(candidates), [list(r) for r in references]
    if tokenize != "ptb":
        raise ScoringError(f"unknown caption tokenisation {tokenize!r}; use 'ptb' or 'none'")
    flat = ptb_tokenize([*candidates, *(c for refs in references for c in refs)])
    cands, rest, refs = flat[: len(candidates)], flat[len(candidates):], []
    for r in references:
        refs.append(rest[: len(r)])
        rest = rest[len(r):]
    return cands, refs


def _ngrams(sentence: str) -> Counter[tuple[str, ...]]:
    words = sentence.split()
    return Counter(tuple(words[i:i + n]) for n in range(1, _MAX_N + 1)
                   for i in range(len(words) - n + 1))


def _tfidf(counts: Counter[tuple[str, ...]], df: Counter[tuple[str, ...]], log_clips: float
           ) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
    """TF-IDF vector per n, its norms, and the sentence length (number of bigrams)."""
    vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(_MAX_N)]
    for gram, tf in counts.items():
        vec[len(gram) - 1][gram] = tf * (log_clips - math.log(max(1.0, df[gram])))
    norms = [math.sqrt(sum(v * v for v in vn.values())) for vn in vec]
    length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
    return vec, norms, length


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]],
            tokenize: str = "ptb") -> CaptionResult:
    """CIDEr-D of candidate captions against their reference captions.

    Args:
        candidates: one caption per clip.
        references: the reference captions of each clip (Clotho has five).
        tokenize: ``"ptb"`` (official) or ``"none"`` (already tokenised).

    Returns:
        The corpus CIDEr-D (COCO scale: roughly 0-10, ~0.4 for good audio captioners).

    Raises:
        ScoringError: misaligned or empty inputs, a clip without references, or missing
            tokenizer tools.
    """
    cands, refs = _tokenized(candidates, references, tokenize)
    ref_counts = [[_ngrams(r) for r in rs] for rs in refs]
    df: Counter[tuple[str, ...]] = Counter()
    for counts in ref_counts:  # document = a clip's reference set
        df.update(set().union(*counts))
    log_clips = math.log(float(len(cands)))
    scores = []
    for cand, counts in zip(cands, ref_counts):
        c_vec, c_norm, c_len = _tfidf(_ngrams(cand), df, log_clips)
        total = 0.0
        for rc in counts:
            r_vec, r_norm, r_len = _tfidf(rc, df, log_clips)
            penalty = math.exp(-((c_len - r_len) ** 2) / (2 * _SIGMA**2))
            for n in range(_MAX_N):
                dot = sum(min(v, r_vec[n].get(g, 0.0)) * r_vec[n].get(g, 0.0)
                          for g, v in c_vec[n].items())
                if c_norm[n] != 0 and r_norm[n] != 0:
                    dot /= c_norm[n] * r_norm[n]
                total += dot * penalty / _MAX_N
        scores.append(10.0 * total / len(counts))
    return CaptionResult(sum(scores) / len(scores), tuple(scores), len(scores), CIDER_D_VERSION)


def spice(candidates: Sequence[str], references: Sequence[Sequence[str]],
          tokenize: str = "ptb") -> CaptionResult:
    """SPICE through the COCO tools' Java scorer (optional: needs Java and its CoreNLP models).

    Raises:
        ScoringError: Java, pycocoevalcap or the Stanford CoreNLP models are missing.
    """
    _java_tools("SPICE")
    import pycocoevalcap.spice.spice as coco_spice

    lib = Path(coco_spice.__file__).parent / "lib"
    if not any(lib.glob("stanford-corenlp-3.6.0*.jar")):
        raise ScoringError(
            f"SPICE needs the Stanford CoreNLP 3.6.0 models in {lib}, which pycocoevalcap "
            "downloads on first use; lalm does not download at run time. Put the jars there "
            "(pycocoevalcap's get_stanford_models) or report CIDEr-D only."
        )
    cands, refs = _tokenized(candidates, references, tokenize)
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [c] for i, c in enumerate(cands)}
    score, per = coco_spice.Spice().compute_score(gts, res)
    per_clip = tuple(float(p["All"]["f"]) for p in per)
    return CaptionResult(float(score), per_clip, len(per_clip), SPICE_VERSION)


def spider(candidates: Sequence[str], references: Sequence[Sequence[str]],
           tokenize: str = "ptb") -> CaptionResult:
    """SPIDEr: the mean of CIDEr-D and SPICE, per clip and for the corpus.

    Raises:
        ScoringError: as `spice` (SPIDEr is unavailable without SPICE).
    """
    s = spice(candidates, references, tokenize)
    c = cider_d(candidates, references, tokenize)
    per_clip = tuple((a + b) / 2 for a, b in zip(c.per_clip, s.per_clip))
    return CaptionResult((c.score + s.score) / 2, per_clip, c.count, SPIDER_VERSION)
