"""Cached token-by-token generation for hybrids.

Each component keeps its own decoding state: a transformers `DynamicCache` for
attention families, per-layer convolution and SSM states for Mamba. The prompt
fills every state once, then each new token runs through the hybrid alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CACHED_OPTIONS = frozenset(
    {"max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p", "eos_token_id",
     "pad_token_id", "use_cache", "generator"}
)


@dataclass
class HybridCache:
    """Decoding states of every component, and how many tokens they have seen."""

    states: list
    length: int = 0


def cached_generation_supported(model, options: dict) -> bool:
    """Check whether `generate_with_cache` can serve a call with these `generate` options."""
    if options.get("use_cache") is False or not set(options) <= CACHED_OPTIONS:
        return False
    try:
        model.model.new_cache()
    except NotImplementedError:
        return False
    return True


def next_token(logits, do_sample, temperature, top_k, top_p, generator):
    """Pick one token per row from (B, V) logits: argmax, or a sample after temperature, top-k and top-p."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / max(temperature, 1e-6)
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate_with_cache(model, input_ids, attention_mask=None, max_new_tokens: int = 20, min_new_tokens: int = 0,
                        do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                        top_p: float | None = None, eos_token_id=None, pad_token_id=None, use_cache=True,
                        generator=None) -> torch.Tensor:
    """Return (B, T + new) token ids: the prompt followed by generated tokens.

    Rows that produced `eos_token_id` are filled with `pad_token_id` afterwards;
    generation stops early once every row has finished.
    """
    config = model.generation_config
    eos_token_id = config.eos_token_id if eos_token_id is None else eos_token_id
    pad_token_id = config.pad_token_id if pad_token_id is None else pad_token_id
    pad_token_id = eos_token_id if pad_token_id is None else pad_token_id
    if eos_token_id is None:
        eos_token_id = []
    elif isinstance(eos_token_id, int):
        eos_token_id = [eos_token_id]
    eos_ids = torch.tensor(eos_token_id, dtype=torch.long)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)

    model.eval()
    cache = model.model.new_cache()
    logits = model(input_ids, attention_mask=attention_mask, cache=cache).logits[:, -1]  # (B, V)
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    sequence = input_ids
    for step in range(max_new_tokens):
        if step < min_new_tokens and len(eos_ids):
            logits[:, eos_ids] = float("-inf")
        token = next_token(logits.float(), do_sample, temperature, top_k, top_p, generator)
        if pad_token_id is not None:
            token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        sequence = torch.cat([sequence, token[:, None]], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(token[:, None])], dim=1)
        finished |= torch.isin(token, eos_ids)
        if finished.all() or step + 1 == max_new_tokens:
            break
        logits = model(token[:, None], attention_mask=attention_mask, cache=cache).logits[:, -1]
    return sequence
