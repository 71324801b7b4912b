"""The Content-Security-Policy of every response, sent by django-csp's middleware
(``csp.middleware.CSPMiddleware``, ``settings.CONTENT_SECURITY_POLICY``), so a page cannot forget it.

Pages hold no inline script and no inline style, so a candidate text that slipped through escaping
still could not run: only our own files execute. The one relaxation is the API docs page (``API_DOCS``).
"""

from __future__ import annotations

from csp.constants import NONE, SELF, UNSAFE_INLINE

DIRECTIVES = {
    "default-src": [SELF],
    "script-src": [SELF],
    "style-src": [SELF],
    "img-src": [SELF, "data:", "blob:"],
    "object-src": [NONE],
    "base-uri": [SELF],
    "form-action": [SELF],
    "frame-ancestors": [NONE],
}

# /api/docs/: Swagger UI writes an inline <style> and style attributes. Its script is served as a file
# (SpectacularSwaggerSplitView), so script-src stays 'self' there too.
API_DOCS = {"style-src": [SELF, UNSAFE_INLINE]}

