"""Mixture weights: one probability vector over K components for each of M blocks.

Parametrisations:
    softmax  logits a (M, K), initialised to zero (uniform); alpha = softmax(a)
    gumbel   the same logits; in training mode alpha is a Gumbel-softmax sample
             with temperature `tau` (DASH-style search), in eval mode softmax(a)
    simplex  alpha (M, K) itself is the parameter, kept on the simplex by an
             exponentiated-gradient optimiser (GAEA)
    fixed    given probabilities, a buffer that no optimiser updates
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIXTURE_KINDS = ("softmax", "gumbel", "simplex", "fixed")


def validate_probabilities(probs, n_blocks: int, n_components: int) -> torch.Tensor:
    """Return `probs` as an (M, K) float tensor, or raise if it is not M rows of probabilities."""
    probs = torch.as_tensor(probs, dtype=torch.float32, device="cpu")  # explicit: from_pretrained builds on "meta"
    if probs.shape != (n_blocks, n_components):
        raise ValueError(
            f"mixture weights of shape {tuple(probs.shape)} do not match the hybrid: "
            f"pass an (M, K) = ({n_blocks}, {n_components}) array, one row per block"
        )
    if (probs < 0).any() or not torch.allclose(probs.sum(-1), torch.ones(n_blocks, device="cpu"), atol=1e-4):
        raise ValueError(
            f"mixture weights {probs.tolist()} are not probabilities: every row must be non-negative and sum to 1"
        )
    return probs


class MixtureWeights(nn.Module):
    """The (M, K) mixture weights of a hybrid."""

    def __init__(self, n_blocks: int, n_components: int, kind: str = "softmax", probs=None, tau: float = 1.0):
        super().__init__()
        if kind not in MIXTURE_KINDS:
            raise ValueError(f"unknown mixture parametrisation {kind!r}: choose one of {', '.join(MIXTURE_KINDS)}")
        self.kind = kind
        self.tau = tau
        shape = (n_blocks, n_components)
        if kind == "fixed" and probs is None:
            raise ValueError("mixture 'fixed' needs probabilities: pass mixture_probs as an (M, K) array")
        initial = validate_probabilities(probs, *shape) if probs is not None else torch.full(shape, 1.0 / n_components)
        if kind in ("softmax", "gumbel"):
            self.logits = nn.Parameter(initial.clamp_min(1e-12).log())
        elif kind == "simplex":
            self.probs = nn.Parameter(initial.clone())
        else:
            self.register_buffer("fixed_probs", initial.clone())

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.probabilities().shape)

    def probabilities(self) -> torch.Tensor:
        """Deterministic alpha (M, K): softmax of logits, the simplex parameter, or the fixed buffer."""
        if self.kind in ("softmax", "gumbel"):
            return self.logits.softmax(-1)
        if self.kind == "simplex":
            return self.probs
        return self.fixed_probs

    def forward(self) -> torch.Tensor:
        """alpha (M, K) for this forward; a fresh Gumbel-softmax sample in training mode."""
        if self.kind == "gumbel" and self.training:
            return F.gumbel_softmax(self.logits, tau=self.tau, hard=False, dim=-1)
        return self.probabilities()

    def extra_repr(self) -> str:
        return f"kind={self.kind}, shape={self.shape}"
