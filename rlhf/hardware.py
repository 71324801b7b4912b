"""What the training workers have. The web tier must not import torch, so this asks the settings."""

import shutil

from django.conf import settings


def cuda_available() -> bool:
    """True when the training workers have a CUDA GPU: ``settings.LENSLOOP_WORKERS_HAVE_CUDA`` where it is
    set (from the environment variable of that name), else whether nvidia-smi is here."""
    flag = settings.LENSLOOP_WORKERS_HAVE_CUDA
    if flag is not None:
        return bool(flag)
    return shutil.which("nvidia-smi") is not None
