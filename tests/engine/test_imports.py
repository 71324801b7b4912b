"""Import rules: the engine never imports Django; the web tier's modules import neither torch nor
transformers."""

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "rlhf" / "engine"
ROOT = ENGINE.parents[1]


def test_no_engine_module_imports_django():
    """Static check of every import statement under rlhf/engine/."""
    offenders = []
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("django", "rest_framework")]
    assert not offenders, offenders


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_config_world_and_rewards_import_without_torch_or_transformers():
    mods = _modules_after("import rlhf.engine, rlhf.engine.config, rlhf.engine.demo.world, "
                          "rlhf.engine.rewards, rlhf.engine.demo.annotators")
    assert "torch" not in mods and "transformers" not in mods


def test_importing_the_whole_engine_pulls_in_no_django():
    mods = _modules_after("import rlhf.engine.cli, rlhf.engine.train_reward, rlhf.engine.sft, "
                          "rlhf.engine.reward_model, rlhf.engine.generation, rlhf.engine.evaluation, "
                          "rlhf.engine.demo.build, rlhf.engine.loading, rlhf.engine.rundir")
    assert not any(m == "django" or m.startswith("django.") for m in mods)
