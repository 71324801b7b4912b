"""A demo project whose policy is the tiny test model, ranked by simulated annotators.

Its promotion gate is off: these tests are about the mechanics of rounds, and a round's tiny-budget
policy then always becomes active. tests/loop/test_gate.py turns the gate on.
"""

import pytest

from annotation.services.imports import import_bundle
from rlhf.engine.demo import world
from rlhf.services import loop_settings_set
from rlhf.simulate import simulate
from tests import factories as f

FAST_ROUND = {"policy_steps": 3, "reward_epochs": 1.0, "generate_prompts": 6, "lora_r": 4}


@pytest.fixture
def loop_project(tiny_model_path, tmp_path):
    alice = f.user("alice", is_staff=True)
    proj = f.project("loop", k=4, admins=[alice])
    proj.base_model = str(tiny_model_path)
    proj.save(update_fields=["base_model"])
    world.write_demo_manifest(tmp_path / "bundle", n=30, seed=5, k=4, eval_fraction=0.2)
    import_bundle(project=proj, path=tmp_path / "bundle")
    loop_settings_set(project=proj, promotion_gate="off")
    simulate(proj, annotators=2, noise=0.1, limit=16)
    return proj

