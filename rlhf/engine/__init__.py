"""lensloop training engine: the pure ML package (no Django).

Model loading (LoRA/QLoRA), generation, the reward model, verifiable rewards, evaluation, the offline demo
world and a CLI (`python -m rlhf.engine ...`). This package's `__init__`, `config` and `demo.world` import
neither torch nor transformers, so the web tier may import them; everything else runs in job subprocesses.
"""
