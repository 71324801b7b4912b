"""Answer 503 "try again" rather than 500 while the database is unreachable.

During a PostgreSQL restart (or a failover) every request that needs the database fails. That is not a
bug to report but a moment to wait: clients (the ranking page, API scripts) try again, and a submit is
safe to repeat under its client_uuid. The answer says so in the API's error shape, with Retry-After.
"""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        log.warning("%s %s: database unavailable (%s); answered 503", request.method, request.path, exception)
        detail = (f"The database is unavailable for a moment ({type(exception).__name__}); try again in a few "
                  "seconds. A submit sent again with the same client_uuid is stored once.")
        if request.path.startswith("/api/"):
            response = JsonResponse({"error": "unavailable", "detail": detail}, status=503)
        else:
            response = HttpResponse(detail, status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(RETRY_AFTER_S)
        return response
