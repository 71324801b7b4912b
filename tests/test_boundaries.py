"""The boundaries of DESIGN.md, checked: the web tier never imports torch or transformers, and the
annotation app imports nothing from rlhf."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WEB_MODULES = [
    "lensloop.urls", "lensloop.wsgi", "annotation.api.views", "annotation.views", "annotation.jobs",
    "rlhf.api", "rlhf.services", "rlhf.steps", "rlhf.jobs", "rlhf.runner", "rlhf.simulate", "rlhf.leaderboard",
    "rlhf.gate", "rlhf.views", "rlhf.engine.config", "rlhf.engine.demo.world", "rlhf.engine.rewards",
    "lensloop.stats", "rlhf.engine.heldout", "rlhf.engine.round", "lensloop.formats", "lensloop.errors",
]


def test_the_web_tier_imports_no_torch_and_no_transformers():
    code = (
        "import os, sys, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'lensloop.settings'); django.setup()\n"
        "import importlib\n"
        f"for m in {WEB_MODULES!r}: importlib.import_module(m)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the web tier imported {out.stdout.strip()}"


def test_the_annotation_app_imports_nothing_from_rlhf():
    offenders = []
    for path in (ROOT / "annotation").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "rlhf" or n.startswith("rlhf.")]
    assert not offenders, offenders


SHARED = ("lensloop.formats", "lensloop.stats")  # stdlib-only modules both sides read


def test_the_engine_takes_only_the_file_formats_from_the_django_project():
    """The engine imports no Django; of the project's own packages it may read only ``lensloop.formats``
    (TRL's conversational rows, shared with the export) and ``lensloop.stats`` (intervals, shared with the
    pages and the annotation app), which are stdlib only."""
    offenders = []
    for path in (ROOT / "rlhf" / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module + "." + a.name for a in node.names]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in ("lensloop", "annotation") and n.rsplit(".", 1)[0] not in SHARED
                          and n not in SHARED]
    assert not offenders, offenders
    for module in SHARED:
        tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert imported <= {"__future__", "math", "random", "collections.abc"}, (module, imported)
