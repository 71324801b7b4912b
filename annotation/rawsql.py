"""Hand-written SQL on PostgreSQL for the paths that run on every queue request, through public APIs.

``execute`` runs a statement as a prepared statement. ``fetch_one`` builds a model instance from one
row with ``Model.from_db``; it serves models whose fields psycopg already returns as the model holds
them (``plain``), so no database converter is involved. Token auth and the project-role check use it
on PostgreSQL, the queue's PostgreSQL implementation (``services/queue/postgres.py``) uses ``execute``.
Elsewhere, and for models with other fields, callers take the ORM. Why it exists: on PostgreSQL the
ORM's query building and an unprepared statement cost about 0.6 ms per lookup, several times the
prepared statement (docs/benchmarks.md, "Annotation queue and serving").
"""

from __future__ import annotations

from functools import cache

from django.db import connection

try:
    import psycopg
except ImportError:  # SQLite-only installs
    psycopg = None

# Field types psycopg returns exactly as a model instance holds them (timestamps arrive timezone-aware).
_PLAIN_TYPES = frozenset({
    "AutoField", "BigAutoField", "SmallAutoField", "BooleanField", "CharField", "SlugField", "EmailField",
    "TextField", "IntegerField", "SmallIntegerField", "BigIntegerField", "PositiveIntegerField",
    "PositiveSmallIntegerField", "PositiveBigIntegerField", "FloatField", "DateTimeField", "ForeignKey",
})


@cache
def concrete_fields(model) -> tuple:
    """The model's fields that are columns of its table, in the order ``Model.from_db`` expects."""
    return tuple(f for f in model._meta.get_fields() if getattr(f, "concrete", False) and not f.many_to_many)


def field_order(model) -> tuple[str, ...]:
    return tuple(f.attname for f in concrete_fields(model))


def plain(model) -> bool:
    """Whether ``fetch_one`` can build ``model``: on PostgreSQL, every field a plain type."""
    return connection.vendor == "postgresql" and _all_plain(model)


@cache
def _all_plain(model) -> bool:
    return all(f.get_internal_type() in _PLAIN_TYPES for f in concrete_fields(model))


def columns(model, alias: str) -> str:
    """The model's columns, qualified by ``alias``, for the SELECT list; ``fetch_one`` reads them first."""
    return ", ".join(f"{alias}.{connection.ops.quote_name(f.column)}" for f in concrete_fields(model))


def execute(sql: str, params):
    """A cursor that ran ``sql`` on Django's connection, inside its current transaction.

    On PostgreSQL the statement is prepared: Django's own cursors bind parameters on the client, which
    rules out prepared statements, so PostgreSQL would plan a statement on every call (the queue's lease
    statement took longer to plan than to run). Errors come out as Django's (IntegrityError, ...)."""
    if connection.vendor != "postgresql":
        cursor = connection.cursor()
        cursor.execute(sql, params)
        return cursor
    # Opening a Django cursor runs the CONN_HEALTH_CHECKS check and connects; this cursor must have both,
    # or a kept connection that died with a PostgreSQL restart answers the next request with an error
    # (the token lookup is the first query of every API request). Its psycopg connection is Django's.
    with connection.cursor() as django_cursor:
        session = django_cursor.connection
    with connection.wrap_database_errors:  # psycopg's errors as Django's
        cursor = psycopg.Cursor(session)
        cursor.execute(sql, params, prepare=True)
    return cursor


def fetch_one(model, sql: str, params, extra: tuple[str, ...] = ()):
    """Run ``sql`` (whose SELECT list starts with ``columns(model, alias)``, then ``extra`` columns) and
    return an instance of ``model`` with the extra columns as attributes, or None when no row matched.
    Only for ``plain(model)``."""
    names = field_order(model)
    with execute(sql, params) as cursor:
        row = cursor.fetchone()
    if row is None:
        return None
    instance = model.from_db(connection.alias, names, row[: len(names)])
    for name, value in zip(extra, row[len(names):], strict=True):
        setattr(instance, name, value)
    return instance
