"""Layers and backbones of the hand-made MAD architectures, and the compression autoencoder.

Every MAD model maps token ids (B, T) to logits (B, T, V) and exposes
``hidden_states(input_ids)``, the (B, T, D) states after its final norm, so that
the compression autoencoder can pool them. Dimension letters: B batch, T
sequence length, D width, V vocabulary, H heads, E experts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import MambaConfig, MambaModel

from ..kernels.mamba_layer import mamba_block_forward

EMBEDDING_INIT_STD = 0.02


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with biased projections and no position encoding.

    The architectures that use it put a Mamba or Hyena layer first, and those
    layers carry the position information.
    """

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads={num_heads}: pass a divisor of the width")
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        # (B, T, 3D) -> 3 x (B, H, T, D/H)
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class MixtureOfExpertsMLP(nn.Module):
    """Top-k routed mixture of small GELU MLP experts, computed densely.

    Every expert runs on every token, and the router's softmax over the top-k
    scores weights their outputs, so the other experts get weight 0. The MAD
    reference code differs: it zeroes the other experts' router scores before
    its softmax. Dense compute costs E x expert_width per token, which is small
    at the default 8 x 16.
    """

    def __init__(self, width: int, num_experts: int = 8, expert_width: int = 16, top_k: int = 2):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} is invalid for {num_experts} experts: pass 1 <= top_k <= num_experts")
        self.top_k = top_k
        self.router = nn.Linear(width, num_experts, bias=False)
        self.up = nn.Parameter(torch.empty(num_experts, width, expert_width))
        self.up_bias = nn.Parameter(torch.zeros(num_experts, expert_width))
        self.down = nn.Parameter(torch.empty(num_experts, expert_width, width))
        nn.init.normal_(self.up, std=1.0 / math.sqrt(width))
        nn.init.normal_(self.down, std=1.0 / math.sqrt(expert_width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.router(x)  # (B, T, E)
        top_scores, top_index = scores.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(scores).scatter(-1, top_index, top_scores.softmax(-1))  # (B, T, E)
        hidden = F.gelu(torch.einsum("btd,edh->bteh", x, self.up) + self.up_bias)  # (B, T, E, expert_width)
        outputs = torch.einsum("bteh,ehd->bted", hidden, self.down)  # (B, T, E, D)
        return torch.einsum("bte,bted->btd", gates, outputs)


class PreNormResidual(nn.Module):
    """x + layer(LayerNorm(x))."""

    def __init__(self, width: int, layer: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer(self.norm(x))


class MambaLayer(nn.Module):
    """One transformers ``MambaBlock`` (RMS norm, mixer, residual), run through the project's CPU kernel."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mamba_block_forward(self.block, x)


def mamba_config(width: int, num_layers: int, vocab_size: int = 16) -> MambaConfig:
    """Return the Mamba config of the MAD architectures: state 16, convolution 4, expansion 2."""
    return MambaConfig(
        vocab_size=vocab_size, hidden_size=width, num_hidden_layers=num_layers, state_size=16, expand=2,
        conv_kernel=4, use_mambapy=True, pad_token_id=None, bos_token_id=None, eos_token_id=None,
    )


def mamba_layers(width: int, count: int) -> list[MambaLayer]:
    """Build ``count`` Mamba layers with the initialisation of ``MambaModel`` (dt bias, A and D)."""
    model = MambaModel(mamba_config(width, count))
    return [MambaLayer(block) for block in model.layers]


class Backbone(nn.Module):
    """Token embedding, a stack of residual layers, final LayerNorm and an untied unembedding.

    The embedding is N(0, 0.02). There is no position embedding, because the
    Mamba and Hyena layers carry position information.
    """

    def __init__(self, vocab_size: int, width: int, layers: list[nn.Module]):
        super().__init__()
        self.width = width
        self.embedding = nn.Embedding(vocab_size, width)
        nn.init.normal_(self.embedding.weight, std=EMBEDDING_INIT_STD)
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(width)
        self.unembedding = nn.Linear(width, vocab_size, bias=False)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embedding(input_ids)
        for layer in self.layers:
            h = layer(h)
        return self.norm(h)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.unembedding(self.hidden_states(input_ids))

    def mixture_weights(self) -> torch.Tensor | None:
        return None

    def mixture_parameters(self) -> list[nn.Parameter]:
        return []


class HybridLanguageModel(nn.Module):
    """A Manticore hybrid behind the MAD model interface: (B, T) ids -> (B, T, V) logits."""

    def __init__(self, hybrid: nn.Module, component_names: list[str]):
        super().__init__()
        self.hybrid = hybrid
        self.width = hybrid.model.hidden_size
        self.component_names = list(component_names)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        h, _ = self.hybrid.model(input_ids)
        return h

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hybrid(input_ids=input_ids).logits

    def mixture_weights(self) -> torch.Tensor | None:
        """Return the learned (M, K) mixture weights as probabilities, detached; None when they are fixed."""
        if not self.mixture_parameters():
            return None
        return self.hybrid.mixture_weights()

    def mixture_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.hybrid.model.mixture.parameters() if p.requires_grad]


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """Return fixed sinusoidal position codes (length, width): sines in the first half, cosines in the second."""
    half = width // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * frequencies[None, :]
    codes = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(codes, (0, width - 2 * half))


class PooledDecoder(nn.Module):
    """Decode every output position from one pooled vector plus that position's sinusoidal code.

    Two [LayerNorm, Linear, GELU] blocks of the model width, shared over
    positions, then a LayerNorm and a linear map to the vocabulary.
    """

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.width = width
        self.blocks = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(),
            nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(),
            nn.LayerNorm(width),
        )
        self.head = nn.Linear(width, vocab_size)

    def forward(self, pooled: torch.Tensor, length: int) -> torch.Tensor:
        positions = sinusoidal_positions(length, self.width).to(device=pooled.device, dtype=pooled.dtype)
        h = pooled[:, None, :] + positions[None]  # (B, T, D)
        return self.head(self.blocks(h))


class CompressionAutoencoder(nn.Module):
    """Encoder plus pooled decoder for the compression task.

    The encoder (any MAD model) reads the whole sequence, its state at the last
    position (the compression token) is the only input of the decoder, and the
    decoder reconstructs every input token. Returns logits (B, T, V).
    """

    def __init__(self, encoder: nn.Module, vocab_size: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = PooledDecoder(encoder.width, vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pooled = self.encoder.hidden_states(input_ids)[:, -1]  # (B, D)
        return self.decoder(pooled, input_ids.shape[1])

    def mixture_weights(self) -> torch.Tensor | None:
        return self.encoder.mixture_weights()

    def mixture_parameters(self) -> list[nn.Parameter]:
        return self.encoder.mixture_parameters()
