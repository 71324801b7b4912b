"""What the training workers have. The web tier must not import torch, so this asks the environment."""

import os
import shutil


def cuda_available() -> bool:
    """True when the training workers have a CUDA GPU (LENSLOOP_WORKERS_HAVE_CUDA=1, or nvidia-smi here)."""
    flag = os.environ.get("LENSLOOP_WORKERS_HAVE_CUDA")
    if flag is not None:
        return flag.strip().lower() in {"1", "true", "yes", "on"}
    return shutil.which("nvidia-smi") is not None
