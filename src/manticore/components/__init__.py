"""Component adapters, one module per model family, found by `model_type`."""

from . import gpt2, gpt_neo, gpt_neox, llama, mamba  # noqa: F401  (registers the adapters)
from .base import ChunkContext, ComponentAdapter
from .registry import adapter_class_for, adapter_for, register_adapter, supported_families

__all__ = [
    "ChunkContext",
    "ComponentAdapter",
    "adapter_class_for",
    "adapter_for",
    "register_adapter",
    "supported_families",
]
