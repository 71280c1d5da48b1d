"""Memorization: recall values of a key-value map that is fixed for a whole setting.

With ``m = vocab_size - 1 - noise_vocab_size``: keys ``0 .. m//2 - 1``, values
``m//2 .. m - 1``, noise tokens ``m .. vocab_size - 2``, insert token
``vocab_size - 1``. The map sends each key to a distinct value (one value id stays
unused when m is odd). An example is seq_len/2 slots ``key, insert``; the target of
the insert position is the key's value, the key position is IGNORE_INDEX. Both
splits use the same map, so the test split measures how much of the map the model
stored. The test sequences themselves are new.
"""

from __future__ import annotations

import functools

import numpy as np

from .common import IGNORE_INDEX, Example, Sampler, check_even_seq_len, check_noise, check_vocab_room


def check_memorization(task: str, setting: dict) -> None:
    """Raise ValueError for a memorization setting that cannot produce examples."""
    check_even_seq_len(task, setting, minimum=2)
    check_noise(task, setting)
    noise_vocab_size = setting["noise_vocab_size"]
    check_vocab_room(task, setting, lambda vocab_size: vocab_size - 1 - noise_vocab_size, 2, "keys and values")


def memorization_length(setting: dict) -> int:
    """Return the example length, which is seq_len."""
    return setting["seq_len"]


def build_key_value_map(setting: dict, rng: np.random.Generator) -> np.ndarray:
    """Draw the fixed map: entry k is the value id of key k, shape (num_keys,)."""
    map_vocab_size = setting["vocab_size"] - 1 - setting["noise_vocab_size"]
    num_keys = map_vocab_size // 2
    value_ids = np.arange(num_keys, map_vocab_size, dtype=np.int64)
    return rng.permutation(value_ids)[:num_keys]


def build_memorization_sampler(setting: dict, is_training: bool, shared_rng: np.random.Generator) -> Sampler:
    """Return a sampler of memorization examples.

    ``shared_rng`` must be derived without the split, so that both splits see the
    same map. The split itself does not change the examples.
    """
    value_of_key = build_key_value_map(setting, shared_rng)
    return functools.partial(_sample_memorization, setting=setting, value_of_key=value_of_key)


def _sample_memorization(rng: np.random.Generator, setting: dict, value_of_key: np.ndarray) -> Example:
    """Draw one memorization example of length seq_len.

    With ``frac_noise > 0`` a slot becomes two ignored noise tokens with that
    probability, except one random slot that always stays a key.
    """
    vocab_size, num_slots = setting["vocab_size"], setting["seq_len"] // 2
    keys = rng.integers(0, value_of_key.size, size=num_slots)
    tokens = np.stack([keys, np.full(num_slots, vocab_size - 1)], axis=1)
    targets = np.stack([np.full(num_slots, IGNORE_INDEX), value_of_key[keys]], axis=1)
    if setting["frac_noise"] > 0:
        protected = rng.integers(num_slots)
        is_noise = rng.random(num_slots) < setting["frac_noise"]
        is_noise[protected] = False
        noise_start = vocab_size - 1 - setting["noise_vocab_size"]
        noise = rng.integers(noise_start, vocab_size - 1, size=(num_slots, 2))
        tokens[is_noise] = noise[is_noise]
        targets[is_noise] = IGNORE_INDEX
    return tokens.ravel().astype(np.int64), targets.ravel().astype(np.int64)
