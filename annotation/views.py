"""Server-rendered pages of the annotation app."""

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import render

from annotation.selectors import annotator_progress, projects_for, role_in


@login_required
def home(request):
    rows = [
        {"project": p, "role": role_in(request.user, p), "progress": annotator_progress(request.user, p)}
        for p in projects_for(request.user)
    ]
    return render(request, "annotation/home.html", {"rows": rows})


def healthz(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"ok": True})
