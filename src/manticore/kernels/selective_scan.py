"""Fused CPU selective scan for Mamba layers, with a torch fallback.

The module also provides the causal depthwise convolution with SiLU that
precedes the scan in a Mamba mixer, as a numba kernel in the same layout.

Dimension letters used in shape comments:

- B: batch size
- T: sequence length (time steps)
- Din: inner width of the mixer (channels of the scan)
- N: state size per channel

The scan follows transformers' ``mamba_selective_scan`` (version 5.25)::

    dt_t = softplus(delta_t + delta_bias)        # optional bias and softplus
    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t = C_t . h_t + D * u_t
    out_t = y_t * silu(z_t)

The numba kernels keep the (N,) state of each (batch, channel) pair in local
memory and never build a (B, Din, T, N) tensor. Each task scans a block of
channels of one batch element, and the inner loops run over the channels of
the block, so that they vectorise. The forward kernel stores the state every
``CHUNK`` steps. The backward kernel restarts from those checkpoints,
recomputes one chunk of states into a thread-local buffer and sweeps
backwards through it.

The kernels also apply the D skip term and the gate, which saves several
passes over (B, T, Din) tensors. The delta bias and the softplus are torch
operations before the kernel, so autograd computes their gradients. Without
numba, or for tensors off the CPU, the scan runs as a sequential torch loop
(:func:`reference_selective_scan`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

try:
    import numba
    from llvmlite import ir as llvm_ir
    from numba import prange
    from numba.core import types as numba_types
    from numba.core.errors import NumbaError
    from numba.extending import intrinsic, overload
except ImportError as error:
    numba = None
    _NUMBA_IMPORT_ERROR: ImportError | None = error
else:
    _NUMBA_IMPORT_ERROR = None

# Channels that one kernel task scans together. The inner loops run over
# these channels, so a wide block gives LLVM long vector loops, and narrower
# blocks give more tasks when the batch is small.
MAX_BLOCK_WIDTH = 64
MIN_BLOCK_WIDTH = 16
# Time steps between two state checkpoints that the forward kernel stores for
# the backward kernel. The backward kernel's scratch buffers hold one chunk.
CHUNK = 16
# Kernel tasks per thread that the block width and the backward groups aim for.
_TASKS_PER_THREAD = 4

_kernel_status: bool | None = None


if numba is not None:

    @intrinsic
    def _fused_multiply_add(typingctx, a, b, c):
        """Return a * b + c with one rounding (llvm.fma)."""
        if not (isinstance(a, numba_types.Float) and a == b == c):
            return None

        def codegen(context, builder, signature, args):
            return builder.fma(*args)

        return a(a, b, c), codegen

    @intrinsic
    def _power_of_two(typingctx, shifted):
        """Return 2**k for the integer k stored in the low mantissa bits of ``shifted``.

        ``shifted`` is x + 1.5 * 2**M, where M is the mantissa width, so its
        low mantissa bits hold round(x) in two's complement. Adding the
        exponent bias and shifting those bits into the exponent field gives
        2**k for k inside the normal exponent range.
        """
        if not isinstance(shifted, numba_types.Float):
            return None
        width = shifted.bitwidth
        mantissa_bits = 52 if width == 64 else 23
        exponent_bias = 1023 if width == 64 else 127

        def codegen(context, builder, signature, args):
            int_type = llvm_ir.IntType(width)
            bits = builder.bitcast(args[0], int_type)
            biased = builder.add(bits, llvm_ir.Constant(int_type, exponent_bias))
            exponent = builder.shl(biased, llvm_ir.Constant(int_type, mantissa_bits))
            return builder.bitcast(exponent, context.get_value_type(shifted))

        return shifted(shifted), codegen

    def _vector_exp(x):
        """Compute exp(x) with arithmetic only, so that loops calling it vectorise."""

    def _make_exp(dtype, degree, lower, upper, ln2_high, ln2_low):
        """Build exp for one float dtype: Cody-Waite reduction and a Taylor polynomial.

        x = k * ln(2) + r with |r| <= ln(2) / 2, and exp(x) = 2**k * p(r).
        ``ln2_high`` has trailing zero bits, so k * ln2_high is exact. The
        result is 0 below ``lower`` and inf above ``upper``, where 2**k would
        leave the normal exponent range. That differs from exp only for
        results below the smallest normal number and for x between ``upper``
        and the overflow point (about 88.7 for float32 and 709.8 for
        float64). The scan calls it with dt * A, which is not positive for
        Mamba's A = -exp(A_log). NaN propagates through the polynomial.
        """
        mantissa_bits = 52 if dtype == np.float64 else 23
        magic = dtype(1.5 * 2.0**mantissa_bits)
        log2_e = dtype(1.0 / math.log(2.0))
        coefficients = tuple(dtype(1.0 / math.factorial(i)) for i in range(degree, -1, -1))
        lower, upper = dtype(lower), dtype(upper)
        ln2_high, ln2_low = dtype(ln2_high), dtype(ln2_low)
        zero, infinity = dtype(0.0), dtype(np.inf)
        leading, rest = coefficients[0], coefficients[1:]

        def impl(x):
            clamped = lower if x < lower else x
            clamped = upper if clamped > upper else clamped
            shifted = _fused_multiply_add(clamped, log2_e, magic)
            k = shifted - magic
            reduced = clamped - k * ln2_high
            reduced = reduced - k * ln2_low
            polynomial = leading
            for coefficient in rest:
                polynomial = _fused_multiply_add(polynomial, reduced, coefficient)
            result = polynomial * _power_of_two(shifted)
            result = zero if x < lower else result
            result = infinity if x > upper else result
            return result

        return impl

    # The Taylor remainder on |r| <= ln(2) / 2 is about 4e-18 at degree 13
    # (float64) and 5e-9 at degree 7 (float32), below half an ulp. The tests
    # check the whole function against numpy.exp to 2 ulp.
    _EXP_FLOAT64 = _make_exp(np.float64, 13, -708.0, 709.0, 6.93147180369123816490e-01, 1.90821492927058770002e-10)
    _EXP_FLOAT32 = _make_exp(np.float32, 7, -87.0, 88.0, 0.693145751953125, 1.428606765330187045e-06)

    @overload(_vector_exp, inline="always")
    def _vector_exp_overload(x):
        if x == numba_types.float64:
            return _EXP_FLOAT64
        if x == numba_types.float32:
            return _EXP_FLOAT32
        return None

    # Vectorisation rules that the helpers below follow. Each helper contains
    # loop nests over a runtime number of lanes (channels) that touch few
    # arrays, so that LLVM vectorises them with runtime alias checks. A loop
    # with a constant trip count of 16 gets unrolled fully instead and stays
    # scalar. Inner loops index only with loop variables into C-contiguous
    # views such as row[j], because an index like row[start + j] makes numba
    # emit a negative-index check that blocks vectorisation. Every function
    # uses error_model="numpy", because numba's default Python error model
    # checks each float division for a zero divisor, which also blocks
    # vectorisation. Division by zero then gives inf or NaN, as in numpy.

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _load_columns(source, start, lanes, target):
        """Copy source[:, start:start + lanes] into target[:, :lanes]."""
        for n in range(source.shape[0]):
            row = source[n, start : start + lanes]
            target_row = target[n]
            for j in range(lanes):
                target_row[j] = row[j]

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _store_columns(source, lanes, target, start):
        """Copy source[:, :lanes] into target[:, start:start + lanes]."""
        for n in range(source.shape[0]):
            row = source[n]
            target_row = target[n, start : start + lanes]
            for j in range(lanes):
                target_row[j] = row[j]

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _load_chunk(source, b, first, steps, start, lanes, target):
        """Copy source[b, first:first + steps, start:start + lanes] into target[:steps, :lanes]."""
        for s in range(steps):
            row = source[b, first + s, start : start + lanes]
            target_row = target[s]
            for j in range(lanes):
                target_row[j] = row[j]

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _forward_step(state, y_lane, a_block, dt_lane, dtu_lane, b_row, c_row, lanes):
        """Advance state (N, lanes) by one step in place and write C_t . h_t into y_lane."""
        for j in range(lanes):
            y_lane[j] = 0.0
        for n in range(state.shape[0]):
            b_value = b_row[n]
            c_value = c_row[n]
            for j in range(lanes):
                decay = _vector_exp(dt_lane[j] * a_block[n, j])
                value = _fused_multiply_add(decay, state[n, j], dtu_lane[j] * b_value)
                state[n, j] = value
                y_lane[j] = _fused_multiply_add(c_value, value, y_lane[j])

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _write_output_row(out_row, y_lane, u_row, d_block, z_row, has_gate, lanes):
        """Write (y + D * u) * silu(z) into out_row, or y + D * u without a gate."""
        one = y_lane.dtype.type(1.0)
        if has_gate:
            for j in range(lanes):
                gate = z_row[j] / (one + _vector_exp(-z_row[j]))
                out_row[j] = _fused_multiply_add(d_block[j], u_row[j], y_lane[j]) * gate
        else:
            for j in range(lanes):
                out_row[j] = _fused_multiply_add(d_block[j], u_row[j], y_lane[j])

    @numba.njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
    def _scan_forward_kernel(
        u, dt, a_t, b_mat, c_mat, d_skip, z, has_gate, initial, out, last, checkpoints, save_checkpoints, block_width
    ):
        """Run the scan and write out = (C . h + D * u) * silu(z) for every step.

        Shapes: u, dt, z, out (B, T, Din). a_t (N, Din). b_mat, c_mat
        (B, T, N). d_skip (Din,). initial, last (B, N, Din). z is read only
        when has_gate is set. checkpoints (B, ceil(T / CHUNK), N, Din)
        receives the state before each chunk when save_checkpoints is set.
        Each task scans block_width channels of one batch element.
        """
        batch, length, width = u.shape
        state_size = a_t.shape[0]
        blocks = (width + block_width - 1) // block_width
        for task in prange(batch * blocks):
            b = task // blocks
            start = (task % blocks) * block_width
            lanes = min(block_width, width - start)
            a_block = np.empty((state_size, lanes), dtype=u.dtype)
            state = np.empty((state_size, lanes), dtype=u.dtype)
            _load_columns(a_t, start, lanes, a_block)
            _load_columns(initial[b], start, lanes, state)
            d_block = d_skip[start : start + lanes]
            dt_lane = np.empty(lanes, dtype=u.dtype)
            dtu_lane = np.empty(lanes, dtype=u.dtype)
            y_lane = np.empty(lanes, dtype=u.dtype)
            for t in range(length):
                if save_checkpoints and t % CHUNK == 0:
                    _store_columns(state, lanes, checkpoints[b, t // CHUNK], start)
                dt_row = dt[b, t, start : start + lanes]
                u_row = u[b, t, start : start + lanes]
                for j in range(lanes):
                    dt_lane[j] = dt_row[j]
                    dtu_lane[j] = dt_row[j] * u_row[j]
                _forward_step(state, y_lane, a_block, dt_lane, dtu_lane, b_mat[b, t], c_mat[b, t], lanes)
                z_row = z[b, t, start : start + lanes] if has_gate else u_row
                _write_output_row(out[b, t, start : start + lanes], y_lane, u_row, d_block, z_row, has_gate, lanes)
            _store_columns(state, lanes, last[b], start)

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _recompute_chunk(states, decays, a_block, dt_chunk, dtu_chunk, b_rows, steps, lanes):
        """Fill states[1:steps + 1] (h_t) and decays[:steps] (exp(dt_t * A)) from states[0]."""
        for s in range(steps):
            decay = decays[s]
            dt_row = dt_chunk[s]
            for n in range(a_block.shape[0]):
                for j in range(lanes):
                    decay[n, j] = _vector_exp(dt_row[j] * a_block[n, j])
            previous = states[s]
            current = states[s + 1]
            dtu_row = dtu_chunk[s]
            for n in range(a_block.shape[0]):
                b_value = b_rows[s, n]
                for j in range(lanes):
                    current[n, j] = _fused_multiply_add(decay[n, j], previous[n, j], dtu_row[j] * b_value)

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _sweep_chunk(grad_states, carry, decays, grad_y_chunk, c_rows, steps, lanes):
        """Propagate the state gradient backwards through one chunk.

        On entry carry (N, lanes) is the gradient with respect to the last
        state of the chunk from later steps. grad_states[s] receives the full
        gradient with respect to h_t, and carry leaves as the gradient with
        respect to the state before the chunk.
        """
        for s in range(steps - 1, -1, -1):
            grad_h_row = grad_states[s]
            decay = decays[s]
            grad_y_row = grad_y_chunk[s]
            for n in range(carry.shape[0]):
                c_value = c_rows[s, n]
                for j in range(lanes):
                    grad_h = _fused_multiply_add(grad_y_row[j], c_value, carry[n, j])
                    grad_h_row[n, j] = grad_h
                    carry[n, j] = grad_h * decay[n, j]

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _accumulate_products(target, left, right, steps, lanes):
        """Add left[s, n, j] * right[s, j] to target[s, n, j]."""
        for s in range(steps):
            target_row = target[s]
            left_row = left[s]
            right_row = right[s]
            for n in range(target.shape[1]):
                for j in range(lanes):
                    target_row[n, j] = _fused_multiply_add(left_row[n, j], right_row[j], target_row[n, j])

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _exponent_gradients(decays, grad_states, states, steps, lanes):
        """Overwrite decays[s] with the gradient with respect to the exponent dt_t * A."""
        for s in range(steps):
            decay = decays[s]
            grad_h_row = grad_states[s]
            previous = states[s]
            for n in range(decays.shape[1]):
                for j in range(lanes):
                    decay[n, j] = grad_h_row[n, j] * previous[n, j] * decay[n, j]

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _accumulate_grad_a(grad_a, grad_exponents, dt_chunk, steps, lanes):
        """Add the sum over steps of grad_exponents[s, n, j] * dt[s, j] to grad_a[n, j]."""
        for s in range(steps):
            grad_exponent = grad_exponents[s]
            dt_row = dt_chunk[s]
            for n in range(grad_a.shape[0]):
                for j in range(lanes):
                    grad_a[n, j] = _fused_multiply_add(grad_exponent[n, j], dt_row[j], grad_a[n, j])

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _sum_times_columns(total, values, weights, steps, lanes):
        """Set total[s, j] to the sum over n of values[s, n, j] * weights[n, j]."""
        for s in range(steps):
            total_row = total[s]
            value_row = values[s]
            for j in range(lanes):
                total_row[j] = 0.0
            for n in range(values.shape[1]):
                for j in range(lanes):
                    total_row[j] = _fused_multiply_add(value_row[n, j], weights[n, j], total_row[j])

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _sum_times_rows(total, values, weights, steps, lanes):
        """Set total[s, j] to the sum over n of values[s, n, j] * weights[s, n]."""
        for s in range(steps):
            total_row = total[s]
            value_row = values[s]
            for j in range(lanes):
                total_row[j] = 0.0
            for n in range(values.shape[1]):
                weight = weights[s, n]
                for j in range(lanes):
                    total_row[j] = _fused_multiply_add(value_row[n, j], weight, total_row[j])

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _gate_gradients(grad_y_chunk, y_chunk, u_chunk, z_chunk, d_block, grad_z, b, first, steps, start, lanes):
        """Turn the output gradient into the gradient of C . h and write the gradient of z.

        On entry grad_y_chunk contains the gradient of out = (y + D * u) *
        silu(z), and y_chunk contains y = C . h. On exit grad_y_chunk contains
        the gradient of y, and grad_z[b, first:first + steps, start:start +
        lanes] the gradient of z, with silu'(z) = s * (1 + z * (1 - s)) and s = sigmoid(z).
        """
        one = y_chunk.dtype.type(1.0)
        for s in range(steps):
            grad_row = grad_y_chunk[s]
            y_row = y_chunk[s]
            u_row = u_chunk[s]
            z_row = z_chunk[s]
            grad_z_row = grad_z[b, first + s, start : start + lanes]
            for j in range(lanes):
                sigmoid = one / (one + _vector_exp(-z_row[j]))
                skip_output = _fused_multiply_add(d_block[j], u_row[j], y_row[j])
                silu_slope = sigmoid * _fused_multiply_add(z_row[j], one - sigmoid, one)
                grad_z_row[j] = grad_row[j] * skip_output * silu_slope
                grad_row[j] = grad_row[j] * z_row[j] * sigmoid

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _accumulate_grad_d(grad_d, grad_y_chunk, u_chunk, steps, lanes):
        """Add the sum over steps of grad_y * u to grad_d (lanes,)."""
        for s in range(steps):
            grad_row = grad_y_chunk[s]
            u_row = u_chunk[s]
            for j in range(lanes):
                grad_d[j] = _fused_multiply_add(grad_row[j], u_row[j], grad_d[j])

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _store_input_gradients(
        grad_u, grad_dt, b_sums, exponent_sums, grad_y_chunk, d_block, dt_chunk, u_chunk, b, first, steps, start, lanes
    ):
        """Write grad_u and grad_dt for one chunk.

        With S = sum_n(grad_h * B): grad_u = dt * S + grad_y * D and
        grad_dt = u * S + sum_n(grad_exponent * A).
        """
        for s in range(steps):
            grad_u_row = grad_u[b, first + s, start : start + lanes]
            b_sum = b_sums[s]
            dt_row = dt_chunk[s]
            grad_y_row = grad_y_chunk[s]
            for j in range(lanes):
                grad_u_row[j] = _fused_multiply_add(grad_y_row[j], d_block[j], b_sum[j] * dt_row[j])
            grad_dt_row = grad_dt[b, first + s, start : start + lanes]
            exponent_sum = exponent_sums[s]
            u_row = u_chunk[s]
            for j in range(lanes):
                grad_dt_row[j] = _fused_multiply_add(b_sum[j], u_row[j], exponent_sum[j])

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _sum_lanes(target, source, first, steps):
        """Write the sum over lanes of source[s, n, :] to target[first + s, n]."""
        for s in range(steps):
            for n in range(source.shape[1]):
                total = source[s, n, 0]
                for j in range(1, source.shape[2]):
                    total += source[s, n, j]
                target[first + s, n] = total

    @numba.njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
    def _scan_backward_kernel(
        u, dt, a_t, b_mat, c_mat, d_skip, z, has_gate, checkpoints, grad_out, grad_last, block_width,
        grad_u, grad_dt, grad_z, grad_a_parts, grad_b_parts, grad_c_parts, grad_d_parts, grad_initial,
    ):  # fmt: skip
        """Compute the gradients of the scan from the forward checkpoints.

        Shapes as in the forward kernel, and: grad_out, grad_u, grad_dt,
        grad_z (B, T, Din), where grad_z is written only when has_gate is set.
        grad_last, grad_initial, grad_a_parts (B, N, Din) and grad_d_parts
        (B, Din), where the parts contain one term per batch element.
        grad_b_parts and grad_c_parts (G, B, T, N) contain one term per group
        G of channel blocks. The caller sums the parts. One task handles one
        group of one batch element and walks the chunks backwards, all blocks
        of the group per chunk, so that the gradients of B and C are summed
        over channels in the task's buffers.
        """
        batch, length, width = u.shape
        state_size = a_t.shape[0]
        blocks = (width + block_width - 1) // block_width
        groups = grad_b_parts.shape[0]
        chunks = (length + CHUNK - 1) // CHUNK
        dtype = u.dtype
        for task in prange(batch * groups):
            b = task // groups
            group = task % groups
            # Chunk buffers: (CHUNK + 1, N, block_width) and (CHUNK, N, block_width).
            states = np.empty((CHUNK + 1, state_size, block_width), dtype=dtype)
            decays = np.empty((CHUNK, state_size, block_width), dtype=dtype)
            grad_states = np.empty((CHUNK, state_size, block_width), dtype=dtype)
            grad_b_chunk = np.empty((CHUNK, state_size, block_width), dtype=dtype)
            grad_c_chunk = np.empty((CHUNK, state_size, block_width), dtype=dtype)
            # Per-step lane values: (CHUNK, block_width).
            dt_chunk = np.empty((CHUNK, block_width), dtype=dtype)
            u_chunk = np.empty((CHUNK, block_width), dtype=dtype)
            dtu_chunk = np.empty((CHUNK, block_width), dtype=dtype)
            z_chunk = np.empty((CHUNK, block_width), dtype=dtype)
            y_chunk = np.empty((CHUNK, block_width), dtype=dtype)
            grad_y_chunk = np.empty((CHUNK, block_width), dtype=dtype)
            b_sums = np.empty((CHUNK, block_width), dtype=dtype)
            exponent_sums = np.empty((CHUNK, block_width), dtype=dtype)
            # Per-block values that live across chunks: (blocks, N, block_width) and (blocks, block_width).
            a_blocks = np.zeros((blocks, state_size, block_width), dtype=dtype)
            carry = np.zeros((blocks, state_size, block_width), dtype=dtype)
            grad_a = np.zeros((blocks, state_size, block_width), dtype=dtype)
            grad_d = np.zeros((blocks, block_width), dtype=dtype)
            for block in range(group, blocks, groups):
                start = block * block_width
                lanes = min(block_width, width - start)
                _load_columns(a_t, start, lanes, a_blocks[block])
                _load_columns(grad_last[b], start, lanes, carry[block])
            for chunk in range(chunks - 1, -1, -1):
                first = chunk * CHUNK
                steps = min(CHUNK, length - first)
                b_rows = b_mat[b, first : first + steps]
                c_rows = c_mat[b, first : first + steps]
                grad_b_chunk[:, :, :] = 0.0
                grad_c_chunk[:, :, :] = 0.0
                for block in range(group, blocks, groups):
                    start = block * block_width
                    lanes = min(block_width, width - start)
                    a_block = a_blocks[block]
                    d_block = d_skip[start : start + lanes]
                    _load_chunk(dt, b, first, steps, start, lanes, dt_chunk)
                    _load_chunk(u, b, first, steps, start, lanes, u_chunk)
                    _load_chunk(grad_out, b, first, steps, start, lanes, grad_y_chunk)
                    for s in range(steps):
                        dt_row = dt_chunk[s]
                        u_row = u_chunk[s]
                        dtu_row = dtu_chunk[s]
                        for j in range(lanes):
                            dtu_row[j] = dt_row[j] * u_row[j]
                    _load_columns(checkpoints[b, chunk], start, lanes, states[0])
                    _recompute_chunk(states, decays, a_block, dt_chunk, dtu_chunk, b_rows, steps, lanes)
                    if has_gate:
                        _load_chunk(z, b, first, steps, start, lanes, z_chunk)
                        _sum_times_rows(y_chunk, states[1:], c_rows, steps, lanes)
                        _gate_gradients(grad_y_chunk, y_chunk, u_chunk, z_chunk, d_block, grad_z, b, first, steps, start, lanes)
                    # From here on grad_y_chunk is the gradient of y = C . h.
                    _accumulate_grad_d(grad_d[block], grad_y_chunk, u_chunk, steps, lanes)
                    _sweep_chunk(grad_states, carry[block], decays, grad_y_chunk, c_rows, steps, lanes)

                    # h_t is states[s + 1] and h_{t-1} is states[s].
                    _accumulate_products(grad_c_chunk, states[1:], grad_y_chunk, steps, lanes)
                    _accumulate_products(grad_b_chunk, grad_states, dtu_chunk, steps, lanes)
                    _sum_times_rows(b_sums, grad_states, b_rows, steps, lanes)
                    _exponent_gradients(decays, grad_states, states, steps, lanes)
                    _accumulate_grad_a(grad_a[block], decays, dt_chunk, steps, lanes)
                    _sum_times_columns(exponent_sums, decays, a_block, steps, lanes)
                    _store_input_gradients(
                        grad_u, grad_dt, b_sums, exponent_sums, grad_y_chunk, d_block, dt_chunk, u_chunk,
                        b, first, steps, start, lanes,
                    )  # fmt: skip
                _sum_lanes(grad_b_parts[group, b], grad_b_chunk, first, steps)
                _sum_lanes(grad_c_parts[group, b], grad_c_chunk, first, steps)
            for block in range(group, blocks, groups):
                start = block * block_width
                lanes = min(block_width, width - start)
                _store_columns(grad_a[block], lanes, grad_a_parts[b], start)
                _store_columns(carry[block], lanes, grad_initial[b], start)
                grad_d_row = grad_d_parts[b, start : start + lanes]
                for j in range(lanes):
                    grad_d_row[j] = grad_d[block, j]

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _conv_row(pre, x_rows, weight_t, bias, t):
        """Write bias + sum_k weight_t[k] * x_rows[t - K + 1 + k] (zero before the start) into pre (Din,)."""
        taps = weight_t.shape[0]
        for d in range(pre.shape[0]):
            pre[d] = bias[d]
        for k in range(taps):
            source = t - taps + 1 + k
            if source >= 0:
                x_row = x_rows[source]
                weight_row = weight_t[k]
                for d in range(pre.shape[0]):
                    pre[d] = _fused_multiply_add(weight_row[d], x_row[d], pre[d])

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _silu_row(out_row, pre):
        one = pre.dtype.type(1.0)
        for d in range(pre.shape[0]):
            out_row[d] = pre[d] / (one + _vector_exp(-pre[d]))

    @numba.njit(cache=True, fastmath=False, error_model="numpy")
    def _silu_gradient_row(grad_pre_row, grad_out_row, pre):
        """Write grad_out * silu'(pre), where silu'(p) = s * (1 + p * (1 - s)) and s = sigmoid(p)."""
        one = pre.dtype.type(1.0)
        for d in range(pre.shape[0]):
            sigmoid = one / (one + _vector_exp(-pre[d]))
            grad_pre_row[d] = grad_out_row[d] * sigmoid * _fused_multiply_add(pre[d], one - sigmoid, one)

    @numba.njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
    def _conv_silu_forward_kernel(x, weight_t, bias, out, rows_per_task):
        """Write silu(causal depthwise convolution of x) into out.

        Shapes: x, out (B, T, Din). weight_t (K, Din), where output t reads
        inputs t - K + 1 to t. bias (Din,).
        """
        batch, length, width = x.shape
        tasks_per_batch = (length + rows_per_task - 1) // rows_per_task
        for task in prange(batch * tasks_per_batch):
            b = task // tasks_per_batch
            first = (task % tasks_per_batch) * rows_per_task
            pre = np.empty(width, dtype=x.dtype)
            for t in range(first, min(length, first + rows_per_task)):
                _conv_row(pre, x[b], weight_t, bias, t)
                _silu_row(out[b, t], pre)

    @numba.njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
    def _conv_silu_backward_kernel(x, weight_t, bias, grad_out, rows_per_task, grad_x, grad_weight_parts, grad_bias_parts):
        """Compute the gradients of the fused convolution and SiLU.

        Shapes as in the forward kernel, and: grad_out, grad_x (B, T, Din).
        grad_weight_parts (tasks, K, Din) and grad_bias_parts (tasks, Din)
        receive one term per task, and the caller sums them. Each task
        recomputes the pre-activation of its rows and of the K - 1 rows after
        them, which its input gradients read.
        """
        batch, length, width = x.shape
        taps = weight_t.shape[0]
        tasks_per_batch = (length + rows_per_task - 1) // rows_per_task
        for task in prange(batch * tasks_per_batch):
            b = task // tasks_per_batch
            first = (task % tasks_per_batch) * rows_per_task
            last = min(length, first + rows_per_task)
            pre = np.empty(width, dtype=x.dtype)
            # Gradient of the pre-activation for rows first to first + rows_per_task + K - 2.
            grad_pre = np.empty((rows_per_task + taps - 1, width), dtype=x.dtype)
            for t in range(first, min(length, last + taps - 1)):
                _conv_row(pre, x[b], weight_t, bias, t)
                _silu_gradient_row(grad_pre[t - first], grad_out[b, t], pre)

            grad_weight = grad_weight_parts[task]
            grad_bias = grad_bias_parts[task]
            grad_weight[:, :] = 0.0
            grad_bias[:] = 0.0
            for t in range(first, last):
                grad_row = grad_pre[t - first]
                for d in range(width):
                    grad_bias[d] += grad_row[d]
                for k in range(taps):
                    source = t - taps + 1 + k
                    if source >= 0:
                        x_row = x[b, source]
                        weight_grad_row = grad_weight[k]
                        for d in range(width):
                            weight_grad_row[d] = _fused_multiply_add(grad_row[d], x_row[d], weight_grad_row[d])

            for t in range(first, last):
                grad_x_row = grad_x[b, t]
                for d in range(width):
                    grad_x_row[d] = 0.0
                for k in range(taps):
                    target = t + taps - 1 - k
                    if target < length:
                        grad_row = grad_pre[target - first]
                        weight_row = weight_t[k]
                        for d in range(width):
                            grad_x_row[d] = _fused_multiply_add(weight_row[d], grad_row[d], grad_x_row[d])


def _set_kernel_threads() -> None:
    """Give numba as many threads as torch uses, within numba's own limit."""
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(max(1, threads))


def _as_array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy()


def _block_width(batch: int, width: int) -> int:
    """Return the channels per kernel task: the widest block that still gives enough tasks."""
    min_tasks = _TASKS_PER_THREAD * numba.get_num_threads()
    block_width = MAX_BLOCK_WIDTH
    while block_width > MIN_BLOCK_WIDTH and batch * -(-width // block_width) < min_tasks:
        block_width //= 2
    return block_width


def _backward_groups(batch: int, width: int, block_width: int) -> int:
    """Return how many groups the backward kernel splits each batch element's channel blocks into."""
    blocks = -(-width // block_width)
    min_tasks = _TASKS_PER_THREAD * numba.get_num_threads()
    return max(1, min(blocks, -(-min_tasks // max(batch, 1))))


def _run_forward(u, dt, A, B, C, D, z, initial_state, save_checkpoints):
    """Run the forward kernel on (B, T, Din) inputs and return numpy output, last state and checkpoints."""
    batch, length, width = u.shape
    state_size = A.shape[1]
    u_array = _as_array(u)
    dtype = u_array.dtype
    # Kernel layout of A and of the states: (N, Din) and (B, N, Din).
    a_t = _as_array(A.t())
    if initial_state is None:
        initial = np.zeros((batch, state_size, width), dtype=dtype)
    else:
        initial = _as_array(initial_state.transpose(1, 2))
    d_skip = np.zeros(width, dtype=dtype) if D is None else _as_array(D)
    z_array = np.empty((0, 0, 0), dtype=dtype) if z is None else _as_array(z)
    out = np.empty((batch, length, width), dtype=dtype)
    last = np.empty((batch, state_size, width), dtype=dtype)
    chunks = -(-length // CHUNK) if save_checkpoints else 0
    checkpoints = np.empty((batch, chunks, state_size, width), dtype=dtype)
    _set_kernel_threads()
    _scan_forward_kernel(
        u_array, _as_array(dt), a_t, _as_array(B), _as_array(C), d_skip, z_array, z is not None,
        initial, out, last, checkpoints, save_checkpoints, _block_width(batch, width),
    )  # fmt: skip
    return out, last, checkpoints


def _sum_groups(parts: np.ndarray) -> torch.Tensor:
    """Sum (G, B, T, N) terms over G, without a copy when G is 1."""
    if parts.shape[0] == 1:
        return torch.from_numpy(parts[0])
    return torch.from_numpy(parts).sum(dim=0)


def _run_backward(u, dt, A, B, C, D, z, checkpoints, grad_out, grad_last):
    """Run the backward kernel and return the gradients of u, dt, A, B, C, D, z and the initial state."""
    batch, length, width = u.shape
    state_size = A.shape[1]
    u_array = _as_array(u)
    dtype = u_array.dtype
    if grad_out is None:
        grad_out_array = np.zeros((batch, length, width), dtype)
    else:
        grad_out_array = _as_array(grad_out.to(u.dtype))
    if grad_last is None:
        grad_last_array = np.zeros((batch, state_size, width), dtype)
    else:
        # (B, Din, N) -> (B, N, Din)
        grad_last_array = _as_array(grad_last.to(u.dtype).transpose(1, 2))
    d_skip = np.zeros(width, dtype=dtype) if D is None else _as_array(D)
    z_array = np.empty((0, 0, 0), dtype=dtype) if z is None else _as_array(z)

    _set_kernel_threads()
    block_width = _block_width(batch, width)
    groups = _backward_groups(batch, width, block_width)
    grad_u = np.empty((batch, length, width), dtype)
    grad_dt = np.empty((batch, length, width), dtype)
    grad_z = np.empty((batch, length, width) if z is not None else (0, 0, 0), dtype)
    grad_a_parts = np.empty((batch, state_size, width), dtype)
    grad_b_parts = np.empty((groups, batch, length, state_size), dtype)
    grad_c_parts = np.empty((groups, batch, length, state_size), dtype)
    grad_d_parts = np.empty((batch, width), dtype)
    grad_initial = np.empty((batch, state_size, width), dtype)
    _scan_backward_kernel(
        u_array, _as_array(dt), _as_array(A.t()), _as_array(B), _as_array(C), d_skip, z_array, z is not None,
        checkpoints, grad_out_array, grad_last_array, block_width,
        grad_u, grad_dt, grad_z, grad_a_parts, grad_b_parts, grad_c_parts, grad_d_parts, grad_initial,
    )  # fmt: skip

    # Sum the per-batch and per-group terms: (B, N, Din) -> (Din, N),
    # (G, B, T, N) -> (B, T, N) and (B, Din) -> (Din,). The initial state
    # goes back to (B, Din, N).
    return {
        "u": torch.from_numpy(grad_u),
        "dt": torch.from_numpy(grad_dt),
        "A": torch.from_numpy(grad_a_parts).sum(dim=0).t(),
        "B": _sum_groups(grad_b_parts),
        "C": _sum_groups(grad_c_parts),
        "D": torch.from_numpy(grad_d_parts).sum(dim=0),
        "z": torch.from_numpy(grad_z) if z is not None else None,
        "initial_state": torch.from_numpy(grad_initial).transpose(1, 2),
    }


class _SelectiveScanFunction(torch.autograd.Function):
    """Autograd wrapper of the numba scan kernels on channels-last (B, T, Din) inputs."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, D, z, initial_state, save_checkpoints):
        ctx.set_materialize_grads(False)
        out, last, checkpoints = _run_forward(u, dt, A, B, C, D, z, initial_state, save_checkpoints)
        if save_checkpoints:
            ctx.save_for_backward(u, dt, A, B, C, D, z)
            ctx.checkpoints = checkpoints
            ctx.has_initial_state = initial_state is not None
        # (B, N, Din) -> (B, Din, N)
        last_state = torch.from_numpy(last).transpose(1, 2).contiguous()
        return torch.from_numpy(out), last_state

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        u, dt, A, B, C, D, z = ctx.saved_tensors
        grads = _run_backward(u, dt, A, B, C, D, z, ctx.checkpoints, grad_out, grad_last)
        grad_D = grads["D"] if D is not None else None
        grad_initial = grads["initial_state"] if ctx.has_initial_state else None
        return grads["u"], grads["dt"], grads["A"], grads["B"], grads["C"], grad_D, grads["z"], grad_initial, None


def _conv_rows_per_task(batch: int, length: int) -> int:
    """Return the time steps per convolution task: at most 64, fewer when the batch gives too few tasks."""
    min_tasks = _TASKS_PER_THREAD * numba.get_num_threads()
    tasks_per_batch = -(-min_tasks // max(batch, 1))
    return max(1, min(64, -(-length // tasks_per_batch)))


class _CausalConvSiLUFunction(torch.autograd.Function):
    """Autograd wrapper of the numba causal-convolution kernels on channels-last (B, T, Din) inputs."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        batch, length, width = x.shape
        # (Din, 1, K) -> (K, Din)
        weight_t = _as_array(weight[:, 0, :].t())
        bias_array = np.zeros(width, weight_t.dtype) if bias is None else _as_array(bias)
        out = np.empty((batch, length, width), dtype=weight_t.dtype)
        _set_kernel_threads()
        _conv_silu_forward_kernel(_as_array(x), weight_t, bias_array, out, _conv_rows_per_task(batch, length))
        ctx.save_for_backward(x, weight, bias)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias = ctx.saved_tensors
        batch, length, width = x.shape
        weight_t = _as_array(weight[:, 0, :].t())
        bias_array = np.zeros(width, weight_t.dtype) if bias is None else _as_array(bias)
        _set_kernel_threads()
        rows_per_task = _conv_rows_per_task(batch, length)
        tasks = batch * -(-length // rows_per_task)
        grad_x = np.empty((batch, length, width), dtype=weight_t.dtype)
        grad_weight_parts = np.empty((tasks, weight_t.shape[0], width), dtype=weight_t.dtype)
        grad_bias_parts = np.empty((tasks, width), dtype=weight_t.dtype)
        _conv_silu_backward_kernel(
            _as_array(x), weight_t, bias_array, _as_array(grad_out), rows_per_task,
            grad_x, grad_weight_parts, grad_bias_parts,
        )  # fmt: skip

        # (tasks, K, Din) -> (Din, 1, K)
        grad_weight = torch.from_numpy(grad_weight_parts).sum(dim=0).t().unsqueeze(1)
        grad_bias = None if bias is None else torch.from_numpy(grad_bias_parts).sum(dim=0)
        return torch.from_numpy(grad_x), grad_weight, grad_bias


def causal_conv_silu_channels_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Apply a causal depthwise convolution and SiLU to channels-last x (B, T, Din).

    weight is a depthwise ``nn.Conv1d`` weight (Din, 1, K) and bias is (Din,)
    or None. Output t reads inputs t - K + 1 to t, as ``F.conv1d`` with padding
    K - 1 cut to the first T outputs. Uses the numba kernel for float32 and
    float64 CPU tensors of one dtype when it is available, else torch's conv1d.
    """
    same_dtype = x.dtype == weight.dtype and (bias is None or bias.dtype == weight.dtype)
    if same_dtype and x.dtype in (torch.float32, torch.float64) and _kernel_applies(x, weight, bias):
        return _CausalConvSiLUFunction.apply(x, weight, bias)

    length = x.shape[1]
    # (B, T, Din) -> (B, Din, T) -> (B, T, Din)
    output = F.conv1d(x.transpose(1, 2).to(weight.dtype), weight, bias, padding=weight.shape[-1] - 1, groups=weight.shape[0])
    return F.silu(output[:, :, :length]).transpose(1, 2)


def kernel_available() -> bool:
    """Return whether the numba kernels import and compile.

    The first call compiles them, or loads them from numba's cache. A failure
    is logged once as a warning, and callers then use the torch fallbacks.
    """
    global _kernel_status
    if _kernel_status is None:
        _kernel_status = _check_kernel()
    return _kernel_status


def _check_kernel() -> bool:
    if numba is None:
        logger.warning(
            "Importing numba failed (%s), so the selective scan and the Mamba convolution use their torch "
            "fallbacks. Install numba to use the kernels.",
            _NUMBA_IMPORT_ERROR,
        )
        return False
    torch_threads = torch.get_num_threads()
    try:
        _compile_float32_kernels()
    except (NumbaError, RuntimeError, OSError) as error:
        logger.warning(
            "Compiling the numba kernels failed (%s), so the selective scan and the Mamba convolution use "
            "their torch fallbacks.",
            error,
        )
        return False
    finally:
        # numba's OpenMP thread pool sets the OpenMP thread count when it
        # starts (here, on the first parallel kernel call). torch's CPU wheel
        # shares the libgomp instance, so that would change torch's thread count.
        torch.set_num_threads(torch_threads)
    return True


def _compile_float32_kernels() -> None:
    """Run the scan and convolution kernels, forward and backward, once on tiny float32 inputs."""
    u = torch.zeros(1, 2, 3, requires_grad=True)
    A = -torch.ones(3, 2)
    B = torch.zeros(1, 2, 2)
    weight = torch.ones(3, 1, 4, requires_grad=True)
    # Callers may ask for the first time under torch.no_grad().
    with torch.enable_grad():
        out, last = _SelectiveScanFunction.apply(u, torch.ones(1, 2, 3), A, B, B, torch.ones(3), u, None, True)
        (out.sum() + last.sum()).backward()
        _CausalConvSiLUFunction.apply(u, weight, torch.zeros(3)).sum().backward()


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """Return float64 if any input is float64, else float32 (half types are computed in float32)."""
    if any(tensor is not None and tensor.dtype == torch.float64 for tensor in tensors):
        return torch.float64
    return torch.float32


def _kernel_applies(*tensors: torch.Tensor | None) -> bool:
    on_cpu = all(tensor is None or tensor.device.type == "cpu" for tensor in tensors)
    return on_cpu and kernel_available()


def selective_scan_channels_last(
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scan channels-last inputs and return the output (C . h + D * u) * silu(z) and the last state.

    u, dt and z are (B, T, Din), with dt already positive (after bias and
    softplus). A is (Din, N), B and C are (B, T, N), D is (Din,),
    initial_state is (B, Din, N). Without D the skip term is left out, and
    without z the gate. Returns the output (B, T, Din) and the last state
    (B, Din, N), both in float64 if an input is float64, else in float32.
    Uses the numba kernel on CPU when it is available, else a sequential
    torch loop.
    """
    dtype = _compute_dtype(u, dt, A, B, C, D, z, initial_state)
    tensors = [u, dt, A, B, C, D, z, initial_state]
    u, dt, A, B, C, D, z, initial_state = [None if t is None else t.to(dtype) for t in tensors]

    if not _kernel_applies(u, dt, A, B, C, D, z, initial_state):
        # (B, T, Din) -> (B, Din, T) and (B, T, N) -> (B, N, T) for the reference layout.
        out, last = reference_selective_scan(
            u.transpose(1, 2), dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2),
            D=D, z=None if z is None else z.transpose(1, 2),
            initial_state=initial_state, return_last_state=True,
        )  # fmt: skip
        return out.transpose(1, 2), last

    inputs = [u, dt, A, B, C, D, z, initial_state]
    save_checkpoints = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return _SelectiveScanFunction.apply(u, dt, A, B, C, D, z, initial_state, save_checkpoints)


def _check_scan_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    """Raise ValueError unless the scan inputs have consistent shapes."""
    if u.dim() != 3:
        raise ValueError(f"u must have shape (B, Din, T), got {tuple(u.shape)}")
    batch, width, length = u.shape
    state_size = A.shape[-1] if A.dim() == 2 else -1
    expected = {
        "delta": (delta, (batch, width, length)),
        "A": (A, (width, state_size)),
        "B": (B, (batch, state_size, length)),
        "C": (C, (batch, state_size, length)),
        "D": (D, (width,)),
        "z": (z, (batch, width, length)),
        "delta_bias": (delta_bias, (width,)),
        "initial_state": (initial_state, (batch, width, state_size)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} for u of shape {tuple(u.shape)}, got {tuple(tensor.shape)}"
            )


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run the selective scan with the arguments of transformers' ``mamba_selective_scan``.

    u, delta and z are (B, Din, T), A is (Din, N), B and C are (B, N, T),
    D and delta_bias are (Din,), initial_state is (B, Din, N). Returns the
    output (B, Din, T), and also the last state (B, Din, N) when
    return_last_state is set. Computes in float64 if an input is float64,
    else in float32. Gradients flow to every tensor argument.
    """
    _check_scan_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    dt = delta
    if delta_bias is not None:
        dt = dt + delta_bias.to(dt.dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)

    # (B, Din, T) -> (B, T, Din) and (B, N, T) -> (B, T, N)
    out, last_state = selective_scan_channels_last(
        u.transpose(1, 2), dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2),
        D=D, z=None if z is None else z.transpose(1, 2), initial_state=initial_state,
    )  # fmt: skip
    out = out.transpose(1, 2)
    if return_last_state:
        return out, last_state
    return out


def selective_state_step(
    state: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Advance the scan by one time step, updating ``state`` in place, and return the output.

    state is (B, Din, N), u, delta and z are (B, Din), A is (Din, N), B and C
    are (B, N), D and delta_bias are (Din,). Returns the output (B, Din) in the
    dtype of ``state``. Uses torch operations only, so it runs on any device.
    """
    dt = delta
    if delta_bias is not None:
        dt = dt + delta_bias.to(dt.dtype)
    if delta_softplus:
        dt = F.softplus(dt)
    dt = dt.to(state.dtype)

    # (B, Din) x (Din, N) -> (B, Din, N)
    decay = torch.exp(dt[:, :, None] * A.to(state.dtype))
    drive = dt[:, :, None] * B.to(state.dtype)[:, None, :] * u.to(state.dtype)[:, :, None]
    new_state = decay * state + drive
    state.copy_(new_state)

    # (B, Din, N) x (B, N) -> (B, Din)
    y = (new_state * C.to(state.dtype)[:, None, :]).sum(dim=-1)
    if D is not None:
        y = y + u * D
    if z is not None:
        y = y * F.silu(z)
    return y.to(state.dtype)


def reference_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run the selective scan as a sequential torch loop over time.

    Arguments, shapes and return values are those of :func:`selective_scan`.
    It is slow and differentiable by autograd, and serves as the test
    reference and the fallback where the numba kernel does not apply.
    """
    _check_scan_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, width, length = u.shape
    dt = delta
    if delta_bias is not None:
        dt = dt + delta_bias.to(dt.dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)

    state = initial_state
    if state is None:
        state = u.new_zeros(batch, width, A.shape[1])
    outputs = []
    for t in range(length):
        # (B, Din, 1) * (Din, N) -> (B, Din, N)
        decay = torch.exp(dt[:, :, t, None] * A)
        drive = dt[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        state = decay * state + drive
        outputs.append((state * C[:, None, :, t]).sum(dim=-1))
    y = torch.stack(outputs, dim=-1) if outputs else u.new_zeros(batch, width, 0)

    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    if return_last_state:
        return y, state
    return y
