"""Optimisers and schedules for the stages: AdamW for weights, AdamW or GAEA for mixture weights."""

from __future__ import annotations

import torch
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR


class ExponentiatedGradient(Optimizer):
    """GAEA's exponentiated-gradient step for parameters kept on the simplex (last axis).

    p <- floored_simplex(p * exp(clamp(-lr * grad, -clip, clip)), floor)

    Every row stays a probability vector with entries of at least `floor`.
    """

    def __init__(self, params, lr: float = 0.05, clip: float = 10.0, floor: float = 1e-5):
        super().__init__(params, dict(lr=lr, clip=clip, floor=floor))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                exponent = (-group["lr"] * parameter.grad).clamp(-group["clip"], group["clip"])
                parameter.copy_(floored_simplex(parameter * exponent.exp(), group["floor"]))


def floored_simplex(weights: torch.Tensor, floor: float) -> torch.Tensor:
    """Scale each row of non-negative `weights` to sum to 1 with every entry at least `floor`.

    Entries that would fall below `floor` are set to it, and the other entries share
    the remaining mass in proportion to `weights`. Normalising first and clamping
    after would break the sum, and clamping first and normalising after can push a
    clamped entry back below `floor`.

    Raises:
        ValueError: `floor` times the row length exceeds 1.
    """
    size = weights.shape[-1]
    if floor * size > 1:
        raise ValueError(f"floor {floor} is too large for rows of {size} entries: use at most 1/{size}")
    weights = weights.clamp_min(0)
    pinned = torch.zeros_like(weights, dtype=torch.bool)
    result = weights
    # Each pass pins at least one more entry per row that is still below the floor, so `size` passes suffice.
    for _ in range(size):
        free = torch.where(pinned, torch.zeros_like(weights), weights)
        free_total = free.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
        free_mass = 1 - floor * pinned.sum(-1, keepdim=True)
        result = torch.where(pinned, torch.full_like(weights, floor), free * (free_mass / free_total))
        below = (result < floor) & ~pinned
        if not below.any():
            break
        pinned |= below
    return result


def linear_schedule(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """Linear warm-up to the base rate, then linear decay to zero at `total_steps`."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return LambdaLR(optimizer, factor)


def weight_optimizer(parameters, learning_rate: float, weight_decay: float) -> AdamW:
    return AdamW(list(parameters), lr=learning_rate, weight_decay=weight_decay)


def mixture_optimizer(parameters, kind: str, learning_rate: float) -> Optimizer:
    """AdamW without weight decay for logits, exponentiated gradient for simplex parameters."""
    if kind == "simplex":
        return ExponentiatedGradient(list(parameters), lr=learning_rate)
    return AdamW(list(parameters), lr=learning_rate, weight_decay=0.0)
