"""Quality control end to end on the demo world: gold tasks flag the bad annotators, Crowd-BT ranks them, and its
consensus trains a reward model as good as one trained on the careful annotators alone.

    nice -n 5 .venv/bin/python bench/quality_rm.py [--seeds 3] [--tasks 1000] [--heldout 250] [--gold 0.05]

The workload of issue 16, per seed: real demo scenes with K = 4 candidate captions and their ground truth
(``rlhf.engine.demo.world.write_demo_manifest``): ``--tasks`` annotation tasks, ``--gold`` of them gold (their
ordering the true one), and ``--heldout`` other scenes that nobody ranks and no reward model trains on, whose
pairs in the TRUE order (ground truth, ties left out) measure every reward model. 8 simulated annotators
(``rlhf.engine.demo.annotators``: 4 careful with the loop's noise 0.1, 2 adversarial, 2 random); each
non-gold task goes to ``--overlap`` of them, drawn at random. Each annotator's stream is their share of the
tasks with a gold task mixed in at each lease with probability ``--gold`` (the queue's rule, ``queue.base``).

Measured:

(a) Crowd-BT (``annotation.quality.crowd_bt``) on every ranking, gold ones included (as the app's quality job
    sees them): every adversarial and random annotator must rank below every careful one;
(b) the gold rule of the app (``annotation.services.gold.score_against_gold`` and ``judge`` with an unsaved
    ``Project``'s defaults: at least ``gold_min_count`` = 10 gold tasks, accuracy below ``gold_threshold`` =
    0.7), applied after each gold task of each annotator's sequence of all the gold tasks (the ones their
    stream reached first, then the rest, as if the project went on): every adversarial and random annotator
    flagged within 20 gold tasks, no careful one ever; then the rule's error rates on ``--gold-people`` more
    simulated annotators of each kind ranking the same gold tasks (how often a careful one is ever flagged);
(c) reward models (``rlhf.engine.train_reward.train_reward_model`` on the tiny demo VLM of the tests, the
    config of tests/engine/test_reward_model.py: full fine-tune, 1 epoch, batch 16, lr 3e-4, one torch
    thread) trained on the non-gold rankings (gold rankings never become training pairs, as in the exports),
    four arms with the same config and seed: ``careful`` (the careful annotators' rankings alone), ``all``
    (every ranking, unweighted), ``filtered`` (the pairs whose Crowd-BT confidence is ≥ 0.5, unweighted) and
    ``weighted`` (every pair, ``confidence_weighting``: the confidence as a soft label). Held-out pair
    accuracy of each with a 95 % interval (bootstrap over held-out scenes), and the paired differences.
    Targets: each consensus arm within 2 points of ``careful`` (read as: no more than 2 points below it; above
    it passes) and at least 10 points above ``all``, on the mean over seeds.

Prints the figures, writes them as JSON (``--out``), exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the learning tests measure (tests/conftest.py)
os.environ.setdefault("MKL_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIX = {"careful": 4, "adversarial": 2, "random": 2}
BAD = ("adversarial", "random")
ARMS = ("careful", "all", "filtered", "weighted")
CONSENSUS = ("filtered", "weighted")
FILTER_AT = 0.5  # the filtered arm keeps pairs whose confidence is at least this
# The reward model's config in tests/engine/test_reward_model.py (RM_MODEL, RM_TRAIN).
RM_MODEL = {"lora": False}
RM_TRAIN = {"epochs": 1, "batch_size": 16, "lr": 3e-4}
GOLD_WITHIN = 20  # target: the bad annotators flagged within this many gold tasks
NEAR_CAREFUL = 0.02  # target: consensus within 2 points of careful-only
ABOVE_ALL = 0.10  # target: consensus at least 10 points above all-unweighted


def setup_django(work: Path) -> None:
    """Only for the gold rule's functions (no query is made): settings with a database of the bench's own."""
    os.environ["LENSLOOP_VAR_DIR"] = str(work / "var")
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lensloop.settings")
    import django

    django.setup()


def true_groups(scores: list[float]) -> list[list[int]]:
    """Candidate positions grouped by equal true score, best first."""
    distinct = sorted(set(scores), reverse=True)
    return [[i for i, s in enumerate(scores) if s == v] for v in distinct]


def build(out: Path, args, seed: int) -> dict:
    """The world of one seed: scenes, tasks, gold, each annotator's stream and rankings."""
    from rlhf.engine.demo import world
    from rlhf.engine.demo.annotators import demo_scores, kinds_list, ordering_of_kind

    n = args.tasks + args.heldout
    manifest = world.write_demo_manifest(out, n, seed, k=args.k, eval_fraction=args.heldout / n)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        row["scores"] = demo_scores(row["prompt"], row["candidates"], row["ground_truth"])
    tasks = [r for r in rows if r["split"] == "train"]
    held = [r for r in rows if r["split"] == "eval"]
    rng = random.Random(seed * 1000 + 17)
    can_be_gold = [t for t in range(len(tasks)) if len(true_groups(tasks[t]["scores"])) >= 2]
    gold = sorted(rng.sample(can_be_gold, round(args.gold * len(tasks))))
    gold_set = set(gold)
    kinds = kinds_list(MIX)
    regular: list[list[int]] = [[] for _ in kinds]
    for t in range(len(tasks)):
        if t not in gold_set:
            for a in rng.sample(range(len(kinds)), args.overlap):
                regular[a].append(t)

    def rank(a: int, t: int) -> list[list[int]]:
        shown = list(range(args.k))
        rng.shuffle(shown)
        return ordering_of_kind(kinds[a], {c: tasks[t]["scores"][c] for c in shown}, rng, args.noise)

    rankings = []  # (task, annotator, ordering, is_gold)
    gold_seq = []  # per annotator: [(task, ordering)] over all the gold tasks, their stream's first
    in_stream = []
    for a in range(len(kinds)):
        order = gold[:]
        rng.shuffle(order)
        golds, todo = iter(order), iter(regular[a])
        seen_gold, seq = 0, []
        while True:
            t = next(golds, None) if rng.random() < args.gold and seen_gold < len(order) else None
            if t is not None:
                seen_gold += 1
                ordering = rank(a, t)
                seq.append((t, ordering))
                rankings.append((t, a, ordering, True))
                continue
            t = next(todo, None)
            if t is None:
                break
            rankings.append((t, a, rank(a, t), False))
        for t in golds:  # the rest of the gold tasks, as if the project went on
            seq.append((t, rank(a, t)))
        gold_seq.append(seq)
        in_stream.append(seen_gold)
    return {"tasks": tasks, "held": held, "gold": gold, "kinds": kinds, "rankings": rankings,
            "gold_seq": gold_seq, "gold_in_stream": in_stream}


def gold_flags(w: dict) -> list[dict]:
    """Per annotator: after how many gold tasks the app's rule first says "below" (None: never)."""
    from annotation.models import Project
    from annotation.services.gold import GoldAccuracy, judge, score_against_gold

    project = Project()  # unsaved: the model's defaults, gold_min_count 10 and gold_threshold 0.7
    out = []
    for a, seq in enumerate(w["gold_seq"]):
        agree = pairs = 0
        first = None
        ever = False
        acc_at = {}
        for n, (t, ordering) in enumerate(seq, 1):
            ok, total = score_against_gold(ordering, true_groups(w["tasks"][t]["scores"]))
            agree, pairs = agree + ok, pairs + total
            below = judge(project, GoldAccuracy(n, agree, pairs)) == "below"
            ever |= below
            if first is None and below:
                first = n
            if n in (project.gold_min_count, GOLD_WITHIN, w["gold_in_stream"][a]) or n == len(seq):
                acc_at[n] = agree / pairs
        out.append({"annotator": a, "kind": w["kinds"][a], "gold_in_stream": w["gold_in_stream"][a],
                    "gold_total": len(seq), "flagged_at": first, "ever_below": ever, "accuracy_at": acc_at,
                    "min_count": project.gold_min_count, "threshold": project.gold_threshold})
    return out


def gold_rates(w: dict, args, seed: int, people: int) -> dict:
    """The gold rule's error rates beyond the 8 annotators of the run: ``people`` simulated annotators of each
    kind rank this world's gold tasks (each in a fresh random order): how often a careful one is ever below the
    threshold within all of them (a false alarm), how often a bad one is not flagged within ``GOLD_WITHIN``."""
    from annotation.models import Project
    from annotation.services.gold import GoldAccuracy, judge, score_against_gold
    from rlhf.engine.demo.annotators import ordering_of_kind

    project = Project()
    rng = random.Random(seed * 1000 + 29)
    golds = [(w["tasks"][t]["scores"], true_groups(w["tasks"][t]["scores"])) for t in w["gold"]]
    out = {}
    for kind in ("careful", *BAD):
        flagged_by = {GOLD_WITHIN: 0, len(golds): 0}
        for _ in range(people):
            order = golds[:]
            rng.shuffle(order)
            agree = pairs = 0
            first = None
            for n, (scores, groups) in enumerate(order, 1):
                shown = list(range(len(scores)))
                rng.shuffle(shown)
                ok, total = score_against_gold(ordering_of_kind(kind, {c: scores[c] for c in shown}, rng, args.noise),
                                               groups)
                agree, pairs = agree + ok, pairs + total
                if judge(project, GoldAccuracy(n, agree, pairs)) == "below":
                    first = n
                    break
            for limit in flagged_by:
                flagged_by[limit] += first is not None and first <= limit
        out[kind] = {f"flagged_within_{k}": v / people for k, v in flagged_by.items()}
    return out


def reliability(w: dict):
    from annotation import quality

    rows = [(t, a, ordering) for t, a, ordering, _ in w["rankings"]]
    return quality.crowd_bt(rows)


def write_arms(out: Path, w: dict, fit) -> tuple[dict[str, Path], dict, Path]:
    """Training files of the four arms and the held-out file (true order); label quality per arm."""
    from lensloop.formats import pairs_from_groups

    conf = {(int(r), int(c), int(j)): float(x) for r, c, j, x in
            zip(fit.pair_ranking, fit.pair_chosen, fit.pair_rejected, fit.confidence, strict=True)}
    arms: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for i, (t, a, ordering, is_gold) in enumerate(w["rankings"]):
        if is_gold:
            continue  # gold rankings never become training pairs (the exports leave them out)
        task = w["tasks"][t]
        for j, (c, r, margin) in enumerate(sorted(pairs_from_groups(ordering))):
            rec = {"id": f"t{t}-a{a}-{j}", "project": "quality-rm", "images": [task["image"]],
                   "prompt": task["prompt"], "chosen": task["candidates"][c], "rejected": task["candidates"][r],
                   "margin": margin, "annotator": f"{w['kinds'][a]}-{a}", "ranking_id": f"t{t}-a{a}",
                   "split": "train", "confidence": round(conf[(i, c, r)], 4),
                   "_right": task["scores"][c] > task["scores"][r], "_tie": task["scores"][c] == task["scores"][r]}
            arms["all"].append(rec)
            arms["weighted"].append(rec)
            if w["kinds"][a] == "careful":
                arms["careful"].append(rec)
            if rec["confidence"] >= FILTER_AT:
                arms["filtered"].append(rec)
    paths, labels = {}, {}
    for arm, recs in arms.items():
        paths[arm] = out / f"train-{arm}.jsonl"
        paths[arm].write_text("".join(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}) + "\n"
                                      for r in recs))
        right = sum(r["_right"] for r in recs)
        soft = sum(r["confidence"] if r["_right"] else (1 - r["confidence"]) if not r["_tie"] else 0.5 for r in recs)
        labels[arm] = {"pairs": len(recs), "truly_right": right / len(recs),
                       "soft_label_right": soft / len(recs) if arm == "weighted" else None}
    held = []
    for h, row in enumerate(w["held"]):
        for j, (c, r, margin) in enumerate(sorted(pairs_from_groups(true_groups(row["scores"])))):
            held.append({"id": f"h{h}-{j}", "project": "quality-rm", "images": [row["image"]], "prompt": row["prompt"],
                         "chosen": row["candidates"][c], "rejected": row["candidates"][r], "margin": margin,
                         "annotator": "truth", "ranking_id": f"h{h}", "split": "eval"})
    held_path = out / "heldout.jsonl"
    held_path.write_text("".join(json.dumps(r) + "\n" for r in held))
    return paths, labels, held_path


def per_pair_right(checkpoint: str, held_path: Path) -> list[float]:
    """1, ½ or 0 per held-out pair (chosen above, level with, below rejected), from the saved reward model."""
    from rlhf.engine.data import read_preferences
    from rlhf.engine.reward_model import load_reward_model, score

    rm, processor = load_reward_model(checkpoint, device="cpu")
    recs = read_preferences(held_path)
    cache: dict = {}
    ims, prompts = [r["images"] for r in recs], [r["prompt"] for r in recs]
    c = score(rm, processor, ims, prompts, [r["chosen"] for r in recs], 32, cache).tolist()
    r = score(rm, processor, ims, prompts, [r["rejected"] for r in recs], 32, cache).tolist()
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(c, r, strict=True)]


def by_scene_bootstrap(values: list[float], groups: list[str], seed: int, resamples: int = 2000) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``values``, resampling held-out scenes (their pairs together)."""
    scenes: dict[str, list[float]] = {}
    for v, g in zip(values, groups, strict=True):
        scenes.setdefault(g, []).append(v)
    sums = [(sum(v), len(v)) for v in scenes.values()]
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        pick = rng.choices(sums, k=len(sums))
        means.append(sum(s for s, _ in pick) / sum(n for _, n in pick))
    means.sort()
    return means[int(0.025 * (resamples - 1))], means[int(0.975 * (resamples - 1)) + 1]


def train_arm(arm: str, train: Path, held: Path, run: Path, seed: int, model_path: str) -> dict:
    from rlhf.engine.config import ModelConfig, RewardConfig
    from rlhf.engine.train_reward import train_reward_model

    cfg = RewardConfig(model=ModelConfig(path=model_path, device="cpu", **RM_MODEL), train_file=str(train),
                       eval_file=str(held), seed=seed, confidence_weighting=arm == "weighted", **RM_TRAIN)
    return train_reward_model(cfg, str(run))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--heldout", type=int, default=250, help="scenes no one ranks, measured in the true order")
    ap.add_argument("--gold", type=float, default=0.05, help="share of the tasks that are gold, and the gold rate")
    ap.add_argument("--overlap", type=int, default=2)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--noise", type=float, default=0.1, help="the careful annotators' swap probability")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--gold-people", type=int, default=2000,
                    help="more simulated annotators per kind to measure the gold rule's error rates on (0: none)")
    ap.add_argument("--work", default="", help="folder for the worlds and runs (default: a temp folder)")
    ap.add_argument("--out", default="", help="JSON file for the figures")
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    work = Path(args.work or tempfile.mkdtemp(prefix="quality-rm-"))
    work.mkdir(parents=True, exist_ok=True)
    setup_django(work)
    import torch

    from rlhf.engine.config import BuildDemoConfig
    from rlhf.engine.demo import TINY_BUILD
    from rlhf.engine.demo.build import ensure_demo_model

    model_path = str(ensure_demo_model(BuildDemoConfig(**TINY_BUILD), work / "models",
                                       shipped=ROOT / "tests" / "assets" / "tiny-demo"))
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cpus, torch threads "
          f"{torch.get_num_threads()}; work in {work}", flush=True)
    ok = True
    seeds_out = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        t0 = time.perf_counter()
        out = work / f"seed-{seed}"
        w = build(out, args, seed)
        n_rank = sum(not g for *_, g in w["rankings"])
        n_gold = sum(g for *_, g in w["rankings"])
        print(f"\n== seed {seed}: {len(w['tasks'])} tasks ({len(w['gold'])} gold), {len(w['held'])} held-out scenes; "
              f"{n_rank} rankings + {n_gold} gold rankings by {len(w['kinds'])} annotators {MIX}, overlap "
              f"{args.overlap} ({time.perf_counter() - t0:.1f} s)", flush=True)

        fit = reliability(w)
        eta = fit.by_annotator()
        careful = [eta[a] for a in eta if w["kinds"][a] == "careful"]
        bad = [eta[a] for a in eta if w["kinds"][a] in BAD]
        rank_ok = max(bad) < min(careful)
        flags = gold_flags(w)
        print("  annotator  kind          η (Crowd-BT)  gold in stream  flagged after  acc@10  acc@20  acc@all")
        for f in flags:
            a = f["annotator"]
            acc = f["accuracy_at"]
            print(f"  {a:>9}  {f['kind']:<12}  {eta[a]:.3f}         {f['gold_in_stream']:>3}             "
                  f"{f['flagged_at'] or 'never'!s:>5}          {acc.get(10, float('nan')):.2f}    "
                  f"{acc.get(20, float('nan')):.2f}    {acc[f['gold_total']]:.2f}")
        flag_ok = all(f["flagged_at"] is not None and f["flagged_at"] <= GOLD_WITHIN for f in flags if f["kind"] in BAD)
        careful_ok = not any(f["ever_below"] for f in flags if f["kind"] == "careful")
        print(f"  (a) reliability: every adversarial and random below every careful one: {'met' if rank_ok else 'MISSED'} "
              f"(max bad η {max(bad):.3f} < min careful η {min(careful):.3f})")
        print(f"  (b) gold: every adversarial and random flagged within {GOLD_WITHIN} gold tasks: "
              f"{'met' if flag_ok else 'MISSED'}; no careful one ever below over all {len(w['gold'])}: "
              f"{'met' if careful_ok else 'MISSED'}")
        ok &= rank_ok and flag_ok and careful_ok
        bad_flags = [f for f in flags if f["kind"] in BAD]
        in_run = sum(f["flagged_at"] is not None and f["flagged_at"] <= f["gold_in_stream"] for f in bad_flags)
        print(f"      within the run itself (each annotator's stream reached {min(f['gold_in_stream'] for f in flags)}–"
              f"{max(f['gold_in_stream'] for f in flags)} gold tasks): {in_run} of {len(bad_flags)} adversarial and "
              "random annotators already flagged")
        rates = {}
        if args.gold_people:
            rates = gold_rates(w, args, seed, args.gold_people)
            n_gold = len(w["gold"])
            print(f"      the rule on {args.gold_people} more simulated annotators of each kind, each ranking these "
                  f"{n_gold} gold tasks in a random order: flagged within {GOLD_WITHIN} / within {n_gold}: "
                  + ", ".join(f"{kind} {r[f'flagged_within_{GOLD_WITHIN}']:.4f} / {r[f'flagged_within_{n_gold}']:.4f}"
                              for kind, r in rates.items()), flush=True)

        paths, labels, held_path = write_arms(out, w, fit)
        groups = [json.loads(line)["ranking_id"] for line in held_path.read_text().splitlines()]
        results, right = {}, {}
        for arm in arms:
            t1 = time.perf_counter()
            res = train_arm(arm, paths[arm], held_path, out / f"run-{arm}", seed, model_path)
            right[arm] = per_pair_right(res["checkpoint"], held_path)
            acc = sum(right[arm]) / len(right[arm])
            lo, hi = by_scene_bootstrap(right[arm], groups, seed)
            results[arm] = {"accuracy": acc, "ci": [lo, hi], "engine_accuracy": res["eval/accuracy"],
                            "before": res["eval_before/accuracy"], "steps": res["steps"],
                            "seconds": round(time.perf_counter() - t1, 1), **labels[arm]}
            soft = labels[arm]["soft_label_right"]
            print(f"  (c) {arm:<9} {labels[arm]['pairs']:>6} pairs ({labels[arm]['truly_right']:.3f} truly right"
                  f"{f', soft labels {soft:.3f} right' if soft is not None else ''}), {res['steps']} steps: held-out "
                  f"accuracy {acc:.3f} [{lo:.3f}, {hi:.3f}] on {len(right[arm])} pairs (before training "
                  f"{res['eval_before/accuracy']:.3f}), {results[arm]['seconds']:.0f} s", flush=True)
        diffs = {}
        for arm in CONSENSUS:
            for other in ("careful", "all"):
                if arm in right and other in right:
                    d = [x - y for x, y in zip(right[arm], right[other], strict=True)]
                    lo, hi = by_scene_bootstrap(d, groups, seed)
                    diffs[f"{arm}-{other}"] = {"diff": sum(d) / len(d), "ci": [lo, hi]}
                    print(f"      {arm} − {other}: {sum(d) / len(d):+.3f} [{lo:+.3f}, {hi:+.3f}]")
        seeds_out.append({"seed": seed, "eta": {f"{w['kinds'][a]}-{a}": eta[a] for a in eta}, "rank_ok": rank_ok,
                          "gold": flags, "gold_rates": rates, "arms": results, "diffs": diffs, "heldout_pairs": len(groups)})
        print(f"  seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)

    print(f"\n== {args.seeds} seeds: held-out pair accuracy, mean ± sd (min – max)")
    mean = {}
    for arm in arms:
        xs = [s["arms"][arm]["accuracy"] for s in seeds_out]
        mean[arm] = statistics.mean(xs)
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        print(f"  {arm:<9} {mean[arm]:.3f} ± {sd:.3f} ({min(xs):.3f} – {max(xs):.3f})   per seed: "
              + " ".join(f"{x:.3f}" for x in xs))
    for arm in CONSENSUS:
        if arm not in mean:
            continue
        for other, test in (("careful", lambda d: d >= -NEAR_CAREFUL), ("all", lambda d: d >= ABOVE_ALL)):
            if other not in mean:
                continue
            ds = [s["diffs"][f"{arm}-{other}"]["diff"] for s in seeds_out]
            d = statistics.mean(ds)
            met = test(d)
            ok &= met
            goal = f"≥ −{NEAR_CAREFUL:.2f}" if other == "careful" else f"≥ +{ABOVE_ALL:.2f}"
            print(f"  {arm} − {other}: {d:+.3f} (per seed {' '.join(f'{x:+.3f}' for x in ds)}; ratio "
                  f"{mean[arm] / mean[other]:.3f}); target {goal}: {'met' if met else 'MISSED'}")
    print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "seeds": seeds_out}, indent=1, default=str))
    print("all targets met" if ok else "a target was MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
