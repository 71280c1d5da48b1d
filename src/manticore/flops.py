"""Estimated forward FLOPs per token of a hybrid, for fair-compute baselines and reports.

This is an estimate, not a measurement. Every weight of the layers, projectors
and LM heads that run costs 2 FLOPs (one multiply-add) per token. Attention
adds its scores and values, 2 * 2 * layers * context * width, halved because
attention is causal. The Mamba scan adds about 9 * inner width * state size
per layer. Training costs about three
times the forward pass.
"""

from __future__ import annotations

from torch import nn

from .components import adapter_for


def _parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def component_forward_flops(model, context_length: int) -> float:
    """Forward FLOPs per token of one component at `context_length`."""
    adapter = adapter_for(model)
    layer_flops = 2 * sum(_parameter_count(layer) for layer in adapter.layers)
    head_flops = 2 * adapter.width * adapter.vocab_size
    config = model.config
    if adapter.family in ("mamba", "mamba2"):
        inner = getattr(config, "intermediate_size", 2 * adapter.width)
        mixing = 9 * inner * config.state_size * adapter.depth
    else:
        mixing = 2 * adapter.depth * context_length * adapter.width  # causal: half of 4 * T * d
    return float(layer_flops + head_flops + mixing)


def hybrid_forward_flops(hybrid, context_length: int) -> float:
    """Forward FLOPs per token of a hybrid: components with nonzero weight, projectors, heads."""
    alpha = hybrid.mixture_weights()
    total = 0.0
    for k, component in enumerate(hybrid.model.components):
        if (alpha[:, k] > 0).any():
            total += component_forward_flops(component, context_length)
    projectors = [hybrid.model.projectors_in, hybrid.model.projectors_out]
    total += 2 * sum(_parameter_count(p) for p in projectors)
    return total
