"""Registry of the six MAD tasks: setting keys, benchmark baselines and grids.

Each task's benchmark grid is its baseline setting plus one-factor-at-a-time
changes. Every change starts again from the baseline, and factors are never
combined, which gives 66 settings over the six tasks. Grid values follow the task
configs of the MAD reference code (github.com/athms/mad-lab, ``configs/tasks/*.yml``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np

from .common import Sampler
from .compression import build_compression_sampler, check_compression, compression_length
from .fuzzy_recall import build_fuzzy_sampler, check_fuzzy_recall, fuzzy_recall_length
from .memorization import build_memorization_sampler, check_memorization, memorization_length
from .recall import build_recall_sampler, check_recall, recall_length
from .selective_copying import (
    build_selective_copying_sampler,
    check_selective_copying,
    selective_copying_length,
)

NUM_TEST_EXAMPLES = 1280
"""Test examples per setting in the MAD benchmark."""

SETTING_TYPES: Mapping[str, type] = MappingProxyType({
    "vocab_size": int,
    "seq_len": int,
    "multi_query": bool,
    "noise_vocab_size": int,
    "frac_noise": float,
    "k_motif_size": int,
    "v_motif_size": int,
    "num_tokens_to_copy": int,
    "num_train_examples": int,
})
"""Type of every setting key that some task accepts."""


@dataclass(frozen=True)
class TaskSpec:
    """One MAD task: its benchmark baseline, grid changes and generator hooks.

    ``baseline`` lists every setting key the task accepts with its benchmark value.
    ``check`` raises ValueError for an invalid setting, ``output_length`` gives the
    example length, and ``build_sampler(setting, is_training, shared_rng)`` returns
    a function that draws one example from a generator.
    """

    name: str
    baseline: Mapping[str, object]
    grid_changes: tuple[tuple[str, tuple], ...]
    check: Callable[[str, dict], None]
    output_length: Callable[[dict], int]
    build_sampler: Callable[[dict, bool, np.random.Generator], Sampler]

    def __post_init__(self) -> None:
        object.__setattr__(self, "baseline", MappingProxyType(dict(self.baseline)))


_TRAIN_SIZES = ("num_train_examples", (6400, 3200, 1600, 800))

_SPECS = (
    TaskSpec(
        name="in-context-recall",
        baseline={"vocab_size": 16, "seq_len": 128, "multi_query": True, "noise_vocab_size": 0,
                  "frac_noise": 0.0, "num_train_examples": 12800},
        grid_changes=(("vocab_size", (32, 64, 128)), ("seq_len", (256, 512, 1024)), _TRAIN_SIZES),
        check=check_recall, output_length=recall_length, build_sampler=build_recall_sampler,
    ),
    TaskSpec(
        name="fuzzy-in-context-recall",
        baseline={"vocab_size": 16, "seq_len": 128, "multi_query": True, "k_motif_size": 3, "v_motif_size": 3,
                  "noise_vocab_size": 0, "frac_noise": 0.0, "num_train_examples": 12800},
        grid_changes=(("vocab_size", (32, 64, 128)), ("seq_len", (256, 512, 1024)), _TRAIN_SIZES),
        check=check_fuzzy_recall, output_length=fuzzy_recall_length, build_sampler=build_fuzzy_sampler,
    ),
    TaskSpec(
        name="noisy-in-context-recall",
        baseline={"vocab_size": 32, "seq_len": 128, "multi_query": True, "noise_vocab_size": 16,
                  "frac_noise": 0.2, "num_train_examples": 12800},
        grid_changes=(("vocab_size", (48, 80, 144)), ("seq_len", (256, 512, 1024)), _TRAIN_SIZES,
                      ("frac_noise", (0.4, 0.6, 0.8))),
        check=check_recall, output_length=recall_length, build_sampler=build_recall_sampler,
    ),
    TaskSpec(
        name="selective-copying",
        baseline={"vocab_size": 16, "seq_len": 256, "num_tokens_to_copy": 16, "num_train_examples": 12800},
        grid_changes=(("vocab_size", (32, 64, 128)), ("seq_len", (512, 1024)), _TRAIN_SIZES,
                      ("num_tokens_to_copy", (32, 64, 96))),
        check=check_selective_copying, output_length=selective_copying_length,
        build_sampler=build_selective_copying_sampler,
    ),
    TaskSpec(
        name="compression",
        baseline={"vocab_size": 16, "seq_len": 32, "noise_vocab_size": 0, "frac_noise": 0.0,
                  "num_train_examples": 12800},
        grid_changes=(("vocab_size", (32, 64, 128)), ("seq_len", (64, 128, 256)), _TRAIN_SIZES),
        check=check_compression, output_length=compression_length, build_sampler=build_compression_sampler,
    ),
    TaskSpec(
        name="memorization",
        baseline={"vocab_size": 256, "seq_len": 32, "noise_vocab_size": 0, "frac_noise": 0.0,
                  "num_train_examples": 256},
        grid_changes=(("vocab_size", (512, 1024, 2048, 4096, 8192)),),
        check=check_memorization, output_length=memorization_length, build_sampler=build_memorization_sampler,
    ),
)

TASKS: Mapping[str, TaskSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
"""The MAD tasks by their reference names, in the reference's order."""


def get_task(task: str) -> TaskSpec:
    """Return the spec of ``task``, or raise ValueError naming the valid tasks."""
    if task not in TASKS:
        raise ValueError(f"unknown MAD task {task!r}. Valid tasks: {', '.join(TASKS)}.")
    return TASKS[task]


def baseline_setting(task: str) -> dict:
    """Return the benchmark baseline setting of ``task`` as a new dict."""
    return dict(get_task(task).baseline)


def settings_grid(task: str) -> list[dict]:
    """Return the benchmark settings of ``task``: the baseline, then each one-factor change."""
    spec = get_task(task)
    grid = [dict(spec.baseline)]
    for key, values in spec.grid_changes:
        grid.extend({**spec.baseline, key: value} for value in values)
    return grid


def resolve_setting(task: str, overrides: Mapping[str, object]) -> dict:
    """Return the full, validated setting: the baseline updated with ``overrides``.

    Raises ValueError for an unknown key, a value of the wrong type, or a value the
    task cannot use. Values are converted to the key's type, so ``frac_noise=0``
    and ``frac_noise=0.0`` give the same setting.
    """
    spec = get_task(task)
    unknown = sorted(set(overrides) - set(spec.baseline))
    if unknown:
        raise ValueError(
            f"unknown setting key {unknown[0]!r} for task {task!r}. "
            f"Valid keys: {', '.join(sorted(spec.baseline))}."
        )
    setting = dict(spec.baseline)
    for key, value in overrides.items():
        setting[key] = _convert_value(task, key, value)
    spec.check(task, setting)
    check_train_size(task, setting)
    return setting


def check_train_size(task: str, setting: dict) -> None:
    """Raise ValueError unless num_train_examples is positive."""
    if setting["num_train_examples"] < 1:
        raise ValueError(
            f"num_train_examples={setting['num_train_examples']} is invalid for task {task!r}: "
            "the training split needs at least one example. Pass num_train_examples >= 1."
        )


def _convert_value(task: str, key: str, value: object) -> object:
    """Convert a setting value to its key's type, or raise ValueError if it does not fit."""
    expected = SETTING_TYPES[key]
    if expected is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
    elif expected is int:
        if not isinstance(value, (bool, np.bool_)):
            try:
                return operator.index(value)
            except TypeError:
                pass
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    kind = {int: "an integer", float: "a number", bool: "True or False"}[expected]
    raise ValueError(f"{key}={value!r} is invalid for task {task!r}: expected {kind}. Pass {kind}.")
