"""Tiny random components of every supported family, for tests, benchmarks and examples.

Each model is built from its real `transformers` class with a small config and
a fixed seed. `save_component` writes it with `save_pretrained` (plus a
tokenizer), so loading it back takes the same path as a hub checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoConfig,
    GPTNeoXConfig,
    LlamaConfig,
    Mamba2Config,
    MambaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

WORDS = (
    "the a an of to in and is was for on with as by at from that this it be are or not but his her they we you "
    "king queen lord lady love night day sword crown heart blood death life time world man woman good ill fair "
    "foul speak hear see know think come go"
).split()
SPECIAL_TOKENS = ["<pad>", "<unk>", "<eos>"]


def tiny_tokenizer(words=WORDS) -> PreTrainedTokenizerFast:
    """Build a word-level tokenizer over `words` plus <pad>, <unk> and <eos> (ids 0, 1, 2)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + list(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def tiny_config(family: str, vocab_size: int = 72, width: int = 32, depth: int = 4, max_context: int = 128):
    """Return a small config of `family`, with dropout off so train and eval mode agree."""
    heads = 4
    if family == "gpt_neox":
        return GPTNeoXConfig(
            vocab_size=vocab_size, hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
            intermediate_size=2 * width, max_position_embeddings=max_context, hidden_dropout=0.0,
            attention_dropout=0.0,
        )
    if family == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
            num_key_value_heads=2, intermediate_size=2 * width, max_position_embeddings=max_context,
        )
    if family == "gpt_neo":
        return GPTNeoConfig(
            vocab_size=vocab_size, hidden_size=width, num_layers=depth, num_heads=heads,
            attention_types=[[["global", "local"], depth // 2]], window_size=8, max_position_embeddings=max_context,
            embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0, bos_token_id=2, eos_token_id=2,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_embd=width, n_layer=depth, n_head=heads, n_positions=max_context,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=2, eos_token_id=2,
        )
    if family == "mamba":
        return MambaConfig(
            vocab_size=vocab_size, hidden_size=width, num_hidden_layers=depth, state_size=8, expand=2,
            conv_kernel=4, use_mambapy=True,
        )
    if family == "mamba2":
        return Mamba2Config(
            vocab_size=vocab_size, hidden_size=width, num_hidden_layers=depth, state_size=8, expand=2,
            num_heads=2 * width // 16, head_dim=16, n_groups=1, conv_kernel=4, chunk_size=16,
        )
    raise ValueError(f"no tiny config for family {family!r}")


def tiny_model(family: str, seed: int = 0, **config_options) -> PreTrainedModel:
    """Build a tiny random causal LM of `family`, in eval mode and float32."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **config_options))
    return model.float().eval()


def save_component(model: PreTrainedModel, directory, tokenizer=None) -> Path:
    """Write a component as a hub checkpoint would look: config, safetensors weights, tokenizer."""
    directory = Path(directory)
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory
