"""Entry point: `python -m rlhf.engine ...` (and `accelerate launch -m rlhf.engine ...`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
