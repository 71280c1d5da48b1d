"""In-context recall and noisy in-context recall (multi-query associative recall).

A sequence is a run of 2-token slots ``key, value``. Keys map to values through a
mapping drawn afresh for every sequence, and a final query repeats one key that was
shown. With ``frac_noise > 0`` a slot becomes two noise tokens with that probability.

Vocabulary, with ``base = (vocab_size if multi_query else vocab_size - 1) - noise_vocab_size``:
keys ``0 .. base//2 - 1``, values ``base//2 .. base - 1``, noise tokens
``base .. base + noise_vocab_size - 1``, and the query prefix ``vocab_size - 1`` in
single-query mode (in multi-query mode ``vocab_size - 1`` is an ordinary token).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .common import (
    IGNORE_INDEX,
    Example,
    Sampler,
    check_even_seq_len,
    check_noise,
    check_vocab_room,
)


@dataclass(frozen=True)
class RecallVocabulary:
    """Token id ranges of one recall setting (stop ids are exclusive)."""

    num_keys: int
    value_start: int
    value_stop: int
    noise_stop: int
    prefix: int | None


def recall_vocabulary(setting: dict) -> RecallVocabulary:
    """Return the key, value, noise and prefix ids of a recall setting."""
    vocab_size = setting["vocab_size"]
    multi_query = setting["multi_query"]
    base = (vocab_size if multi_query else vocab_size - 1) - setting["noise_vocab_size"]
    return RecallVocabulary(
        num_keys=base // 2,
        value_start=base // 2,
        value_stop=base,
        noise_stop=base + setting["noise_vocab_size"],
        prefix=None if multi_query else vocab_size - 1,
    )


def check_recall(task: str, setting: dict) -> None:
    """Raise ValueError for a recall setting that cannot produce examples."""
    check_even_seq_len(task, setting, minimum=4)
    check_noise(task, setting)
    check_vocab_room(
        task, setting, lambda vocab_size: recall_vocabulary({**setting, "vocab_size": vocab_size}).value_stop,
        2, "keys and values",
    )


def recall_length(setting: dict) -> int:
    """Return the example length: seq_len - 1 in multi-query mode, else seq_len."""
    return setting["seq_len"] - 1 if setting["multi_query"] else setting["seq_len"]


def build_recall_sampler(setting: dict, is_training: bool, shared_rng: np.random.Generator) -> Sampler:
    """Return a sampler of recall examples (``shared_rng`` is unused)."""
    return functools.partial(_sample_recall, setting=setting, is_training=is_training)


def _noise_slots(rng: np.random.Generator, num_slots: int, frac_noise: float) -> np.ndarray:
    """Draw which slots are noise, keeping one random slot a key-value pair."""
    if frac_noise == 0.0:
        return np.zeros(num_slots, dtype=bool)
    # The reference draws the protected slot from one more index than the loop
    # visits, so it can miss every slot. Drawing among visited slots fixes that.
    protected = rng.integers(num_slots)
    is_noise = rng.random(num_slots) < frac_noise
    is_noise[protected] = False
    return is_noise


def _repeated_keys(keys: np.ndarray, is_noise: np.ndarray) -> np.ndarray:
    """Mark key-value slots whose key already appeared in an earlier key-value slot."""
    pair_slots = np.flatnonzero(~is_noise)
    _, first_positions = np.unique(keys[pair_slots], return_index=True)
    is_first = np.zeros(keys.shape, dtype=bool)
    is_first[pair_slots[first_positions]] = True
    return ~is_noise & ~is_first


def _final_query(
    rng: np.random.Generator, shown_keys: np.ndarray, value_of_key: np.ndarray, prefix: int | None
) -> Example:
    """Draw the final query among the distinct shown keys.

    Returns the tokens ``[prefix,] key, value`` and their targets, which ignore all
    but the value.
    """
    distinct_keys = np.unique(shown_keys)
    key = distinct_keys[rng.integers(distinct_keys.size)]
    tokens = [key, value_of_key[key]]
    targets = [IGNORE_INDEX, value_of_key[key]]
    if prefix is not None:
        tokens = [prefix, *tokens]
        targets = [IGNORE_INDEX, *targets]
    return np.asarray(tokens, dtype=np.int64), np.asarray(targets, dtype=np.int64)


def _sample_recall(rng: np.random.Generator, setting: dict, is_training: bool) -> Example:
    """Draw one recall example.

    Returns ``(inputs, targets)`` of length ``recall_length(setting)``. Training
    targets are the inputs shifted by one. Test targets are IGNORE_INDEX except at
    the positions whose next token is the value of a key shown earlier: every
    repeated key in multi-query mode, and the final query.
    """
    vocabulary = recall_vocabulary(setting)
    num_slots = setting["seq_len"] // 2 - 1
    is_noise = _noise_slots(rng, num_slots, setting["frac_noise"])
    keys = rng.integers(0, vocabulary.num_keys, size=num_slots)
    value_of_key = rng.integers(vocabulary.value_start, vocabulary.value_stop, size=vocabulary.num_keys)
    values = value_of_key[keys]

    tokens = np.stack([keys, values], axis=1)
    slot_targets = np.full((num_slots, 2), IGNORE_INDEX, dtype=np.int64)
    if setting["multi_query"]:
        repeated = _repeated_keys(keys, is_noise)
        slot_targets[repeated, 1] = values[repeated]
    if is_noise.any():
        noise = rng.integers(vocabulary.value_stop, vocabulary.noise_stop, size=(num_slots, 2))
        tokens[is_noise] = noise[is_noise]

    query, query_targets = _final_query(rng, keys[~is_noise], value_of_key, vocabulary.prefix)
    sequence = np.concatenate([tokens.ravel(), query])
    targets = np.concatenate([slot_targets.ravel(), query_targets])
    if is_training:
        return sequence[:-1], sequence[1:]
    return sequence[:-1], targets[1:]
