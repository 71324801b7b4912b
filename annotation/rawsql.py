"""Hand-written queries for the paths that run on every queue request.

``execute`` runs a statement as a prepared statement on PostgreSQL; ``fetch_one`` builds a model
instance from one query. ``Model.objects.raw()`` re-derives columns and converters on every call,
which cost as much as the query itself; here they are worked out once per model.
"""

from __future__ import annotations

from functools import cache

from django.db import connection

try:
    import psycopg
except ImportError:  # SQLite-only installs
    psycopg = None


@cache
def _plan(model, vendor: str) -> tuple[str, list[str], list[tuple[int, list]]]:
    fields = list(model._meta.concrete_fields)
    columns = ", ".join(f"{{alias}}.{connection.ops.quote_name(f.column)}" for f in fields)
    converters = []
    for i, f in enumerate(fields):
        found = connection.ops.get_db_converters(f.get_col(model._meta.db_table)) + f.get_db_converters(connection)
        if found:
            converters.append((i, found))
    return columns, [f.attname for f in fields], converters


def execute(sql: str, params):
    """A cursor that ran ``sql`` on Django's connection, inside its current transaction.

    On PostgreSQL the statement is prepared: Django's own cursors bind parameters on the client, which
    rules out prepared statements, so PostgreSQL would plan a statement on every call (the queue's lease
    statement took longer to plan than to run). Errors come out as Django's (IntegrityError, ...)."""
    if connection.vendor != "postgresql":
        cursor = connection.cursor()
        cursor.execute(sql, params)
        return cursor
    # Django's own cursors run the CONN_HEALTH_CHECKS check first; this cursor must too, or a kept
    # connection that died with a PostgreSQL restart answers the next request with an error (the token
    # lookup is the first query of every API request).
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        cursor = psycopg.Cursor(connection.connection)
        cursor.execute(sql, params, prepare=True)
    return cursor


def columns(model, alias: str) -> str:
    """The model's columns, qualified by ``alias``, for the SELECT list; ``fetch_one`` reads them first."""
    return _plan(model, connection.vendor)[0].format(alias=alias)


def fetch_one(model, sql: str, params, extra: tuple[str, ...] = ()):
    """Run ``sql`` (whose SELECT list starts with ``columns(model, alias)``, then ``extra`` columns) and
    return an instance of ``model`` with the extra columns as attributes, or None when no row matched."""
    _, names, converters = _plan(model, connection.vendor)
    with execute(sql, params) as cursor:
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row[: len(names)])
    for i, funcs in converters:
        value = values[i]
        for func in funcs:
            value = func(value, None, connection)
        values[i] = value
    instance = model.from_db(connection.alias, names, values)
    for name, value in zip(extra, row[len(names):], strict=True):
        setattr(instance, name, value)
    return instance
