"""Optimisers and schedules for the stages: AdamW for weights, AdamW or GAEA for mixture weights."""

from __future__ import annotations

import torch
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR


class ExponentiatedGradient(Optimizer):
    """GAEA's exponentiated-gradient step for parameters kept on the simplex (last axis).

    p <- normalise(max(p * exp(-lr * clamp(grad, -clip, clip)), floor))
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
                updated = (parameter * exponent.exp()).clamp_min(group["floor"])
                parameter.copy_(updated / updated.sum(-1, keepdim=True))


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
