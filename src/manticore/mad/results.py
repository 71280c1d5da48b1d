"""MAD results tables: JSON Lines rows, the MAD score table and the report figures.

A results folder contains ``results.jsonl``, one JSON object per training run,
and ``protocol.json``, the definition of the protocol that produced the rows.
Every row also names its protocol. ``write_report`` adds ``scores.md``,
``task_accuracy.png`` and, when there are Manticore rows, ``mixture_weights.png``.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .metrics import mad_scores
from .registry import TASKS

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
PROTOCOL_FILE = "protocol.json"


def results_path(directory: Path | str) -> Path:
    """Return the results table of a folder, or the path itself when it names a file."""
    path = Path(directory)
    return path if path.suffix == ".jsonl" else path / RESULTS_FILE


def read_rows(path: Path | str) -> list[dict]:
    """Read the rows of a results table (a folder or a ``.jsonl`` file); a missing table has no rows."""
    path = results_path(path)
    if not path.exists():
        return []
    rows = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"line {number} of {path} is not valid JSON ({error}): a run was probably interrupted while "
                    "writing it. Delete that line and run again to redo that run."
                ) from error
    return rows


def append_row(path: Path | str, row: Mapping) -> None:
    """Append one row to a results table and flush it, so an interrupted suite keeps finished runs."""
    path = results_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(row, sort_keys=True, allow_nan=False) + "\n")
        handle.flush()


def run_key(row: Mapping) -> tuple[str, str, str, str]:
    """Return the identity of a run: architecture, task, setting and optimiser setting (as sorted JSON)."""
    return (
        row["architecture"],
        row["task"],
        json.dumps(row["setting"], sort_keys=True),
        json.dumps(row["optimizer"], sort_keys=True),
    )


def protocols_of(rows: Iterable[Mapping]) -> list[str]:
    """Return the protocol names found in ``rows``, in first-seen order."""
    return list(dict.fromkeys(str(row.get("protocol")) for row in rows))


def score_table(rows: list[Mapping]) -> str:
    """Return the MAD score table as Markdown: one row per architecture, one column per task and the mean.

    Scores follow ``mad_scores``: the best accuracy over the optimiser grid per
    setting, averaged over a task's settings, then over the tasks present. A task
    without results shows "-", and the mean then covers fewer tasks.
    """
    scores = mad_scores(rows)
    tasks = [task for task in TASKS if any(row["task"] == task for row in rows)]
    architectures = list(dict.fromkeys(row["architecture"] for row in rows))
    header = "| architecture | " + " | ".join(tasks) + " | mean |"
    lines = [header, "|" + "---|" * (len(tasks) + 2)]
    for architecture in architectures:
        if architecture not in scores:
            continue
        task_scores = scores[architecture]["tasks"]
        cells = [f"{task_scores[task]:.3f}" if task in task_scores else "-" for task in tasks]
        lines.append(f"| {architecture} | " + " | ".join(cells) + f" | {scores[architecture]['mean']:.3f} |")
    return "\n".join(lines)


def best_rows(rows: Iterable[Mapping]) -> list[Mapping]:
    """Return, per (architecture, task, setting), the row with the highest accuracy; rows without one are dropped."""
    best: dict[tuple, Mapping] = {}
    for row in rows:
        accuracy = row.get("accuracy")
        if accuracy is None or math.isnan(float(accuracy)):
            continue
        group = run_key(row)[:3]
        if group not in best or accuracy > best[group]["accuracy"]:
            best[group] = row
    return list(best.values())


def task_mixture_weights(rows: Iterable[Mapping], field: str = "final_mixture_weights") -> dict[str, dict[str, np.ndarray]]:
    """Average the mixture weights of the Manticore runs per architecture and task.

    Per (task, setting) only the run with the highest accuracy over the optimiser
    grid counts, as in the MAD score, and a task's weights are the mean (M, K)
    array over its settings. Returns ``{architecture: {task: array}}``.
    """
    grouped: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for row in best_rows(row for row in rows if row.get(field) is not None):
        grouped[row["architecture"]][row["task"]].append(np.asarray(row[field], dtype=np.float64))
    return {
        architecture: {task: np.mean(arrays, axis=0) for task, arrays in tasks.items()}
        for architecture, tasks in grouped.items()
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_task_accuracy(rows: list[Mapping], path: Path) -> Path:
    """Draw the MAD score of every architecture per task as grouped bars and save a PNG."""
    plt = _pyplot()
    scores = mad_scores(rows)
    tasks = [task for task in TASKS if any(row["task"] == task for row in rows)]
    architectures = [name for name in dict.fromkeys(row["architecture"] for row in rows) if name in scores]
    width = 0.8 / max(len(architectures), 1)
    figure, axis = plt.subplots(figsize=(max(6.0, 1.6 * len(tasks)) + 1.5, 4.0))
    positions = np.arange(len(tasks))
    for index, architecture in enumerate(architectures):
        values = [scores[architecture]["tasks"].get(task, np.nan) for task in tasks]
        axis.bar(positions + index * width - 0.4 + width / 2, values, width, label=architecture)
    axis.set_xticks(positions, [task.replace("-in-context", "").replace("-", "\n") for task in tasks], fontsize=8)
    axis.set(ylabel="test accuracy (MAD score)", ylim=(0, 1), title=f"MAD task accuracy ({', '.join(protocols_of(rows))})")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_mixture_weights(rows: list[Mapping], path: Path) -> Path | None:
    """Draw the learned mixture weights of each Manticore architecture per task and block; None without Manticore rows."""
    weights = task_mixture_weights(rows)
    if not weights:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(weights), figsize=(6.5 * len(weights), 4.0), squeeze=False)
    for axis, (architecture, per_task) in zip(axes[0], sorted(weights.items())):
        components = next((row["components"] for row in rows if row["architecture"] == architecture), None)
        tasks = [task for task in TASKS if task in per_task]
        n_blocks, n_components = per_task[tasks[0]].shape
        width = 0.8 / n_blocks
        for block in range(n_blocks):
            bottom = np.zeros(len(tasks))
            for k in range(n_components):
                values = np.array([per_task[task][block, k] for task in tasks])
                label = None
                if block == 0:
                    label = components[k] if components else f"component {k}"
                positions = np.arange(len(tasks)) + block * width - 0.4 + width / 2
                axis.bar(positions, values, width * 0.9, bottom=bottom, label=label, color=f"C{k}",
                         edgecolor="white", hatch="" if block % 2 == 0 else "//")
                bottom += values
        axis.set_xticks(np.arange(len(tasks)), [task.replace("-in-context", "").replace("-", "\n") for task in tasks],
                        fontsize=8)
        axis.set(title=f"{architecture}: weights per block (left to right)", ylabel="mixture weight", ylim=(0, 1))
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(directory: Path | str) -> tuple[str, list[Path]]:
    """Write ``scores.md`` and the PNG figures next to a results table; return the table text and the figures.

    Raises ValueError when the table has no rows.
    """
    path = results_path(directory)
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"no MAD results in {path}: run `manticore mad run --output {path.parent}` first")
    folder = path.parent
    table = f"Protocol: {', '.join(protocols_of(rows))}\n\n" + score_table(rows)
    (folder / "scores.md").write_text(table + "\n")
    figures = [plot_task_accuracy(rows, folder / "task_accuracy.png")]
    mixture = plot_mixture_weights(rows, folder / "mixture_weights.png")
    if mixture is not None:
        figures.append(mixture)
    return table, figures
