"""Run a transformers ``MambaBlock`` through the numba selective-scan kernel.

The functions read the weights of an unmodified ``MambaBlock`` (transformers
5.25) and reproduce its forward pass: RMS norm, the mixer (input projection,
causal depthwise convolution, selective scan, gate, output projection) and
the residual connection. The scan, with the D term and the gate, runs in the
numba kernel of :mod:`manticore.kernels.selective_scan` instead of
materialising (B, Din, T, N) tensors. A SiLU convolution runs in that
module's convolution kernel, and other activations in ``F.conv1d``.

Dimension letters used in shape comments:

- B: batch size
- T: sequence length
- H: hidden width of the model
- Din: inner width of the mixer
- N: state size per channel
- K: kernel size of the causal convolution
- R: rank of the time-step projection
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from manticore.kernels.selective_scan import (
    causal_conv_silu_channels_last,
    kernel_available,
    selective_scan_channels_last,
    selective_state_step,
)

logger = logging.getLogger(__name__)


def _uses_kernel(block: nn.Module, hidden_states: torch.Tensor) -> bool:
    on_cpu = hidden_states.device.type == "cpu" and block.mixer.A_log.device.type == "cpu"
    return on_cpu and kernel_available()


def mamba_block_forward(
    block: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Return what ``block(hidden_states, attention_mask=attention_mask)`` returns, computed with the kernel.

    hidden_states is (B, T, H) and attention_mask (B, T) with 1 for real
    tokens and 0 for padding. Calls the block itself when the kernel is
    unavailable or the tensors are not on the CPU. Like the block without a
    cache, it starts from a zero state.
    """
    if not _uses_kernel(block, hidden_states):
        logger.debug("Calling the MambaBlock itself because the numba kernel is unavailable or the input is off the CPU.")
        return block(hidden_states, attention_mask=attention_mask)
    output, _, _ = _block_forward(block, hidden_states, attention_mask)
    return output


def mamba_block_prefill(
    block: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the block over a prompt and return its output and the states for decoding.

    Returns the output (B, T, H), the conv state (B, Din, K), which contains
    the last K inputs of the convolution with zeros in front when T < K, and the
    SSM state (B, Din, N) after the last token. Pass both states to
    :func:`mamba_block_step`. Without the kernel, or off the CPU, the scan
    runs as a sequential torch loop.
    """
    return _block_forward(block, hidden_states, attention_mask)


def mamba_block_step(
    block: nn.Module, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the block on one new token and return its output and the updated states.

    hidden_states is (B, 1, H), conv_state (B, Din, K) and ssm_state
    (B, Din, N), as returned by :func:`mamba_block_prefill` or by an earlier
    step. Returns the output (B, 1, H) and new state tensors. The input
    states are left unchanged. Uses torch operations only, on any device.
    """
    if hidden_states.dim() != 3 or hidden_states.shape[1] != 1:
        shape = tuple(hidden_states.shape)
        raise ValueError(f"hidden_states must have shape (B, 1, H) for one decoding step, got {shape}")
    mixer = block.mixer
    residual, normed = _norm_and_residual(block, hidden_states)
    dtype = normed.dtype

    # (B, 1, H) -> (B, 2 Din) -> two (B, Din) halves
    conv_input, gate = mixer.in_proj(normed[:, 0]).chunk(2, dim=-1)
    # Drop the oldest input of the window: (B, Din, K)
    conv_state = torch.cat([conv_state[:, :, 1:], conv_input[:, :, None].to(conv_state.dtype)], dim=-1)
    weight = mixer.conv1d.weight[:, 0, :]
    x = (conv_state.to(weight.dtype) * weight).sum(dim=-1)
    if mixer.use_conv_bias:
        x = x + mixer.conv1d.bias
    x = ACT2FN[mixer.activation](x).to(dtype)

    time_step, B, C = _split_x_projection(mixer, x)
    ssm_state = ssm_state.clone()
    y = selective_state_step(
        ssm_state,
        x,
        F.linear(time_step, mixer.dt_proj.weight),
        -torch.exp(mixer.A_log.float()),
        B,
        C,
        D=mixer.D.float(),
        z=gate,
        delta_bias=_delta_bias(mixer),
        delta_softplus=True,
    )
    output = mixer.out_proj(y.to(dtype))[:, None, :]
    return residual + output, conv_state, ssm_state


def _norm_and_residual(block: nn.Module, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the residual branch and the normalised input, as ``MambaBlock.forward`` computes them."""
    residual = hidden_states
    normed = block.norm(hidden_states.to(dtype=block.norm.weight.dtype))
    if block.residual_in_fp32:
        residual = residual.to(torch.float32)
    return residual, normed


def _block_forward(block, hidden_states, attention_mask):
    residual, normed = _norm_and_residual(block, hidden_states)
    mixer_output, conv_state, ssm_state = _mixer_forward(block.mixer, normed, attention_mask)
    return residual + mixer_output, conv_state, ssm_state


def _mask_padding(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the padded positions of (B, T, ...) hidden states, as transformers' mixer does."""
    if attention_mask is None:
        return hidden_states
    return (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)


def _delta_bias(mixer: nn.Module) -> torch.Tensor | None:
    bias = mixer.dt_proj.bias
    return None if bias is None else bias.float()


def _split_x_projection(mixer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project x (..., Din) and split it into the time step (..., R), B (..., N) and C (..., N)."""
    sizes = [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size]
    time_step, B, C = torch.split(mixer.x_proj(x), sizes, dim=-1)
    return time_step, B, C


def _last_conv_inputs(conv_input: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Return the last K inputs (B, T, Din) of the convolution as a (B, Din, K) conv state."""
    length = conv_input.shape[1]
    # (B, T, Din) -> (B, Din, T)
    window = conv_input.transpose(1, 2)
    if length < kernel_size:
        return F.pad(window, (kernel_size - length, 0)).contiguous()
    return window[:, :, length - kernel_size :].contiguous()


def _causal_conv(mixer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply the causal depthwise convolution and its activation to x (B, T, Din), as transformers does."""
    weight = mixer.conv1d.weight  # (Din, 1, K)
    bias = mixer.conv1d.bias if mixer.use_conv_bias else None
    if mixer.activation == "silu":
        return causal_conv_silu_channels_last(x, weight, bias).to(x.dtype)

    length = x.shape[1]
    # (B, T, Din) -> (B, Din, T); padding K - 1 on both sides, cut to the first T outputs.
    output = F.conv1d(
        x.transpose(1, 2).to(weight.dtype), weight, bias, padding=weight.shape[-1] - 1, groups=weight.shape[0]
    )[:, :, :length]
    # (B, Din, T) -> (B, T, Din)
    return ACT2FN[mixer.activation](output).to(x.dtype).transpose(1, 2)


def _mixer_forward(mixer, hidden_states, attention_mask):
    """Reproduce ``MambaMixer.forward`` without a cache, returning the output and the final states."""
    dtype = hidden_states.dtype
    hidden_states = _mask_padding(hidden_states, attention_mask)
    # (B, T, H) -> (B, T, 2 Din) -> two (B, T, Din) halves
    conv_input, gate = mixer.in_proj(hidden_states).chunk(2, dim=-1)
    conv_state = _last_conv_inputs(conv_input, mixer.conv1d.kernel_size[0])
    x = _mask_padding(_causal_conv(mixer, conv_input), attention_mask)

    time_step, B, C = _split_x_projection(mixer, x)
    dt = F.linear(time_step, mixer.dt_proj.weight)  # (B, T, Din)
    delta_bias = _delta_bias(mixer)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dt.dtype)
    dt = F.softplus(dt)

    A = -torch.exp(mixer.A_log.float())
    y, ssm_state = selective_scan_channels_last(x, dt, A, B, C, D=mixer.D.float(), z=gate)
    return mixer.out_proj(y.to(dtype)), conv_state, ssm_state
