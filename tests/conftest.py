"""Test-wide settings: no network, pinned threads, fixed seeds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# A second process loading a core slows 2-thread torch 10-20x on this kind of
# machine; one thread degrades far less.
torch.set_num_threads(1)
