"""Constants and setting checks shared by the MAD task generators."""

from __future__ import annotations

from typing import Callable

import numpy as np

IGNORE_INDEX = -100
"""Target value of positions that the loss and the metrics skip."""

Example = tuple[np.ndarray, np.ndarray]
"""One example: 1-D int64 arrays ``(inputs, targets)`` of equal length."""

Sampler = Callable[[np.random.Generator], Example]
"""Function that draws one example of a fixed task, setting and split."""


def invalid_setting(task: str, key: str, value: object, reason: str, fix: str) -> ValueError:
    """Build the ValueError for an invalid setting value, with its reason and fix."""
    return ValueError(f"{key}={value!r} is invalid for task {task!r}: {reason}. {fix}.")


def check_at_least(task: str, setting: dict, key: str, minimum: int, reason: str) -> None:
    """Raise ValueError unless ``setting[key] >= minimum``."""
    value = setting[key]
    if value < minimum:
        raise invalid_setting(task, key, value, reason, f"Pass {key} >= {minimum}")


def check_even_seq_len(task: str, setting: dict, minimum: int) -> None:
    """Raise ValueError unless seq_len is even and at least ``minimum``.

    Tasks built from 2-token slots (key then value) need an even length.
    """
    seq_len = setting["seq_len"]
    if seq_len % 2 != 0:
        raise invalid_setting(
            task, "seq_len", seq_len,
            "the sequence is built from 2-token slots, so it must be even",
            f"Pass an even seq_len such as {seq_len + 1}",
        )
    check_at_least(task, setting, "seq_len", minimum, "the sequence is too short")


def check_noise(task: str, setting: dict) -> None:
    """Raise ValueError for an invalid ``noise_vocab_size`` or ``frac_noise``.

    ``frac_noise`` must lie in [0, 1), and noise needs at least one noise token.
    """
    check_at_least(task, setting, "noise_vocab_size", 0, "it counts tokens")
    frac_noise = setting["frac_noise"]
    if not 0.0 <= frac_noise < 1.0:
        raise invalid_setting(
            task, "frac_noise", frac_noise, "it is a probability and 1 would leave no signal",
            "Pass a value in [0, 1)",
        )
    if frac_noise > 0.0 and setting["noise_vocab_size"] < 1:
        raise invalid_setting(
            task, "noise_vocab_size", setting["noise_vocab_size"],
            f"frac_noise={frac_noise} needs noise tokens to draw from",
            "Pass noise_vocab_size >= 1 or frac_noise=0",
        )


def check_vocab_room(
    task: str, setting: dict, count_ids: Callable[[int], int], needed: int, role: str
) -> None:
    """Raise ValueError when ``vocab_size`` leaves fewer than ``needed`` token ids for ``role``.

    ``count_ids(vocab_size)`` returns the number of ids for ``role``; the error
    suggests the smallest vocab_size that leaves enough.
    """
    vocab_size = setting["vocab_size"]
    available = count_ids(vocab_size)
    if available >= needed:
        return
    minimum = vocab_size + 1
    while count_ids(minimum) < needed:
        minimum += 1
    raise invalid_setting(
        task, "vocab_size", vocab_size,
        f"it leaves {available} of the {needed} token ids needed for {role}",
        f"Pass vocab_size >= {minimum}",
    )


def distinct_rows(rng: np.random.Generator, num_rows: int, population: int, width: int) -> np.ndarray:
    """Draw ``num_rows`` ordered tuples of ``width`` distinct ids from ``range(population)``.

    The first ``s`` entries of a row are a uniform ordered draw of ``s`` distinct ids
    for every ``s <= width``, because each row is the start of a random permutation.
    Returns an int64 array of shape (num_rows, width).
    """
    keys = rng.random((num_rows, population))
    return np.argsort(keys, axis=1)[:, :width].astype(np.int64)
