"""The one base class of the errors services raise, in both apps.

A service raises a subclass (``annotation.exceptions.AnnotationError``, ``rlhf.services.LoopError``);
the REST API's exception handler (``annotation.api.errors.exception_handler``) answers every one of them
the same way, ``{"error": code, "detail": message, ...details}`` with its ``status``, so no view
catches them itself; the HTML pages show ``message``.
"""


class ServiceError(Exception):
    """``status`` is the HTTP status the web layer answers with; ``code`` is stable, for clients."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details
