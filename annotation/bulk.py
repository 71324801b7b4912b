"""Fast bulk writes on PostgreSQL: rows sent with COPY in text format, sequences named once.

``bulk_create`` builds one INSERT per batch and costs most of an import's time at a million tasks;
COPY is several times faster. The import (``annotation.services.imports``) COPYs into a staging table
and writes the real tables from it in one statement, whose ids come from the tables' own sequences, so
concurrent inserts through the ORM never collide with them.
"""

from __future__ import annotations

from django.db import connection


def fast_path() -> bool:
    return connection.vendor == "postgresql"


def sequence(table: str) -> str:
    """The name of ``table``'s id sequence, to pass as a constant (``%s::regclass``): inside a SELECT
    list ``pg_get_serial_sequence`` ran once per row."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
        return cursor.fetchone()[0]


# COPY's text format: backslash, tab, newline and carriage return are escaped; NULL is \N.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_CHUNK = 1 << 17
NULL = "\\N"


def text(value: str | None) -> str:
    """A text (or JSON-as-text) value in COPY text format."""
    return NULL if value is None else value.translate(_ESCAPES)


def copy_data(table: str, columns: list[str], data: bytes) -> None:
    """COPY ``data`` into ``table``: rows in COPY text format (tab-separated, values escaped with
    ``text()``, each ending in a newline), in ``columns`` order, sent in 128 kB chunks.

    Callers format whole lines with f-strings: psycopg's per-value ``write_row`` cost several times more
    Python time than the server takes to store the row."""
    quoted = ", ".join(connection.ops.quote_name(c) for c in columns)
    with connection.cursor() as cursor:
        raw = cursor.cursor  # the psycopg cursor under Django's wrapper
        with raw.copy(f"COPY {connection.ops.quote_name(table)} ({quoted}) FROM STDIN") as copy:
            view = memoryview(data)
            for start in range(0, len(view), _CHUNK):
                copy.write(view[start : start + _CHUNK])
