"""Registry of component adapters, keyed by the Hugging Face `model_type`."""

from __future__ import annotations

from transformers import PreTrainedModel

from .base import ComponentAdapter

_ADAPTERS: dict[str, type[ComponentAdapter]] = {}


def register_adapter(model_type: str):
    """Class decorator that registers an adapter for one `model_type`."""

    def decorate(adapter_class: type[ComponentAdapter]) -> type[ComponentAdapter]:
        adapter_class.family = model_type
        _ADAPTERS[model_type] = adapter_class
        return adapter_class

    return decorate


def supported_families() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_class_for(model_type: str) -> type[ComponentAdapter]:
    """Return the adapter class for a `model_type`.

    Raises:
        ValueError: the family has no adapter.
    """
    try:
        return _ADAPTERS[model_type]
    except KeyError:
        raise ValueError(
            f"unknown component family {model_type!r}: supported families are "
            f"{', '.join(supported_families())}; add an adapter module under manticore/components/ for a new one"
        ) from None


def adapter_for(model: PreTrainedModel) -> ComponentAdapter:
    """Wrap a loaded causal LM in its family's adapter."""
    return adapter_class_for(model.config.model_type)(model)
