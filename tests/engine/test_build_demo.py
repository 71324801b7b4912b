"""The demo builder's label noise and its cache key (the training itself runs in test_cli and the fixtures)."""

import random

from rlhf.engine.config import BuildDemoConfig
from rlhf.engine.demo import world
from rlhf.engine.demo.build import LabelNoise, config_hash


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


def test_clean_builds_keep_their_cache_folder_names():
    # Folders built before `label_noise` existed stay valid: the empty default is not part of the hash.
    assert config_hash(BuildDemoConfig()) == "248905b04d28"
    assert config_hash(BuildDemoConfig(steps=800, train_images=2000, eval_images=20, warmup_steps=20,
                                       budget_seconds=0)) == "e40224118165"
    assert config_hash(BuildDemoConfig(label_noise=[["purple", "blue", 0.7]])) != "248905b04d28"
