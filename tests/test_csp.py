"""Every HTML page sends the one Content-Security-Policy (lensloop/csp.py, through django-csp's middleware):
a page cannot forget it. Every GET route of the app is visited, as a superuser who may see everything."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from lensloop import csp
from rlhf.models import ModelVersion
from tests import factories as f
from tests.rlhf.helpers import fake_round, rank

pytestmark = pytest.mark.django_db


def _directives(header: str) -> dict[str, set[str]]:
    parts = [p.split() for p in header.split(";") if p.strip()]
    return {p[0]: set(p[1:]) for p in parts}


def _routes(resolver=None, prefix: str = ""):
    for entry in (resolver or get_resolver()).url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            if not route.startswith("admin/"):
                yield from _routes(entry, route)
        elif isinstance(entry, URLPattern):
            yield route


@pytest.fixture
def world(settings):
    settings.LENSLOOP_WORKERS_HAVE_CUDA = False
    root, bob = f.user("root", is_staff=True, is_superuser=True), f.user("bob")
    proj = f.project("shapes", k=4, admins=[root], annotators=[bob])
    rank(proj, bob, 3)
    run = fake_round(proj, root)
    version = ModelVersion.objects.filter(project=proj).first()
    task = proj.tasks.first()
    return {"root": root, "values": {"slug": "shapes", "run_id": run.pk, "version_id": version.pk, "task_id": task.pk}}


def test_every_html_page_sends_the_policy(world):
    client = Client()
    client.force_login(world["root"])
    expected = {name: set(values) for name, values in csp.DIRECTIVES.items()}
    pages = []
    for route in [*sorted(set(_routes())), "admin/", "admin/rlhf/trainingrun/", "admin/annotation/project/"]:
        path = "/" + route
        for name, value in world["values"].items():
            for converter in ("slug", "int"):
                path = path.replace(f"<{converter}:{name}>", str(value))
        if "<" in path or "(?P" in path:
            continue
        response = client.get(path)
        if not response.get("Content-Type", "").startswith("text/html"):
            continue
        pages.append(path)
        header = response.get("Content-Security-Policy")
        assert header, f"{path} sent no Content-Security-Policy"
        directives = _directives(header)
        if path == "/api/docs/":  # the one relaxation: Swagger UI's inline styles
            assert directives["style-src"] == {"'self'", "'unsafe-inline'"}
            assert directives["script-src"] == {"'self'"}
            directives["style-src"] = expected["style-src"]
        assert directives == expected, path
    # The main pages of both apps were among them.
    for page in ("/", "/projects/shapes/work/", "/projects/shapes/training/", "/projects/shapes/training/versions/",
                 f"/runs/{world['values']['run_id']}/", "/api/docs/", "/admin/"):
        assert page in pages
