"""Errors the annotation services raise; the API and the pages turn them into HTTP answers."""


class AnnotationError(Exception):
    """Base class. ``status`` is the HTTP status the web layer answers with; ``code`` is stable."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRanking(AnnotationError):
    """The ordering does not cover exactly the task's candidates, or is malformed."""

    code = "invalid_ranking"


class LeaseLost(AnnotationError):
    """The annotator no longer holds the task (expired and reassigned, skipped, closed, never taken)."""

    status = 409
    code = "lease_lost"


class AlreadyRanked(AnnotationError):
    status = 409
    code = "already_ranked"


class ImportRejected(AnnotationError):
    """An all-or-nothing import met problems; nothing was written. ``details['report']`` lists them."""

    code = "import_rejected"


class NotFound(AnnotationError):
    status = 404
    code = "not_found"
