"""Seeded, duplicate-free generation of MAD training and test splits.

Every (task, setting, split) draws from its own ``numpy.random.Generator``, seeded
from the run seed and a SHA-256 hash of the task name, the full setting and the
split name. Examples are drawn one at a time, and an example whose input sequence
was already drawn is rejected. So a split has no duplicate inputs, and its first n
examples do not depend on how many are requested. The test split also
rejects every input sequence of the training split (its ``num_train_examples``
examples), so the two splits never share an input sequence.

Reproducibility holds for a fixed numpy version: numpy does not promise that
``Generator`` streams stay the same across releases.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Mapping

import numpy as np

from .registry import NUM_TEST_EXAMPLES, TaskSpec, get_task, resolve_setting

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")

SHARED_STREAM = "shared"
"""Stream name of the generator that both splits share (the memorization map)."""


def derive_rng(seed: int, task: str, setting: Mapping[str, object], stream: str) -> np.random.Generator:
    """Return the generator of one (task, setting, stream) under run seed ``seed``.

    The stream key is a SHA-256 hash of the canonical JSON of the task, the setting
    with sorted keys and the stream name, so it does not depend on Python's salted
    ``hash()`` or on the order of the setting's keys.
    """
    payload = json.dumps({"task": task, "setting": dict(setting), "stream": stream}, sort_keys=True)
    digest = hashlib.sha256(payload.encode("utf-8")).digest()
    words = tuple(int(word) for word in np.frombuffer(digest, dtype="<u4"))
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=words))


def generate(task: str, num_examples: int, split: str, seed: int, **setting: object) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``num_examples`` examples of one split of a MAD task.

    ``split`` is "train" or "test" and ``setting`` overrides keys of the task's
    benchmark baseline (see ``baseline_setting``). A training request may not exceed
    ``num_train_examples``, because the test split only excludes that many training
    examples. A test request regenerates the training split to exclude it, which
    costs as much as generating it.

    Returns int64 arrays ``(inputs, targets)`` of shape (num_examples, length), with
    ignored targets set to -100. Raises ValueError for an unknown task, split or setting
    key, an invalid value, or a setting with too few distinct examples.
    """
    spec = get_task(task)
    full_setting = resolve_setting(task, setting)
    _check_request(spec, full_setting, num_examples, split, seed)
    excluded: set[bytes] = set()
    if split == "test":
        _, _, excluded = _draw_split(spec, full_setting, "train", seed, full_setting["num_train_examples"], set())
    inputs, targets, _ = _draw_split(spec, full_setting, split, seed, num_examples, excluded)
    return inputs, targets


def generate_train_test(
    task: str, seed: int, num_test_examples: int = NUM_TEST_EXAMPLES, **setting: object
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Generate both splits of a MAD task setting, drawing the training split once.

    The training split has ``num_train_examples`` examples (from the setting). The
    arrays equal those of ``generate`` for each split with the same arguments.
    Returns ``{"train": (inputs, targets), "test": (inputs, targets)}``.
    """
    spec = get_task(task)
    full_setting = resolve_setting(task, setting)
    _check_request(spec, full_setting, num_test_examples, "test", seed)
    num_train = full_setting["num_train_examples"]
    train_inputs, train_targets, train_keys = _draw_split(spec, full_setting, "train", seed, num_train, set())
    test_inputs, test_targets, _ = _draw_split(spec, full_setting, "test", seed, num_test_examples, train_keys)
    return {"train": (train_inputs, train_targets), "test": (test_inputs, test_targets)}


def _check_request(spec: TaskSpec, setting: dict, num_examples: int, split: str, seed: int) -> None:
    """Raise ValueError for an invalid split, example count or seed."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}. Pass 'train' or 'test'.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} is invalid: pass a non-negative integer.")
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 0:
        raise ValueError(f"num_examples={num_examples!r} is invalid: pass a non-negative integer.")
    if split == "train" and num_examples > setting["num_train_examples"]:
        raise ValueError(
            f"num_examples={num_examples} exceeds num_train_examples={setting['num_train_examples']} "
            f"for task {spec.name!r}: the test split excludes only that many training examples. "
            f"Pass num_train_examples={num_examples} in the setting."
        )


def _draw_split(
    spec: TaskSpec, setting: dict, split: str, seed: int, num_examples: int, excluded: set[bytes]
) -> tuple[np.ndarray, np.ndarray, set[bytes]]:
    """Draw distinct examples of one split whose inputs are not in ``excluded``.

    Returns inputs and targets of shape (num_examples, length) and the set of the
    input rows as bytes. Raises ValueError after ``10 * num_examples + 1000`` draws
    if the setting has too few distinct examples.
    """
    rng = derive_rng(seed, spec.name, setting, split)
    sample = spec.build_sampler(setting, split == "train", derive_rng(seed, spec.name, setting, SHARED_STREAM))
    length = spec.output_length(setting)
    inputs = np.empty((num_examples, length), dtype=np.int64)
    targets = np.empty((num_examples, length), dtype=np.int64)
    seen: set[bytes] = set()
    max_draws = 10 * num_examples + 1000
    num_draws = 0
    while len(seen) < num_examples:
        if num_draws == max_draws:
            raise _space_too_small(spec.name, setting, split, num_examples, len(seen), num_draws, len(excluded))
        num_draws += 1
        row = len(seen)
        inputs[row], targets[row] = sample(rng)
        key = inputs[row].tobytes()
        if key not in seen and key not in excluded:
            seen.add(key)
    logger.info(
        "generated %d %s examples of %s %s (%d draws rejected as duplicates or training inputs)",
        num_examples, split, spec.name, setting, num_draws - num_examples,
    )
    return inputs, targets, seen


def _space_too_small(
    task: str, setting: dict, split: str, num_examples: int, num_found: int, num_draws: int, num_excluded: int
) -> ValueError:
    """Build the error for a setting whose example space is too small for the request."""
    return ValueError(
        f"task {task!r} with setting {setting} yielded only {num_found} distinct {split} examples "
        f"of the {num_examples} requested after {num_draws} draws ({num_excluded} training inputs excluded): "
        "the setting has too few distinct sequences. Raise vocab_size or seq_len, "
        "or request fewer examples."
    )
