"""Two gloo processes under torchrun reach the weights of one process with the same global batch."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import distributed_worker  # tests/ is on sys.path under pytest's default (prepend) import mode
from manticore.cli import main
from manticore.testing import WORDS, save_component, tiny_model, tiny_tokenizer

WORKER = Path(distributed_worker.__file__)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def run_two_processes(arguments):
    """Run `arguments` after torchrun's options in 2 processes, failing with their output on error."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    finished = subprocess.run(TORCHRUN + arguments, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]
    return finished


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Weights of the two-process run (torchrun) and of the single-process run (here)."""
    output = tmp_path_factory.mktemp("distributed")
    run_two_processes([str(WORKER), str(output / "two_processes")])
    for scenario in distributed_worker.SCENARIOS:
        distributed_worker.train(output / "one_process", scenario)
    return output


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(distributed_worker.SCENARIOS))
def test_two_processes_ran_distributed(runs, scenario):
    for rank in (0, 1):
        info = json.loads((runs / "two_processes" / scenario / f"rank{rank}.json").read_text())
        assert info == {"num_processes": 2, "process_index": rank}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(distributed_worker.SCENARIOS))
def test_ranks_end_identical(runs, scenario):
    first = load_file(runs / "two_processes" / scenario / "rank0.safetensors")
    second = load_file(runs / "two_processes" / scenario / "rank1.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(distributed_worker.SCENARIOS))
def test_two_processes_match_one(runs, scenario):
    single = load_file(runs / "one_process" / scenario / "rank0.safetensors")
    double = load_file(runs / "two_processes" / scenario / "rank0.safetensors")
    assert single.keys() == double.keys()
    for name in single:
        assert single[name].dtype == torch.float32
        assert torch.allclose(single[name], double[name], rtol=0, atol=1e-6), name


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(distributed_worker.SCENARIOS))
def test_weights_moved_beyond_tolerance(runs, scenario):
    # Six steps at lr 1e-3 move trained weights far more than the 1e-6 tolerance above.
    initial = distributed_worker.initial_hybrid(scenario).state_dict()
    final = load_file(runs / "one_process" / scenario / "rank0.safetensors")
    name = "model.projectors_out.1.1.linear.weight"
    assert (final[name] - initial[name]).abs().max() > 1e-4


@pytest.mark.slow
def test_checkpoint_written_once(runs):
    checkpoint = runs / "two_processes" / "search" / "checkpoint"
    assert json.loads((checkpoint / "state.json").read_text())["extra"]["step"] == 6


# The whole pipeline through the command line


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory):
    """Output folders of `manticore run` in two processes and in one, on the same recipe."""
    root = tmp_path_factory.mktemp("distributed_pipeline")
    tokenizer = tiny_tokenizer()
    save_component(tiny_model("gpt_neox", width=32, depth=2, vocab_size=72), root / "neox", tokenizer)
    save_component(tiny_model("llama", seed=1, width=24, depth=2, vocab_size=72), root / "llama", tokenizer)
    rng = random.Random(0)
    for name in ("align", "task", "test"):
        (root / name).mkdir()
        for index in range(3):
            (root / name / f"doc{index}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(150)))
    stage = {"steps": 4, "batch_size": 4, "log_every": 2, "checkpoint_every": 2, "learning_rate": 1e-3}
    recipes = {}
    for label in ("one_process", "two_processes"):
        mapping = {
            "output_dir": str(root / label),
            "stages": ["align", "search", "retrain", "evaluate"],
            "hybrid": {"components": [str(root / "neox"), str(root / "llama")], "n_blocks": 2},
            "data": {name: {"source": str(root / name)} for name in ("align", "task", "test")},
            "align": stage, "search": stage, "retrain": stage,
        }
        mapping["data"]["block_size"] = 16
        recipes[label] = root / f"{label}.yaml"
        recipes[label].write_text(yaml.safe_dump(mapping))

    run_two_processes(["-m", "manticore.cli", "run", str(recipes["two_processes"])])
    assert main(["run", str(recipes["one_process"])]) == 0
    return root / "one_process", root / "two_processes"


@pytest.mark.slow
def test_pipeline_two_processes_match_one(pipeline_runs):
    one_process, two_processes = pipeline_runs
    for stage in ("align", "search", "retrain", "evaluate"):
        assert (two_processes / stage / "done.json").exists(), stage
    assert (two_processes / "report.md").exists()
    single = load_file(one_process / "retrain" / "model" / "model.safetensors")
    double = load_file(two_processes / "retrain" / "model" / "model.safetensors")
    assert single.keys() == double.keys()
    for name in single:
        assert torch.allclose(single[name], double[name], rtol=0, atol=1e-6), name
    searched_single = json.loads((one_process / "search" / "mixture.json").read_text())["mixture_weights"]
    searched_double = json.loads((two_processes / "search" / "mixture.json").read_text())["mixture_weights"]
    assert torch.allclose(torch.tensor(searched_single), torch.tensor(searched_double), rtol=0, atol=1e-6)
    losses = [json.loads((run / "results.json").read_text())[0]["test_loss"] for run in pipeline_runs]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


@pytest.mark.slow
def test_pipeline_metrics_written_once(pipeline_runs):
    _, two_processes = pipeline_runs
    lines = (two_processes / "metrics.csv").read_text().splitlines()
    assert lines[0] == "stage,step,name,value"
    assert lines.count("stage,step,name,value") == 1
    rows = [tuple(line.split(",")[:3]) for line in lines[1:]]
    assert len(rows) == len(set(rows))
