"""A real round with object storage on (lensloop/storage.py), against moto's S3 server: the worker's steps upload
the reward model's and the policy's checkpoints; a machine that has neither them nor the images (its data
directory wiped) then samples new tasks from the new policy, reading the adapter and the images back from the
bucket."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from annotation.models import RankingTask
from rlhf.models import ModelVersion
from rlhf.services import start_generate, start_round
from tests.loop.conftest import FAST_ROUND
from tests.loop.test_rounds import _burst, _explain
from tests.s3 import keys

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def s3_loop_project(s3, request):
    """The loop project, imported with object storage already on (so its images are in the bucket)."""
    return request.getfixturevalue("loop_project")


def test_a_rounds_checkpoints_go_to_the_bucket_and_come_back_on_another_machine(s3, s3_loop_project, settings):
    assert keys(s3, "media/"), "the import uploaded no image"
    round_run = start_round(project=s3_loop_project, params={**FAST_ROUND, "algorithm": "sft"})
    _burst()
    round_run.refresh_from_db()
    assert round_run.state == "succeeded", _explain(round_run)
    policy = ModelVersion.objects.get(project=s3_loop_project, kind="policy", active=True)
    reward = ModelVersion.objects.get(project=s3_loop_project, kind="reward", active=True)
    for version in (policy, reward):
        rel = Path(version.path).relative_to(settings.DATA_DIR).as_posix()
        names = keys(s3, rel + "/")
        assert s3.key(f"{rel}/.complete") in names, names
        local = {p.relative_to(version.path).as_posix() for p in Path(version.path).rglob("*") if p.is_file()}
        assert {n[len(s3.key(rel)) + 1:] for n in names} == local | {".complete"}

    # Another machine: no runs, no media. The generate step reads the policy's adapter and the images back.
    shutil.rmtree(Path(settings.DATA_DIR) / "runs")
    shutil.rmtree(settings.MEDIA_ROOT)
    run = start_generate(project=s3_loop_project, prompts=3)
    _burst()
    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    assert (Path(policy.path) / "adapter_config.json").is_file()
    assert RankingTask.objects.filter(project=s3_loop_project, origin=f"run-{run.pk}").exists()
