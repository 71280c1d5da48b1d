"""The training loop every stage shares, on Hugging Face `accelerate`.

The same code runs in one CPU process or under `torchrun` / `accelerate
launch` (DDP over gloo or NCCL). The global batch is fixed: each process takes
its share of every global batch, so N processes with batch B reach the same
parameters as one process with batch B.

Search modes (how weights and mixture weights are updated):
    joint        one loss, both optimisers step (first-order DARTS, the default)
    alternating  weights on even steps, mixture weights on odd steps
    bilevel      weights on a training batch, mixture weights on a held-out batch

Steps count from 0 in the code (even and odd above) and from 1 in metrics,
checkpoints and error messages, where step n names the n-th update.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs
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


def default_accelerator() -> Accelerator:
    """Return an `Accelerator` that also runs multi-process on CPU-only machines.

    Under `torchrun`, accelerate 1.16 starts gloo only when asked for CPU
    (`cpu=True`). Without it, every process trains alone on the full batch.
    Unused parameters are allowed because a fixed mixture weight of 0 or 1
    skips a component or its projectors, and DDP would otherwise raise on the
    second step.
    """
    return Accelerator(
        cpu=_cpu_only(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def distributed_state() -> PartialState:
    """Return the process state that `default_accelerator` uses, for the process index and barriers."""
    return PartialState(cpu=_cpu_only())


def _cpu_only() -> bool:
    return not torch.accelerator.is_available()


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
        self.accelerator = accelerator or default_accelerator()
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
            held_out_blocks = 0 if self.held_out is None else len(self.held_out)
            raise ValueError(
                f"bilevel search needs held-out data of at least batch_size={s.batch_size} blocks, got {held_out_blocks}: "
                "pass held_out (a recipe takes it from data.validation or data.validation_fraction)"
            )

    def _local_batch(self, data, step, seed_offset=0):
        indices = batch_indices(len(data), self.settings.batch_size, self.settings.seed + seed_offset, step)
        shard = indices[self.accelerator.process_index :: self.accelerator.num_processes]
        rows = data[shard.tolist()]
        batch = {
            name: torch.as_tensor(rows[name], device=self.accelerator.device)
            for name in ("input_ids", "attention_mask", "labels")
            if name in rows
        }
        batch.setdefault("labels", batch["input_ids"])  # language modelling: the model shifts the inputs
        return batch

    def _update(self, batch, step, names):
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss = self.model(**batch).loss
        # Every process checks the sum over all processes, so all of them raise together
        # and none waits forever in the next gradient all-reduce.
        if not torch.isfinite(self.accelerator.reduce(loss.detach().clone(), "sum")):
            raise NonFiniteLossError(
                f"stage {self.stage!r}: the loss is {loss.item()} at step {step + 1}, so training stopped. "
                f"Any checkpoint in {self.output_dir / CHECKPOINT_DIR} predates that step and is kept. "
                "Lower the learning rate and rerun with --resume."
            )
        self.accelerator.backward(loss)
        if self.settings.max_grad_norm and "weights" in names:
            self.accelerator.clip_grad_norm_(self.weight_parameters, self.settings.max_grad_norm)
        for name in names:
            if name in self.optimizers:
                self.optimizers[name].step()
        return loss.detach()

    def _step(self, step):
        batch = self._local_batch(self.train_data, step)
        mode = self.settings.search_mode
        if "mixture" not in self.optimizers or mode == "joint":
            loss = self._update(batch, step, list(self.optimizers))
        elif mode == "alternating":
            loss = self._update(batch, step, ["weights" if step % 2 == 0 else "mixture"])
        else:
            loss = self._update(batch, step, ["weights"])
            self._update(self._local_batch(self.held_out, step, seed_offset=1), step, ["mixture"])
        self._advance_schedules()
        return loss

    def _advance_schedules(self):
        """Step every schedule once per loop step, so each rate depends on the loop step only.

        In alternating search an optimiser skips every other step, but its schedule still
        advances, so its rate reaches zero at `settings.steps` like the other's.
        """
        with warnings.catch_warnings():
            # Raised once when a schedule steps before its optimiser's first step
            # (the mixture schedule at step 0 of alternating search).
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            for scheduler in self.schedulers.values():
                scheduler.step()

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

    def _checkpoint(self, step, tokens, elapsed, loss):
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            extra = {"step": step, "tokens": tokens, "seconds": elapsed, "stage": self.stage, "loss": loss}
            save_checkpoint(self.output_dir, self.unwrapped, {**self.optimizers, **{f"{n}_schedule": s for n, s in self.schedulers.items()}}, extra)
        self.accelerator.wait_for_everyone()

    def _resume(self):
        stateful = {**self.optimizers, **{f"{n}_schedule": s for n, s in self.schedulers.items()}}
        extra = load_checkpoint(self.output_dir, self.unwrapped, stateful)
        self._apply_learning_rates()
        if self.accelerator.is_main_process:
            self.metrics.drop_after(self.stage, extra["step"])
        logger.info("stage %s resumes at step %d", self.stage, extra["step"])
        return extra["step"], extra["tokens"], extra["seconds"], extra.get("loss", math.nan)

    def _apply_learning_rates(self):
        """Apply the settings' learning rates after loading a checkpoint, which stores the earlier run's rates.

        A run resumed with a lower learning rate then uses it at the restored schedule position.
        """
        rates = {"weights": self.settings.learning_rate, "mixture": self.settings.mixture_learning_rate}
        for name, scheduler in self.schedulers.items():
            groups = self.optimizers[name].param_groups
            scheduler.base_lrs = [rates[name]] * len(groups)
            for group, factor in zip(groups, scheduler.lr_lambdas):
                group["initial_lr"] = rates[name]
                group["lr"] = rates[name] * factor(scheduler.last_epoch)

    def run(self, resume: bool = False, stop_after: int | None = None) -> dict:
        """Train for `settings.steps` steps and return the last logged loss, tokens, seconds and steps done.

        Args:
            resume: continue from the checkpoint in `output_dir` when there is one.
            stop_after: return once this many steps are done, without a checkpoint,
                as an interruption would. The learning-rate schedule still spans
                `settings.steps`.
        """
        s = self.settings
        start, tokens, elapsed, loss_value = 0, 0, 0.0, math.nan
        if resume and (self.output_dir / CHECKPOINT_DIR).exists():
            start, tokens, elapsed, loss_value = self._resume()
        stop = s.steps if stop_after is None else min(s.steps, stop_after)
        self.model.train()
        tokens_per_step = s.batch_size * len(self.train_data[0]["input_ids"])
        progress = tqdm(range(start, stop), desc=self.stage, disable=not self.accelerator.is_main_process, leave=False)
        done = start
        for step in progress:
            began = time.perf_counter()
            loss = self._step(step)
            elapsed += time.perf_counter() - began
            tokens += tokens_per_step
            done = step + 1
            if done % s.log_every == 0 or done == s.steps:
                loss_value = self._log(done, loss, tokens, elapsed)["loss"]
                progress.set_postfix(loss=f"{loss_value:.3f}")
            if done % s.checkpoint_every == 0 or done == s.steps:
                self._checkpoint(done, tokens, elapsed, loss_value)
        return {"loss": loss_value, "tokens": tokens, "seconds": elapsed, "steps": done}


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
