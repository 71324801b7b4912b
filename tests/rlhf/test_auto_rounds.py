"""The automatic-round trigger: a round starts once enough new pairs arrived; one that cannot start says
why in the worker's log instead of being skipped in silence."""

import logging

import pytest

from rlhf.models import LoopSettings, TrainingRun
from tests import factories as f
from tests.rlhf.helpers import rank

pytestmark = pytest.mark.django_db


@pytest.fixture
def ranked():
    alice, bob = f.user("alice"), f.user("bob")
    project = f.project("auto", admins=[alice], annotators=[bob])
    rank(project, bob, 2)
    return project


def test_a_round_starts_once_enough_new_pairs_arrived(ranked):
    from rlhf.services import maybe_start_auto_rounds

    LoopSettings.objects.create(project=ranked, auto_round_pairs=1)
    started = maybe_start_auto_rounds()
    assert [r.project_id for r in started] == [ranked.pk]
    assert maybe_start_auto_rounds() == []  # one round at a time


def test_a_round_that_cannot_start_is_logged_with_its_reason(ranked, caplog):
    from rlhf.services import maybe_start_auto_rounds

    # Saved before today's checks (or edited in the database): the ppo step would refuse this batch size.
    LoopSettings.objects.create(project=ranked, auto_round_pairs=1, round_params={"policy_batch_size": 3})
    with caplog.at_level(logging.WARNING, logger="rlhf.services"):
        assert maybe_start_auto_rounds() == []
    assert "automatic round of project auto not started" in caplog.text and "policy_batch_size" in caplog.text
    assert not TrainingRun.objects.filter(project=ranked).exists()
