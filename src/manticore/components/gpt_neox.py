"""GPT-NeoX (Pythia): rotary positions, `gpt_neox.layers`, `final_layer_norm`, head `embed_out`."""

from .attention import RotaryAdapter
from .registry import register_adapter


@register_adapter("gpt_neox")
class GPTNeoXAdapter(RotaryAdapter):
    backbone_attr = "gpt_neox"
    embedding_attr = "embed_in"
    layers_attr = "layers"
    cache_argument = "layer_past"
    final_norm_attr = "final_layer_norm"
