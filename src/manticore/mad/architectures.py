"""The architectures that the MAD protocol trains, by name.

Every architecture maps token ids (B, T) to logits (B, T, V) and has
``hidden_states``, ``mixture_weights`` and ``mixture_parameters`` (see
``manticore.mad.layers``). Width is 128 unless the caller passes another.

- ``gpt-neo``: 2 GPT-Neo layers (global attention and MLP, learned positions),
  built from ``transformers.GPTNeoForCausalLM``.
- ``mamba``: 4 Mamba layers from ``transformers.MambaForCausalLM``.
- ``mambaformer``: Mamba, attention, Mamba, attention, Mamba, with no MLP and no
  position embedding.
- ``striped-hyena``: multi-head Hyena, mixture-of-experts MLP, multi-head
  attention, mixture-of-experts MLP.
- ``manticore-m1``, ``manticore-m2``, ``manticore-m4``: a Manticore hybrid trained
  from scratch, with M GPT-Neo layers and 2M Mamba layers of equal width joined
  in M blocks without projectors, and learned mixture weights.

GPT-Neo, Mamba and Manticore run as Manticore hybrids (a one-component hybrid
with fixed weight 1 computes exactly its component), so their Mamba layers take
the project's CPU selective-scan kernel. Attention heads are 8 wide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn
from transformers import GPTNeoConfig, GPTNeoForCausalLM, MambaForCausalLM

from ..build import build_hybrid
from .hyena import MultiHeadHyena
from .layers import (
    Backbone,
    CausalSelfAttention,
    CompressionAutoencoder,
    HybridLanguageModel,
    MixtureOfExpertsMLP,
    PreNormResidual,
    mamba_config,
    mamba_layers,
)

DEFAULT_WIDTH = 128
HEAD_WIDTH = 8
MANTICORE_COMPONENTS = ("gpt-neo", "mamba")
"""Component order of every Manticore architecture: the columns of its mixture weights."""


@dataclass(frozen=True)
class ArchitectureSpec:
    """One named architecture: its builder and, for Manticore, its number of blocks."""

    name: str
    builder: Callable[[int, int, int], nn.Module]
    n_blocks: int | None = None

    @property
    def is_manticore(self) -> bool:
        return self.n_blocks is not None


def num_heads_for(width: int) -> int:
    """Return the number of 8-wide attention heads for ``width``, or raise if it does not divide."""
    if width % HEAD_WIDTH:
        raise ValueError(f"width {width} is not a multiple of the head width {HEAD_WIDTH}: pass a multiple of {HEAD_WIDTH}")
    return width // HEAD_WIDTH


def gpt_neo_model(vocab_size: int, max_length: int, width: int, num_layers: int) -> GPTNeoForCausalLM:
    """Return a GPT-Neo causal LM with global attention in every layer and no dropout."""
    config = GPTNeoConfig(
        vocab_size=vocab_size, hidden_size=width, num_layers=num_layers, num_heads=num_heads_for(width),
        attention_types=[[["global"], num_layers]], intermediate_size=4 * width,
        max_position_embeddings=max_length, embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0,
        bos_token_id=None, eos_token_id=None,
    )
    return GPTNeoForCausalLM(config)


def mamba_model(vocab_size: int, width: int, num_layers: int) -> MambaForCausalLM:
    return MambaForCausalLM(mamba_config(width, num_layers, vocab_size))


def single_component(model: nn.Module, name: str) -> HybridLanguageModel:
    """Wrap one component in a one-block hybrid with fixed weight 1, which computes exactly the component."""
    hybrid = build_hybrid([model], n_blocks=1, projector="none", mixture="fixed", mixture_probs=[[1.0]])
    return HybridLanguageModel(hybrid, [name])


def build_gpt_neo(vocab_size: int, max_length: int, width: int) -> nn.Module:
    return single_component(gpt_neo_model(vocab_size, max_length, width, num_layers=2), "gpt-neo")


def build_mamba(vocab_size: int, max_length: int, width: int) -> nn.Module:
    return single_component(mamba_model(vocab_size, width, num_layers=4), "mamba")


def build_mambaformer(vocab_size: int, max_length: int, width: int) -> nn.Module:
    heads = num_heads_for(width)
    mamba = mamba_layers(width, 3)
    layers = [
        mamba[0],
        PreNormResidual(width, CausalSelfAttention(width, heads)),
        mamba[1],
        PreNormResidual(width, CausalSelfAttention(width, heads)),
        mamba[2],
    ]
    return Backbone(vocab_size, width, layers)


def build_striped_hyena(vocab_size: int, max_length: int, width: int) -> nn.Module:
    heads = num_heads_for(width)
    layers = [
        PreNormResidual(width, MultiHeadHyena(width, max_length, num_heads=heads)),
        PreNormResidual(width, MixtureOfExpertsMLP(width)),
        PreNormResidual(width, CausalSelfAttention(width, heads)),
        PreNormResidual(width, MixtureOfExpertsMLP(width)),
    ]
    return Backbone(vocab_size, width, layers)


def manticore_builder(n_blocks: int) -> Callable[[int, int, int], nn.Module]:
    """Return the builder of a from-scratch Manticore hybrid with ``n_blocks`` blocks."""

    def build(vocab_size: int, max_length: int, width: int) -> nn.Module:
        components = [
            gpt_neo_model(vocab_size, max_length, width, num_layers=n_blocks),
            mamba_model(vocab_size, width, num_layers=2 * n_blocks),
        ]
        hybrid = build_hybrid(components, n_blocks=n_blocks, projector="none", mixture="softmax")
        return HybridLanguageModel(hybrid, list(MANTICORE_COMPONENTS))

    return build


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.name: spec
    for spec in (
        ArchitectureSpec("gpt-neo", build_gpt_neo),
        ArchitectureSpec("mamba", build_mamba),
        ArchitectureSpec("mambaformer", build_mambaformer),
        ArchitectureSpec("striped-hyena", build_striped_hyena),
        ArchitectureSpec("manticore-m1", manticore_builder(1), n_blocks=1),
        ArchitectureSpec("manticore-m2", manticore_builder(2), n_blocks=2),
        ArchitectureSpec("manticore-m4", manticore_builder(4), n_blocks=4),
    )
}
"""Every architecture by name, in report order."""


def get_architecture(name: str) -> ArchitectureSpec:
    """Return the spec of ``name``, or raise ValueError naming the valid architectures."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown MAD architecture {name!r}. Valid architectures: {', '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[name]


def build_architecture(name: str, vocab_size: int, max_length: int, width: int = DEFAULT_WIDTH) -> nn.Module:
    """Build architecture ``name`` for tokens 0..vocab_size-1 and sequences of up to ``max_length`` tokens."""
    return get_architecture(name).builder(vocab_size, max_length, width)


def build_task_model(name: str, task: str, vocab_size: int, max_length: int, width: int = DEFAULT_WIDTH) -> nn.Module:
    """Build architecture ``name`` for one MAD task.

    The compression task gets the architecture as the encoder of a
    ``CompressionAutoencoder``. Every other task gets the architecture itself.
    """
    model = build_architecture(name, vocab_size, max_length, width)
    if task == "compression":
        return CompressionAutoencoder(model, vocab_size)
    return model
