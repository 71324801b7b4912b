"""Server-rendered pages of the annotation app.

Views fetch, check the role, call one service (the same ones the REST API calls), and render. Pages
that act do so through the REST API (``annotation.api``) with the session and the CSRF header: the
ranking page leases, submits, skips and releases there, like any other client.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Count
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotation import charts, ui_selectors
from annotation.exceptions import AnnotationError, NotFound
from annotation.forms import ExportForm, MemberForm, ProjectForm
from annotation.models import ImportJob, Membership, Project, Ranking
from annotation.permissions import project_and_role
from annotation.selectors import annotator_progress, projects_for, queue_stats, role_in
from annotation.services import gold, projects, reviews
from annotation.services.imports import MODES
from annotation.services.quality import enqueue_quality_report, quality_report_for

REVIEW_PAGE = 25


def _project_for(request, slug: str, *, admin: bool = False) -> tuple[Project, str]:
    return project_and_role(request.user, slug, admin=admin)


# --- annotator pages -------------------------------------------------------------------------------


@login_required
def home(request):
    rows = [
        {"project": p, "role": role_in(request.user, p), "progress": annotator_progress(request.user, p)}
        for p in projects_for(request.user)
    ]
    return render(request, "annotation/home.html", {"rows": rows})


@login_required
@require_GET
def work(request, slug):
    """The ranking page. Everything it does after loading goes to the REST API with the session and
    the CSRF header: the task itself arrives by ``POST /api/projects/<slug>/next/`` (taking a lease is
    a write), each submit and skip answers with the next task (``?next=1``), and
    ``GET /api/projects/<slug>/upcoming/`` names the images to load ahead."""
    project, role = _project_for(request, slug)
    config = {
        "project": project.slug,
        "user": request.user.pk,  # keys the unsent rankings this browser keeps, so they never cross accounts
        "k": project.candidates_per_task,
        "leaseMinutes": project.lease_minutes,
        "urls": {
            "next": reverse("api-next-task", args=[project.slug]),
            "upcoming": reverse("api-upcoming", args=[project.slug]),
            "submit": reverse("api-submit", args=[0]),
            "skip": reverse("api-skip", args=[0]),
            "release": reverse("api-release", args=[0]),
            "home": reverse("home"),
        },
    }
    context = {
        "project": project,
        "role": role,
        "config": config,
        "instructions": ui_selectors.instructions_html(project),
        "progress": annotator_progress(request.user, project),
        "flags": list(Ranking.FLAGS.items()),
    }
    return render(request, "annotation/work.html", context)


# --- admin pages -----------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def project_new(request):
    if not request.user.is_staff:
        raise PermissionDenied("only staff users may create projects")
    form = ProjectForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            project = projects.project_create(created_by=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Project {project.name} created. Import images and candidates next.")
            return redirect("project-import", slug=project.slug)
    return render(request, "annotation/project_new.html", {"form": form})


@login_required
@require_http_methods(["GET", "POST"])
def project_settings(request, slug):
    """A project admin changes the project's settings (the same fields and checks as the API's PATCH,
    ``projects.project_update``): the queue's, the held-out fraction and the gold-task settings."""
    project, role = _project_for(request, slug, admin=True)
    form = ProjectForm(request.POST or None, instance=Project.objects.get(pk=project.pk), user=request.user)
    if request.method == "POST" and form.is_valid():
        changes = {name: form.cleaned_data[name] for name in form.changed_data if name in projects.EDITABLE}
        if "slug" in changes and not changes["slug"]:
            del changes["slug"]  # blank keeps the slug: it is in every URL of the project
        try:
            project = projects.project_update(project=project, user=request.user, **changes)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Settings of {project.name} saved." if changes else "Nothing changed.")
            return redirect("project-settings", slug=project.slug)
    return render(request, "annotation/project_settings.html", {"project": project, "role": role, "form": form})


@login_required
@require_GET
def dashboard(request, slug):
    project, role = _project_for(request, slug, admin=True)
    hourly = ui_selectors.rankings_per_hour(project)
    flags = ui_selectors.flag_counts(project)
    sources = ui_selectors.candidates_by_source(project)
    annotators = ui_selectors.annotator_table(project)
    # Agreement and reliability: the stored report only; a stale one is recomputed by a worker, never here.
    quality = quality_report_for(project)
    if quality.stale:
        enqueue_quality_report(project)
    figures = quality.report.data.get("annotators", {}) if quality.report is not None else {}
    for a in annotators:
        a["quality"] = figures.get(str(a["user_id"]))  # the report's JSON keys are user ids
    timeline = quality.report.data.get("timeline", []) if quality.report is not None else []
    step = quality.report.data.get("timeline_step", "day") if quality.report is not None else "day"
    gold_figures = gold.gold_report(project)
    # Members with something to show: a gold ranking, a warning or a pause (admins who never ranked are left out).
    gold_rows = [a for a in gold_figures["annotators"] if a["tasks"] or a["warned"] or a["paused"]]
    stats = queue_stats(project)
    queue_rows = [
        ("Open", stats["open"], f"{stats['open']:,}"),
        ("Fully leased", stats["leased"], f"{stats['leased']:,}"),
        ("Done", stats["done"], f"{stats['done']:,}"),
        ("Closed", stats["closed"], f"{stats['closed']:,}"),
    ]
    flag_rows = [(label, flags[name], f"{flags[name]:,}") for name, label in Ranking.FLAGS.items()]
    win_rows = [
        (s["source"], s["win_rate"] or 0.0, f"{s['win_rate']:.0%} of {s['won'] + s['lost']:,}" if s["win_rate"] is not None else "no pairs against other sources")
        for s in sources
    ]
    context = {
        "project": project,
        "role": role,
        "stats": stats,
        "annotators": annotators,
        "quality": quality,
        "gold": gold_figures,
        "gold_rows": gold_rows,
        "chart_agreement": charts.agreement_timeline(timeline, step=step) if timeline else "",
        "sources": sources,
        "flags": flags,
        "last_hours": sum(n for _, n in hourly[-24:]),
        "chart_hourly": charts.hourly_bars(hourly, title="Rankings per hour, last 48 hours (UTC)"),
        "chart_queue": charts.horizontal_bars(queue_rows, title="Tasks by state", chart_id="queue"),
        "chart_flags": charts.horizontal_bars(flag_rows, title="Flags raised", chart_id="flags"),
        "chart_sources": charts.horizontal_bars(
            win_rows, title="Share of pairs won, by candidate source", chart_id="sources", maximum=1.0
        ),
    }
    return render(request, "annotation/dashboard.html", context)


@login_required
@require_GET
def project_import(request, slug, import_id=None):
    """The upload goes straight from the browser to the API's import endpoint (upload progress); a worker
    imports, and the page follows the import through the API (progress bar, then the report). With
    ``import_id`` the page follows that import (the URL the page moves to once its upload is accepted)."""
    project, role = _project_for(request, slug, admin=True)
    job = get_object_or_404(ImportJob, pk=import_id, project=project) if import_id is not None else None
    context = {
        "project": project, "role": role, "modes": MODES, "api_url": reverse("api-import", args=[project.slug]),
        "import_url": reverse("api-import-detail", args=[project.slug, job.pk]) if job else "",
        "recent_imports": ImportJob.objects.filter(project=project).order_by("-created_at")[:10],
    }
    return render(request, "annotation/import.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def members(request, slug):
    project, role = _project_for(request, slug, admin=True)
    form = MemberForm(request.POST if request.method == "POST" and "remove" not in request.POST else None)
    if request.method == "POST":
        if "remove" in request.POST:
            membership = get_object_or_404(Membership, project=project, user__username=request.POST["remove"])
            projects.member_remove(project=project, user=membership.user)
            messages.success(request, f"{membership.user.username} removed from {project.name}.")
            return redirect("project-members", slug=project.slug)
        if form.is_valid():
            projects.member_set(project=project, user=form.cleaned_data["user"], role=form.cleaned_data["role"])
            messages.success(request, f"{form.cleaned_data['username']} is now {form.cleaned_data['role']} of {project.name}.")
            return redirect("project-members", slug=project.slug)
    rows = Membership.objects.filter(project=project).select_related("user").order_by("role", "user__username")
    return render(request, "annotation/members.html", {"project": project, "role": role, "form": form, "rows": rows})


@login_required
@require_POST
def readmit(request, slug, user_id):
    """A project admin re-admits a paused (or warned) annotator from the dashboard; back to the dashboard."""
    project, _ = _project_for(request, slug, admin=True)
    try:
        membership = gold.annotator_readmit(project=project, user=request.user, annotator_id=user_id)
    except NotFound as exc:
        raise Http404(exc.message) from None
    messages.success(request, f"{membership.user.username} may take tasks again; their gold accuracy counts afresh from now.")
    return redirect(f"{reverse('project-dashboard', args=[project.slug])}#gold-title")


@login_required
@require_GET
def export(request, slug):
    """The form submits (GET) straight to the API's streaming export endpoint; the browser downloads."""
    project, role = _project_for(request, slug, admin=True)
    form = ExportForm(sources=ui_selectors.sources_in(project))
    context = {
        "project": project,
        "role": role,
        "form": form,
        "api_url": reverse("api-export", args=[project.slug]),
        "stats": queue_stats(project),
        "quality": quality_report_for(project),
    }
    return render(request, "annotation/export.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def review(request, slug):
    """Project admins review rankings: the prompt and image, the annotator's order (ties shown), time
    spent, flags and rationale, and Accept / Reject (a plain form POSTing here, which calls
    ``reviews.ranking_review``). Rejected rankings leave every export and later training round.

    Filtered by review state; newest first or (``?order=disagreement``) least consensus first (the quality
    job's ``Ranking.consensus``). An accepted ranking can be made its task's gold ordering ("Make gold",
    ``gold.task_gold_from_ranking``)."""
    project, role = _project_for(request, slug, admin=True)
    state = request.GET.get("review", "")
    if state not in Ranking.Review.values:
        state = ""
    order = request.GET.get("order", "newest")
    if order not in reviews.ORDERS:
        order = "newest"
    query = "&".join(f"{k}={v}" for k, v in (("review", state), ("order", order if order != "newest" else "")) if v)
    if request.method == "POST":
        ranking_id = request.POST.get("ranking", "")
        if not ranking_id.isdigit():
            messages.error(request, "Which ranking? The form named none.")
        else:
            decision = request.POST.get("decision", "")
            try:
                if decision == "gold":
                    task = gold.task_gold_from_ranking(project=project, ranking_id=int(ranking_id), user=request.user)
                    done = f"Task {task.pk} is a gold task now, with ranking {ranking_id}'s order."
                else:
                    ranking = reviews.ranking_review(
                        ranking_id=int(ranking_id), project=project, reviewer=request.user,
                        decision=decision, note=request.POST.get("note", ""),
                    )
                    done = f"Ranking {ranking.pk} {ranking.get_review_display().lower()}."
            except NotFound as exc:
                raise Http404(exc.message) from None
            except AnnotationError as exc:
                if exc.status == 403:
                    raise PermissionDenied(exc.message) from None
                messages.error(request, exc.message)
            else:
                messages.success(request, done)
        return redirect(f"{reverse('project-review', args=[project.slug])}{'?' + query if query else ''}")
    rankings = reviews.rankings_for_review(project, review=state or None, order=order)
    page = Paginator(rankings, REVIEW_PAGE).get_page(
        request.GET.get("page")
    )
    counts = dict(
        Ranking.objects.filter(project=project).values_list("review").annotate(n=Count("id")).values_list("review", "n")
    )
    context = {
        "project": project,
        "role": role,
        "page": page,
        "rankings": reviews.with_candidates(page.object_list),
        "state": state,
        "order": order,
        "orders": reviews.ORDERS,
        "query": query,
        "states": [(value, label, counts.get(value, 0)) for value, label in Ranking.Review.choices],
        "total": sum(counts.values()),
        "flag_labels": Ranking.FLAGS,
    }
    return render(request, "annotation/review.html", context)


def healthz(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"ok": True})
