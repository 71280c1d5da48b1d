"""Multi-head Hyena: a causal long convolution with an implicit filter, in pure PyTorch.

Per head h with query, key and value vectors q_t, k_t, v_t (head width P):

    S_t = sum_{s <= t} f_h[t - s] * (k_s v_s^T)      # (P, P) state, long convolution over time
    y_t = S_t^T q_t                                   # (P,)

The filter f_h (one per head, as long as the sequence) is not stored: an MLP
with sine activations maps position features to filter values, and an
exponential decay window multiplies them, as in Hyena's implicit filter. A
learned per-head weight adds k_t v_t^T once more (a skip term). The
convolution runs as an FFT over 2T points, so output t depends on inputs 0..t
only. A short depthwise causal convolution precedes the split into q, k and v. Dimension letters: B batch, T sequence
length, D width, H heads, P = D / H head width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def causal_fft_convolution(signal: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Convolve ``signal`` (..., T) causally with ``filters`` broadcastable to (..., T).

    Output t is sum_{s <= t} filters[t - s] * signal[s]. Zero padding to 2T
    points keeps the circular FFT convolution from wrapping late inputs onto
    early outputs.
    """
    length = signal.shape[-1]
    size = 2 * length
    spectrum = torch.fft.rfft(signal.float(), n=size) * torch.fft.rfft(filters.float(), n=size)
    return torch.fft.irfft(spectrum, n=size)[..., :length].to(signal.dtype)


class Sine(nn.Module):
    """sin(w * x) with one learned frequency w per feature, initialised to ``frequency``."""

    def __init__(self, features: int, frequency: float = 1.0):
        super().__init__()
        self.frequency = nn.Parameter(torch.full((features,), float(frequency)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.frequency * x)


class ImplicitFilter(nn.Module):
    """Generate ``channels`` causal filters of up to ``max_length`` taps from position features.

    Position t maps to u = t / max_length and to the features
    [u, cos(2 pi f u), sin(2 pi f u)] for f = 1..feature_bands. An MLP with sine
    activations maps them to one value per channel, and channel c is multiplied
    by exp(-r_c u). The decay rates r_c are spread so that channels fall to 1 %
    of their start between 0.3 and 1.5 of ``max_length``, which gives both
    short and long filters.
    """

    def __init__(self, channels: int, max_length: int, feature_bands: int = 4, hidden: int = 64,
                 frequency: float = 1.0, fastest_decay: float = 0.3, slowest_decay: float = 1.5):
        super().__init__()
        if max_length < 1:
            raise ValueError(f"max_length={max_length} is invalid: pass the longest sequence length, at least 1")
        self.max_length = max_length
        positions = torch.arange(max_length, dtype=torch.float32) / max_length  # (L,)
        bands = torch.arange(1, feature_bands + 1, dtype=torch.float32)
        angles = 2 * math.pi * positions[:, None] * bands[None, :]
        self.register_buffer("features", torch.cat([positions[:, None], angles.cos(), angles.sin()], dim=-1),
                             persistent=False)  # (L, 1 + 2 * feature_bands)
        rates = math.log(100.0) / torch.linspace(fastest_decay, slowest_decay, channels)
        self.register_buffer("decay", torch.exp(-positions[None, :] * rates[:, None]), persistent=False)  # (C, L)
        self.mlp = nn.Sequential(
            nn.Linear(1 + 2 * feature_bands, hidden), Sine(hidden, frequency),
            nn.Linear(hidden, hidden), Sine(hidden, frequency),
            nn.Linear(hidden, channels, bias=False),
        )

    def forward(self, length: int) -> torch.Tensor:
        """Return the filters (channels, length) for sequences of ``length`` tokens."""
        if length > self.max_length:
            raise ValueError(
                f"sequence of {length} tokens is longer than the Hyena filter's max_length={self.max_length}: "
                f"build the layer with max_length >= {length}"
            )
        values = self.mlp(self.features[:length]).transpose(0, 1)  # (C, T)
        return values * self.decay[:, :length]


class MultiHeadHyena(nn.Module):
    """Multi-head Hyena sequence mixer, (B, T, D) -> (B, T, D); see the module docstring."""

    def __init__(self, width: int, max_length: int, num_heads: int = 16, short_kernel: int = 3,
                 filter_hidden: int = 64, feature_bands: int = 4):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads={num_heads}: pass a divisor of the width")
        self.num_heads = num_heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.short_conv = nn.Conv1d(3 * width, 3 * width, short_kernel, groups=3 * width, padding=short_kernel - 1)
        self.filter = ImplicitFilter(num_heads, max_length, feature_bands, filter_hidden)
        self.skip = nn.Parameter(torch.zeros(num_heads))  # weight of the current token's k v^T, per head
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        H, P = self.num_heads, D // self.num_heads
        projected = self.in_proj(x).transpose(1, 2)  # (B, 3D, T)
        projected = self.short_conv(projected)[..., :T]  # the first T outputs only see the past
        q, k, v = projected.reshape(B, 3, H, P, T).unbind(1)  # 3 x (B, H, P, T)

        outer = k[:, :, :, None, :] * v[:, :, None, :, :]  # (B, H, P, P, T)
        filters = self.filter(T)[None, :, None, None, :]  # (1, H, 1, 1, T)
        state = causal_fft_convolution(outer, filters) + self.skip[None, :, None, None, None] * outer
        y = (q[:, :, :, None, :] * state).sum(dim=2)  # (B, H, P, T)
        return self.out_proj(y.reshape(B, D, T).transpose(1, 2))
