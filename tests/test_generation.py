"""Cached generation: per-component caches give the same tokens and logits as recomputing the prefix."""

import pytest
import torch
from transformers import GenerationMixin

import manticore
from manticore.testing import tiny_model, tiny_tokenizer

VOCAB = 64
CACHED_FAMILIES = ["gpt_neox", "llama", "gpt_neo", "gpt2", "mamba"]
PROMPTS = torch.tensor([[0, 0, 5, 9, 14, 3], [7, 8, 9, 10, 11, 12]])
PROMPT_MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def soft_hybrid(family, tokenizer):
    components = [tiny_model(family, vocab_size=VOCAB), tiny_model("mamba", seed=1, width=24, vocab_size=VOCAB)]
    return manticore.build_hybrid(components, n_blocks=2, tokenizer=tokenizer).eval()


@pytest.mark.parametrize("family", CACHED_FAMILIES)
def test_cached_step_logits_match_full_forward(family, tokenizer):
    hybrid = soft_hybrid(family, tokenizer)
    tokens = torch.tensor([[0, 0, 5, 9, 14, 3, 22, 7, 31], [7, 8, 9, 10, 11, 12, 40, 41, 42]])
    mask = torch.cat([PROMPT_MASK, torch.ones(2, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        full = hybrid(tokens, attention_mask=mask).logits
        cache = hybrid.model.new_cache()
        steps = [hybrid(tokens[:, :6], attention_mask=mask[:, :6], cache=cache).logits]
        for t in range(6, 9):
            steps.append(hybrid(tokens[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache).logits)
    incremental = torch.cat(steps, dim=1)
    real = mask.bool()
    assert (incremental[real] - full[real]).abs().max().item() <= 1e-5
    assert cache.length == 9


@pytest.mark.parametrize("family", CACHED_FAMILIES)
def test_cached_generate_matches_uncached(family, tokenizer):
    hybrid = soft_hybrid(family, tokenizer)
    cached = hybrid.generate(PROMPTS, attention_mask=PROMPT_MASK, max_new_tokens=8, min_new_tokens=8)
    uncached = GenerationMixin.generate(
        hybrid, PROMPTS, attention_mask=PROMPT_MASK, max_new_tokens=8, min_new_tokens=8, do_sample=False
    )
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("family", CACHED_FAMILIES)
def test_collapsed_generate_matches_component(family, tokenizer):
    hybrid = soft_hybrid(family, tokenizer)
    hybrid.set_mixture_weights([[1.0, 0.0], [1.0, 0.0]])
    component = hybrid.model.components[0]
    prompt = torch.tensor([[5, 9, 14, 3]])
    expected = component.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(hybrid.generate(prompt, max_new_tokens=8, min_new_tokens=8), expected)


def test_sampling_repeats_with_generator(tokenizer):
    hybrid = soft_hybrid("gpt_neox", tokenizer)
    options = dict(max_new_tokens=10, do_sample=True, temperature=0.8, top_k=20, top_p=0.9)
    first = hybrid.generate(PROMPTS, attention_mask=PROMPT_MASK, generator=torch.Generator().manual_seed(3), **options)
    second = hybrid.generate(PROMPTS, attention_mask=PROMPT_MASK, generator=torch.Generator().manual_seed(3), **options)
    assert torch.equal(first, second)
    assert first.shape == (2, 16)


def test_finished_rows_are_padded(tokenizer):
    hybrid = soft_hybrid("llama", tokenizer)
    greedy = hybrid.generate(PROMPTS, attention_mask=PROMPT_MASK, max_new_tokens=1)
    first_tokens = greedy[:, -1]
    stopped = hybrid.generate(
        PROMPTS, attention_mask=PROMPT_MASK, max_new_tokens=5, eos_token_id=int(first_tokens[0]), pad_token_id=0
    )
    assert stopped[0, 6].item() == first_tokens[0].item()
    assert torch.equal(stopped[0, 7:], torch.zeros(stopped.shape[1] - 7, dtype=torch.long))


def test_mamba2_falls_back_to_uncached(tokenizer):
    components = [tiny_model("mamba2", vocab_size=VOCAB), tiny_model("gpt_neox", seed=1, vocab_size=VOCAB)]
    hybrid = manticore.build_hybrid(components, tokenizer=tokenizer).eval()
    with pytest.raises(NotImplementedError, match="mamba2"):
        hybrid.model.new_cache()
    output = hybrid.generate(PROMPTS, attention_mask=PROMPT_MASK, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert output.shape == (2, 9)
