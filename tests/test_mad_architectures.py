"""MAD architectures: output shapes, causality, Hyena's FFT convolution, the compression autoencoder."""

import numpy as np
import pytest
import torch

from manticore.mad.architectures import (
    ARCHITECTURES,
    build_architecture,
    build_task_model,
    gpt_neo_model,
    mamba_model,
    single_component,
)
from manticore.mad.hyena import ImplicitFilter, MultiHeadHyena, causal_fft_convolution
from manticore.mad.layers import CompressionAutoencoder, MixtureOfExpertsMLP

VOCAB = 16
LENGTH = 24
WIDTH = 32


def perturbed_after(input_ids: torch.Tensor, position: int) -> torch.Tensor:
    """Return a copy of ``input_ids`` with every token after ``position`` changed."""
    changed = input_ids.clone()
    changed[:, position + 1 :] = (changed[:, position + 1 :] + 1) % VOCAB
    return changed


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_architecture_logits_shape(name):
    torch.manual_seed(0)
    model = build_architecture(name, VOCAB, LENGTH, width=WIDTH)
    input_ids = torch.randint(0, VOCAB, (3, LENGTH))

    logits = model(input_ids)

    assert logits.shape == (3, LENGTH, VOCAB)
    assert torch.isfinite(logits).all()
    assert model.hidden_states(input_ids).shape == (3, LENGTH, WIDTH)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_architecture_is_causal(name):
    torch.manual_seed(0)
    model = build_architecture(name, VOCAB, LENGTH, width=WIDTH).eval()
    input_ids = torch.randint(0, VOCAB, (2, LENGTH))
    position = 10

    with torch.no_grad():
        logits = model(input_ids)
        changed = model(perturbed_after(input_ids, position))

    # The FFT convolution of Hyena leaks rounding noise of about 1e-6 across positions.
    torch.testing.assert_close(changed[:, : position + 1], logits[:, : position + 1], atol=1e-5, rtol=0)
    assert not torch.allclose(changed[:, position + 1 :], logits[:, position + 1 :], atol=1e-3)


@pytest.mark.parametrize("name", ["manticore-m1", "manticore-m2", "manticore-m4"])
def test_manticore_mixture_weights(name):
    model = build_architecture(name, VOCAB, LENGTH, width=WIDTH)
    n_blocks = ARCHITECTURES[name].n_blocks

    weights = model.mixture_weights()
    parameters = model.mixture_parameters()
    projector_parameters = [n for n, _ in model.named_parameters() if "projectors" in n]

    assert weights.shape == (n_blocks, 2)
    torch.testing.assert_close(weights, torch.full((n_blocks, 2), 0.5))
    assert len(parameters) == 1
    assert parameters[0].requires_grad
    assert projector_parameters == []
    assert model.hybrid.config.layer_splits == [[1] * n_blocks, [2] * n_blocks]


@pytest.mark.parametrize("name", ["gpt-neo", "mamba", "mambaformer", "striped-hyena"])
def test_plain_architectures_have_no_mixture(name):
    model = build_architecture(name, VOCAB, LENGTH, width=WIDTH)

    assert model.mixture_weights() is None
    assert model.mixture_parameters() == []


def test_single_component_matches_gpt_neo():
    torch.manual_seed(0)
    component = gpt_neo_model(VOCAB, LENGTH, WIDTH, num_layers=2).eval()
    input_ids = torch.randint(0, VOCAB, (2, LENGTH))
    with torch.no_grad():
        expected = component(input_ids).logits

        actual = single_component(component, "gpt-neo").eval()(input_ids)

    torch.testing.assert_close(actual, expected)


def test_single_component_matches_mamba():
    torch.manual_seed(0)
    component = mamba_model(VOCAB, WIDTH, num_layers=2).eval()
    input_ids = torch.randint(0, VOCAB, (2, LENGTH))
    with torch.no_grad():
        expected = component(input_ids).logits

        actual = single_component(component, "mamba").eval()(input_ids)

    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_unknown_architecture_names_choices():
    with pytest.raises(ValueError, match="Valid architectures: gpt-neo"):
        build_architecture("transformer", VOCAB, LENGTH)


def test_width_must_fit_heads():
    with pytest.raises(ValueError, match="multiple of the head width 8"):
        build_architecture("mambaformer", VOCAB, LENGTH, width=36)


# Hyena


def test_fft_convolution_matches_direct_sum():
    generator = torch.Generator().manual_seed(0)
    signal = torch.randn(3, 20, generator=generator, dtype=torch.float64)
    filters = torch.randn(3, 20, generator=generator, dtype=torch.float64)

    actual = causal_fft_convolution(signal, filters)

    for channel in range(3):
        expected = np.convolve(signal[channel].numpy(), filters[channel].numpy())[:20]
        np.testing.assert_allclose(actual[channel].numpy(), expected, atol=1e-5)


def test_hyena_is_causal():
    torch.manual_seed(0)
    layer = MultiHeadHyena(WIDTH, max_length=LENGTH, num_heads=4)
    x = torch.randn(2, LENGTH, WIDTH)
    changed = x.clone()
    changed[:, 13:] = torch.randn(2, LENGTH - 13, WIDTH)

    with torch.no_grad():
        output = layer(x)
        changed_output = layer(changed)

    assert output.shape == (2, LENGTH, WIDTH)
    torch.testing.assert_close(changed_output[:, :13], output[:, :13], atol=1e-5, rtol=0)
    assert not torch.allclose(changed_output[:, 13:], output[:, 13:], atol=1e-3)


def test_hyena_filter_rejects_long_sequence():
    hyena_filter = ImplicitFilter(channels=4, max_length=16)

    assert hyena_filter(16).shape == (4, 16)
    with pytest.raises(ValueError, match="max_length >= 17"):
        hyena_filter(17)


def test_hyena_filter_decays():
    hyena_filter = ImplicitFilter(channels=4, max_length=64)

    decay = hyena_filter.decay

    assert torch.all(decay[:, 1:] <= decay[:, :-1])
    assert decay[0, -1] < decay[-1, -1]  # the first channel decays fastest


def test_mixture_of_experts_ignores_unchosen_experts():
    torch.manual_seed(0)
    layer = MixtureOfExpertsMLP(WIDTH, num_experts=4, expert_width=8, top_k=2)
    x = torch.randn(2, 5, WIDTH).abs()
    with torch.no_grad():
        layer.router.weight[:2] = 1.0  # experts 0 and 1 score highest on every positive input
        layer.router.weight[2:] = -1.0
        output = layer(x)
        layer.down[2:] = 0.0
        without_unchosen = layer(x)
        layer.down[0] = 0.0
        without_chosen = layer(x)

    assert output.shape == (2, 5, WIDTH)
    torch.testing.assert_close(without_unchosen, output)
    assert not torch.allclose(without_chosen, output)


def test_mixture_of_experts_rejects_large_top_k():
    with pytest.raises(ValueError, match="top_k=5"):
        MixtureOfExpertsMLP(WIDTH, num_experts=4, top_k=5)


# Compression


@pytest.mark.parametrize("name", ["gpt-neo", "manticore-m1", "striped-hyena"])
def test_compression_autoencoder_shapes(name):
    torch.manual_seed(0)
    model = build_task_model(name, "compression", VOCAB, 12, width=WIDTH)
    input_ids = torch.randint(0, VOCAB, (3, 12))

    logits = model(input_ids)

    assert isinstance(model, CompressionAutoencoder)
    assert logits.shape == (3, 12, VOCAB)
    assert (model.mixture_weights() is None) == (name != "manticore-m1")


def test_compression_decoder_reads_only_last_state():
    torch.manual_seed(0)
    model = build_task_model("mamba", "compression", VOCAB, 12, width=WIDTH).eval()
    input_ids = torch.randint(0, VOCAB, (2, 12))
    pooled = model.encoder.hidden_states(input_ids)[:, -1]

    with torch.no_grad():
        logits = model(input_ids)
        decoded = model.decoder(pooled, 12)

    torch.testing.assert_close(logits, decoded)
    assert not torch.allclose(logits[:, 0], logits[:, 5])  # position codes make outputs differ
