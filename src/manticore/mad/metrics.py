"""MAD metrics: token loss, micro and macro accuracy over scored positions, MAD score.

A position is scored when its target is not IGNORE_INDEX (-100). The MAD reference
reports torchmetrics' ``MulticlassAccuracy`` with its default ``average="macro"``:
the mean of per-class recall over the classes that occur among the scored targets
or predictions, accumulated over the whole test split. ``macro_accuracy`` computes
that value; ``micro_accuracy`` is the plain fraction of correct scored tokens.
Both accept logits of shape (..., vocab) or predicted ids of the targets' shape,
as torch tensors or numpy arrays.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Union

import numpy as np
import torch
import torch.nn.functional as F

from .common import IGNORE_INDEX
from .registry import TASKS

logger = logging.getLogger(__name__)

ArrayLike = Union[torch.Tensor, np.ndarray]

MAD_ROW_KEYS = ("architecture", "task", "setting", "optimizer", "accuracy")
"""Keys that every result row passed to ``mad_scores`` must have."""


def token_loss(logits: ArrayLike, targets: ArrayLike) -> torch.Tensor:
    """Return the mean token cross-entropy over scored positions as a 0-d tensor.

    ``logits`` has shape (..., vocab) and ``targets`` shape (...). The result keeps
    the autograd graph of torch logits and is NaN when no position is scored.
    """
    logits_tensor = torch.as_tensor(logits)
    targets_tensor = torch.as_tensor(targets, device=logits_tensor.device).long()
    if logits_tensor.shape[:-1] != targets_tensor.shape:
        raise ValueError(
            f"logits shape {tuple(logits_tensor.shape)} does not match targets shape "
            f"{tuple(targets_tensor.shape)}: pass logits of shape targets.shape + (vocab,)."
        )
    flat_logits = logits_tensor.reshape(-1, logits_tensor.shape[-1]).float()
    return F.cross_entropy(flat_logits, targets_tensor.reshape(-1), ignore_index=IGNORE_INDEX)


def perplexity(logits: ArrayLike, targets: ArrayLike) -> float:
    """Return exp of ``token_loss``: the perplexity over scored positions."""
    return math.exp(token_loss(logits, targets).item())


@dataclass
class AccuracyCounts:
    """Per-class counts over scored positions, summed over batches with ``+``.

    Entry c of ``correct`` counts scored positions with target c predicted right, of
    ``targets`` those with target c, of ``predicted`` those predicted as c.
    """

    correct: np.ndarray
    targets: np.ndarray
    predicted: np.ndarray

    def __add__(self, other: AccuracyCounts) -> AccuracyCounts:
        size = max(self.correct.size, other.correct.size)
        return AccuracyCounts(*(
            _pad(mine, size) + _pad(theirs, size)
            for mine, theirs in ((self.correct, other.correct), (self.targets, other.targets),
                                 (self.predicted, other.predicted))
        ))

    def micro(self) -> float:
        """Return correct / scored positions, or NaN when nothing is scored."""
        num_scored = int(self.targets.sum())
        return float(self.correct.sum() / num_scored) if num_scored else math.nan

    def macro(self, include_predicted_classes: bool = True) -> float:
        """Return the mean per-class recall, or NaN when nothing is scored.

        The mean runs over the classes present among the scored targets. With
        ``include_predicted_classes`` it also runs over classes that are only
        predicted, which count with recall 0. That is torchmetrics' macro average,
        which drops only classes without true positives, false positives and
        false negatives.
        """
        present = self.targets > 0
        if include_predicted_classes:
            present |= self.predicted > 0
        if not present.any():
            return math.nan
        recall = np.divide(self.correct, self.targets, out=np.zeros(self.correct.size), where=self.targets > 0)
        return float(recall[present].mean())


def accuracy_counts(outputs: ArrayLike, targets: ArrayLike) -> AccuracyCounts:
    """Count correct, target and predicted classes over the scored positions.

    ``outputs`` are logits of shape targets.shape + (vocab,) or predicted ids of
    targets.shape.
    """
    targets_array = _to_numpy(targets).astype(np.int64)
    predictions = _predictions(_to_numpy(outputs), targets_array)
    scored = targets_array != IGNORE_INDEX
    scored_targets = targets_array[scored]
    scored_predictions = predictions[scored]
    if (scored_targets < 0).any() or (scored_predictions < 0).any():
        raise ValueError(f"invalid class id: targets and predictions must be >= 0 or {IGNORE_INDEX}, but one is negative.")
    size = int(max(scored_targets.max(initial=-1), scored_predictions.max(initial=-1))) + 1
    return AccuracyCounts(
        correct=np.bincount(scored_targets[scored_targets == scored_predictions], minlength=size),
        targets=np.bincount(scored_targets, minlength=size),
        predicted=np.bincount(scored_predictions, minlength=size),
    )


def micro_accuracy(outputs: ArrayLike, targets: ArrayLike) -> float:
    """Return the fraction of scored positions predicted right (NaN if none is scored)."""
    return accuracy_counts(outputs, targets).micro()


def macro_accuracy(outputs: ArrayLike, targets: ArrayLike, include_predicted_classes: bool = True) -> float:
    """Return the mean per-class recall over scored positions, as the MAD reference reports.

    Pass a whole split at once, or add ``accuracy_counts`` of batches: the mean of
    per-batch values differs. See ``AccuracyCounts.macro`` for the classes counted.
    """
    return accuracy_counts(outputs, targets).macro(include_predicted_classes)


def mad_scores(rows: Iterable[Mapping[str, object]]) -> dict[str, dict[str, object]]:
    """Aggregate benchmark runs into MAD scores per architecture.

    Each row has the keys of MAD_ROW_KEYS, and ``setting`` is a dict or any hashable
    value. Rows with a NaN or None accuracy are dropped. Per (architecture, task,
    setting) the best accuracy over the optimizer grid is kept. A task's score is
    the unweighted mean over its settings, and ``mean`` is the unweighted mean over
    the tasks present. Returns ``{architecture: {"tasks": {task: score}, "mean": mean}}``.
    """
    best = _best_per_setting(rows)
    per_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (architecture, task, _), accuracy in best.items():
        per_task[architecture][task].append(accuracy)
    scores: dict[str, dict[str, object]] = {}
    for architecture, tasks in per_task.items():
        task_scores = {task: float(np.mean(values)) for task, values in tasks.items()}
        missing = [task for task in TASKS if task not in task_scores]
        if missing:
            logger.warning("MAD mean of %s covers no results for tasks %s", architecture, missing)
        scores[architecture] = {"tasks": task_scores, "mean": float(np.mean(list(task_scores.values())))}
    return scores


def _best_per_setting(rows: Iterable[Mapping[str, object]]) -> dict[tuple, float]:
    """Return the highest accuracy per (architecture, task, setting key)."""
    best: dict[tuple, float] = {}
    num_dropped = 0
    for row in rows:
        missing = [key for key in MAD_ROW_KEYS if key not in row]
        if missing:
            raise ValueError(f"result row {dict(row)} lacks keys {missing}: every row needs {list(MAD_ROW_KEYS)}.")
        accuracy = row["accuracy"]
        if accuracy is None or math.isnan(float(accuracy)):
            num_dropped += 1
            continue
        group = (row["architecture"], row["task"], _setting_key(row["setting"]))
        best[group] = max(best.get(group, -math.inf), float(accuracy))
    if num_dropped:
        logger.warning("dropped %d result rows whose accuracy is NaN or None", num_dropped)
    return best


def _setting_key(setting: object) -> object:
    """Return a hashable key for a setting dict (sorted JSON) or the setting itself."""
    if isinstance(setting, Mapping):
        return json.dumps(dict(setting), sort_keys=True, default=str)
    return setting


def _predictions(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Return predicted ids: the argmax of logits, or the outputs if they are ids."""
    if outputs.shape == targets.shape:
        return outputs.astype(np.int64)
    if outputs.ndim == targets.ndim + 1 and outputs.shape[:-1] == targets.shape:
        return outputs.argmax(axis=-1)
    raise ValueError(
        f"outputs shape {outputs.shape} fits neither logits nor predicted ids for targets shape "
        f"{targets.shape}: pass logits of shape targets.shape + (vocab,) or ids of shape targets.shape."
    )


def _to_numpy(values: ArrayLike) -> np.ndarray:
    """Return a numpy view or copy of a tensor or array (float32 for low-precision floats)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.is_floating_point() and values.dtype != torch.float64:
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def _pad(counts: np.ndarray, size: int) -> np.ndarray:
    """Return ``counts`` zero-padded at the end to ``size`` entries."""
    return np.pad(counts, (0, size - counts.size))
