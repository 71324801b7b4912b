"""The interactive API documentation at /api/docs/ in a real browser with no network beyond the app:
Swagger UI's files come from our own static files (drf-spectacular-sidecar), not from a CDN.

Personas (see conftest.world): bob annotates project "shapes".
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import login

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_api_docs_render_their_operations_offline(page, live_server, world):
    """Every request that leaves the live server is refused, as on a machine without internet."""
    ours = urlsplit(live_server.url).netloc
    outside: list[str] = []

    def offline(route):
        if urlsplit(route.request.url).netloc == ours:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    page.route("**/*", offline)
    login(page, live_server, "bob")
    page.goto(f"{live_server.url}/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("lensloop API")
    operation = page.locator(".opblock-summary-path", has_text="/api/projects/{slug}/next/")
    expect(operation.first).to_be_visible()
    assert page.locator(".opblock").count() > 20
    assert outside == [], f"the docs page asked the internet for {outside}"
