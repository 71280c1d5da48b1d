"""Adapters for Transformer families: rotary (GPT-NeoX, Llama) and learned positions (GPT-Neo, GPT-2)."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from .base import ChunkContext, ComponentAdapter, first_tensor


class AttentionAdapter(ComponentAdapter):
    """A decoder whose layers take the family's own 4-D causal mask.

    The mask comes from `create_causal_mask` with the component's config, as
    the family's own model builds it. Under eager attention a `None` mask
    would mean bidirectional attention, so the mask is never left to a layer's
    default.
    """

    cache_argument: str = "cache"  # the keyword under which the family's layers take a `Cache`

    def prepare(self, hidden_states, attention_mask, position_ids, cache=None) -> ChunkContext:
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        return ChunkContext(attention_mask, position_ids, cache, extras={"mask": causal_mask})

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    def cache_arguments(self, context: ChunkContext) -> dict:
        if context.cache is None:
            return {}
        return {self.cache_argument: context.cache, "use_cache": True}


class RotaryAdapter(AttentionAdapter):
    """Rotary position embeddings, computed once per forward and passed to every layer."""

    def prepare(self, hidden_states, attention_mask, position_ids, cache=None) -> ChunkContext:
        context = super().prepare(hidden_states, attention_mask, position_ids, cache)
        context.extras["cos_sin"] = self.backbone.rotary_emb(hidden_states, position_ids=position_ids)
        return context

    def run_layer(self, layer, hidden_states, context):
        output = layer(
            hidden_states,
            attention_mask=context.extras["mask"],
            position_ids=context.position_ids,
            position_embeddings=context.extras["cos_sin"],
            **self.cache_arguments(context),
        )
        return first_tensor(output)


class LearnedPositionAdapter(AttentionAdapter):
    """Learned absolute positions, added before the first layer."""

    position_attr: str = "wpe"

    def enter(self, hidden_states, context):
        position_embeddings = getattr(self.backbone, self.position_attr)(context.position_ids)
        return hidden_states + position_embeddings.to(hidden_states.dtype)

    def run_layer(self, layer, hidden_states, context):
        return first_tensor(layer(hidden_states, attention_mask=context.extras["mask"], **self.cache_arguments(context)))
