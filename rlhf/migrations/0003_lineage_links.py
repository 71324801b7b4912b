"""Lineage by key: ``GeneratedCandidate`` (candidate → the model version that wrote it) and ``RunTask``
(ranking task → the run that opened it, and the policy a side-by-side task judges), filled for the rows
already there from what linked them before: a candidate's ``meta["model_version_id"]`` else its
``source`` (a version's label), a task's ``origin`` (``run-<run id>``, ``gate-<version id>``)."""

import django.db.models.deletion
from django.db import migrations, models

BATCH = 2000


def link_existing_rows(apps, schema_editor):
    Candidate = apps.get_model("annotation", "Candidate")
    RankingTask = apps.get_model("annotation", "RankingTask")
    ModelVersion = apps.get_model("rlhf", "ModelVersion")
    TrainingRun = apps.get_model("rlhf", "TrainingRun")
    GeneratedCandidate = apps.get_model("rlhf", "GeneratedCandidate")
    RunTask = apps.get_model("rlhf", "RunTask")

    run_project = dict(TrainingRun.objects.values_list("pk", "project_id"))
    versions = {pk: (project_id, run_id) for pk, project_id, run_id in
                ModelVersion.objects.values_list("pk", "project_id", "run_id")}
    by_label = {(project_id, label): pk for pk, project_id, label in
                ModelVersion.objects.values_list("pk", "project_id", "label")}
    round_of = dict(TrainingRun.objects.filter(round__isnull=False).values_list("pk", "round_id"))
    generate_of_round = {}
    for pk, round_id in TrainingRun.objects.filter(kind="generate", round__isnull=False).order_by("-pk").values_list(
            "pk", "round_id"):
        generate_of_round[round_id] = pk  # the round's (first) generate step opened its gate tasks

    # Tasks: origin "run-<id>" (a generate run's) or "gate-<version id>" (side-by-side tasks of a gate).
    task_links, candidate_run = [], {}
    tasks = RankingTask.objects.filter(models.Q(origin__startswith="run-") | models.Q(origin__startswith="gate-"))
    for task_id, project_id, origin, candidate_ids in tasks.values_list("pk", "project_id", "origin",
                                                                        "candidate_ids").iterator():
        kind, _, number = origin.partition("-")
        if not number.isdigit():
            continue
        number = int(number)
        if kind == "run" and run_project.get(number) == project_id:
            link = RunTask(task_id=task_id, run_id=number)
        elif kind == "gate" and versions.get(number, (None,))[0] == project_id:
            policy_run = versions[number][1]
            link = RunTask(task_id=task_id, gate_for_id=number,
                           run_id=generate_of_round.get(round_of.get(policy_run)))
        else:
            continue
        task_links.append(link)
        for candidate_id in candidate_ids or []:
            candidate_run[candidate_id] = link.run_id
    RunTask.objects.bulk_create(task_links, batch_size=BATCH, ignore_conflicts=True)

    # Candidates: the ones generated carry their version's id in meta (also those of prompts that got too
    # few distinct texts for a task); the candidates of run-opened tasks without it, their version's label.
    # Those with the meta key in one scan; the others of run-opened tasks by id, in chunks (SQLite caps the
    # number of variables in a statement).
    with_meta = Candidate.objects.filter(meta__has_key="model_version_id")
    others = sorted(set(candidate_run) - set(with_meta.values_list("pk", flat=True)))
    scans = [with_meta] + [Candidate.objects.filter(pk__in=others[i:i + BATCH]) for i in range(0, len(others), BATCH)]
    links = []
    for scan in scans:
        for candidate_id, project_id, source, meta in scan.values_list(
                "pk", "prompt__project_id", "source", "meta").iterator():
            version_id = (meta or {}).get("model_version_id")
            if not (isinstance(version_id, int) and versions.get(version_id, (None,))[0] == project_id):
                version_id = by_label.get((project_id, source))
            if version_id is not None:
                links.append(GeneratedCandidate(candidate_id=candidate_id, model_version_id=version_id,
                                                run_id=candidate_run.get(candidate_id)))
            if len(links) >= BATCH:
                GeneratedCandidate.objects.bulk_create(links, ignore_conflicts=True)
                links = []
    GeneratedCandidate.objects.bulk_create(links, ignore_conflicts=True)


class Migration(migrations.Migration):

    dependencies = [
        ('annotation', '0004_project_heldout_fraction'),
        ('rlhf', '0002_promotion_gate'),
    ]

    operations = [
        migrations.CreateModel(
            name='GeneratedCandidate',
            fields=[
                ('candidate', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='rlhf_lineage', serialize=False, to='annotation.candidate')),
                ('model_version', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='generated_candidates', to='rlhf.modelversion')),
                ('run', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='generated_candidates', to='rlhf.trainingrun')),
            ],
        ),
        migrations.CreateModel(
            name='RunTask',
            fields=[
                ('task', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='rlhf_lineage', serialize=False, to='annotation.rankingtask')),
                ('gate_for', models.ForeignKey(blank=True, help_text='The policy whose promotion gate these side-by-side rankings judge.', null=True, on_delete=django.db.models.deletion.CASCADE, related_name='gate_tasks', to='rlhf.modelversion')),
                ('run', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='opened_tasks', to='rlhf.trainingrun')),
            ],
        ),
        migrations.RunPython(link_existing_rows, migrations.RunPython.noop),
    ]
