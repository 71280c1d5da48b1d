"""Program the mixture weights of a pretrained hybrid without searching on the target task.

Two sources, which can be combined:

- MAD results: average the final mixture weights of from-scratch Manticore runs
  per block over the chosen MAD tasks (``program_from_mad``).
- Component metadata: give weight 0 to every component whose maximum context
  (its config's ``max_position_embeddings``, unbounded when the config has none,
  as for Mamba) is shorter than the task's sequences, then renormalise each
  block over the remaining components (``exclude_short_contexts``).

``write_fragment`` writes a recipe fragment with ``hybrid.n_blocks``,
``hybrid.mixture_probs`` and ``stages`` without the search stage, so the
retrain stage uses the programmed weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import yaml

from ..recipe import Recipe
from .registry import get_task
from .results import task_mixture_weights

WEIGHT_FIELD = "final_mixture_weights"


@dataclass
class ProgrammedMixture:
    """(M, K) mixture weights, the component name of each column, and where they came from."""

    probs: np.ndarray
    components: list[str]
    sources: list[str] = field(default_factory=list)

    @property
    def n_blocks(self) -> int:
        return int(self.probs.shape[0])


def program_from_mad(rows: Iterable[Mapping], tasks: Sequence[str] | None = None, architecture: str | None = None,
                     n_blocks: int | None = None) -> ProgrammedMixture:
    """Average the final mixture weights of Manticore MAD runs per block over ``tasks``.

    Per (task, setting) the run with the highest accuracy over the optimiser grid
    counts, a task's weights are the mean over its settings, and the result is the
    unweighted mean over the tasks, renormalised per block. ``architecture`` or
    ``n_blocks`` selects among Manticore runs of different M.

    Raises ValueError when no Manticore row matches, when the matching rows have
    different M, or when a requested task has no Manticore row.
    """
    rows = [row for row in rows if row.get(WEIGHT_FIELD) is not None]
    if not rows:
        raise ValueError(
            "the results contain no Manticore rows (no row has final_mixture_weights): run "
            "`manticore mad run --architectures manticore-m1 manticore-m2` first, or pass the folder of those results"
        )
    if architecture is not None:
        rows = [row for row in rows if row["architecture"] == architecture]
    if n_blocks is not None:
        rows = [row for row in rows if len(row[WEIGHT_FIELD]) == n_blocks]
    if not rows:
        raise ValueError(
            f"no Manticore rows match architecture={architecture!r} and n_blocks={n_blocks!r}: "
            "pass values that the results contain, or leave them out"
        )

    blocks = sorted({len(row[WEIGHT_FIELD]) for row in rows})
    architectures = sorted({row["architecture"] for row in rows})
    if len(blocks) > 1 or len(architectures) > 1:
        raise ValueError(
            f"the results mix Manticore runs of architectures {architectures} with M = {blocks}, "
            "which cannot be averaged per block: pass --n-blocks or --architecture to choose one"
        )
    per_task = task_mixture_weights(rows, WEIGHT_FIELD)[architectures[0]]
    chosen = list(tasks) if tasks else list(per_task)
    for task in chosen:
        get_task(task)
    missing = [task for task in chosen if task not in per_task]
    if missing:
        raise ValueError(
            f"no {architectures[0]} rows for tasks {missing}: run those tasks first, "
            f"or pass --tasks from {sorted(per_task)}"
        )
    probs = np.mean([per_task[task] for task in chosen], axis=0)
    components = rows[0].get("components") or [f"component{k}" for k in range(probs.shape[1])]
    return ProgrammedMixture(normalise_rows(probs), list(components),
                             [f"MAD {architectures[0]} runs on {', '.join(chosen)}"])


def normalise_rows(probs: np.ndarray) -> np.ndarray:
    """Scale each row of non-negative weights to sum to 1."""
    return probs / probs.sum(axis=1, keepdims=True)


def reorder_components(mixture: ProgrammedMixture, order: Sequence[str]) -> ProgrammedMixture:
    """Return the mixture with its columns in ``order``, a permutation of its component names."""
    if sorted(order) != sorted(mixture.components):
        raise ValueError(
            f"component order {list(order)} is not a permutation of the programmed components "
            f"{mixture.components}: list each of them once"
        )
    columns = [mixture.components.index(name) for name in order]
    return ProgrammedMixture(mixture.probs[:, columns], list(order), list(mixture.sources))


def max_context(config) -> float:
    """Return a component config's maximum context: ``max_position_embeddings``, or infinity without one."""
    return getattr(config, "max_position_embeddings", None) or math.inf


def load_max_contexts(components: Sequence[str]) -> list[float]:
    """Read the maximum context of each component (local directory or hub id) from its config."""
    from transformers import AutoConfig

    contexts = []
    for source in components:
        try:
            config = AutoConfig.from_pretrained(source)
        except OSError as error:
            raise ValueError(
                f"could not load the config of component {source!r} ({error}): pass a local model directory, "
                "or a hub id that is in the local cache when offline"
            ) from error
        contexts.append(max_context(config))
    return contexts


def exclude_short_contexts(probs: np.ndarray, names: Sequence[str], contexts: Sequence[float],
                           seq_len: int) -> np.ndarray:
    """Zero the columns of components whose maximum context is shorter than ``seq_len`` and renormalise.

    A block whose remaining weights are all zero gets equal weights on the
    remaining components. Raises ValueError when every component is excluded.
    """
    if len(names) != probs.shape[1] or len(contexts) != probs.shape[1]:
        raise ValueError(
            f"{len(names)} components were given for mixture weights with {probs.shape[1]} columns: "
            "pass one component per column, in column order"
        )
    keep = np.array([context >= seq_len for context in contexts])
    if not keep.any():
        listing = ", ".join(f"{name} ({int(context)} tokens)" for name, context in zip(names, contexts))
        raise ValueError(
            f"every component has a maximum context shorter than seq_len={seq_len}: {listing}. "
            "Pass a seq_len that one of them supports, or add a component without a context limit, such as Mamba"
        )
    kept = probs * keep[None, :]
    totals = kept.sum(axis=1, keepdims=True)
    uniform = np.broadcast_to(keep / keep.sum(), kept.shape)
    return np.where(totals > 0, kept / np.where(totals > 0, totals, 1.0), uniform)


def program_from_metadata(components: Sequence[str], seq_len: int, n_blocks: int = 1,
                          contexts: Sequence[float] | None = None) -> ProgrammedMixture:
    """Start from equal weights and exclude the components that cannot take ``seq_len`` tokens.

    ``contexts`` gives the maximum contexts directly; by default they are read
    from the components' configs.
    """
    if n_blocks < 1:
        raise ValueError(f"n_blocks={n_blocks} is invalid: a hybrid has at least one block")
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} is invalid: pass the task's sequence length in tokens")
    contexts = list(contexts) if contexts is not None else load_max_contexts(components)
    uniform = np.full((n_blocks, len(components)), 1.0 / len(components))
    probs = exclude_short_contexts(uniform, components, contexts, seq_len)
    limits = ", ".join(f"{name}: {'unbounded' if math.isinf(c) else int(c)}" for name, c in zip(components, contexts))
    return ProgrammedMixture(probs, list(components), [f"maximum contexts ({limits}) at seq_len {seq_len}"])


def stages_without_search() -> list[str]:
    """Return the default recipe stages without the search stage."""
    return [stage for stage in Recipe().stages if stage != "search"]


def fragment_mapping(mixture: ProgrammedMixture) -> dict:
    """Return the recipe fragment as a mapping: ``hybrid`` (n_blocks, mixture_probs) and ``stages``."""
    probs = [[round(float(value), 6) for value in row] for row in normalise_rows(mixture.probs)]
    return {"hybrid": {"n_blocks": mixture.n_blocks, "mixture_probs": probs}, "stages": stages_without_search()}


def set_arguments(mixture: ProgrammedMixture) -> list[str]:
    """Return the ``--set KEY=VALUE`` values that apply the fragment to a recipe on the command line."""
    fragment = fragment_mapping(mixture)
    probs = "[" + ", ".join("[" + ", ".join(str(v) for v in row) + "]" for row in fragment["hybrid"]["mixture_probs"]) + "]"
    return [
        f"hybrid.n_blocks={fragment['hybrid']['n_blocks']}",
        f"hybrid.mixture_probs={probs}",
        "stages=[" + ", ".join(fragment["stages"]) + "]",
    ]


def write_fragment(path: Path | str, mixture: ProgrammedMixture) -> Path:
    """Write the recipe fragment as YAML, with comments naming the column order and the sources."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = [f"# Programmed mixture weights. Columns are the components {', '.join(mixture.components)}, in this order:"]
    header.append("# list the recipe's hybrid.components in the same order.")
    header += [f"# Source: {source}" for source in mixture.sources]
    body = yaml.safe_dump(fragment_mapping(mixture), sort_keys=False, default_flow_style=None)
    path.write_text("\n".join(header) + "\n" + body)
    return path
