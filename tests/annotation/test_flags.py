"""The flags of a ranking are named once (Ranking.FLAGS); the columns, the API's choices, the queue's check
and the page's checkboxes follow them."""

from django.db import models

from annotation.api.serializers import FLAG_CHOICES
from annotation.models import Ranking
from annotation.services.queue import FLAGS


def test_every_flag_has_its_column_and_no_column_lacks_a_flag():
    columns = {f.name for f in Ranking._meta.get_fields() if f.name.startswith("flag_")}
    assert columns == {f"flag_{name}" for name in Ranking.FLAGS}
    assert all(isinstance(Ranking._meta.get_field(c), models.BooleanField) for c in columns)


def test_the_api_and_the_queue_take_the_same_flags():
    assert list(Ranking.FLAGS) == FLAG_CHOICES and set(Ranking.FLAGS) == FLAGS
    ranking = Ranking(**Ranking.flag_columns(["unsafe"]))
    assert ranking.flags == ["unsafe"]
