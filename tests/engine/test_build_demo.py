"""The demo builder: label noise, its cache key, the shipped demo base and its checksums, one build at a
time (the training itself runs in test_cli and the fixtures)."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.engine.config import BuildDemoConfig
from rlhf.engine.demo import world
from rlhf.engine.demo.build import (
    SHIPPED_DIR,
    DemoModelError,
    LabelNoise,
    config_hash,
    ensure_demo_model,
    ship,
    shipped_build,
)

ROOT = Path(__file__).resolve().parents[2]


def test_label_noise_rewrites_the_true_word_at_its_rate_and_nothing_else():
    rng = random.Random(0)
    scenes = [world.make_scene(rng)[1] for _ in range(400)]
    noise = LabelNoise([["purple", "blue", 0.7], ["diamond", "square", 1.0]])
    purple = swapped = 0
    for gt in scenes:
        said = world.parse_caption(noise.caption(gt, rng))["objects"]
        truth = [(o["size"], o["color"], o["shape"]) for o in gt["objects"]]
        assert len(said) == len(truth)
        for (size, color, shape), (t_size, t_color, t_shape) in zip(said, truth, strict=True):
            assert size == t_size
            assert shape == ("square" if t_shape == "diamond" else t_shape)
            if t_color == "purple":
                purple += 1
                swapped += color == "blue"
            else:
                assert color == t_color
    assert purple > 50 and 0.55 < swapped / purple < 0.85
    assert noise.answer("diamond", rng) == "square" and noise.answer("two", rng) == "two"
    assert not LabelNoise([])


def test_the_cache_key_is_the_model_not_how_the_config_was_written():
    from rlhf.engine.demo import TINY_BUILD

    tiny = BuildDemoConfig(**TINY_BUILD)
    # Clean builds keep the folder names they had before the noise fields existed.
    assert config_hash(tiny) == "4573f490f4c2"
    assert config_hash(BuildDemoConfig(**{**TINY_BUILD, "budget_seconds": 0.0, "threads": 2})) == config_hash(tiny)
    assert config_hash(BuildDemoConfig(**{**TINY_BUILD, "label_noise": [["purple", "blue", 0.7]]})) != config_hash(tiny)
    assert config_hash(BuildDemoConfig(**{**TINY_BUILD, "omit_objects": 0.1})) != config_hash(tiny)


def test_omitted_and_hallucinated_objects_appear_at_their_rates():
    rng = random.Random(1)
    scenes = [world.make_scene(rng)[1] for _ in range(2000)]
    noise = LabelNoise([], omit=0.3, extra=0.2)
    fewer = more = could_omit = could_add = 0
    for gt in scenes:
        said = world.parse_caption(noise.caption(gt, rng))
        truth = [(o["size"], o["color"], o["shape"]) for o in gt["objects"]]
        assert said["count"] == len(said["objects"]), "the count word agrees with the objects it lists"
        could_omit += len(truth) >= 2
        could_add += len(truth) < world.MAX_OBJECTS
        if len(said["objects"]) < len(truth):
            fewer += 1
            assert len(truth) - len(said["objects"]) == 1 and all(o in truth for o in said["objects"])
        elif len(said["objects"]) > len(truth):
            more += 1
            assert len(said["objects"]) - len(truth) == 1 and all(o in said["objects"] for o in truth)
        else:
            assert said["objects"] == truth
    assert 0.25 < fewer / could_omit < 0.35 and 0.15 < more / could_add < 0.25, (fewer, could_omit, more, could_add)


SMALL = {"steps": 2, "train_images": 32, "eval_images": 1, "warmup_steps": 1, "text_layers": 1, "vision_layers": 1,
         "vision_hidden": 32, "text_hidden": 32, "patch_size": 16, "image_size": 32, "heads": 2, "budget_seconds": 0}


def test_a_shipped_build_is_used_as_it_is_and_a_damaged_one_refused(tmp_path):
    cfg = BuildDemoConfig(**SMALL)
    built = ensure_demo_model(cfg, tmp_path / "cache", shipped=None)
    shipped = ship(built, tmp_path / "shipped")
    assert (shipped / "SHA256SUMS").is_file() and (shipped / "model.safetensors").is_file()
    assert ensure_demo_model(cfg, tmp_path / "elsewhere", shipped=shipped) == shipped
    assert not (tmp_path / "elsewhere" / "models").exists(), "a shipped build is never built again"
    other = BuildDemoConfig(**{**SMALL, "seed": 1})
    assert shipped_build(other, shipped) is None, "another config's build is not this one"
    weights = shipped / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"x")
    with pytest.raises(DemoModelError, match=r"model.safetensors does not match its checksum.*build-demo --ship-to"):
        ensure_demo_model(cfg, tmp_path / "elsewhere", shipped=shipped)


def test_the_shipped_demo_base_is_the_default_build_and_matches_its_checksums():
    """The demo base in the repository is what `build-demo` with the defaults builds, intact; loading 'demo'
    finds it without building anything."""
    from rlhf.engine.loading import resolve_model_path

    info = json.loads((SHIPPED_DIR / "build.json").read_text())
    assert info["hash"] == config_hash(BuildDemoConfig()), "BuildDemoConfig's defaults must be the shipped base's"
    assert info["steps"] == BuildDemoConfig().steps, "the shipped base was trained to its last step"
    assert shipped_build(BuildDemoConfig()) == SHIPPED_DIR
    assert Path(resolve_model_path("demo")) == SHIPPED_DIR
    size = sum(f.stat().st_size for f in SHIPPED_DIR.iterdir())
    assert size < 20 * 2**20, f"the shipped base is {size / 2**20:.1f} MB; the repository takes at most 20 MB"


@pytest.mark.slow
def test_two_processes_asking_for_one_build_build_it_once(tmp_path):
    """`make run`'s background build and a round's first step used to build the same model twice at once."""
    cfg = tmp_path / "b.json"
    cfg.write_text(json.dumps({**SMALL, "steps": 150}))
    env = {**os.environ, "LENSLOOP_DATA_DIR": str(tmp_path / "data"), "LENSLOOP_DEMO_WAIT_REPORT_SECONDS": "0.5"}
    cmd = [sys.executable, "-m", "rlhf.engine", "build-demo", "--config", str(cfg)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    logs = "".join(err for _, err in outs)
    assert logs.count("building the demo model into") == 1, logs
    paths = {json.loads(out)["model_path"] for out, _ in outs}
    assert len(paths) == 1 and (Path(paths.pop()) / "build.json").is_file()
