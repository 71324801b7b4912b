"""Model instances from one hand-written query, without the ORM's per-query building cost.

``Model.objects.raw()`` re-derives columns and converters on every call; on the paths that run on
every queue request (token, project and role) that cost as much as the query itself. Here the column
list and the backend's value converters are worked out once per model.
"""

from __future__ import annotations

from functools import cache

from django.db import connection


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


def columns(model, alias: str) -> str:
    """The model's columns, qualified by ``alias``, for the SELECT list; ``fetch_one`` reads them first."""
    return _plan(model, connection.vendor)[0].format(alias=alias)


def fetch_one(model, sql: str, params, extra: tuple[str, ...] = ()):
    """Run ``sql`` (whose SELECT list starts with ``columns(model, alias)``, then ``extra`` columns) and
    return an instance of ``model`` with the extra columns as attributes, or None when no row matched."""
    _, names, converters = _plan(model, connection.vendor)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
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
