"""Errors the annotation services raise; the API and the pages turn them into HTTP answers."""

from lensloop.errors import ServiceError


class AnnotationError(ServiceError):
    """Base class of the annotation services' errors (``status``, ``code``, ``message``, ``details``)."""


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
