"""Compression: reconstruct a whole sequence from the encoder state at its last token.

Vocabulary: content tokens ``0 .. vocab_size - 2 - noise_vocab_size``, noise tokens
``vocab_size - 1 - noise_vocab_size .. vocab_size - 2``, compression token
``vocab_size - 1``. An example is ``seq_len - 1`` content tokens followed by the
compression token, and the targets are the inputs themselves (every position is
scored, the last one trivially). Training and test examples share one distribution.
"""

from __future__ import annotations

import functools

import numpy as np

from .common import IGNORE_INDEX, Example, Sampler, check_at_least, check_noise, check_vocab_room


def check_compression(task: str, setting: dict) -> None:
    """Raise ValueError for a compression setting that cannot produce examples."""
    check_at_least(task, setting, "seq_len", 2, "a sequence needs a content token and the compression token")
    check_noise(task, setting)
    noise_vocab_size = setting["noise_vocab_size"]
    check_vocab_room(task, setting, lambda vocab_size: vocab_size - 1 - noise_vocab_size, 1, "content tokens")


def compression_length(setting: dict) -> int:
    """Return the example length, which is seq_len."""
    return setting["seq_len"]


def build_compression_sampler(setting: dict, is_training: bool, shared_rng: np.random.Generator) -> Sampler:
    """Return a sampler of compression examples (the split and ``shared_rng`` are unused)."""
    return functools.partial(_sample_compression, setting=setting)


def _sample_compression(rng: np.random.Generator, setting: dict) -> Example:
    """Draw one compression example of length seq_len.

    With ``frac_noise > 0`` each content position becomes a noise token with that
    probability, and its target is IGNORE_INDEX.
    """
    vocab_size, seq_len = setting["vocab_size"], setting["seq_len"]
    num_content = vocab_size - 1 - setting["noise_vocab_size"]
    inputs = np.empty(seq_len, dtype=np.int64)
    inputs[:-1] = rng.integers(0, num_content, size=seq_len - 1)
    inputs[-1] = vocab_size - 1
    targets = inputs.copy()
    if setting["frac_noise"] > 0:
        is_noise = rng.random(seq_len - 1) < setting["frac_noise"]
        noise = rng.integers(num_content, vocab_size - 1, size=seq_len - 1)
        inputs[:-1][is_noise] = noise[is_noise]
        # The reference computes this mask and then returns the inputs as targets,
        # so it scores noise tokens. Ignoring them is what its code sets out to do.
        targets[:-1][is_noise] = IGNORE_INDEX
    return inputs, targets
