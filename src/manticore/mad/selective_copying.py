"""Selective copying: copy the content tokens of a sequence interleaved with blanks.

Vocabulary: content tokens ``0 .. vocab_size - 3``, blank token ``vocab_size - 2``,
copy token ``vocab_size - 1``. An example contains ``num_tokens_to_copy`` (n) content
tokens with ``seq_len - 2n - 1`` blanks inserted before them, then the copy token,
then n blanks. The targets of the last n positions are the content tokens in order;
all other targets are IGNORE_INDEX. Training and test examples share one distribution.
"""

from __future__ import annotations

import functools

import numpy as np

from .common import IGNORE_INDEX, Example, Sampler, check_at_least, check_vocab_room, invalid_setting


def check_selective_copying(task: str, setting: dict) -> None:
    """Raise ValueError for a selective copying setting that cannot produce examples."""
    check_at_least(task, setting, "num_tokens_to_copy", 1, "there must be something to copy")
    check_vocab_room(task, setting, lambda vocab_size: vocab_size - 2, 1, "content tokens")
    num_tokens = setting["num_tokens_to_copy"]
    if setting["seq_len"] <= 2 * num_tokens + 1:
        raise invalid_setting(
            task, "seq_len", setting["seq_len"],
            f"it must exceed 2 * num_tokens_to_copy + 1 = {2 * num_tokens + 1} to leave room for a blank",
            f"Pass seq_len >= {2 * num_tokens + 2} or a smaller num_tokens_to_copy",
        )


def selective_copying_length(setting: dict) -> int:
    """Return the example length, which is seq_len."""
    return setting["seq_len"]


def build_selective_copying_sampler(
    setting: dict, is_training: bool, shared_rng: np.random.Generator
) -> Sampler:
    """Return a sampler of selective copying examples (the split and ``shared_rng`` are unused)."""
    return functools.partial(_sample_selective_copying, setting=setting)


def _sample_selective_copying(rng: np.random.Generator, setting: dict) -> Example:
    """Draw one selective copying example of length seq_len.

    Each blank goes before a content token chosen uniformly, so several blanks can
    stack before one token and none follows the last one.
    """
    vocab_size, seq_len = setting["vocab_size"], setting["seq_len"]
    num_tokens = setting["num_tokens_to_copy"]
    blank, copy = vocab_size - 2, vocab_size - 1
    num_blanks = seq_len - 2 * num_tokens - 1

    content = rng.integers(0, vocab_size - 2, size=num_tokens)
    # The reference draws these positions from numpy's global random state; this
    # uses the example's own generator so that the data follow from the seed.
    blank_slots = rng.integers(0, num_tokens, size=num_blanks)
    blanks_before = np.bincount(blank_slots, minlength=num_tokens)
    content_positions = np.arange(num_tokens) + np.cumsum(blanks_before)

    inputs = np.full(seq_len, blank, dtype=np.int64)
    inputs[content_positions] = content
    inputs[num_tokens + num_blanks] = copy
    targets = np.full(seq_len, IGNORE_INDEX, dtype=np.int64)
    targets[seq_len - num_tokens :] = content
    return inputs, targets
