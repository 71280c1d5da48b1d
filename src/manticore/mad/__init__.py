"""MAD synthetic tasks: seeded, leak-free generators of the six tasks and their metrics.

``generate(task, num_examples, split, seed, **setting)`` returns int64 arrays
``(inputs, targets)`` of shape (num_examples, length) with ignored targets set to
-100. ``settings_grid(task)`` lists the benchmark settings of a task and
``baseline_setting(task)`` its baseline. The tasks are in-context-recall,
fuzzy-in-context-recall, noisy-in-context-recall, selective-copying, compression
and memorization (Poli et al., "Mechanistic Design and Scaling of Hybrid
Architectures", arXiv 2403.17844).
"""

from .common import IGNORE_INDEX
from .generation import derive_rng, generate, generate_train_test
from .metrics import (
    AccuracyCounts,
    accuracy_counts,
    mad_scores,
    macro_accuracy,
    micro_accuracy,
    perplexity,
    token_loss,
)
from .registry import NUM_TEST_EXAMPLES, TASKS, TaskSpec, baseline_setting, resolve_setting, settings_grid

__all__ = [
    "IGNORE_INDEX",
    "NUM_TEST_EXAMPLES",
    "TASKS",
    "AccuracyCounts",
    "TaskSpec",
    "accuracy_counts",
    "baseline_setting",
    "derive_rng",
    "generate",
    "generate_train_test",
    "mad_scores",
    "macro_accuracy",
    "micro_accuracy",
    "perplexity",
    "resolve_setting",
    "settings_grid",
    "token_loss",
]
