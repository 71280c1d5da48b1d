"""The interface between the hybrid and one pretrained component model.

A component is an unmodified `transformers` causal language model. Its adapter
knows where the family keeps its token embedding, layers, final norm and LM
head, and how the family handles positions, so the hybrid can run any
contiguous chunk of layers on a hidden state of the component's own width.

Dimension letters: B batch, T sequence length, d width of this component,
V vocabulary size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel


@dataclass
class ChunkContext:
    """Per-forward inputs that every chunk of one component shares.

    Built once per forward by `ComponentAdapter.prepare`, so masks and rotary
    tables are computed once, not once per block.
    """

    attention_mask: torch.Tensor | None  # (B, past + T) with 1 on real tokens, or None
    position_ids: torch.Tensor  # (B, T) or (1, T)
    cache: Any = None  # the component's decoding state from `new_cache`, or None
    extras: dict[str, Any] = field(default_factory=dict)


class ComponentAdapter:
    """Run chunks of one pretrained causal LM of a known family.

    Subclasses name where the family's parts live (`backbone_attr`,
    `embedding_attr`, `layers_attr`, `final_norm_attr`) and override `prepare`
    and `run_layer` for the family's position and mask handling.
    """

    family: str = ""
    backbone_attr: str = ""
    embedding_attr: str = ""
    layers_attr: str = ""
    final_norm_attr: str = ""

    def __init__(self, model: PreTrainedModel):
        self.model = model

    # -- structure -------------------------------------------------------

    @property
    def config(self):
        return self.model.config

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.model, self.backbone_attr)

    @property
    def layers(self) -> nn.ModuleList:
        return getattr(self.backbone, self.layers_attr)

    @property
    def final_norm(self) -> nn.Module:
        return getattr(self.backbone, self.final_norm_attr)

    @property
    def width(self) -> int:
        return self.config.hidden_size

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def vocab_size(self) -> int:
        return self.input_embeddings.num_embeddings

    @property
    def max_context(self) -> float:
        """Maximum sequence length the component was built for (`math.inf` if it has none)."""
        return getattr(self.config, "max_position_embeddings", None) or math.inf

    @property
    def input_embeddings(self) -> nn.Embedding:
        return getattr(self.backbone, self.embedding_attr)

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    # -- computation -----------------------------------------------------

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embedding only, (B, T) -> (B, T, d); positions enter in `run_layers`."""
        return self.input_embeddings(input_ids)

    def prepare(self, hidden_states: torch.Tensor, attention_mask, position_ids, cache=None) -> ChunkContext:
        """Build the per-forward context; `hidden_states` gives batch, length and dtype."""
        return ChunkContext(attention_mask=attention_mask, position_ids=position_ids, cache=cache)

    def new_cache(self):
        """Return an empty decoding state for cached generation.

        Raises:
            NotImplementedError: the family has no cached decoding path yet.
        """
        raise NotImplementedError(f"cached generation is not implemented for {self.family!r} components")

    def run_layer(self, layer: nn.Module, hidden_states: torch.Tensor, context: ChunkContext) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement run_layer")

    def enter(self, hidden_states: torch.Tensor, context: ChunkContext) -> torch.Tensor:
        """Apply what the family does between the embedding and its first layer."""
        return hidden_states

    def run_layers(self, hidden_states: torch.Tensor, start: int, stop: int, context: ChunkContext) -> torch.Tensor:
        """Run layers `start..stop-1` on (B, T, d); the final norm runs when `stop` is the depth."""
        if start == 0:
            hidden_states = self.enter(hidden_states, context)
        for layer in self.layers[start:stop]:
            hidden_states = self.run_layer(layer, hidden_states, context)
        if stop == self.depth:
            hidden_states = self.final_norm(hidden_states)
        return hidden_states

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """LM head, (B, T, d) -> (B, T, V)."""
        return self.lm_head(hidden_states)


def first_tensor(output) -> torch.Tensor:
    """Return a layer's hidden state whether the layer returns a tensor or a tuple."""
    return output[0] if isinstance(output, tuple) else output
