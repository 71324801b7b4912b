"""Turn service errors into HTTP answers: ``{"error": code, "detail": message, ...details}``."""

from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from annotation.exceptions import AnnotationError


def _jsonable(value):
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return value


def exception_handler(exc, context):
    if isinstance(exc, AnnotationError):
        body = {"error": exc.code, "detail": exc.message}
        body.update({key: _jsonable(value) for key, value in exc.details.items()})
        return Response(body, status=exc.status)
    return drf_exception_handler(exc, context)
