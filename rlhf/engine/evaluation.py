"""Evaluation: text metrics (BLEU, ROUGE-L, exact match), demo-world attribute accuracy, and reward-model
pairwise accuracy and calibration.

The metric functions on lists are pure; `evaluate_policy` decodes greedily and scores the answers.
"""

from __future__ import annotations

import math

from .demo import world
from .rewards import caption_attributes, normalize


def bleu(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU (Papineni et al. 2002) through sacrebleu, 0–100."""
    import sacrebleu

    if not predictions:
        return 0.0
    n_refs = max(len(r) for r in references)
    ref_streams = [[r[i] if i < len(r) else r[0] for r in references] for i in range(n_refs)]
    return float(sacrebleu.corpus_bleu(predictions, ref_streams).score)


def rouge_l(predictions: list[str], references: list[list[str]]) -> float:
    """Mean ROUGE-L F1 (Lin 2004) through rouge-score, best reference per prediction, 0–1."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [max(scorer.score(r, p)["rougeL"].fmeasure for r in refs) for p, refs in zip(predictions, references,
                                                                                            strict=True)]
    return sum(scores) / len(scores) if scores else 0.0


def exact_match(predictions: list[str], references: list[list[str]]) -> float:
    """Fraction of predictions equal to one of their references after normalisation."""
    hits = [any(normalize(p) == normalize(r) for r in refs) for p, refs in zip(predictions, references, strict=True)]
    return sum(hits) / len(hits) if hits else 0.0


def word_accuracy(prediction: str, reference: str) -> float:
    """Position-wise word agreement: matching words at the same index / the longer length."""
    p, r = world.words(prediction), world.words(reference)
    if not p and not r:
        return 1.0
    return sum(a == b for a, b in zip(p, r, strict=False)) / max(len(p), len(r))


def pairwise_accuracy(chosen_scores: list[float], rejected_scores: list[float]) -> float:
    """Fraction of pairs where the chosen answer scores higher (ties count half)."""
    n = len(chosen_scores)
    if n == 0:
        return float("nan")
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen_scores, rejected_scores, strict=True))
    return wins / n


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def expected_calibration_error(chosen_scores: list[float], rejected_scores: list[float], n_bins: int = 10) -> float:
    """ECE (Guo et al. 2017, eq. 3) of the Bradley–Terry probability p = σ(r_c − r_r).

    The model predicts "chosen wins" with confidence max(p, 1 − p) and is right when p > 0.5; ECE is the
    bin-weighted mean |accuracy − confidence| over `n_bins` equal-width confidence bins on [0.5, 1].
    """
    n = len(chosen_scores)
    if n == 0:
        return float("nan")
    bins: list[list[tuple[float, float]]] = [[] for _ in range(n_bins)]
    for c, r in zip(chosen_scores, rejected_scores, strict=True):
        p = sigmoid(c - r)
        conf, correct = max(p, 1 - p), 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0
        idx = min(n_bins - 1, int((conf - 0.5) / 0.5 * n_bins))
        bins[idx].append((conf, correct))
    return sum(len(b) / n * abs(sum(x[1] for x in b) / len(b) - sum(x[0] for x in b) / len(b)) for b in bins if b)


def reward_model_metrics(chosen_scores: list[float], rejected_scores: list[float]) -> dict[str, float]:
    """Accuracy, ECE and mean margin of a reward model on held-out pairs."""
    margins = [c - r for c, r in zip(chosen_scores, rejected_scores, strict=True)]
    return {"accuracy": pairwise_accuracy(chosen_scores, rejected_scores),
            "ece": expected_calibration_error(chosen_scores, rejected_scores),
            "mean_margin": sum(margins) / len(margins) if margins else float("nan"),
            "pairs": len(margins)}


def score_answers(records: list[dict], answers: list[str]) -> dict[str, float]:
    """Text metrics over all records with a reference; demo-world attribute accuracy for caption records
    with ground truth and exact match for question records with ground truth."""
    with_ref = [(r, a) for r, a in zip(records, answers, strict=True) if r.get("reference")]
    out: dict[str, float] = {"n": len(records)}
    if with_ref:
        preds = [a for _, a in with_ref]
        refs = [r["reference"] if isinstance(r["reference"], list) else [r["reference"]] for r, _ in with_ref]
        out.update(bleu=bleu(preds, refs), rouge_l=rouge_l(preds, refs), exact_match=exact_match(preds, refs))
    captions = [(r, a) for r, a in zip(records, answers, strict=True)
                if r.get("ground_truth") and normalize(r["prompt"]) == normalize(world.CAPTION_PROMPT)]
    if captions:
        attrs = [caption_attributes(a, r["ground_truth"]) for r, a in captions]
        for key in ("count", "color", "shape", "size", "object"):
            out[f"caption/{key}"] = sum(x[key] for x in attrs) / len(attrs)
        out["caption/word_accuracy"] = sum(word_accuracy(a, world.reference_caption(r["ground_truth"]))
                                           for r, a in captions) / len(captions)
        out["caption/exact_match"] = sum(normalize(a) == normalize(world.reference_caption(r["ground_truth"]))
                                         for r, a in captions) / len(captions)
        out["caption/well_formed"] = sum(world.is_well_formed_caption(a) for _, a in captions) / len(captions)
    questions = [(r, a) for r, a in zip(records, answers, strict=True)
                 if r.get("ground_truth") and normalize(r["prompt"]) != normalize(world.CAPTION_PROMPT)]
    if questions:
        hits = []
        for r, a in questions:
            try:
                hits.append(normalize(a) == normalize(world.answer_question(r["ground_truth"], r["prompt"])))
            except ValueError:  # not a demo-world question
                continue
        if hits:
            out["vqa/exact_match"] = sum(hits) / len(hits)
    return out


def evaluate_policy(model, processor, records: list[dict], *, max_new_tokens: int = 32, batch_size: int = 16,
                    with_examples: int = 5) -> dict:
    """Greedy answers for `records` (`images`, `prompt`, `reference`?, `ground_truth`?) and their scores,
    plus a few examples for the log."""
    from .generation import greedy_answers

    answers = greedy_answers(model, processor, records, max_new_tokens=max_new_tokens, batch_size=batch_size)
    metrics = score_answers(records, answers)
    metrics["examples"] = [{"prompt": r["prompt"], "answer": a, "reference": (r.get("reference") or [None])[0]}
                           for r, a in list(zip(records, answers, strict=True))[:with_examples]]
    return metrics
