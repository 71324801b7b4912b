"""Turn errors into HTTP answers of one shape: ``{"error": code, "detail": message, ...details}``.

Service errors (``lensloop.errors.ServiceError``: the annotation services' and the loop's) carry their
own status, code and details, and are answered here only; a Django ``ValidationError`` from a service answers
like a serializer's. DRF's own errors are brought into the same shape:
a validation error answers ``{"error": "invalid", "detail": "field: message; ...", "fields": {field:
[messages]}}`` (DRF's field map kept under ``fields``), and the others (401, 403, 404, 405, 415, 429,
a body that does not parse) keep DRF's ``detail`` sentence and gain its code as ``error``
(``not_authenticated``, ``permission_denied``, ``not_found``, ...).
"""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler

from lensloop.errors import ServiceError


def _jsonable(value):
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return value


def _sentence(detail, prefix: str = "") -> str:
    """DRF's nested error detail as one readable line: ``client_uuid: Must be a valid UUID.``"""
    if isinstance(detail, dict):
        parts = [_sentence(value, f"{prefix}{key}" if key != "non_field_errors" else prefix) for key, value in detail.items()]
        return "; ".join(part for part in parts if part)
    if isinstance(detail, list):
        if any(isinstance(item, dict | list) for item in detail):
            return "; ".join(_sentence(item, f"{prefix}[{i}]" if prefix else f"[{i}]") for i, item in enumerate(detail) if item)
        return (f"{prefix}: " if prefix else "") + " ".join(str(item) for item in detail)
    return (f"{prefix}: " if prefix else "") + str(detail)


def _code(exc) -> str:
    if isinstance(exc, Http404):
        return "not_found"
    if isinstance(exc, DjangoPermissionDenied):
        return "permission_denied"
    codes = exc.get_codes() if isinstance(exc, APIException) else None
    return codes if isinstance(codes, str) else getattr(exc, "default_code", "error")


def exception_handler(exc, context):
    if isinstance(exc, ServiceError):
        body = {"error": exc.code, "detail": exc.message}
        body.update({key: _jsonable(value) for key, value in exc.details.items()})
        return Response(body, status=exc.status)
    if isinstance(exc, DjangoValidationError):  # a service's full_clean or check, as a serializer's would be
        exc = ValidationError(as_serializer_error(exc))
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # not an API error: a 500, as Django reports it
    if isinstance(exc, ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        response.data = {"error": "invalid", "detail": _sentence(exc.detail), "fields": fields}
    elif isinstance(response.data, dict) and "detail" in response.data:
        response.data = {"error": _code(exc), **response.data}
    return response
