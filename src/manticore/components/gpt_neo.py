"""GPT-Neo: learned positions `wpe`, blocks `transformer.h` (eager attention only), `ln_f`."""

from .attention import LearnedPositionAdapter
from .registry import register_adapter


@register_adapter("gpt_neo")
class GPTNeoAdapter(LearnedPositionAdapter):
    backbone_attr = "transformer"
    embedding_attr = "wte"
    layers_attr = "h"
    cache_argument = "layer_past"
    final_norm_attr = "ln_f"
