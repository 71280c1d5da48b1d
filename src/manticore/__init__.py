"""Manticore: pretrained hybrid language models.

Build a hybrid with `build_hybrid([...], n_blocks=M)`; it is an ordinary
`transformers` model (`save_pretrained`, `from_pretrained`, the Auto classes).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .build import build_hybrid, load_component
from .configuration import ManticoreConfig
from .modeling import ManticoreForCausalLM, ManticoreForSequenceClassification, ManticoreModel

__version__ = "0.1.0"

AutoConfig.register("manticore", ManticoreConfig)
AutoModel.register(ManticoreConfig, ManticoreModel)
AutoModelForCausalLM.register(ManticoreConfig, ManticoreForCausalLM)
AutoModelForSequenceClassification.register(ManticoreConfig, ManticoreForSequenceClassification)

__all__ = [
    "ManticoreConfig",
    "ManticoreForCausalLM",
    "ManticoreForSequenceClassification",
    "ManticoreModel",
    "build_hybrid",
    "load_component",
]
