"""docs/loop.md's tables of round parameters are generated from the round schema
(rlhf.engine.round.RoundConfig); `python -m tests.engine.test_round_docs` rewrites them."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from rlhf.engine import round as round_schema

DOC = Path(__file__).resolve().parents[2] / "docs" / "loop.md"
TABLES = {"form": (round_schema.MAIN, round_schema.ALGORITHM, round_schema.MORE), "engine": (round_schema.ADVANCED,)}


def _default(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return f"`{json.dumps(value)}`" if isinstance(value, bool | list | str) else str(value)


def render_table(name: str) -> str:
    rows = ["| field | default | meaning |", "|---|---|---|"]
    for f in round_schema.fields():
        if f.metadata["group"] in TABLES[name]:
            field = f"{f.metadata['label']} (`{f.name}`)" if name == "form" else f"`{f.name}`"
            rows.append(f"| {field} | {_default(f.default if f.default_factory is dataclasses.MISSING else f.default_factory())} "
                        f"| {f.metadata['help']} |")
    return "\n".join(rows)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- round parameters: {name} (python -m tests.engine.test_round_docs) -->", f"<!-- end of {name} -->"


@pytest.mark.parametrize("name", list(TABLES))
def test_the_parameter_tables_of_the_docs_are_the_schema(name):
    begin, end = _markers(name)
    text = DOC.read_text()
    assert begin in text and end in text, f"docs/loop.md lacks the {name} table's markers"
    shown = text.split(begin)[1].split(end)[0].strip()
    assert shown == render_table(name), "the round schema changed: run `python -m tests.engine.test_round_docs`"


if __name__ == "__main__":
    text = DOC.read_text()
    for name in TABLES:
        begin, end = _markers(name)
        before, rest = text.split(begin)
        text = before + begin + "\n" + render_table(name) + "\n" + end + rest.split(end)[1]
    DOC.write_text(text)
    sys.stdout.write(f"wrote the round parameter tables into {DOC}\n")
