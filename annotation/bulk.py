"""Fast bulk inserts on PostgreSQL: ids reserved from the table's sequence, rows sent with COPY.

``bulk_create`` builds one INSERT per batch and costs most of an import's time at a million tasks;
COPY is several times faster. Ids come from ``nextval`` of the table's own sequence, so concurrent
inserts through the ORM never collide with them.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection


def fast_path() -> bool:
    return connection.vendor == "postgresql"


def reserve_ids(table: str, n: int) -> list[int]:
    if n == 0:
        return []
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
        (sequence,) = cursor.fetchone()
        # The sequence's name as a constant: inside the SELECT list pg_get_serial_sequence ran per id.
        cursor.execute("SELECT nextval(%s::regclass) FROM generate_series(1, %s)", [sequence, n])
        return [row[0] for row in cursor.fetchall()]


# COPY's text format: backslash, tab, newline and carriage return are escaped; NULL is \N.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_CHUNK = 1 << 17
NULL = "\\N"


def text(value: str | None) -> str:
    """A text (or JSON-as-text) value in COPY text format."""
    return NULL if value is None else value.translate(_ESCAPES)


def copy_lines(table: str, columns: list[str], lines: Iterable[str]) -> None:
    """COPY ``lines`` into ``table``: each a row in COPY text format (tab-separated, values escaped with
    ``text()``, ending in a newline), in ``columns`` order.

    Callers format whole lines with f-strings, and the data goes out in 128 kB chunks so that the server
    stores rows while the next ones are formatted: psycopg's per-value ``write_row`` cost several times
    more Python time than the server takes to store the row."""
    quoted = ", ".join(connection.ops.quote_name(c) for c in columns)
    with connection.cursor() as cursor:
        raw = cursor.cursor  # the psycopg cursor under Django's wrapper
        with raw.copy(f"COPY {connection.ops.quote_name(table)} ({quoted}) FROM STDIN") as copy:
            buffer: list[str] = []
            size = 0
            for line in lines:
                buffer.append(line)
                size += len(line)
                if size >= _CHUNK:
                    copy.write("".join(buffer).encode())
                    buffer, size = [], 0
            if buffer:
                copy.write("".join(buffer).encode())
