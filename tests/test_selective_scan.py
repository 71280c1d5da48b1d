"""Tests of the numba selective-scan kernel and the MambaBlock functions built on it."""

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import MambaConfig, MambaForCausalLM

from manticore.kernels import mamba_layer, selective_scan
from manticore.kernels.mamba_layer import mamba_block_forward, mamba_block_prefill, mamba_block_step
from manticore.kernels.selective_scan import (
    causal_conv_silu_channels_last,
    kernel_available,
    reference_selective_scan,
    selective_scan as kernel_selective_scan,
    selective_state_step,
)

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
LENGTHS = [1, 2, 3, 37, 256, 257]
SCAN_GRADIENT_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]

requires_kernel = pytest.mark.skipif(not kernel_available(), reason="the numba kernel did not import or compile")


def scaled_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Return max |actual - expected| divided by max(1, max |expected|)."""
    scale = expected.detach().abs().max().clamp_min(1.0)
    return ((actual.detach() - expected.detach()).abs().max() / scale).item()


def make_scan_inputs(batch, width, length, state_size, dtype, seed=0):
    """Return a dict of random scan inputs in transformers' layout, all requiring gradients."""
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dtype)

    inputs = {
        "u": draw(batch, width, length),
        "delta": draw(batch, width, length),
        # Mamba's A = -exp(A_log) is negative.
        "A": -torch.exp(draw(width, state_size, scale=0.5)),
        "B": draw(batch, state_size, length),
        "C": draw(batch, state_size, length),
        "D": draw(width),
        "z": draw(batch, width, length),
        "delta_bias": draw(width, scale=0.5),
        "initial_state": draw(batch, width, state_size),
    }
    return {name: tensor.requires_grad_() for name, tensor in inputs.items()}


def run_scan(scan, inputs, **options):
    """Return the output, last state and input gradients of one scan under a fixed random loss."""
    y, last_state = scan(**inputs, return_last_state=True, **options)
    generator = torch.Generator().manual_seed(1)
    y_weights = torch.randn(y.shape, generator=generator, dtype=torch.float64).to(y.dtype)
    state_weights = torch.randn(last_state.shape, generator=generator, dtype=torch.float64).to(y.dtype)
    loss = (y * y_weights).sum() + (last_state * state_weights).sum()
    gradients = torch.autograd.grad(loss, list(inputs.values()))
    return y, last_state, dict(zip(inputs, gradients))


@requires_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_vector_exp_matches_numpy(dtype):
    numba = pytest.importorskip("numba")

    @numba.njit
    def exp_all(values, out):
        for i in range(values.size):
            out[i] = selective_scan._vector_exp(values[i])

    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    limit = 700.0 if dtype == torch.float64 else 85.0
    values = np.linspace(-limit, limit, 200_001).astype(np_dtype)
    out = np.empty_like(values)
    exp_all(values, out)
    expected = np.exp(values.astype(np.float64))
    relative_error = np.abs(out - expected) / expected
    assert relative_error.max() <= 2 * np.finfo(np_dtype).eps

    special = np.array([-np.inf, -1e4, np.nan, 1e4], dtype=np_dtype)
    special_out = np.empty_like(special)
    exp_all(special, special_out)
    assert special_out[0] == 0.0
    assert special_out[1] == 0.0
    assert np.isnan(special_out[2])
    assert np.isinf(special_out[3])


@requires_kernel
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_scan_matches_reference(dtype, length):
    inputs = make_scan_inputs(batch=2, width=20, length=length, state_size=5, dtype=dtype)
    y, last_state, gradients = run_scan(kernel_selective_scan, inputs, delta_softplus=True)
    expected_y, expected_state, expected_gradients = run_scan(reference_selective_scan, inputs, delta_softplus=True)

    tolerance = TOLERANCE[dtype]
    assert y.dtype == dtype
    assert scaled_error(y, expected_y) <= tolerance
    assert scaled_error(last_state, expected_state) <= tolerance
    for name in SCAN_GRADIENT_NAMES:
        error = scaled_error(gradients[name], expected_gradients[name])
        assert error <= tolerance, f"gradient of {name} differs by {error:.2e} (scaled)"


@requires_kernel
@pytest.mark.parametrize(
    "dropped",
    [["D"], ["z"], ["delta_bias"], ["initial_state"], ["D", "z", "delta_bias", "initial_state"]],
    ids=["no_D", "no_z", "no_delta_bias", "no_initial_state", "none"],
)
def test_scan_optional_inputs_dropped(dropped):
    inputs = make_scan_inputs(batch=2, width=20, length=37, state_size=5, dtype=torch.float64)
    for name in dropped:
        del inputs[name]
    with torch.no_grad():
        # Without softplus, delta is the time step itself, so keep it positive.
        inputs["delta"].abs_()
    y, last_state, gradients = run_scan(kernel_selective_scan, inputs)
    expected_y, expected_state, expected_gradients = run_scan(reference_selective_scan, inputs)

    assert scaled_error(y, expected_y) <= 1e-10
    assert scaled_error(last_state, expected_state) <= 1e-10
    for name in inputs:
        error = scaled_error(gradients[name], expected_gradients[name])
        assert error <= 1e-10, f"gradient of {name} differs by {error:.2e} (scaled)"


@requires_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_scan_uneven_channel_blocks(threads):
    # 70 channels split into blocks of 16 (the last one of 6 channels), and
    # the backward kernel spreads 5 blocks over several groups.
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = make_scan_inputs(batch=1, width=70, length=40, state_size=3, dtype=torch.float64)
        y, last_state, gradients = run_scan(kernel_selective_scan, inputs, delta_softplus=True)
    finally:
        torch.set_num_threads(previous_threads)
    expected_y, expected_state, expected_gradients = run_scan(reference_selective_scan, inputs, delta_softplus=True)

    assert scaled_error(y, expected_y) <= 1e-10
    assert scaled_error(last_state, expected_state) <= 1e-10
    for name in SCAN_GRADIENT_NAMES:
        error = scaled_error(gradients[name], expected_gradients[name])
        assert error <= 1e-10, f"gradient of {name} differs by {error:.2e} (scaled)"


@requires_kernel
def test_scan_under_no_grad():
    inputs = make_scan_inputs(batch=2, width=20, length=37, state_size=5, dtype=torch.float32)
    with torch.no_grad():
        y, last_state = kernel_selective_scan(**inputs, delta_softplus=True, return_last_state=True)
        expected_y, expected_state = reference_selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    assert scaled_error(y, expected_y) <= 1e-5
    assert scaled_error(last_state, expected_state) <= 1e-5


def test_scan_rejects_mismatched_shapes():
    inputs = make_scan_inputs(batch=2, width=20, length=5, state_size=4, dtype=torch.float32)
    inputs["B"] = inputs["B"][:, :3]
    with pytest.raises(ValueError, match="B must have shape"):
        kernel_selective_scan(**inputs)


def test_step_equals_one_scan_step():
    inputs = make_scan_inputs(batch=2, width=20, length=1, state_size=5, dtype=torch.float64)
    with torch.no_grad():
        expected_y, expected_state = kernel_selective_scan(**inputs, delta_softplus=True, return_last_state=True)
        state = inputs["initial_state"].clone()
        y = selective_state_step(
            state,
            inputs["u"][:, :, 0],
            inputs["delta"][:, :, 0],
            inputs["A"],
            inputs["B"][:, :, 0],
            inputs["C"][:, :, 0],
            D=inputs["D"],
            z=inputs["z"][:, :, 0],
            delta_bias=inputs["delta_bias"],
            delta_softplus=True,
        )
    assert scaled_error(y, expected_y[:, :, 0]) <= 1e-12
    assert scaled_error(state, expected_state) <= 1e-12


def test_prefill_then_steps_equals_scan():
    length, prefix = 37, 10
    inputs = make_scan_inputs(batch=2, width=20, length=length, state_size=5, dtype=torch.float64)
    options = {"D": inputs["D"], "delta_bias": inputs["delta_bias"], "delta_softplus": True}
    with torch.no_grad():
        full_y, full_state = kernel_selective_scan(
            inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
            z=inputs["z"], return_last_state=True, **options,
        )  # fmt: skip
        prefix_y, state = kernel_selective_scan(
            inputs["u"][:, :, :prefix], inputs["delta"][:, :, :prefix], inputs["A"],
            inputs["B"][:, :, :prefix], inputs["C"][:, :, :prefix],
            z=inputs["z"][:, :, :prefix], return_last_state=True, **options,
        )  # fmt: skip
        step_outputs = []
        for t in range(prefix, length):
            step_outputs.append(
                selective_state_step(
                    state, inputs["u"][:, :, t], inputs["delta"][:, :, t], inputs["A"],
                    inputs["B"][:, :, t], inputs["C"][:, :, t], z=inputs["z"][:, :, t], **options,
                )  # fmt: skip
            )
    decoded = torch.cat([prefix_y, torch.stack(step_outputs, dim=-1)], dim=-1)
    assert scaled_error(decoded, full_y) <= 1e-10
    assert scaled_error(state, full_state) <= 1e-10


def test_scan_fallback_without_kernel(monkeypatch):
    monkeypatch.setattr(selective_scan, "_kernel_status", False)
    inputs = make_scan_inputs(batch=2, width=20, length=7, state_size=5, dtype=torch.float64)
    y, last_state, gradients = run_scan(kernel_selective_scan, inputs, delta_softplus=True)
    expected_y, expected_state, expected_gradients = run_scan(reference_selective_scan, inputs, delta_softplus=True)
    assert scaled_error(y, expected_y) <= 1e-12
    assert scaled_error(last_state, expected_state) <= 1e-12
    for name in SCAN_GRADIENT_NAMES:
        assert scaled_error(gradients[name], expected_gradients[name]) <= 1e-12, name


def test_missing_numba_logs_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(selective_scan, "numba", None)
    monkeypatch.setattr(selective_scan, "_NUMBA_IMPORT_ERROR", ImportError("No module named 'numba'"))
    monkeypatch.setattr(selective_scan, "_kernel_status", None)
    with caplog.at_level(logging.WARNING, logger=selective_scan.__name__):
        first = kernel_available()
        second = kernel_available()
    assert first is False
    assert second is False
    assert len(caplog.records) == 1
    assert "numba" in caplog.records[0].getMessage()


@requires_kernel
def test_kernel_setup_keeps_torch_threads():
    # Runs in a fresh process, because numba starts its thread pool once per process.
    code = (
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "from manticore.kernels.selective_scan import kernel_available\n"
        "assert kernel_available()\n"
        "print(torch.get_num_threads())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    assert result.stdout.strip() == "1"


def reference_conv_silu(x, weight, bias):
    """Apply transformers' causal depthwise convolution and SiLU to channels-last x (B, T, Din)."""
    length = x.shape[1]
    output = torch.nn.functional.conv1d(
        x.transpose(1, 2), weight, bias, padding=weight.shape[-1] - 1, groups=weight.shape[0]
    )
    return torch.nn.functional.silu(output[:, :, :length]).transpose(1, 2)


def run_conv(conv, x, weight, bias):
    """Return the output and the gradients of x, weight and bias under a fixed random loss."""
    output = conv(x, weight, bias)
    output_weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    inputs = [tensor for tensor in (x, weight, bias) if tensor is not None]
    gradients = torch.autograd.grad((output * output_weights.to(output.dtype)).sum(), inputs)
    return output, gradients


@requires_kernel
@pytest.mark.parametrize("length", [1, 3, 70, 130])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_conv_silu_matches_conv1d(with_bias, dtype, length):
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(3, length, 20, generator=generator, dtype=dtype).requires_grad_()
    weight = torch.randn(20, 1, 4, generator=generator, dtype=dtype).requires_grad_()
    bias = torch.randn(20, generator=generator, dtype=dtype).requires_grad_() if with_bias else None

    output, gradients = run_conv(causal_conv_silu_channels_last, x, weight, bias)
    expected, expected_gradients = run_conv(reference_conv_silu, x, weight, bias)

    tolerance = TOLERANCE[dtype]
    assert output.dtype == dtype
    assert scaled_error(output, expected) <= tolerance
    for name, gradient, expected_gradient in zip(["x", "weight", "bias"], gradients, expected_gradients):
        error = scaled_error(gradient, expected_gradient)
        assert error <= tolerance, f"gradient of {name} differs by {error:.2e} (scaled)"


def test_conv_silu_fallback_without_kernel(monkeypatch):
    monkeypatch.setattr(selective_scan, "_kernel_status", False)
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(2, 9, 20, generator=generator)
    weight = torch.randn(20, 1, 4, generator=generator)
    bias = torch.randn(20, generator=generator)
    assert torch.equal(causal_conv_silu_channels_last(x, weight, bias), reference_conv_silu(x, weight, bias))


# Layer tests ----------------------------------------------------------------

MASK_KINDS = ["none", "right", "left"]
CONFIG_VARIANTS = {
    "default": {},
    "biases": {"use_bias": True, "use_conv_bias": False, "residual_in_fp32": False, "time_step_rank": 3},
}


def make_model(variant: str) -> MambaForCausalLM:
    """Build a tiny MambaForCausalLM with a fixed seed and non-default A_log, D and dt bias."""
    torch.manual_seed(0)
    config = MambaConfig(
        vocab_size=64, hidden_size=40, num_hidden_layers=2, state_size=8, conv_kernel=4, expand=2,
        **CONFIG_VARIANTS[variant],
    )  # fmt: skip
    model = MambaForCausalLM(config)
    with torch.no_grad():
        for block in model.backbone.layers:
            block.mixer.A_log.add_(0.3 * torch.randn_like(block.mixer.A_log))
            block.mixer.D.add_(0.5 * torch.randn_like(block.mixer.D))
            block.mixer.dt_proj.bias.add_(0.5 * torch.randn_like(block.mixer.dt_proj.bias))
            block.norm.weight.add_(0.1 * torch.randn_like(block.norm.weight))
    return model


def make_mask(kind: str, batch: int, length: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    mask = torch.ones(batch, length, dtype=torch.long)
    if kind == "right":
        mask[0, length - 3 :] = 0
        mask[2, length - 1 :] = 0
    else:
        mask[0, :4] = 0
        mask[1, :1] = 0
    return mask


def block_outputs_and_gradients(block, hidden_states, mask, forward):
    """Return the block output and the gradients of the input and every parameter under a fixed loss."""
    hidden_states = hidden_states.clone().requires_grad_()
    output = forward(block, hidden_states, mask)
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(2))
    parameters = dict(block.named_parameters())
    gradients = torch.autograd.grad((output * weights).sum(), [hidden_states, *parameters.values()])
    return output, dict(zip(["hidden_states", *parameters], gradients))


@requires_kernel
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("variant", list(CONFIG_VARIANTS))
def test_block_forward_matches_block(variant, training, mask_kind):
    model = make_model(variant).train(training)
    batch, length = 3, 11
    hidden_states = torch.randn(batch, length, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    mask = make_mask(mask_kind, batch, length)

    for index, block in enumerate(model.backbone.layers):
        output, gradients = block_outputs_and_gradients(
            block, hidden_states, mask, lambda b, h, m: mamba_block_forward(b, h, attention_mask=m)
        )
        expected, expected_gradients = block_outputs_and_gradients(
            block, hidden_states, mask, lambda b, h, m: b(h, attention_mask=m)
        )
        assert output.dtype == expected.dtype
        assert scaled_error(output, expected) <= 1e-5, f"layer {index} output"
        for name, gradient in gradients.items():
            error = scaled_error(gradient, expected_gradients[name])
            assert error <= 1e-5, f"layer {index}: gradient of {name} differs by {error:.2e} (scaled)"


@requires_kernel
@pytest.mark.parametrize("length", [2, 9])
def test_block_prefill_states_match_transformers_cache(length):
    model = make_model("default").eval()
    input_ids = torch.randint(0, model.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        outputs = model.backbone(input_ids, use_cache=True, output_hidden_states=True)
        # outputs.hidden_states[i] is the output of layer i.
        hidden_states = model.backbone.embeddings(input_ids)
        for index, block in enumerate(model.backbone.layers):
            output, conv_state, ssm_state = mamba_block_prefill(block, hidden_states)
            assert scaled_error(output, outputs.hidden_states[index]) <= 1e-5, f"layer {index} output"
            assert scaled_error(conv_state, outputs.cache.get_conv_state(index)) <= 1e-6, f"layer {index} conv"
            assert scaled_error(ssm_state, outputs.cache.get_recurrent_state(index)) <= 1e-5, f"layer {index} ssm"
            hidden_states = output


@pytest.mark.parametrize("prefix", [1, 6])
def test_block_decode_matches_forward(prefix):
    model = make_model("default").eval()
    block = model.backbone.layers[1]
    length = 12
    hidden_states = torch.randn(2, length, model.config.hidden_size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = block(hidden_states)
        output, conv_state, ssm_state = mamba_block_prefill(block, hidden_states[:, :prefix])
        outputs = [output]
        for t in range(prefix, length):
            output, conv_state, ssm_state = mamba_block_step(block, hidden_states[:, t : t + 1], conv_state, ssm_state)
            outputs.append(output)
    assert scaled_error(torch.cat(outputs, dim=1), expected) <= 1e-5


def test_block_step_keeps_input_states():
    model = make_model("default").eval()
    block = model.backbone.layers[0]
    hidden_states = torch.randn(2, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, conv_state, ssm_state = mamba_block_prefill(block, hidden_states[:, :4])
        conv_before, ssm_before = conv_state.clone(), ssm_state.clone()
        mamba_block_step(block, hidden_states[:, 4:], conv_state, ssm_state)
    assert torch.equal(conv_state, conv_before)
    assert torch.equal(ssm_state, ssm_before)


def test_block_step_rejects_several_tokens():
    model = make_model("default").eval()
    block = model.backbone.layers[0]
    intermediate_size = block.mixer.intermediate_size
    conv_state = torch.zeros(2, intermediate_size, model.config.conv_kernel)
    ssm_state = torch.zeros(2, intermediate_size, model.config.state_size)
    with pytest.raises(ValueError, match="one decoding step"):
        mamba_block_step(block, torch.zeros(2, 3, model.config.hidden_size), conv_state, ssm_state)


def test_block_forward_calls_block_without_kernel(monkeypatch):
    monkeypatch.setattr(selective_scan, "_kernel_status", False)
    model = make_model("default").eval()
    block = model.backbone.layers[0]
    calls = []
    monkeypatch.setattr(mamba_layer, "_block_forward", lambda *args: calls.append(args))
    hidden_states = torch.randn(2, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(6))
    mask = make_mask("left", 2, 5)
    with torch.no_grad():
        output = mamba_block_forward(block, hidden_states, attention_mask=mask)
        expected = block(hidden_states, attention_mask=mask)
    assert calls == []
    assert torch.equal(output, expected)
