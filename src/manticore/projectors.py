"""Projectors that translate hidden states between the shared width D and a component's width d.

Kinds:
    linear    nn.Linear with PyTorch's default init (the reference's final choice)
    identity  nn.Linear initialised to the identity on the shared coordinates
    residual  x -> resize(x) + W x + b, with W and b initialised to zero
    mlp       two-layer GELU MLP, hidden width max(in, out)
    none      resize(x) only, no parameters; for components of equal width

`resize` pads zeros at the end of the feature axis or keeps the first features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PROJECTOR_KINDS = ("linear", "identity", "residual", "mlp", "none")


def resize_features(x: torch.Tensor, width: int) -> torch.Tensor:
    """Pad zeros at the end of the last axis up to `width`, or keep the first `width` features."""
    current = x.shape[-1]
    if current == width:
        return x
    if current > width:
        return x[..., :width]
    return F.pad(x, (0, width - current))


class Projector(nn.Module):
    """One projector, (..., in_width) -> (..., out_width)."""

    def __init__(self, in_width: int, out_width: int, kind: str = "linear"):
        super().__init__()
        if kind not in PROJECTOR_KINDS:
            raise ValueError(f"unknown projector kind {kind!r}: choose one of {', '.join(PROJECTOR_KINDS)}")
        self.kind = kind
        self.out_width = out_width
        if kind in ("linear", "identity", "residual"):
            self.linear = nn.Linear(in_width, out_width)
        elif kind == "mlp":
            hidden = max(in_width, out_width)
            self.mlp = nn.Sequential(nn.Linear(in_width, hidden), nn.GELU(), nn.Linear(hidden, out_width))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.kind == "identity":
            self.linear.weight.copy_(torch.eye(self.out_width, self.linear.in_features))
            self.linear.bias.zero_()
        elif self.kind == "residual":
            self.linear.weight.zero_()
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return resize_features(x, self.out_width)
        if self.kind == "mlp":
            return self.mlp(x)
        if self.kind == "residual":
            return resize_features(x, self.out_width) + self.linear(x)
        return self.linear(x)

    def extra_repr(self) -> str:
        return f"kind={self.kind}"
