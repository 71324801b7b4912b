"""Server-rendered pages of the annotation app, and the JSON endpoints the ranking page talks to.

Views fetch, check the role, call one service (the same ones the REST API calls), and render. The
ranking page's JSON endpoints answer a submit or a skip together with the next task, in one round trip;
a separate read, made while the annotator works, names the images they will most likely see next so the
browser can load them meanwhile.
"""

from __future__ import annotations

import json
from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from rest_framework.exceptions import ValidationError as InvalidInput

from annotation import charts, ui_selectors
from annotation.api.serializers import SkipSerializer, parse_submit
from annotation.exceptions import AnnotationError
from annotation.forms import ExportForm, MemberForm, ProjectForm
from annotation.models import Membership, Project, RankingTask
from annotation.permissions import project_and_role
from annotation.selectors import annotator_progress, projects_for, queue_stats, role_in, task_payload
from annotation.services import projects, queue
from annotation.services.imports import MODES

# Pages hold no inline script and no inline style, so a candidate text that slipped through escaping
# still could not run: only our own files execute.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


def with_csp(view):
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response.headers.setdefault("Content-Security-Policy", CSP)
        return response

    return wrapper


def _project_for(request, slug: str, *, admin: bool = False) -> tuple[Project, str]:
    return project_and_role(request.user, slug, admin=admin)


# --- annotator pages -------------------------------------------------------------------------------


@login_required
@with_csp
def home(request):
    rows = [
        {"project": p, "role": role_in(request.user, p), "progress": annotator_progress(request.user, p)}
        for p in projects_for(request.user)
    ]
    return render(request, "annotation/home.html", {"rows": rows})


@login_required
@with_csp
@require_GET
def work(request, slug):
    """The ranking page. The task itself arrives by POST to ``work_next`` (taking a lease is a write)."""
    project, role = _project_for(request, slug)
    config = {
        "project": project.slug,
        "user": request.user.pk,  # keys the unsent rankings this browser keeps, so they never cross accounts
        "k": project.candidates_per_task,
        "leaseMinutes": project.lease_minutes,
        "prefetch": request.GET.get("prefetch", "1") != "0",
        "urls": {
            "next": reverse("work-next", args=[project.slug]),
            "ahead": reverse("work-ahead", args=[project.slug]),
            "submit": reverse("work-submit", args=[project.slug, 0]),
            "skip": reverse("work-skip", args=[project.slug, 0]),
            "apiNext": reverse("api-next-task", args=[project.slug]),
            "apiSubmit": reverse("api-submit", args=[0]),
            "apiSkip": reverse("api-skip", args=[0]),
            "apiRelease": reverse("api-release", args=[0]),
            "home": reverse("home"),
        },
    }
    context = {
        "project": project,
        "role": role,
        "config": config,
        "instructions": ui_selectors.instructions_html(project),
        "progress": annotator_progress(request.user, project),
        "flags": [("all_bad", "All bad"), ("unsafe", "Unsafe"), ("image_unclear", "Image unclear")],
    }
    return render(request, "annotation/work.html", context)


def _json_body(request) -> dict:
    try:
        body = json.loads(request.body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AnnotationError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise AnnotationError("the request body must be a JSON object")
    return body


def _error(status: int, code: str, detail) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status)


def json_endpoint(view):
    """Member check, JSON in and out, service errors as ``{"error", "detail"}`` like the REST API."""

    @wraps(view)
    def wrapper(request, slug, *args, **kwargs):
        if not request.user.is_authenticated:
            return _error(401, "not_authenticated", "your session ended; log in again (your work is still on screen)")
        try:
            project, _ = _project_for(request, slug)
            return view(request, project, *args, **kwargs)
        except PermissionDenied as exc:
            return _error(403, "forbidden", str(exc))
        except Http404:
            return _error(404, "not_found", "no such project or task")
        except AnnotationError as exc:
            return _error(exc.status, exc.code, exc.message)

    return wrapper


def _next_for(request, project: Project, *, ahead: bool) -> dict:
    """The annotator's next task (leased); with ``ahead``, also what ``work_ahead`` answers."""
    assignment = queue.next_task(annotator=request.user, project=project)
    body = {"task": task_payload(assignment) if assignment is not None else None}
    if ahead:
        body.update(_ahead(request, project, body["task"]["task_id"] if body["task"] else None))
    return body


def _ahead(request, project: Project, current_task_id: int | None) -> dict:
    upcoming = ui_selectors.upcoming_images(annotator=request.user, project=project, exclude_task_id=current_task_id)
    return {"upcoming": upcoming if current_task_id else [], "progress": annotator_progress(request.user, project)}


def _task_of(project: Project, task_id: int) -> RankingTask:
    task = RankingTask.objects.filter(pk=task_id, project=project).only("pk").first()
    if task is None:
        raise Http404
    return task


@require_POST
@json_endpoint
def work_next(request, project):
    return JsonResponse(_next_for(request, project, ahead=True))


@require_GET
@json_endpoint
def work_ahead(request, project):
    """What the page fetches while the annotator works on a task, off the submit's critical path: the
    images of the tasks likely to come next, and fresh progress figures."""
    current = request.GET.get("task")
    return JsonResponse(_ahead(request, project, int(current) if current and current.isdigit() else None))


@require_POST
@json_endpoint
def work_submit(request, project, task_id):
    """Submit a ranking (idempotent on client_uuid) and answer with the next task in the same response."""
    task = _task_of(project, task_id)
    try:
        values = parse_submit(_json_body(request))
    except InvalidInput as exc:
        return _error(400, "invalid", exc.detail)
    result = queue.submit_ranking(annotator=request.user, task_id=task.pk, **values)
    body = {"ranking": {"id": result.ranking.pk, "created": result.created}, **_next_for(request, project, ahead=False)}
    return JsonResponse(body, status=201 if result.created else 200)


@require_POST
@json_endpoint
def work_skip(request, project, task_id):
    task = _task_of(project, task_id)
    data = SkipSerializer(data=_json_body(request))
    if not data.is_valid():
        return _error(400, "invalid", data.errors)
    queue.skip_task(annotator=request.user, task_id=task.pk, reason=data.validated_data["reason"])
    return JsonResponse(_next_for(request, project, ahead=False))


# --- admin pages -----------------------------------------------------------------------------------


@login_required
@with_csp
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
@with_csp
@require_GET
def dashboard(request, slug):
    project, role = _project_for(request, slug, admin=True)
    hourly = ui_selectors.rankings_per_hour(project)
    flags = ui_selectors.flag_counts(project)
    sources = ui_selectors.candidates_by_source(project)
    annotators = ui_selectors.annotator_table(project)
    stats = queue_stats(project)
    queue_rows = [
        ("Open", stats["open"], f"{stats['open']:,}"),
        ("Fully leased", stats["leased"], f"{stats['leased']:,}"),
        ("Done", stats["done"], f"{stats['done']:,}"),
        ("Closed", stats["closed"], f"{stats['closed']:,}"),
    ]
    flag_rows = [
        ("All bad", flags["all_bad"], f"{flags['all_bad']:,}"),
        ("Unsafe", flags["unsafe"], f"{flags['unsafe']:,}"),
        ("Image unclear", flags["image_unclear"], f"{flags['image_unclear']:,}"),
    ]
    win_rows = [
        (s["source"], s["win_rate"] or 0.0, f"{s['win_rate']:.0%} of {s['won'] + s['lost']:,}" if s["win_rate"] is not None else "no pairs against other sources")
        for s in sources
    ]
    context = {
        "project": project,
        "role": role,
        "stats": stats,
        "annotators": annotators,
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
@with_csp
@require_GET
def project_import(request, slug):
    """The upload goes straight from the browser to the API's import endpoint (progress bar, report)."""
    project, role = _project_for(request, slug, admin=True)
    context = {"project": project, "role": role, "modes": MODES, "api_url": reverse("api-import", args=[project.slug])}
    return render(request, "annotation/import.html", context)


@login_required
@with_csp
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
@with_csp
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
    }
    return render(request, "annotation/export.html", context)


def healthz(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"ok": True})
