"""Lineage by key: a generate run's candidates and tasks are linked to the version that wrote them and the run
that opened them (``rlhf.lineage``), the gate finds its side-by-side tasks by their link, a version's label
may change without breaking any of it, and the migration links the rows from before the links.

The engine is replaced by a function that writes samples, so these run without a worker or a model.
"""

from __future__ import annotations

import importlib
import json
import uuid
from pathlib import Path

import pytest
from django.apps import apps

from annotation.models import Candidate, RankingTask
from annotation.services import queue
from rlhf import gate, steps
from rlhf.leaderboard import leaderboard
from rlhf.lineage import gate_tasks, open_linked_tasks
from rlhf.models import GeneratedCandidate, ModelVersion, RunTask, TrainingRun
from rlhf.services import base_policy, start_generate
from rlhf.ui_selectors import head_to_head, lineage
from tests import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def project():
    alice = f.user("alice")
    proj = f.project("lin", k=4, annotators=[alice])
    for task in f.tasks(proj, 5):
        RankingTask.objects.filter(pk=task.pk).update(state=RankingTask.State.CLOSED)  # free prompts to generate for
    proj.alice = alice
    return proj


@pytest.fixture
def fake_engine(monkeypatch):
    """``generate`` as the engine answers it: ``k`` distinct samples per prompt of the prompts file."""

    def run_engine(run, command, config, run_dir=None):
        assert command == "generate"
        out = Path(run_dir or run.run_dir)
        out.mkdir(parents=True, exist_ok=True)
        prompts = [json.loads(line) for line in Path(config["prompts_file"]).read_text().splitlines() if line.strip()]
        rows = [{"prompt_id": p["prompt_id"], "text": f"{config['model_version']} says {i} of {p['prompt_id']}"}
                for p in prompts for i in range(config["k"])]
        (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"samples": len(rows)}

    monkeypatch.setattr(steps, "run_engine", run_engine)


def test_a_generate_runs_candidates_and_tasks_are_linked_to_their_version_and_run(project, fake_engine):
    run = start_generate(project=project, prompts=3, enqueue=False)
    steps.step_generate(run)
    base = base_policy(project)
    opened = RankingTask.objects.filter(project=project, origin=f"run-{run.pk}")
    assert opened.count() == 3
    assert set(RunTask.objects.filter(run=run).values_list("task_id", flat=True)) == set(opened.values_list("pk", flat=True))
    assert not RunTask.objects.filter(run=run, gate_for__isnull=False).exists()
    generated = Candidate.objects.filter(source="base")
    assert generated.count() == 12
    links = GeneratedCandidate.objects.filter(candidate__in=generated)
    assert links.count() == 12 and set(links.values_list("model_version", "run")) == {(base.pk, run.pk)}
    assert not GeneratedCandidate.objects.filter(candidate__source="import").exists()  # imported: nobody's

    samples = next(s for s in lineage(base) if s["stage"] == "Samples")
    assert samples["text"] == "12 candidates in 3 ranking tasks (0 fully ranked)" and samples["run"] == run


def test_a_comparison_links_each_candidate_to_the_version_that_wrote_it(project, fake_engine):
    base = base_policy(project)
    v1 = ModelVersion.objects.create(project=project, kind="policy", label="policy-v1", base_model="demo", parent=base)
    run = start_generate(project=project, prompts=2, compare=("base", "policy-v1"), enqueue=False)
    steps.step_generate(run)
    for task in RankingTask.objects.filter(rlhf_lineage__run=run):
        written = dict(GeneratedCandidate.objects.filter(candidate_id__in=task.candidate_ids)
                       .values_list("candidate__source", "model_version"))
        assert written == {"base": base.pk, "policy-v1": v1.pk}


def _rank_all(project, prefer: ModelVersion):
    """The annotator ranks every open task: the candidates ``prefer`` wrote first."""
    while (assignment := queue.next_task(annotator=project.alice, project=project)) is not None:
        ids = assignment.task.candidate_ids
        theirs = set(GeneratedCandidate.objects.filter(candidate_id__in=ids, model_version=prefer)
                     .values_list("candidate_id", flat=True))
        ordering = [g for g in ([c for c in ids if c in theirs], [c for c in ids if c not in theirs]) if g]
        queue.submit_ranking(annotator=project.alice, task_id=assignment.task_id, ordering=ordering,
                             client_uuid=uuid.uuid4())


def test_renaming_a_version_keeps_its_samples_leaderboard_rows_and_gate(project, fake_engine):
    base = base_policy(project)
    new = ModelVersion.objects.create(project=project, kind="policy", label="policy-v1", base_model="demo", parent=base,
                                      gate_state=ModelVersion.Gate.PENDING,
                                      gate={"method": "human", "active": "base", "active_id": base.pk})
    gate_run = TrainingRun.objects.create(project=project, kind="generate")
    prompt_ids = list(project.prompts.values_list("pk", flat=True)[:3])
    samples = [{"prompt_id": pid, "text": f"{v.label} {i} {pid}", "source": v.label, "meta": {"model_version_id": v.pk}}
               for pid in prompt_ids for v in (new, base) for i in range(2)]
    opened = open_linked_tasks(run=gate_run, samples=samples, source=new.label, priorities={}, origin=gate.gate_origin(new),
                               gate_for=new)
    assert opened["tasks"] == 3 and gate_tasks(new).count() == 3
    _rank_all(project, prefer=new)
    before = gate.human_tally(new)
    assert before["rankings"] == 3 and before["share"] == 1.0

    ModelVersion.objects.filter(pk=new.pk).update(label="policy-v1-renamed")
    ModelVersion.objects.filter(pk=base.pk).update(label="base-renamed")
    new.refresh_from_db()
    base.refresh_from_db()
    after = gate.human_tally(new)
    assert {k: after[k] for k in ("rankings", "share", "open_tasks")} == {k: before[k] for k in ("rankings", "share", "open_tasks")}
    board = {row["source"]: row for row in leaderboard(project, bootstrap=10)}
    assert set(board) == {"policy-v1-renamed", "base-renamed"}  # the versions' names now, not the old texts
    assert board["policy-v1-renamed"]["comparisons"] == 12
    h2h = head_to_head(project, "policy-v1-renamed", "base-renamed")
    assert (h2h["a_won"], h2h["b_won"]) == (12, 0)
    samples_stage = next(s for s in lineage(new) if s["stage"] == "Samples")
    assert samples_stage["text"].startswith("6 candidates")


def test_the_migration_links_the_rows_from_before_the_links(project):
    base = base_policy(project)
    v1 = ModelVersion.objects.create(project=project, kind="policy", label="policy-v1", base_model="demo", parent=base)
    gen = TrainingRun.objects.create(project=project, kind="generate")
    # As rlhf.steps wrote them before: versions named in source (and meta), runs and gates in origin.
    by_meta = f.task(project, source="policy-v1")
    Candidate.objects.filter(pk__in=by_meta.candidate_ids).update(meta={"model_version_id": v1.pk})
    RankingTask.objects.filter(pk=by_meta.pk).update(origin=f"run-{gen.pk}")
    by_label = f.task(project, source="base")  # no meta: the label of a version of the project
    RankingTask.objects.filter(pk=by_label.pk).update(origin=f"gate-{v1.pk}")
    imported = f.task(project, source="policy-v1")  # an import naming a version: origin says no run opened it
    other = f.project("other")
    foreign = f.task(other, source="base")
    RankingTask.objects.filter(pk=foreign.pk).update(origin=f"run-{gen.pk}")  # another project's run id: no link

    migration = importlib.import_module("rlhf.migrations.0003_lineage_links")
    migration.link_existing_rows(apps, None)
    migration.link_existing_rows(apps, None)  # twice changes nothing

    assert RunTask.objects.get(task=by_meta).run == gen
    link = RunTask.objects.get(task=by_label)
    assert link.gate_for == v1 and link.run is None
    assert not RunTask.objects.filter(task__in=[imported, foreign]).exists()
    written = dict(GeneratedCandidate.objects.values_list("candidate_id", "model_version_id"))
    assert {written[c] for c in by_meta.candidate_ids} == {v1.pk}
    assert {written[c] for c in by_label.candidate_ids} == {base.pk}
    assert not set(imported.candidate_ids + foreign.candidate_ids) & set(written)
    assert {r for r in GeneratedCandidate.objects.filter(candidate_id__in=by_meta.candidate_ids)
            .values_list("run_id", flat=True)} == {gen.pk}
