"""The engine's layers: the library (every module of rlhf/engine/ but the CLI) never imports the demo world
(rlhf/engine/demo/), which builds on it and registers its rewards, metrics and model into the library's
registries; and no two engine modules import each other, at module level or inside a function."""

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "rlhf" / "engine"
ROOT = ENGINE.parents[1]
APPLICATION = {"rlhf.engine.cli", "rlhf.engine.__main__"}  # the command line wires library and demo together
# Known exceptions, each a reason: BuildDemoConfig (the demo build's config, in config.py) checks its label noise
# against the world's words.
ALLOWED_DEMO_IMPORTS = {("rlhf.engine.config", "rlhf.engine.demo"), ("rlhf.engine.config", "rlhf.engine.demo.world")}
ALLOWED_CYCLES = [{"rlhf.engine.config", "rlhf.engine.rl_config"}]  # being reworked (issue 15)


def _name(path: Path) -> str:
    parts = ["rlhf", "engine", *path.relative_to(ENGINE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in ENGINE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Engine modules that `path` imports anywhere (module level or inside functions)."""
    name = _name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            candidates = [target, *(f"{target}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        out |= {c for c in candidates if c in MODULES and c != name}
    return out


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _library() -> list[str]:
    return sorted(m for m in MODULES if not m.startswith("rlhf.engine.demo") and m not in APPLICATION)


def test_no_library_module_imports_the_demo():
    offenders = [(m, d) for m in _library() for d in sorted(GRAPH[m])
                 if d.startswith("rlhf.engine.demo") and (m, d) not in ALLOWED_DEMO_IMPORTS]
    assert not offenders, f"library modules importing the demo (register into a library registry instead): {offenders}"


def test_importing_the_whole_library_loads_no_demo_module():
    code = f"import sys\nfor m in {_library()!r}: __import__(m)\nprint(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    demo = sorted(m for m in out.stdout.split() if m.startswith("rlhf.engine.demo"))
    assert not demo, f"importing the library loaded {demo}"


def test_the_engine_modules_import_each_other_without_a_cycle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(component)

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert [c for c in cycles if c not in ALLOWED_CYCLES] == []


def test_the_reward_names_resolve_through_the_demos_registration():
    code = ("import sys\nfrom rlhf.engine.rewards import REWARDS\nassert 'rlhf.engine.demo.rewards' not in sys.modules\n"
            "assert 'demo_reward' in REWARDS and 'rlhf.engine.demo.rewards' in sys.modules\n"
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
