"""CIDEr and CIDEr-D (Vedantam, Zitnick & Parikh 2015, "CIDEr: Consensus-based Image Description
Evaluation"), pure Python, computed as the authors' code computes them.

Each candidate and reference becomes, per n-gram order n = 1..4, a vector of TF-IDF weights: an n-gram's
count in the sentence times log(N / df), where N is the number of images (candidates) in the evaluated set
and df the number of those images whose references contain the n-gram (document frequencies come from the
references of the evaluated set, as the COCO server's do: no outside corpus). For each order the score is the
cosine similarity of the candidate's vector with each reference's, averaged over the references; a
candidate's score is the mean over the four orders, times 10; the corpus figure is the mean over candidates.

- **CIDEr** (`cider`): the above, as vrama91/cider `pyciderevalcap/cider` computes it (df mode "corpus").
  The paper's first definition also stems words; the authors' code does not, and neither does this.
- **CIDEr-D** (`cider_d`): what the COCO caption evaluation server reports *under the name "CIDEr"*
  (pycocoevalcap's `Cider`, vrama91/cider `pyciderevalcap/ciderD`): each candidate weight is clipped to the
  reference's (`min(g(c), g(s)) · g(s)` in the dot product, so repeating an n-gram earns nothing), and each
  similarity is multiplied by a Gaussian length penalty exp(−(l(c) − l(s))² / 2σ²), σ = 6. Like that code,
  l is the number of bigrams (words − 1), which differs from the word count only for empty sentences.

Scale: 0–10 per candidate (10 for a candidate identical to every reference, which needs at least two images
in the set); papers usually print these ×100 (COCO's 1.201 is "CIDEr 120.1"). With a single image every
n-gram has df = N, so idf and the score are 0, as in the authors' code.

Tokenisation: the COCO server first runs the Stanford PTB tokenizer (Java) over candidates and references,
which lower-cases, splits off punctuation and drops punctuation tokens. Here the pure-Python stand-in is
`rewards.words` (lower case, runs of ASCII letters and digits, everything else a separator): the same tokens
on plain captions such as the demo world's; different on contractions ("isn't" → `isn t`, PTB `is n't`),
hyphenated words (PTB keeps `t-shirt` whole) and non-ASCII letters (dropped here). Scores on identical token
lists agree with the official implementations to rounding (tests/engine/test_cider.py).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

from .rewards import words

ORDERS = 4  # n-grams of 1..4 words, the official setting
SIGMA = 6.0  # standard deviation (in words) of CIDEr-D's length penalty


def ngram_counts(tokens: Sequence[str], orders: int = ORDERS) -> Counter:
    """Counts of every n-gram (a tuple of words) of 1..`orders` words."""
    return Counter(tuple(tokens[i:i + k]) for k in range(1, orders + 1) for i in range(len(tokens) - k + 1))


def cider_scores(predictions: list[str], references: list[list[str]], *, clipped: bool = False,
                 orders: int = ORDERS, sigma: float = SIGMA,
                 tokenize: Callable[[str], list[str]] = words) -> list[float]:
    """Per-candidate CIDEr (`clipped=False`) or CIDEr-D (`clipped=True`: clipping and length penalty), 0–10,
    with document frequencies from `references` (one non-empty list per prediction)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if any(not refs for refs in references):
        raise ValueError("every prediction needs at least one reference")
    if not predictions:
        return []
    cands = [tokenize(p) for p in predictions]
    refs = [[tokenize(r) for r in rs] for rs in references]
    cand_counts = [ngram_counts(c, orders) for c in cands]
    ref_counts = [[ngram_counts(r, orders) for r in rs] for rs in refs]
    df: Counter = Counter(g for rs in ref_counts for g in set().union(*rs))
    log_n = math.log(len(predictions))

    def vector(counts: Counter) -> tuple[list[dict], list[float]]:
        vec: list[dict] = [{} for _ in range(orders)]
        for g, tf in counts.items():
            vec[len(g) - 1][g] = tf * (log_n - math.log(max(1.0, df[g])))
        return vec, [math.sqrt(sum(w * w for w in v.values())) for v in vec]

    def similarity(c: tuple[list[dict], list[float]], r: tuple[list[dict], list[float]], delta: int) -> float:
        penalty = math.exp(-(delta ** 2) / (2 * sigma ** 2)) if clipped else 1.0
        total = 0.0
        for (cv, rv), (cn, rn) in zip(zip(c[0], r[0], strict=True), zip(c[1], r[1], strict=True), strict=True):
            if clipped:
                dot = sum(min(w, rv.get(g, 0.0)) * rv.get(g, 0.0) for g, w in cv.items())
            else:
                dot = sum(w * rv.get(g, 0.0) for g, w in cv.items())
            total += (dot / (cn * rn) if cn and rn else 0.0) * penalty
        return total / orders

    def length(tokens: list[str]) -> int:  # the official code's length: bigrams
        return max(len(tokens) - 1, 0)

    scores = []
    for cand, counts, rs, rcounts in zip(cands, cand_counts, refs, ref_counts, strict=True):
        c = vector(counts)
        sims = [similarity(c, vector(rc), length(cand) - length(r)) for r, rc in zip(rs, rcounts, strict=True)]
        scores.append(10.0 * sum(sims) / len(sims))
    return scores


def cider(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus CIDEr (Vedantam et al. 2015, the authors' code): mean over candidates, 0–10."""
    scores = cider_scores(predictions, references)
    return sum(scores) / len(scores) if scores else 0.0


def cider_d(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus CIDEr-D, the figure the COCO caption server reports as "CIDEr": mean over candidates, 0–10."""
    scores = cider_scores(predictions, references, clipped=True)
    return sum(scores) / len(scores) if scores else 0.0
