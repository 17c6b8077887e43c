"""Test-wide settings: one thread per process (two 2-thread processes on 2 cores run ~4x slower), no hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if "KDLAB_CACHE" not in os.environ:  # decoded images and teacher caches of the tests never land in ~/.cache
    import tempfile

    os.environ["KDLAB_CACHE"] = tempfile.mkdtemp(prefix="kdlab-test-cache-")

import torch  # noqa: E402

torch.set_num_threads(1)
