"""GPT-2: learned positions `wpe`, blocks `transformer.h`, `ln_f`, head tied to `wte`."""

from .attention import LearnedPositionAdapter
from .registry import register_adapter


@register_adapter("gpt2")
class GPT2Adapter(LearnedPositionAdapter):
    backbone_attr = "transformer"
    embedding_attr = "wte"
    layers_attr = "h"
    final_norm_attr = "ln_f"
