"""The training loop every stage shares, on Hugging Face `accelerate`.

The same code runs in one CPU process or under `torchrun` / `accelerate
launch` (DDP over gloo or NCCL). The global batch is fixed: each process takes
its share of every global batch, so N processes with batch B reach the same
parameters as one process with batch B.

Search modes (how weights and mixture weights are updated):
    joint        one loss, both optimisers step (first-order DARTS, the default)
    alternating  weights on even steps, mixture weights on odd steps
    bilevel      weights on a training batch, mixture weights on a held-out batch
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .checkpoint import CHECKPOINT_DIR, load_checkpoint, save_checkpoint
from .metrics import MetricsWriter
from .optim import linear_schedule, mixture_optimizer, weight_optimizer

logger = logging.getLogger(__name__)

SEARCH_MODES = ("joint", "alternating", "bilevel")


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is left in place."""


@dataclass
class LoopSettings:
    """Hyper-parameters of one stage's loop."""

    steps: int = 100
    batch_size: int = 8  # global batch, in sequences
    learning_rate: float = 2e-4
    weight_decay: float = 0.01
    mixture_learning_rate: float = 0.05
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    log_every: int = 10
    checkpoint_every: int = 100
    seed: int = 0
    search_mode: str = "joint"


def batch_indices(n_examples: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Example indices of global batch `step`: a fresh permutation each epoch, drop-last."""
    per_epoch = n_examples // batch_size
    epoch, position = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_examples, generator=generator)
    return order[position * batch_size : (position + 1) * batch_size]


class TrainingLoop:
    """Train `model` on packed token blocks for one stage.

    Args:
        weight_parameters: parameters for AdamW with weight decay.
        mixture_parameters: mixture-weight parameters for their own optimiser
            (AdamW without decay, or exponentiated gradient when `mixture_kind` is "simplex").
        held_out: blocks for the mixture step of bilevel search.
        metrics: where every logged value goes (CSV, and TensorBoard when installed).

    Raises:
        ValueError: a batch larger than the data, a batch the processes cannot share
            evenly, or bilevel search without held-out data.
        NonFiniteLossError: a NaN or infinite loss; names the step.
    """

    def __init__(self, model, train_data, settings: LoopSettings, output_dir: Path, stage: str, metrics: MetricsWriter,
                 weight_parameters, mixture_parameters=(), mixture_kind: str = "softmax", held_out=None,
                 accelerator: Accelerator | None = None):
        self.accelerator = accelerator or Accelerator()
        self.settings, self.stage, self.metrics = settings, stage, metrics
        self.output_dir = Path(output_dir)
        self.train_data, self.held_out = train_data, held_out
        self._check_data()
        self.unwrapped = model
        self.model = self.accelerator.prepare(model)
        self.weight_parameters = [p for p in weight_parameters if p.requires_grad]
        self.optimizers, self.schedulers = {}, {}
        if self.weight_parameters:
            self._add_optimizer("weights", weight_optimizer(self.weight_parameters, settings.learning_rate, settings.weight_decay))
        mixture_parameters = [p for p in mixture_parameters if p.requires_grad]
        if mixture_parameters:
            self._add_optimizer("mixture", mixture_optimizer(mixture_parameters, mixture_kind, settings.mixture_learning_rate))
        if not self.optimizers:
            raise ValueError(f"stage {stage!r} has nothing to train: every parameter is frozen")

    def _add_optimizer(self, name, optimizer):
        self.optimizers[name] = optimizer
        self.schedulers[name] = linear_schedule(optimizer, self.settings.steps, self.settings.warmup_steps)

    def _check_data(self):
        s, world = self.settings, self.accelerator.num_processes
        if s.search_mode not in SEARCH_MODES:
            raise ValueError(f"unknown search mode {s.search_mode!r}: choose one of {', '.join(SEARCH_MODES)}")
        if len(self.train_data) < s.batch_size:
            raise ValueError(
                f"stage {self.stage!r}: {len(self.train_data)} training blocks are fewer than the batch size "
                f"{s.batch_size}: add data or lower batch_size"
            )
        if s.batch_size % world:
            raise ValueError(f"batch_size {s.batch_size} cannot be shared evenly by {world} processes: use a multiple of {world}")
        if s.search_mode == "bilevel" and (self.held_out is None or len(self.held_out) < s.batch_size):
            raise ValueError("bilevel search needs held-out data with at least one batch: set search.held_out_fraction")

    def _local_batch(self, data, step, seed_offset=0):
        indices = batch_indices(len(data), self.settings.batch_size, self.settings.seed + seed_offset, step)
        shard = indices[self.accelerator.process_index :: self.accelerator.num_processes]
        input_ids = torch.as_tensor(data[shard.tolist()]["input_ids"], device=self.accelerator.device)
        return {"input_ids": input_ids, "labels": input_ids}

    def _update(self, batch, step, names):
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss = self.model(**batch).loss
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"stage {self.stage!r}: loss is {loss.item()} at step {step}; the last good checkpoint in "
                f"{self.output_dir / CHECKPOINT_DIR} is kept: lower the learning rate and rerun with --resume"
            )
        self.accelerator.backward(loss)
        if self.settings.max_grad_norm and "weights" in names:
            self.accelerator.clip_grad_norm_(self.weight_parameters, self.settings.max_grad_norm)
        for name in names:
            if name in self.optimizers:
                self.optimizers[name].step()
                self.schedulers[name].step()
        return loss.detach()

    def _step(self, step):
        batch = self._local_batch(self.train_data, step)
        mode = self.settings.search_mode
        if "mixture" not in self.optimizers or mode == "joint":
            return self._update(batch, step, list(self.optimizers))
        if mode == "alternating":
            return self._update(batch, step, ["weights" if step % 2 == 0 else "mixture"])
        loss = self._update(batch, step, ["weights"])
        self._update(self._local_batch(self.held_out, step, seed_offset=1), step, ["mixture"])
        return loss

    def _log(self, step, loss, tokens, elapsed):
        values = {"loss": self.accelerator.reduce(loss, "mean").item(), "tokens": tokens, "seconds": elapsed}
        for name, scheduler in self.schedulers.items():
            values[f"lr/{name}"] = scheduler.get_last_lr()[0]
        if hasattr(self.unwrapped, "mixture_weights"):
            for (i, k), value in _enumerate_matrix(self.unwrapped.mixture_weights()):
                values[f"alpha/block{i}/component{k}"] = value
        if self.accelerator.is_main_process:
            self.metrics.write(self.stage, step, values)
        return values

    def _checkpoint(self, step, tokens, elapsed):
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            extra = {"step": step, "tokens": tokens, "seconds": elapsed, "stage": self.stage}
            save_checkpoint(self.output_dir, self.unwrapped, {**self.optimizers, **{f"{n}_schedule": s for n, s in self.schedulers.items()}}, extra)
        self.accelerator.wait_for_everyone()

    def _resume(self):
        stateful = {**self.optimizers, **{f"{n}_schedule": s for n, s in self.schedulers.items()}}
        extra = load_checkpoint(self.output_dir, self.unwrapped, stateful)
        if self.accelerator.is_main_process:
            self.metrics.drop_after(self.stage, extra["step"])
        logger.info("stage %s resumes at step %d", self.stage, extra["step"])
        return extra["step"], extra["tokens"], extra["seconds"]

    def run(self, resume: bool = False) -> dict:
        """Train for `settings.steps` steps; return the final loss, tokens and seconds."""
        s = self.settings
        start, tokens, elapsed = self._resume() if resume and (self.output_dir / CHECKPOINT_DIR).exists() else (0, 0, 0.0)
        self.model.train()
        tokens_per_step = s.batch_size * len(self.train_data[0]["input_ids"])
        last = {"loss": math.nan}
        progress = tqdm(range(start, s.steps), desc=self.stage, disable=not self.accelerator.is_main_process, leave=False)
        for step in progress:
            began = time.perf_counter()
            loss = self._step(step)
            elapsed += time.perf_counter() - began
            tokens += tokens_per_step
            if (step + 1) % s.log_every == 0 or step + 1 == s.steps:
                last = self._log(step + 1, loss, tokens, elapsed)
                progress.set_postfix(loss=f"{last['loss']:.3f}")
            if (step + 1) % s.checkpoint_every == 0 or step + 1 == s.steps:
                self._checkpoint(step + 1, tokens, elapsed)
        return {"loss": last["loss"], "tokens": tokens, "seconds": elapsed, "steps": s.steps}


def _enumerate_matrix(matrix: torch.Tensor):
    for i, row in enumerate(matrix.tolist()):
        for k, value in enumerate(row):
            yield (i, k), value


@torch.no_grad()
def evaluate_language_model(model, data, batch_size: int = 8) -> dict:
    """Mean next-token loss over every block of `data`, and its perplexity."""
    model.eval()
    total_loss, total_tokens = 0.0, 0
    for start in range(0, len(data), batch_size):
        input_ids = torch.as_tensor(data[start : start + batch_size]["input_ids"])
        loss = model(input_ids=input_ids, labels=input_ids).loss
        predicted = input_ids.shape[0] * (input_ids.shape[1] - 1)
        total_loss += loss.item() * predicted
        total_tokens += predicted
    if total_tokens == 0:
        raise ValueError("evaluation data is empty: give the evaluation split at least one block")
    mean = total_loss / total_tokens
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": total_tokens}
