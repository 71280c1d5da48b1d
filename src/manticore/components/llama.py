"""Llama: rotary positions, `model.layers`, RMS norm `model.norm`, head `lm_head`."""

from .attention import RotaryAdapter
from .registry import register_adapter


@register_adapter("llama")
class LlamaAdapter(RotaryAdapter):
    backbone_attr = "model"
    embedding_attr = "embed_tokens"
    layers_attr = "layers"
    final_norm_attr = "norm"
