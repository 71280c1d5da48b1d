"""Mamba and Mamba-2: no positions, a (B, T) padding mask passed to every layer.

On CPU, Mamba layers run through the fused selective-scan kernel of
`manticore.kernels` with the layer's own weights; without the kernel (numba
missing) they call the unmodified layer, which uses `mambapy` when the
component config sets `use_mambapy`. On CUDA the unmodified layer runs and
uses the `mamba_ssm` kernels when they are installed.
"""

from __future__ import annotations

from .base import ComponentAdapter, first_tensor
from .registry import register_adapter


@register_adapter("mamba")
class MambaAdapter(ComponentAdapter):
    backbone_attr = "backbone"
    embedding_attr = "embeddings"
    layers_attr = "layers"
    final_norm_attr = "norm_f"

    def run_layer(self, layer, hidden_states, context):
        from manticore.kernels.mamba_layer import mamba_block_forward

        return mamba_block_forward(layer, hidden_states, attention_mask=context.attention_mask)


@register_adapter("mamba2")
class Mamba2Adapter(ComponentAdapter):
    backbone_attr = "backbone"
    embedding_attr = "embeddings"
    layers_attr = "layers"
    final_norm_attr = "norm_f"

    def run_layer(self, layer, hidden_states, context):
        return first_tensor(layer(hidden_states, attention_mask=context.attention_mask))
