"""Learning tests: the seed they run with, and a record of what they measured.

A learning test passes on every machine only if its threshold sits well outside the spread of what it
measures. `bench/learning_spread.py` runs each learning test for many seeds (``LENSLOOP_LEARNING_SEED``)
and collects what the tests record here (``LENSLOOP_LEARNING_LOG``); the thresholds and the comments beside
them come from those figures.
"""

from __future__ import annotations

import json
import os

SEED_ENV = "LENSLOOP_LEARNING_SEED"
LOG_ENV = "LENSLOOP_LEARNING_LOG"


def learning_seed(default: int) -> int:
    """The seed of this run of a learning test: `default`, unless a spread measurement sets another."""
    return int(os.environ.get(SEED_ENV, default))


def record(test: str, **metrics: float) -> None:
    """Append what a learning test measured to the spread log, when one is being written."""
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": test, "seed": int(os.environ.get(SEED_ENV, -1)), **metrics}) + "\n")
