"""Training and evaluation protocols of the MAD benchmark, and the runner that applies them.

``full`` is the reference protocol: every benchmark setting, the learning rate x
weight decay grid, 200 epochs, batch 128, 1,280 test examples, early stop at
test accuracy 0.999, and the metrics of the epoch with the lowest test loss.
``reduced`` is the default for CPUs: one shortened setting per task, fewer
examples and epochs, and one optimiser setting. ``smoke`` only checks that
everything runs. Differences from the MAD reference code: float32 instead of
bfloat16, and AdamW betas (0.9, 0.98), which the Manticore MAD setup uses, in
place of PyTorch's default (0.9, 0.999). "accuracy" is the macro accuracy (the
mean per-class recall, which the reference reports), and rows also record the
micro accuracy.

The project's shared ``TrainingLoop`` trains packed next-token blocks with a
linear schedule. MAD examples carry their own aligned targets with ignored
positions, and the protocol needs a per-epoch cosine schedule and a test
evaluation after every epoch, so this module has its own loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .architectures import DEFAULT_WIDTH, MANTICORE_COMPONENTS, build_task_model, get_architecture
from .generation import generate_train_test
from .metrics import AccuracyCounts, accuracy_counts, token_loss
from .registry import TASKS, baseline_setting, get_task, resolve_setting, settings_grid
from .results import PROTOCOL_FILE, append_row, protocols_of, read_rows, results_path, run_key

logger = logging.getLogger(__name__)

DEFAULT_MIXTURE_LEARNING_RATE = 0.1
PROGRAMMING_MIXTURE_LEARNING_RATE = 0.01
CHECKPOINT_CHOICES = ("lowest-test-loss", "last")


@dataclass(frozen=True)
class Protocol:
    """Training and evaluation rules for every (architecture, task, setting, optimiser setting) run.

    ``all_settings`` selects the benchmark grid of each task, otherwise only its
    baseline. ``setting_overrides`` changes keys of every chosen setting per task,
    and ``task_epochs`` replaces ``epochs`` per task. ``checkpoint`` chooses which
    epoch's weights give the reported metrics.
    """

    name: str
    description: str
    epochs: int
    batch_size: int
    num_test_examples: int
    learning_rates: tuple[float, ...]
    weight_decays: tuple[float, ...]
    all_settings: bool
    setting_overrides: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    task_epochs: Mapping[str, int] = field(default_factory=dict)
    width: int = DEFAULT_WIDTH
    early_stop_accuracy: float = 0.999
    min_learning_rate: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.98)
    checkpoint: str = "last"
    seed: int = 12345

    def settings(self, task: str) -> list[dict]:
        """Return the full, validated settings of ``task`` that this protocol trains on."""
        chosen = settings_grid(task) if self.all_settings else [baseline_setting(task)]
        overrides = dict(self.setting_overrides.get(task, {}))
        return [resolve_setting(task, {**setting, **overrides}) for setting in chosen]

    def epochs_for(self, task: str) -> int:
        return int(self.task_epochs.get(task, self.epochs))

    def optimizer_grid(self) -> list[dict]:
        return [{"learning_rate": lr, "weight_decay": wd} for lr in self.learning_rates for wd in self.weight_decays]

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


_SHORT_RECALL = {"seq_len": 64, "num_train_examples": 4096}

PROTOCOLS: dict[str, Protocol] = {
    "full": Protocol(
        name="full",
        description="MAD reference protocol: every benchmark setting, lr {1e-4, 5e-4, 1e-3} x weight decay "
                    "{0, 0.1}, 200 epochs, batch 128, 1280 test examples, metrics of the lowest-test-loss epoch.",
        epochs=200, batch_size=128, num_test_examples=1280,
        learning_rates=(1e-4, 5e-4, 1e-3), weight_decays=(0.0, 0.1), all_settings=True,
        checkpoint="lowest-test-loss",
    ),
    "reduced": Protocol(
        name="reduced",
        description="CPU protocol: one setting per task (recall tasks and selective copying shortened to 64 tokens, "
                    "4096 training examples; compression 4096 examples; memorization at its baseline), "
                    "lr 1e-3 without weight decay, 192 steps of batch 64 per task, 256 test examples, "
                    "metrics of the last epoch.",
        epochs=3, batch_size=64, num_test_examples=256,
        learning_rates=(1e-3,), weight_decays=(0.0,), all_settings=False,
        setting_overrides={
            "in-context-recall": _SHORT_RECALL,
            "fuzzy-in-context-recall": _SHORT_RECALL,
            "noisy-in-context-recall": _SHORT_RECALL,
            "selective-copying": {**_SHORT_RECALL, "num_tokens_to_copy": 8},
            "compression": {"num_train_examples": 4096},
        },
        task_epochs={"memorization": 48},
    ),
    "smoke": Protocol(
        name="smoke",
        description="Check that every part runs: tiny settings, width 32, one epoch, 64 training and 32 test examples.",
        epochs=1, batch_size=32, num_test_examples=32,
        learning_rates=(1e-3,), weight_decays=(0.0,), all_settings=False, width=32,
        setting_overrides={
            "in-context-recall": {"seq_len": 16, "num_train_examples": 64},
            "fuzzy-in-context-recall": {"seq_len": 32, "num_train_examples": 64},
            "noisy-in-context-recall": {"seq_len": 16, "num_train_examples": 64},
            "selective-copying": {"seq_len": 16, "num_tokens_to_copy": 4, "num_train_examples": 64},
            "compression": {"seq_len": 8, "num_train_examples": 64},
            "memorization": {"seq_len": 8, "num_train_examples": 64},
        },
    ),
}


def get_protocol(name: str) -> Protocol:
    """Return the protocol ``name``, or raise ValueError naming the valid ones."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown MAD protocol {name!r}. Valid protocols: {', '.join(PROTOCOLS)}.")
    return PROTOCOLS[name]


@torch.no_grad()
def evaluate(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> dict:
    """Return the token loss, micro and macro accuracy of ``model`` over one split.

    Loss and accuracies run over the scored positions of the whole split, so
    batch boundaries do not change them.
    """
    model.eval()
    loss_sum, scored = 0.0, 0
    counts = AccuracyCounts(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    for start in range(0, len(inputs), batch_size):
        logits = model(inputs[start : start + batch_size])
        batch_targets = targets[start : start + batch_size]
        batch_scored = int((batch_targets != -100).sum())
        if batch_scored:
            loss_sum += token_loss(logits, batch_targets).item() * batch_scored
            scored += batch_scored
        counts = counts + accuracy_counts(logits, batch_targets)
    return {
        "loss": loss_sum / scored if scored else math.nan,
        "micro_accuracy": counts.micro(),
        "macro_accuracy": counts.macro(),
    }


def _mixture_list(model: torch.nn.Module) -> list[list[float]] | None:
    weights = model.mixture_weights()
    return None if weights is None else [[round(float(value), 6) for value in row] for row in weights.tolist()]


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _optimizers(model: torch.nn.Module, optimizer: Mapping, protocol: Protocol, epochs: int,
                mixture_learning_rate: float) -> tuple[list[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]:
    """Build AdamW for the weights with its cosine schedule, and AdamW for Manticore's mixture weights."""
    mixture_parameters = model.mixture_parameters()
    mixture_ids = {id(parameter) for parameter in mixture_parameters}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in mixture_ids]
    weight_optimizer = torch.optim.AdamW(weights, lr=optimizer["learning_rate"], betas=protocol.betas,
                                         weight_decay=optimizer["weight_decay"])
    optimizers = [weight_optimizer]
    if mixture_parameters:
        optimizers.append(torch.optim.AdamW(mixture_parameters, lr=mixture_learning_rate, betas=protocol.betas,
                                            weight_decay=0.0))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(weight_optimizer, T_max=epochs,
                                                          eta_min=protocol.min_learning_rate)
    return optimizers, schedule


def _train_epoch(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], inputs: torch.Tensor,
                 targets: torch.Tensor, order: torch.Tensor, batch_size: int) -> float:
    """Run one epoch over ``order`` and return the mean training loss, or the first non-finite loss."""
    model.train()
    loss_sum, num_batches = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss = token_loss(model(inputs[batch]), targets[batch])
        if not torch.isfinite(loss):
            return loss.item()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        loss_sum, num_batches = loss_sum + loss.item(), num_batches + 1
    return loss_sum / num_batches


def train_and_evaluate(architecture: str, task: str, setting: Mapping, optimizer: Mapping, protocol: Protocol,
                       data: Mapping[str, tuple[np.ndarray, np.ndarray]],
                       mixture_learning_rate: float = DEFAULT_MIXTURE_LEARNING_RATE) -> dict:
    """Train one architecture on one task setting with one optimiser setting, and return its result row.

    Weights use AdamW with a cosine schedule over the protocol's epochs, stepped
    once per epoch down to ``min_learning_rate``. Manticore's mixture weights use
    their own AdamW at the constant ``mixture_learning_rate`` without weight
    decay. After every epoch the test split is evaluated, and training stops once
    the test macro accuracy reaches ``early_stop_accuracy``. A NaN or infinite
    training loss ends the run, and its row has null metrics (``diverged`` true).
    """
    spec = get_architecture(architecture)
    train_inputs, train_targets = (torch.as_tensor(array) for array in data["train"])
    test_inputs, test_targets = (torch.as_tensor(array) for array in data["test"])
    torch.manual_seed(protocol.seed)
    model = build_task_model(architecture, task, int(setting["vocab_size"]), train_inputs.shape[1], protocol.width)
    epochs = protocol.epochs_for(task)
    optimizers, schedule = _optimizers(model, optimizer, protocol, epochs, mixture_learning_rate)
    generator = torch.Generator().manual_seed(protocol.seed)

    history, best_state, best_loss, selected_epoch = [], None, math.inf, 0
    diverged, began = False, time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(train_inputs), generator=generator)
        train_loss = _train_epoch(model, optimizers, train_inputs, train_targets, order, protocol.batch_size)
        if not math.isfinite(train_loss):
            logger.warning("%s on %s diverged in epoch %d (training loss %s), so its row gets null metrics",
                           architecture, task, epoch, train_loss)
            diverged = True
            break
        schedule.step()
        test = evaluate(model, test_inputs, test_targets, protocol.batch_size)
        history.append({"epoch": epoch, "train_loss": train_loss, "test_loss": _finite_or_none(test["loss"]),
                        "test_accuracy": _finite_or_none(test["macro_accuracy"]),
                        "mixture_weights": _mixture_list(model)})
        logger.info("%s %s epoch %d/%d: train loss %.4f, test loss %.4f, test accuracy %.4f", architecture, task,
                    epoch, epochs, train_loss, test["loss"], test["macro_accuracy"])
        if protocol.checkpoint == "lowest-test-loss" and test["loss"] < best_loss:
            best_loss, selected_epoch = test["loss"], epoch
            best_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
        if test["macro_accuracy"] >= protocol.early_stop_accuracy:
            break
    seconds = time.perf_counter() - began

    final_mixture = _mixture_list(model)
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        selected_epoch = len(history)
    if diverged:
        result = {"loss": math.nan, "micro_accuracy": math.nan, "macro_accuracy": math.nan}
    else:
        result = evaluate(model, test_inputs, test_targets, protocol.batch_size)
    return {
        "protocol": protocol.name,
        "architecture": architecture,
        "task": task,
        "setting": dict(setting),
        "optimizer": dict(optimizer),
        "seed": protocol.seed,
        "width": protocol.width,
        "parameters": sum(p.numel() for p in model.parameters()),
        "loss": _finite_or_none(result["loss"]),
        "accuracy": _finite_or_none(result["macro_accuracy"]),
        "micro_accuracy": _finite_or_none(result["micro_accuracy"]),
        "macro_accuracy": _finite_or_none(result["macro_accuracy"]),
        "train_loss": history[-1]["train_loss"] if history else None,
        "epochs_run": len(history),
        "selected_epoch": selected_epoch,
        "stopped_early": bool(history) and (history[-1]["test_accuracy"] or 0.0) >= protocol.early_stop_accuracy,
        "diverged": diverged,
        "seconds": round(seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "n_blocks": spec.n_blocks,
        "components": list(MANTICORE_COMPONENTS) if spec.is_manticore else None,
        "mixture_weights": _mixture_list(model) if spec.is_manticore else None,
        "final_mixture_weights": final_mixture if spec.is_manticore else None,
        "history": history,
    }


def check_output(output: Path, protocol: Protocol) -> list[dict]:
    """Return the rows already in ``output``, or raise ValueError if another protocol produced them."""
    existing = read_rows(output)
    names = protocols_of(existing)
    protocol_file = Path(output) / PROTOCOL_FILE
    if protocol_file.exists():
        names.append(json.loads(protocol_file.read_text()).get("name"))
    others = [name for name in names if name != protocol.name]
    if others:
        raise ValueError(
            f"output folder {str(output)!r} contains results of protocol {others[0]!r}, not {protocol.name!r}: "
            f"pass --output with a new folder, or --protocol {others[0]} to resume those results"
        )
    return existing


def run_suite(architectures: list[str], tasks: list[str], protocol: Protocol | str, output: Path | str,
              mixture_learning_rate: float = DEFAULT_MIXTURE_LEARNING_RATE) -> list[dict]:
    """Train and evaluate every architecture on every task setting and optimiser setting of ``protocol``.

    Rows are appended to ``output/results.jsonl`` as runs finish, and runs whose
    row is already there are skipped, so an interrupted suite resumes where it
    stopped. Returns the rows written by this call.
    """
    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    for name in architectures:
        get_architecture(name)
    for task in tasks:
        get_task(task)
    output = Path(output)
    done = {run_key(row) for row in check_output(output, protocol)}
    output.mkdir(parents=True, exist_ok=True)
    (output / PROTOCOL_FILE).write_text(json.dumps(protocol.to_dict(), indent=1) + "\n")

    written = []
    for task in [task for task in TASKS if task in tasks]:
        for setting in protocol.settings(task):
            pending = [
                (architecture, optimizer)
                for architecture in architectures
                for optimizer in _optimizers_for(architecture, protocol, mixture_learning_rate)
                if run_key({"architecture": architecture, "task": task, "setting": setting, "optimizer": optimizer})
                not in done
            ]
            if not pending:
                logger.info("skipping %s %s: every run is already in %s", task, setting, results_path(output))
                continue
            data = generate_train_test(task, seed=protocol.seed, num_test_examples=protocol.num_test_examples, **setting)
            for architecture, optimizer in pending:
                logger.info("training %s on %s %s with %s", architecture, task, setting, optimizer)
                row = train_and_evaluate(architecture, task, setting, optimizer, protocol, data,
                                         optimizer.get("mixture_learning_rate", mixture_learning_rate))
                append_row(output, row)
                written.append(row)
                logger.info("finished %s on %s in %.0f s: test accuracy %s", architecture, task, row["seconds"],
                            row["accuracy"])
    return written


def _optimizers_for(architecture: str, protocol: Protocol, mixture_learning_rate: float) -> list[dict]:
    """Return the optimiser grid; Manticore runs also record their mixture learning rate."""
    grid = protocol.optimizer_grid()
    if get_architecture(architecture).is_manticore:
        grid = [{**optimizer, "mixture_learning_rate": mixture_learning_rate} for optimizer in grid]
    return grid
