"""MAD synthetic tasks: seeded, leak-free generators of the six tasks and their metrics.

``generate(task, num_examples, split, seed, **setting)`` returns int64 arrays
``(inputs, targets)`` of shape (num_examples, length) with ignored targets set to
-100. ``settings_grid(task)`` lists the benchmark settings of a task and
``baseline_setting(task)`` its baseline. The tasks are in-context-recall,
fuzzy-in-context-recall, noisy-in-context-recall, selective-copying, compression
and memorization (Poli et al., "Mechanistic Design and Scaling of Hybrid
Architectures", arXiv 2403.17844).

``build_architecture`` builds the architectures that the benchmark trains: GPT-Neo,
Mamba, MambaFormer, striped Hyena and from-scratch Manticore hybrids.
``run_suite`` trains and evaluates them under a ``Protocol`` (full, reduced or
smoke), and ``write_report`` scores the results. ``program_from_mad`` and
``program_from_metadata`` turn results or component metadata into mixture
weights for a pretrained hybrid.
"""

from .architectures import ARCHITECTURES, build_architecture, build_task_model
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
from .program import ProgrammedMixture, exclude_short_contexts, program_from_mad, program_from_metadata, write_fragment
from .protocol import PROTOCOLS, Protocol, get_protocol, run_suite, train_and_evaluate
from .registry import NUM_TEST_EXAMPLES, TASKS, TaskSpec, baseline_setting, resolve_setting, settings_grid
from .results import read_rows, score_table, write_report

__all__ = [
    "ARCHITECTURES",
    "IGNORE_INDEX",
    "NUM_TEST_EXAMPLES",
    "PROTOCOLS",
    "TASKS",
    "AccuracyCounts",
    "ProgrammedMixture",
    "Protocol",
    "TaskSpec",
    "accuracy_counts",
    "baseline_setting",
    "build_architecture",
    "build_task_model",
    "derive_rng",
    "exclude_short_contexts",
    "generate",
    "generate_train_test",
    "get_protocol",
    "mad_scores",
    "macro_accuracy",
    "micro_accuracy",
    "perplexity",
    "program_from_mad",
    "program_from_metadata",
    "read_rows",
    "resolve_setting",
    "run_suite",
    "score_table",
    "settings_grid",
    "token_loss",
    "train_and_evaluate",
    "write_fragment",
    "write_report",
]
