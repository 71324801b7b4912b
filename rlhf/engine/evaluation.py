"""Evaluation: text metrics (BLEU, ROUGE-L, CIDEr and CIDEr-D from caption_metrics.py, exact match), the
registered ground-truth answer metrics (`ANSWER_METRICS`: the demo world's attribute accuracy, from
demo/rewards.py), reward-model pairwise accuracy and calibration, and the `evaluate` subcommand
(`evaluate_run`): a policy and the version it would replace on the same held-out prompts, with intervals
(lensloop/stats.py) and paired differences.

The metric functions on lists are pure; `evaluate_policy` decodes greedily and scores the answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from .caption_metrics import cider, cider_d
from .registry import Registry
from .rewards import normalize, words

ANSWER_METRICS: Registry[Callable[[list[dict], list[str]], dict[str, float]]] = Registry(
    "answer metric", plugins=("rlhf.engine.demo.rewards",))
"""Name → `(records, answers) -> {figure: value}`: figures a world computes from its `ground_truth`
(records without one are theirs to skip). `score_answers` reports every registered one."""


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
    p, r = words(prediction), words(reference)
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


def evaluate_pairs(rm, processor, pairs: list[dict], batch_size: int = 32,
                   image_cache: dict | None = None) -> dict[str, float]:
    """Held-out pairwise accuracy and calibration of a reward model (`reward_model_metrics` of its scores)."""
    from .reward_model import score

    if not pairs:
        return {}
    was_training = rm.training
    rm.eval()
    images = [p["images"] for p in pairs]
    prompts = [p["prompt"] for p in pairs]
    chosen = score(rm, processor, images, prompts, [p["chosen"] for p in pairs], batch_size, image_cache)
    rejected = score(rm, processor, images, prompts, [p["rejected"] for p in pairs], batch_size, image_cache)
    rm.train(was_training)
    return reward_model_metrics(chosen.tolist(), rejected.tolist())


def score_answers(records: list[dict], answers: list[str]) -> dict[str, float]:
    """Text metrics over all records with a reference, then every registered answer metric (the demo
    world's: attribute accuracy of captions, exact match of questions, on the records with ground truth)."""
    with_ref = [(r, a) for r, a in zip(records, answers, strict=True) if r.get("reference")]
    out: dict[str, float] = {"n": len(records)}
    if with_ref:
        preds = [a for _, a in with_ref]
        refs = [r["reference"] if isinstance(r["reference"], list) else [r["reference"]] for r, _ in with_ref]
        out.update(bleu=bleu(preds, refs), rouge_l=rouge_l(preds, refs), cider=cider(preds, refs),
                   cider_d=cider_d(preds, refs), exact_match=exact_match(preds, refs))
    for metric in ANSWER_METRICS.values():
        out.update(metric(records, answers))
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


def sampled_answers(model, processor, records: list[dict], *, k: int, seed: int, max_new_tokens: int = 32,
                    batch_size: int = 16) -> list[list[str]]:
    """`k` answers per record sampled at temperature 1 (no top-p, no top-k), under a fixed seed: the answers a
    round's generate step puts in front of annotators. Two policies sampled with the same seed are compared on
    the same random draws as far as their distributions allow. The global RNG is left as it was."""
    import torch

    from .generation import answers

    rng_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        texts = answers(model, processor, [r for r in records for _ in range(k)], do_sample=True,
                        max_new_tokens=max_new_tokens, batch_size=batch_size)
    finally:
        torch.set_rng_state(rng_state)
    return [texts[j * k:(j + 1) * k] for j in range(len(records))]


def prompt_set_fingerprint(records: list[dict]) -> str:
    """Which prompts a figure was measured on, as 12 hex digits of the sha256 of their sorted ids: two
    versions' figures compare only when their fingerprints agree (the same held-out set)."""
    import hashlib

    ids = sorted(str(r.get("prompt_id")) for r in records)
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]


def interval_figures(name: str, values: list[float], *, resamples: int, seed: int) -> dict[str, float]:
    """`name`, `name_low`, `name_high` (95% percentile bootstrap) and `name_n` of a list of per-prompt values."""
    from lensloop.stats import bootstrap_mean

    b = bootstrap_mean(values, resamples=resamples, seed=seed)
    return {name: b["mean"], f"{name}_low": b["low"], f"{name}_high": b["high"], f"{name}_n": b["n"]}


def evaluate_run(cfg, run_dir: str, records: list[dict] | None = None, source: str = "records given by the caller") -> dict:
    """The `evaluate` subcommand: greedy answers of the policy (and of `cfg.baseline`, on the same prompts)
    scored with BLEU / ROUGE-L / CIDEr / CIDEr-D / exact match / demo attributes, the verifiable reward and the
    reward model, and `cfg.samples` answers per prompt at T = 1 scored with the verifiable reward
    (…/verifiable_sampled), each mean with its 95% bootstrap interval, and the paired differences policy −
    baseline (diff/…); the reward model's pair accuracy on `preference_file`. Per-prompt answers and scores go
    to answers.jsonl.

    The prompts are `cfg.prompts_file`, else `records` (described by `source`): the CLI passes fresh
    demo-world scenes when no prompts_file is given (cli.run_evaluate). They are held out by the caller's
    word (`heldout`); with heldout=false every figure is named train/… (heldout.py, rule 3)."""
    import gc
    import logging

    from lensloop.stats import paired_difference

    from .config import to_dict
    from .data import read_preferences, read_prompts, write_jsonl
    from .generation import greedy_answers
    from .heldout import TRAIN, warn_not_heldout
    from .loading import load_model
    from .rewards import REWARDS
    from .rundir import RunDir

    log = logging.getLogger("rlhf.engine.evaluate")
    run = RunDir(run_dir, to_dict(cfg))
    with run:
        if cfg.prompts_file:
            records, source = read_prompts(cfg.prompts_file), f"prompts_file {cfg.prompts_file}"
        elif records is None:
            raise ValueError("evaluate needs a prompt set: cfg.prompts_file, or the records the caller passes")
        if not cfg.heldout:
            warn_not_heldout(log, "heldout=false", f"{cfg.prompts_file or 'the prompt set'} holds training prompts")
        result: dict = {"prompts": len(records), "prompts_sha": prompt_set_fingerprint(records),
                        "heldout": source if cfg.heldout else "none"}
        graded = [i for i, r in enumerate(records) if r.get("ground_truth") is not None]
        answers: dict[str, list[str]] = {}
        sampled: dict[str, list[list[str]]] = {}  # per graded prompt, cfg.samples answers at T = 1
        for name, model_cfg in (("policy", cfg.model), ("baseline", cfg.baseline)):
            if model_cfg is None:
                continue
            model, processor = load_model(model_cfg, trainable=False)
            answers[name] = greedy_answers(model, processor, records, max_new_tokens=cfg.max_new_tokens,
                                           batch_size=cfg.batch_size)
            if cfg.samples and cfg.verifiable_reward and graded:
                sampled[name] = sampled_answers(model, processor, [records[i] for i in graded], k=cfg.samples,
                                                seed=cfg.seed, max_new_tokens=cfg.max_new_tokens,
                                                batch_size=cfg.batch_size)
            del model, processor
            gc.collect()
            result.update({f"{name}/{k}": v for k, v in score_answers(records, answers[name]).items()})
            for r, a in list(zip(records, answers[name], strict=True))[:5]:
                log.info("%s example: %s → %r (reference %r)", name, r["prompt"], a, (r.get("reference") or [None])[0])
        per_prompt: dict[str, dict[str, list[float]]] = {}
        if cfg.verifiable_reward and graded:
            reward = REWARDS[cfg.verifiable_reward]

            def scored(texts: list[str], rows: list[int]) -> list[float]:
                return [float(x) for x in reward([records[i]["prompt"] for i in rows], texts,
                                                 ground_truth=[records[i]["ground_truth"] for i in rows],
                                                 reference=[records[i].get("reference") for i in rows])]

            per_prompt["verifiable"] = {name: scored([texts[i] for i in graded], graded)
                                        for name, texts in answers.items()}
            if sampled:  # each prompt's figure is the mean over its samples, so prompts stay the unit of the interval
                per_prompt["verifiable_sampled"] = {}
                for name, per in sampled.items():
                    flat = scored([t for texts in per for t in texts], [i for i in graded for _ in range(cfg.samples)])
                    per_prompt["verifiable_sampled"][name] = [
                        sum(flat[j * cfg.samples:(j + 1) * cfg.samples]) / cfg.samples for j in range(len(graded))]
        elif cfg.verifiable_reward:
            log.warning("verifiable_reward=%s but no prompt has ground_truth: no verifiable figures", cfg.verifiable_reward)
        if cfg.answer_reward_model_path:
            from .reward_model import load_reward_model, score

            rm, rm_processor = load_reward_model(cfg.answer_reward_model_path, device=cfg.model.device)
            images, prompts = [r["images"] for r in records], [r["prompt"] for r in records]
            per_prompt["reward_model_score"] = {name: score(rm, rm_processor, images, prompts, texts).tolist()
                                                for name, texts in answers.items()}
            del rm
        for metric, by_name in per_prompt.items():
            for name, values in by_name.items():
                result.update(interval_figures(f"{name}/{metric}", values, resamples=cfg.bootstrap, seed=cfg.seed))
            if "baseline" in by_name:
                d = paired_difference(by_name["policy"], by_name["baseline"], resamples=cfg.bootstrap, seed=cfg.seed)
                result.update({f"diff/{metric}": d["mean"], f"diff/{metric}_low": d["low"],
                               f"diff/{metric}_high": d["high"], f"diff/{metric}_n": d["n"]})
        if cfg.reward_model_path:
            from .reward_model import load_reward_model

            rm, rm_processor = load_reward_model(cfg.reward_model_path, device=cfg.model.device)
            rm_metrics = evaluate_pairs(rm, rm_processor, read_preferences(cfg.preference_file))
            result.update({f"reward_model/{k}": v for k, v in rm_metrics.items()})
            if rm_metrics.get("pairs"):
                from lensloop.stats import wilson

                low, high = wilson(rm_metrics["accuracy"] * rm_metrics["pairs"], rm_metrics["pairs"])
                result.update({"reward_model/accuracy_low": low, "reward_model/accuracy_high": high})
        on_graded = {i: j for j, i in enumerate(graded)}
        positions = {"verifiable": on_graded, "verifiable_sampled": on_graded}  # the other metrics score every prompt
        rows = []
        for i, r in enumerate(records):
            row = {"prompt_id": r.get("prompt_id"), "prompt": r["prompt"], **{n: t[i] for n, t in answers.items()}}
            for metric, by_name in per_prompt.items():
                j = positions[metric].get(i) if metric in positions else i
                if j is not None:
                    row[metric] = {name: values[j] for name, values in by_name.items()}
            rows.append(row)
        write_jsonl(Path(run_dir) / "answers.jsonl", rows)
        if not cfg.heldout:
            keep = {"prompts", "prompts_sha", "heldout"}
            result = {(k if k in keep else TRAIN + k): v for k, v in result.items()}
        run.log_metrics(1, 1, **{k: v for k, v in result.items() if isinstance(v, int | float)})
        run.write_result(result)
        return result
