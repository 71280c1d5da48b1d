"""The hybrid's parts: gradients, mixture parametrisations, projectors, splits, tokenizers, errors."""

import pytest
import torch

import manticore
from manticore.mixture import MixtureWeights
from manticore.projectors import Projector
from manticore.testing import tiny_model, tiny_tokenizer

VOCAB = 64


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def neox_and_mamba(neox_width=32, mamba_width=24):
    return [
        tiny_model("gpt_neox", seed=0, width=neox_width, depth=2, vocab_size=VOCAB),
        tiny_model("mamba", seed=1, width=mamba_width, depth=2, vocab_size=VOCAB + 8),
    ]


def batch(length=12, size=2, seed=0):
    return torch.randint(3, 60, (size, length), generator=torch.Generator().manual_seed(seed))


def freeze_components(hybrid):
    for parameter in hybrid.model.components.parameters():
        parameter.requires_grad_(False)


def backward_once(hybrid):
    hybrid.zero_grad(set_to_none=True)
    ids = batch()
    hybrid(ids, labels=ids).loss.backward()


def parameters_without_gradient(hybrid, prefix=""):
    return [
        name
        for name, parameter in hybrid.named_parameters()
        if name.startswith(prefix) and parameter.requires_grad
        and (parameter.grad is None or parameter.grad.abs().sum() == 0)
    ]


@pytest.mark.parametrize("projector", ["linear", "identity", "residual", "mlp"])
def test_gradients_reach_every_trainable_part(projector, tokenizer):
    hybrid = manticore.build_hybrid(neox_and_mamba(), n_blocks=2, tokenizer=tokenizer, projector=projector)
    if projector == "residual":
        # Zero-initialised residual weights still get gradients; the check needs nonzero upstream
        # projectors only for the weights behind them, so perturb them once.
        for module in hybrid.modules():
            if isinstance(module, Projector):
                torch.nn.init.normal_(module.linear.weight, std=0.01)
    backward_once(hybrid)
    assert parameters_without_gradient(hybrid, "model.projectors") == []
    assert parameters_without_gradient(hybrid, "model.mixture") == []
    assert parameters_without_gradient(hybrid, "model.components") == []


def test_frozen_components_get_no_gradient(tokenizer):
    hybrid = manticore.build_hybrid(neox_and_mamba(), n_blocks=2, tokenizer=tokenizer)
    freeze_components(hybrid)
    backward_once(hybrid)
    component_grads = [p.grad for p in hybrid.model.components.parameters()]
    assert all(grad is None for grad in component_grads)
    assert parameters_without_gradient(hybrid) == []


def test_mixture_gradient_through_embeddings_only(tokenizer):
    # With one block, alpha enters the embedding mix, the gates and the head mix.
    hybrid = manticore.build_hybrid(neox_and_mamba(), n_blocks=1, tokenizer=tokenizer)
    backward_once(hybrid)
    assert hybrid.model.mixture.logits.grad.abs().sum() > 0


def test_fixed_mixture_is_not_a_parameter(tokenizer):
    hybrid = manticore.build_hybrid(neox_and_mamba(), n_blocks=2, tokenizer=tokenizer)
    hybrid.set_mixture_weights([[0.25, 0.75], [0.5, 0.5]])
    names = [name for name, _ in hybrid.named_parameters()]
    assert not any(name.startswith("model.mixture") for name in names)
    assert torch.equal(hybrid.mixture_weights(), torch.tensor([[0.25, 0.75], [0.5, 0.5]]))


def test_softmax_mixture_starts_uniform():
    mixture = MixtureWeights(3, 4, "softmax")
    assert torch.allclose(mixture(), torch.full((3, 4), 0.25))


def test_gumbel_mixture_samples_in_training():
    torch.manual_seed(0)
    mixture = MixtureWeights(2, 3, "gumbel")
    mixture.train()
    first, second = mixture(), mixture()
    assert not torch.allclose(first, second)
    assert torch.allclose(first.sum(-1), torch.ones(2))
    mixture.eval()
    assert torch.allclose(mixture(), torch.full((2, 3), 1 / 3))


def test_simplex_mixture_is_the_parameter():
    mixture = MixtureWeights(2, 2, "simplex")
    assert mixture.probs is mixture()


def test_mixture_rejects_wrong_shape(tokenizer):
    hybrid = manticore.build_hybrid(neox_and_mamba(), n_blocks=2, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"\(M, K\) = \(2, 2\)"):
        hybrid.set_mixture_weights([[1.0, 0.0]])


def test_mixture_rejects_non_probabilities(tokenizer):
    hybrid = manticore.build_hybrid(neox_and_mamba(), n_blocks=1, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="not probabilities"):
        hybrid.set_mixture_weights([[0.7, 0.7]])


def test_identity_projector_starts_as_identity():
    projector_in, projector_out = Projector(48, 32, "identity"), Projector(32, 48, "identity")
    x = torch.randn(2, 5, 48)
    assert torch.equal(projector_in(x), x[..., :32])
    y = torch.randn(2, 5, 32)
    assert torch.equal(projector_out(y)[..., :32], y)
    assert torch.equal(projector_out(y)[..., 32:], torch.zeros(2, 5, 16))


def test_residual_projector_starts_as_resize():
    projector = Projector(48, 32, "residual")
    x = torch.randn(3, 48)
    assert torch.equal(projector(x), x[..., :32])


def test_mlp_projector_shape():
    assert Projector(24, 40, "mlp")(torch.randn(2, 7, 24)).shape == (2, 7, 40)


def test_unknown_projector_kind(tokenizer):
    with pytest.raises(ValueError, match="unknown projector kind 'conv'"):
        manticore.build_hybrid(neox_and_mamba(), tokenizer=tokenizer, projector="conv")


def test_shared_width_is_the_maximum(tokenizer):
    hybrid = manticore.build_hybrid(neox_and_mamba(32, 56), tokenizer=tokenizer)
    assert hybrid.model.hidden_size == 56


def test_shared_vocab_is_the_smallest(tokenizer):
    hybrid = manticore.build_hybrid(neox_and_mamba(), tokenizer=tokenizer)
    assert hybrid(batch()).logits.shape == (2, 12, VOCAB)


def test_depth_that_blocks_cannot_split(tokenizer):
    components = [tiny_model("gpt_neox", depth=3, vocab_size=VOCAB), tiny_model("mamba", depth=4, vocab_size=VOCAB)]
    with pytest.raises(ValueError, match="has 3 layers, which 2 blocks cannot split evenly"):
        manticore.build_hybrid(components, n_blocks=2, tokenizer=tokenizer)


def test_layer_splits_must_sum_to_depth(tokenizer):
    with pytest.raises(ValueError, match=r"layer_splits \[1, 2\] .* add up to its depth 2"):
        manticore.build_hybrid(neox_and_mamba(), n_blocks=2, tokenizer=tokenizer, layer_splits=[[1, 2], [1, 1]])


def test_any_number_of_components_and_blocks(tokenizer):
    families = ["gpt_neox", "llama", "gpt_neo", "gpt2", "mamba", "mamba2"]
    components = [tiny_model(f, seed=i, width=16 + 8 * i, depth=4, vocab_size=VOCAB) for i, f in enumerate(families)]
    hybrid = manticore.build_hybrid(components, n_blocks=4, tokenizer=tokenizer)
    ids = batch()
    output = hybrid(ids, labels=ids)
    assert hybrid.mixture_weights().shape == (4, 6)
    assert output.logits.shape == (2, 12, VOCAB)
    assert torch.isfinite(output.loss)


def test_single_component_hybrid_is_the_component(tokenizer):
    component = tiny_model("llama", width=32, depth=2, vocab_size=VOCAB)
    hybrid = manticore.build_hybrid([component], n_blocks=2, tokenizer=tokenizer).eval()
    ids = batch()
    with torch.no_grad():
        assert (hybrid(ids).logits - component(ids).logits).abs().max() <= 1e-5


def other_tokenizer():
    return tiny_tokenizer(words=["alpha", "beta", "gamma", "delta"] * 1 + [f"w{i}" for i in range(40)])


def test_mismatched_tokenizers_rejected(tmp_path, tokenizer):
    from manticore.testing import save_component

    first = save_component(tiny_model("gpt_neox", vocab_size=VOCAB), tmp_path / "neox", tokenizer)
    second = save_component(tiny_model("mamba", vocab_size=VOCAB), tmp_path / "mamba", other_tokenizer())
    with pytest.raises(ValueError, match="uses tokenizer .* which differs from"):
        manticore.build_hybrid([first, second])


def test_mismatched_tokenizers_with_fresh_embeddings(tmp_path, tokenizer):
    from manticore.testing import save_component

    first = save_component(tiny_model("gpt_neox", vocab_size=VOCAB), tmp_path / "neox", tokenizer)
    second = save_component(tiny_model("mamba", vocab_size=VOCAB + 30), tmp_path / "mamba", other_tokenizer())
    hybrid = manticore.build_hybrid([first, second], tokenizer=0, fresh_embeddings="mismatched")
    assert hybrid.config.fresh_embeddings == [False, True]
    assert hybrid.model.components[1].get_input_embeddings().num_embeddings == len(tokenizer)
    mamba = hybrid.model.components[1]
    assert mamba.get_output_embeddings().weight is mamba.get_input_embeddings().weight


def test_fresh_embeddings_receive_gradients(tokenizer):
    hybrid = manticore.build_hybrid(neox_and_mamba(), tokenizer=tokenizer, fresh_embeddings=True)
    freeze_components(hybrid)
    for component in hybrid.model.components:
        component.get_input_embeddings().weight.requires_grad_(True)
    backward_once(hybrid)
    for component in hybrid.model.components:
        assert component.get_input_embeddings().weight.grad.abs().sum() > 0


def test_unknown_family_rejected():
    with pytest.raises(ValueError, match="unknown component family 'bert'"):
        manticore.components.adapter_class_for("bert")


def test_missing_component_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        manticore.build_hybrid([str(tmp_path / "absent")])


def test_sequence_longer_than_context(tokenizer):
    components = [tiny_model("gpt2", max_context=16, vocab_size=VOCAB), tiny_model("mamba", vocab_size=VOCAB)]
    hybrid = manticore.build_hybrid(components, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"longer than the maximum context of component .* \(16 tokens\)"):
        hybrid(batch(length=20))
    hybrid.set_mixture_weights([[0.0, 1.0]])
    assert hybrid(batch(length=20)).logits.shape == (2, 20, VOCAB)
