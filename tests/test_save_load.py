"""save_pretrained writes one self-contained directory; from_pretrained rebuilds the same hybrid."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import manticore
from manticore.testing import save_component, tiny_model, tiny_tokenizer

VOCAB = 64

RELOAD_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
import manticore  # registers the Auto classes
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
ids = load_file(sys.argv[2])["ids"]
with torch.no_grad():
    logits = model(ids).logits
weights = {f"weight/{name}": value.clone() for name, value in model.state_dict().items()}
save_file({"logits": logits, "vocab": torch.tensor(len(tokenizer)), **weights}, sys.argv[3])
"""


@pytest.fixture()
def saved_hybrid(tmp_path):
    tokenizer = tiny_tokenizer()
    neox = save_component(tiny_model("gpt_neox", width=32, depth=4, vocab_size=VOCAB), tmp_path / "neox", tokenizer)
    mamba = save_component(tiny_model("mamba", seed=1, width=24, depth=2, vocab_size=VOCAB + 8), tmp_path / "mamba", tokenizer)
    hybrid = manticore.build_hybrid([neox, mamba], n_blocks=2, mixture="softmax").eval()
    with torch.no_grad():
        hybrid.model.mixture.logits.copy_(torch.tensor([[0.3, -0.2], [1.0, 0.5]]))
    hybrid.save_pretrained(tmp_path / "hybrid")
    shutil.rmtree(neox)
    shutil.rmtree(mamba)  # the reload must not need the component checkpoints
    return hybrid, tmp_path / "hybrid"


def test_saved_directory_contents(saved_hybrid):
    _, directory = saved_hybrid
    names = {path.name for path in directory.iterdir()}
    assert "model.safetensors" in names
    assert "config.json" in names
    assert "tokenizer.json" in names
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)


def test_config_records_every_component(saved_hybrid):
    _, directory = saved_hybrid
    config = json.loads((directory / "config.json").read_text())
    assert [c["model_type"] for c in config["component_configs"]] == ["gpt_neox", "mamba"]
    assert config["layer_splits"] == [[2, 2], [1, 1]]
    assert config["model_type"] == "manticore"


def test_reload_in_fresh_process_gives_same_logits(saved_hybrid, tmp_path):
    hybrid, directory = saved_hybrid
    ids = torch.randint(3, 60, (2, 11), generator=torch.Generator().manual_seed(0))
    save_file({"ids": ids}, tmp_path / "ids.safetensors")
    subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(directory), str(tmp_path / "ids.safetensors"), str(tmp_path / "out.safetensors")],
        check=True,
    )
    reloaded = load_file(tmp_path / "out.safetensors")
    with torch.no_grad():
        expected = hybrid(ids).logits
    for name, value in hybrid.state_dict().items():
        assert torch.equal(reloaded[f"weight/{name}"], value), name
    # The Mamba kernel's parallel reduction order can change the last bits between
    # runs, so the logits are compared to float32 rounding and the weights exactly.
    assert (reloaded["logits"] - expected).abs().max().item() <= 1e-6
    assert reloaded["vocab"].item() == len(hybrid.tokenizer)


def test_reload_keeps_mixture_weights(saved_hybrid):
    hybrid, directory = saved_hybrid
    reloaded = AutoModelForCausalLM.from_pretrained(directory)
    assert torch.equal(reloaded.mixture_weights(), hybrid.mixture_weights())


def test_reload_fixed_mixture(saved_hybrid, tmp_path):
    hybrid, _ = saved_hybrid
    hybrid.set_mixture_weights([[0.2, 0.8], [1.0, 0.0]])
    hybrid.save_pretrained(tmp_path / "fixed")
    reloaded = manticore.ManticoreForCausalLM.from_pretrained(tmp_path / "fixed")
    assert reloaded.config.mixture == "fixed"
    assert torch.equal(reloaded.mixture_weights(), torch.tensor([[0.2, 0.8], [1.0, 0.0]]))


def test_reload_fresh_embeddings(tmp_path):
    tokenizer = tiny_tokenizer()
    components = [tiny_model("gpt_neox", vocab_size=VOCAB), tiny_model("gpt2", vocab_size=VOCAB)]
    hybrid = manticore.build_hybrid(components, tokenizer=tokenizer, fresh_embeddings=True).eval()
    hybrid.save_pretrained(tmp_path / "fresh")
    reloaded = manticore.ManticoreForCausalLM.from_pretrained(tmp_path / "fresh").eval()
    ids = torch.randint(3, 60, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, hybrid(ids).logits)
    neox = reloaded.model.components[0]
    assert neox.get_output_embeddings().weight.data_ptr() == neox.get_input_embeddings().weight.data_ptr()


def test_classification_reload(tmp_path):
    tokenizer = tiny_tokenizer()
    components = [tiny_model("gpt_neox", vocab_size=VOCAB), tiny_model("mamba", vocab_size=VOCAB)]
    classifier = manticore.build_hybrid(components, tokenizer=tokenizer, task="classification", num_labels=3).eval()
    classifier.save_pretrained(tmp_path / "classifier")
    reloaded = manticore.ManticoreForSequenceClassification.from_pretrained(tmp_path / "classifier").eval()
    ids = torch.randint(3, 60, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        difference = (reloaded(ids).logits - classifier(ids).logits).abs().max().item()
    assert difference <= 1e-6
