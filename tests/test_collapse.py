"""Exact collapse: one-hot mixture weights reproduce the unmodified component, padded or not."""

import pytest
import torch
from transformers.masking_utils import create_causal_mask

import manticore
from manticore.projectors import resize_features
from manticore.testing import tiny_model, tiny_tokenizer

FAMILIES = ["gpt_neox", "llama", "gpt_neo", "gpt2", "mamba", "mamba2"]
TOLERANCE = 1e-5
VOCAB = 64  # the tiny tokenizer has 60 tokens; components pad to 64 and above


def one_hot(n_blocks, n_components, k):
    probs = torch.zeros(n_blocks, n_components)
    probs[:, k] = 1.0
    return probs


def padded_batch(sequences, pad_id, side):
    """Stack sequences of different lengths with left or right padding; return ids and mask."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sequence in enumerate(sequences):
        span = slice(length - len(sequence), length) if side == "left" else slice(0, len(sequence))
        ids[row, span] = torch.tensor(sequence)
        mask[row, span] = 1
    return ids, mask


def real_token_logits(logits, mask, row):
    return logits[row][mask[row].bool()]


def make_components(family, k_total):
    """Component `family` (width 32, depth 4) plus others of other widths, depths and vocab padding."""
    components = [tiny_model(family, seed=0, width=32, depth=4, vocab_size=VOCAB)]
    others = [("gpt_neox", 48, 2, VOCAB + 16), ("mamba", 24, 4, VOCAB + 8)]
    for seed, (other, width, depth, vocab) in enumerate(others[: k_total - 1], start=1):
        components.append(tiny_model(other, seed=seed, width=width, depth=depth, vocab_size=vocab))
    return components


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("k_total", [2, 3])
def test_collapse_unpadded(family, k_total, tokenizer):
    components = make_components(family, k_total)
    hybrid = manticore.build_hybrid(components, n_blocks=2, tokenizer=tokenizer).eval()
    ids = torch.randint(3, 60, (2, 13), generator=torch.Generator().manual_seed(0))
    for k, component in enumerate(components):
        hybrid.set_mixture_weights(one_hot(2, k_total, k))
        with torch.no_grad():
            expected = component(ids).logits[..., :VOCAB]
            actual = hybrid(ids).logits
        assert actual.shape == expected.shape
        assert (actual - expected).abs().max().item() <= TOLERANCE, f"component {k}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_collapse_padded(family, side, tokenizer):
    components = make_components(family, 3)
    hybrid = manticore.build_hybrid(components, n_blocks=2, tokenizer=tokenizer).eval()
    sequences = [[5, 9, 14, 3, 22, 7, 31, 40, 12], [8, 17, 25, 4], [33, 6, 19, 28, 45, 11, 50]]
    ids, mask = padded_batch(sequences, tokenizer.pad_token_id, side)
    for k, component in enumerate(components):
        hybrid.set_mixture_weights(one_hot(2, 3, k))
        with torch.no_grad():
            logits = hybrid(ids, attention_mask=mask).logits
            for row, sequence in enumerate(sequences):
                expected = component(torch.tensor([sequence])).logits[0, :, :VOCAB]
                actual = real_token_logits(logits, mask, row)
                assert (actual - expected).abs().max().item() <= TOLERANCE, f"component {k}, row {row}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_soft_mixture_padding_invariant(family, side, tokenizer):
    components = make_components(family, 2)
    hybrid = manticore.build_hybrid(components, n_blocks=2, tokenizer=tokenizer).eval()
    sequences = [[5, 9, 14, 3, 22, 7, 31, 40, 12], [8, 17, 25, 4]]
    ids, mask = padded_batch(sequences, tokenizer.pad_token_id, side)
    with torch.no_grad():
        logits = hybrid(ids, attention_mask=mask).logits
        for row, sequence in enumerate(sequences):
            expected = hybrid(torch.tensor([sequence])).logits[0]
            actual = real_token_logits(logits, mask, row)
            assert (actual - expected).abs().max().item() <= TOLERANCE, f"row {row}"


def neox_chunk(model, hidden, ids, start, stop):
    """GPT-NeoX layers start..stop-1 written out by hand, final norm after the last layer."""
    backbone = model.gpt_neox
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    mask = create_causal_mask(
        config=model.config, inputs_embeds=hidden, attention_mask=None, cache=None, position_ids=positions
    )
    cos_sin = backbone.rotary_emb(hidden, position_ids=positions)
    for layer in backbone.layers[start:stop]:
        hidden = layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=cos_sin)
    if stop == len(backbone.layers):
        hidden = backbone.final_layer_norm(hidden)
    return hidden


def mamba_chunk(model, hidden, start, stop):
    for layer in model.backbone.layers[start:stop]:
        hidden = layer(hidden)
    if stop == len(model.backbone.layers):
        hidden = model.backbone.norm_f(hidden)
    return hidden


def test_striped_neox_then_mamba(tokenizer):
    neox = tiny_model("gpt_neox", seed=0, width=32, depth=4, vocab_size=VOCAB)
    mamba = tiny_model("mamba", seed=1, width=48, depth=4, vocab_size=VOCAB)
    hybrid = manticore.build_hybrid([neox, mamba], n_blocks=2, tokenizer=tokenizer).eval()
    hybrid.set_mixture_weights([[1.0, 0.0], [0.0, 1.0]])
    ids = torch.randint(3, 60, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = neox_chunk(neox, neox.gpt_neox.embed_in(ids), ids, 0, 2)
        hidden = mamba_chunk(mamba, resize_features(hidden, 48), 2, 4)
        expected = mamba.lm_head(hidden)
        actual = hybrid(ids).logits
    assert (actual - expected).abs().max().item() <= TOLERANCE


def test_striped_mamba_then_neox(tokenizer):
    neox = tiny_model("gpt_neox", seed=0, width=32, depth=4, vocab_size=VOCAB)
    mamba = tiny_model("mamba", seed=1, width=48, depth=4, vocab_size=VOCAB)
    hybrid = manticore.build_hybrid([neox, mamba], n_blocks=2, tokenizer=tokenizer).eval()
    hybrid.set_mixture_weights([[0.0, 1.0], [1.0, 0.0]])
    ids = torch.randint(3, 60, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden = mamba_chunk(mamba, mamba.backbone.embeddings(ids), 0, 2)
        hidden = neox_chunk(neox, resize_features(hidden, 32), ids, 2, 4)
        expected = neox.get_output_embeddings()(hidden)
        actual = hybrid(ids).logits
    assert (actual - expected).abs().max().item() <= TOLERANCE


def test_collapse_uneven_layer_splits(tokenizer):
    neox = tiny_model("gpt_neox", seed=0, width=32, depth=3, vocab_size=VOCAB)
    mamba = tiny_model("mamba", seed=1, width=32, depth=4, vocab_size=VOCAB)
    hybrid = manticore.build_hybrid(
        [neox, mamba], n_blocks=2, tokenizer=tokenizer, layer_splits=[[2, 1], [2, 2]]
    ).eval()
    hybrid.set_mixture_weights(one_hot(2, 2, 0))
    ids = torch.randint(3, 60, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        difference = (hybrid(ids).logits - neox(ids).logits[..., :VOCAB]).abs().max().item()
    assert difference <= TOLERANCE


@pytest.mark.parametrize("family", ["gpt_neox", "mamba"])
def test_collapsed_greedy_generation(family, tokenizer):
    components = make_components(family, 2)
    hybrid = manticore.build_hybrid(components, n_blocks=2, tokenizer=tokenizer).eval()
    hybrid.set_mixture_weights(one_hot(2, 2, 0))
    prompt = torch.tensor([[5, 9, 14, 3]])
    expected = components[0].generate(prompt, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    actual = hybrid.generate(prompt, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert torch.equal(actual, expected)
