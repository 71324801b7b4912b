"""Server-rendered pages of the loop: the training page (launch a round, runs with live progress,
automatic rounds), a run's page (steps, curves, log tail), and model versions (lineage, metrics, the
leaderboard from human rankings, two versions compared).

Members of a project may look; its admins launch, cancel, resume and change settings. Views fetch,
check the role, call one service (the same ones ``rlhf.api`` calls) and render. Run errors and log
tails are engine output, so templates only ever print them auto-escaped; the pages' script fills them
in with ``textContent``.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_POST

from annotation.models import Membership, Project
from annotation.permissions import project_and_role
from annotation.selectors import queue_stats
from rlhf import ui_selectors
from rlhf.charts import leaderboard_chart, run_panels
from rlhf.engine import round as round_schema
from rlhf.engine.config_base import ConfigError
from rlhf.engine.reward_terms import formula
from rlhf.forms import GateSettingsForm, LoopSettingsForm, RewardEditor, RoundForm
from rlhf.gate import decide_pending_gates
from rlhf.hardware import cuda_available
from rlhf.leaderboard import leaderboard
from rlhf.models import LoopSettings, ModelVersion, TrainingRun
from rlhf.services import (
    ROUND_ADVANCED,
    LoopError,
    activate_version,
    advanced_params,
    cancel_run,
    loop_settings_set,
    pairs_since_last_round,
    reap_stale_runs,
    resume_round,
    start_generate,
    start_round,
)

K = TrainingRun.Kind


def _project_for(request, slug: str, *, admin: bool = False) -> tuple[Project, str]:
    return project_and_role(request.user, slug, admin=admin)


def _run_for(request, run_id: int, *, admin: bool = False) -> tuple[TrainingRun, str]:
    run = get_object_or_404(TrainingRun.objects.select_related("project"), pk=run_id)
    _, role = _project_for(request, run.project.slug, admin=admin)
    return run, role


def _loop_settings(project: Project) -> LoopSettings:
    # An unsaved row with the defaults when the project has none yet: reading never writes.
    return LoopSettings.objects.filter(project=project).first() or LoopSettings(project=project)


def _policy_terms(params: dict | None) -> list:
    """The policy's reward terms of a project's saved round parameters (its composed reward, else the reward
    model + verifiable reward they name)."""
    try:
        return round_schema.round_config(params).policy_terms()
    except ConfigError:  # saved before a rule changed: show the defaults rather than fail the page
        return round_schema.RoundConfig().policy_terms()


def _training_page(request, project, role, *, form=None, settings_form=None, gate_form=None, reward_editor=None,
                   status=200):
    loop = _loop_settings(project)
    cuda = cuda_available()
    terms = _policy_terms(loop.round_params)
    context = {
        "project": project,
        "role": role,
        "is_admin": role == Membership.Role.ADMIN,
        "form": form or RoundForm(cuda=cuda, defaults=loop.round_params),
        "engine_params": [
            (k, ui_selectors.readable_value(v)) for k, v in advanced_params(loop.round_params).items()
            if v != ROUND_ADVANCED[k] and k != "reward"
        ],
        "reward_formula": formula(terms),
        "reward_editor": reward_editor or RewardEditor(terms=terms),
        "auto_params": ui_selectors.readable_params(loop.round_params),
        "settings_form": settings_form or LoopSettingsForm(instance=loop),
        "gate_form": gate_form or GateSettingsForm(instance=loop),
        "pending_gates": ModelVersion.objects.filter(project=project, gate_state=ModelVersion.Gate.PENDING),
        "heldout_prompts": project.prompts.filter(split="eval").count(),
        "loop": loop,
        "cuda": cuda,
        "runs": ui_selectors.runs_for(project),
        "pairs_since": pairs_since_last_round(project),
        "stats": queue_stats(project),
        "active_policy": ModelVersion.objects.filter(project=project, kind="policy", active=True).first(),
        "active_reward": ModelVersion.objects.filter(project=project, kind="reward", active=True).first(),
        "kind_labels": dict(K.choices),
        "api_runs": reverse("api-runs", args=[project.slug]),
    }
    return render(request, "rlhf/training.html", context, status=status)


@login_required
@require_GET
def training(request, slug):
    project, role = _project_for(request, slug)
    reap_stale_runs()
    decide_pending_gates(project)
    return _training_page(request, project, role)


@login_required
@require_POST
def launch_round(request, slug):
    """Start a round with the form's parameters, or (``action=save_auto``) keep them for automatic rounds."""
    project, role = _project_for(request, slug, admin=True)
    form = RoundForm(request.POST, cuda=cuda_available())
    if not form.is_valid():
        return _training_page(request, project, role, form=form, status=400)
    if request.POST.get("action") == "save_auto":
        try:
            loop_settings_set(project=project, round_params=form.params())
        except LoopError as exc:
            form.add_error(None, exc.message)
            return _training_page(request, project, role, form=form, status=exc.status)
        messages.success(request, "Saved: automatic rounds will use these parameters.")
        return redirect("training", slug=project.slug)
    try:
        run = start_round(project=project, user=request.user, params=form.params())
    except LoopError as exc:
        form.add_error(None, exc.message)
        return _training_page(request, project, role, form=form, status=exc.status)
    messages.success(request, f"Round #{run.pk} ({run.config['algorithm'].upper()}) queued. Its progress shows below.")
    return redirect(f"{reverse('training', args=[project.slug])}#run-{run.pk}")


@login_required
@require_POST
def loop_settings(request, slug):
    project, role = _project_for(request, slug, admin=True)
    form = LoopSettingsForm(request.POST, instance=_loop_settings(project))
    if not form.is_valid():
        return _training_page(request, project, role, settings_form=form, status=400)
    n = form.cleaned_data["auto_round_pairs"]
    loop_settings_set(project=project, auto_round_pairs=n)
    messages.success(request, f"Automatic rounds: every {n} new pairs." if n else "Automatic rounds are off.")
    return redirect("training", slug=project.slug)


@login_required
@require_POST
def gate_settings(request, slug):
    """The held-out evaluation and promotion gate of a project (``rlhf.gate``)."""
    project, role = _project_for(request, slug, admin=True)
    form = GateSettingsForm(request.POST, instance=_loop_settings(project))
    if not form.is_valid():
        return _training_page(request, project, role, gate_form=form, status=400)
    try:
        loop_settings_set(project=project, **form.cleaned_data)
    except LoopError as exc:
        form.add_error(None, exc.message)
        return _training_page(request, project, role, gate_form=form, status=exc.status)
    messages.success(request, f"Promotion gate: {form.instance.get_promotion_gate_display().lower()}.")
    return redirect(f"{reverse('training', args=[project.slug])}#gate-title")


@login_required
@require_POST
def reward_settings(request, slug):
    """The project's composed reward (the policy's reward in PPO and GRPO rounds): checked by the engine's
    rules and a dry run of every term before it is saved; an error goes to the row it names."""
    project, role = _project_for(request, slug, admin=True)
    editor = RewardEditor(request.POST)
    spec = editor.terms()
    if spec is None:
        return _training_page(request, project, role, reward_editor=editor, status=400)
    try:
        # The editor is the one place the policy's reward is set: its terms replace the two-field form.
        loop_settings_set(project=project, round_params={"reward": spec, "verifiable_reward": "",
                                                         "verifiable_weight": 1.0, "use_reward_model": True})
    except LoopError as exc:
        editor.add_error(exc.message)
        return _training_page(request, project, role, reward_editor=editor, status=exc.status)
    terms = _policy_terms(_loop_settings(project).round_params)
    messages.success(request, f"Saved: PPO and GRPO rounds reward the policy with {formula(terms)}.")
    return redirect(f"{reverse('training', args=[project.slug])}#reward-title")


@login_required
@require_POST
def generate(request, slug):
    project, _ = _project_for(request, slug, admin=True)
    run = start_generate(project=project, user=request.user)
    messages.success(request, f"Generate run #{run.pk} queued: new candidates from the active policy.")
    return redirect(f"{reverse('training', args=[project.slug])}#run-{run.pk}")


def _log_source(run: TrainingRun, steps: list[TrainingRun]) -> TrainingRun | None:
    """Whose log tail a round's page shows: the running step, else the failed one, else the policy's
    training (the log people open a finished round for), else the last step with a log."""
    for state in (TrainingRun.State.RUNNING, TrainingRun.State.FAILED):
        hit = next((s for s in steps if s.state == state), None)
        if hit is not None:
            return hit
    policy = next((s for s in steps if s.kind in TrainingRun.POLICY_KINDS and s.log_tail), None)
    return policy or next((s for s in reversed(steps) if s.log_tail), None)


def _curves(run: TrainingRun, steps: list[TrainingRun]) -> list[dict]:
    """Sections of curves: the run's own, or for a round, one per step that logged any."""
    sections = []
    for source in steps or [run]:
        panels, figures = run_panels(source.metrics, id_prefix=f"run{source.pk}")
        if panels or figures:
            sections.append({"run": source, "panels": panels, "figures": figures})
    return sections


@login_required
@require_GET
def run_detail(request, run_id):
    run, role = _run_for(request, run_id)
    reap_stale_runs()
    run = ui_selectors.annotate(ui_selectors.run_with_steps(run.pk))
    steps = list(run.steps.all()) if run.kind == K.ROUND else []
    for step in steps:
        ui_selectors.annotate(step, siblings=steps)
    log_run = _log_source(run, steps) if steps else run
    decide_pending_gates(run.project)
    round_policy = _round_policy(run)
    context = {
        "project": run.project,
        "role": role,
        "is_admin": role == Membership.Role.ADMIN,
        "run": run,
        "steps": steps,
        "heldout": ui_selectors.heldout_round(round_policy) if round_policy is not None else None,
        "log_run": log_run,
        "sections": _curves(run, steps),
        "versions": [v for s in steps for v in s.versions.all()] + list(run.versions.all()),
        "result_items": sorted(ui_selectors.flat_metrics(run.result).items()),
        # A round's parameters by the launch form's labels; a step's engine config by the engine's names.
        "config_items": ui_selectors.readable_params(run.config) if run.kind == K.ROUND
        else [(k, ui_selectors.readable_value(v)) for k, v in run.config.items()],
        "snapshot_items": [(k, ui_selectors.readable_value(v)) for k, v in run.snapshot.items()],
        "kind_labels": dict(K.choices),
        "api_run": reverse("api-run", args=[run.pk]),
        "curves_url": reverse("run-curves", args=[run.pk]),
    }
    return render(request, "rlhf/run.html", context)


def _round_policy(run: TrainingRun) -> ModelVersion | None:
    """The new policy of the round ``run`` is (or belongs to), whose held-out evaluation its pages show."""
    round_id = run.pk if run.kind == K.ROUND else run.round_id
    if not round_id:
        return None
    return ModelVersion.objects.filter(run__round_id=round_id, kind=ModelVersion.Kind.POLICY).first()


@login_required
@require_GET
def run_curves(request, run_id):
    """The curves section alone, for the run page to swap in while the run trains."""
    run, _ = _run_for(request, run_id)
    run = ui_selectors.run_with_steps(run.pk)
    steps = list(run.steps.all()) if run.kind == K.ROUND else []
    return render(request, "rlhf/_curves.html", {"sections": _curves(run, steps), "run": run})


@login_required
@require_POST
def run_cancel(request, run_id):
    run, _ = _run_for(request, run_id, admin=True)
    target = cancel_run(run)
    messages.success(request, f"{target.get_kind_display()} #{target.pk} cancelled.")
    return redirect("run", run_id=target.pk)


@login_required
@require_POST
def run_resume(request, run_id):
    run, _ = _run_for(request, run_id, admin=True)
    try:
        target = resume_round(run.round or run)
    except LoopError as exc:
        messages.error(request, exc.message)
        return redirect("run", run_id=run.pk)
    messages.success(request, f"Round #{target.pk} resumed from its first unfinished step.")
    return redirect("run", run_id=target.pk)


@login_required
@require_POST
def version_activate(request, slug, version_id):
    project, _ = _project_for(request, slug, admin=True)
    version = get_object_or_404(ModelVersion, project=project, pk=version_id)
    try:
        activate_version(version)
    except LoopError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{version.label} is now the active {version.get_kind_display().lower()}.")
    return redirect(f"{reverse('training-versions', args=[slug])}#v-{slugify(version.label)}")


PROMPT_SETS = {"eval": "held-out prompts", "all": "all prompts, training ones included"}


@login_required
@require_GET
def versions(request, slug):
    project, role = _project_for(request, slug)
    decide_pending_gates(project)
    rows = ui_selectors.versions_for(project)
    for version in rows:
        version.ui_lineage = ui_selectors.lineage(version)
        version.ui_metrics = ui_selectors.key_metrics(version.metrics)
        version.ui_all_metrics = sorted(ui_selectors.flat_metrics(version.metrics).items())
    # The leaderboard compares versions on held-out prompts when people ranked any of them side by side.
    prompts = request.GET.get("prompts", "")
    board = leaderboard(project, split="eval") if prompts != "all" else []
    if not board and prompts != "eval":
        prompts, board = "all", leaderboard(project)
    else:
        prompts = "eval"
    labels = {v.label for v in rows}
    for row in board:
        row["is_version"] = row["source"] in labels
    sources = [r["source"] for r in board]
    a, b = request.GET.get("a", ""), request.GET.get("b", "")
    if not (a and b) and len(sources) >= 2:
        # By default the two newest policies, else the best-rated sources.
        policies = [v.label for v in rows if v.kind == "policy" and v.label in sources]
        a, b = list(dict.fromkeys(policies + sources))[:2]
    compare = None
    if a and b and a != b and a in sources and b in sources:
        compare = {
            **ui_selectors.head_to_head(project, a, b, split="eval" if prompts == "eval" else None),
            "expected": ui_selectors.expected_preference(board, a, b),
            "a_row": next(r for r in board if r["source"] == a),
            "b_row": next(r for r in board if r["source"] == b),
        }
    context = {
        "project": project,
        "role": role,
        "policies": [v for v in rows if v.kind == "policy"],
        "rewards": [v for v in rows if v.kind == "reward"],
        "heldout": ui_selectors.heldout_versions([v for v in rows if v.kind == "policy"]),
        "board": board,
        "prompts": prompts,
        "prompts_label": PROMPT_SETS[prompts],
        "prompt_sets": PROMPT_SETS,
        "board_chart": leaderboard_chart(board),
        "sources": sources,
        "compare": compare,
        "a": a,
        "b": b,
    }
    return render(request, "rlhf/versions.html", context)
