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

    def new_cache(self) -> dict:
        """Per-layer (conv state, SSM state), filled by the prompt and updated by every decoding step."""
        return {}

    def run_layer(self, layer, hidden_states, context):
        from manticore.kernels.mamba_layer import mamba_block_forward, mamba_block_prefill, mamba_block_step

        length = hidden_states.shape[1]
        mask = context.attention_mask[:, -length:] if context.attention_mask is not None else None
        if context.cache is None:
            return mamba_block_forward(layer, hidden_states, attention_mask=mask)
        if layer.layer_idx not in context.cache:
            output, conv_state, ssm_state = mamba_block_prefill(layer, hidden_states, attention_mask=mask)
        else:
            output, conv_state, ssm_state = mamba_block_step(layer, hidden_states, *context.cache[layer.layer_idx])
        context.cache[layer.layer_idx] = (conv_state, ssm_state)
        return output


@register_adapter("mamba2")
class Mamba2Adapter(ComponentAdapter):
    backbone_attr = "backbone"
    embedding_attr = "embeddings"
    layers_attr = "layers"
    final_norm_attr = "norm_f"

    def run_layer(self, layer, hidden_states, context):
        return first_tensor(layer(hidden_states, attention_mask=context.attention_mask))
