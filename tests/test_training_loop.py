"""TrainingLoop on a tiny GPT-NeoX + Llama hybrid: learning, exact resume, checkpoints, search modes."""

import json
import math
import shutil

import pytest
import torch
from datasets import Dataset

import manticore
from manticore.testing import tiny_model
from manticore.training.checkpoint import CHECKPOINT_DIR, load_checkpoint
from manticore.training.loop import LoopSettings, NonFiniteLossError, TrainingLoop, evaluate_language_model
from manticore.training.metrics import MetricsWriter, read_metrics
from manticore.training.optim import ExponentiatedGradient, floored_simplex

VOCAB = 72
BLOCK = 16


def tiny_hybrid(mixture="softmax", n_blocks=2):
    neox = tiny_model("gpt_neox", width=32, depth=2, vocab_size=VOCAB)
    llama = tiny_model("llama", seed=1, width=24, depth=2, vocab_size=VOCAB)
    return manticore.build_hybrid([neox, llama], n_blocks=n_blocks, mixture=mixture)


def cyclic_blocks(count=32, first_token=3, period=8):
    """Blocks of a repeating token cycle, each starting at a different phase: easy to learn."""
    rows = [[first_token + (i + j) % period for j in range(BLOCK)] for i in range(count)]
    return Dataset.from_dict({"input_ids": rows}).with_format("numpy")


def make_loop(hybrid, output, data=None, mixture_kind="softmax", held_out=None, **changes):
    values = dict(steps=8, batch_size=4, learning_rate=3e-3, log_every=1, checkpoint_every=3)
    values.update(changes)
    weights = [p for n, p in hybrid.named_parameters() if not n.startswith("model.mixture")]
    return TrainingLoop(
        hybrid, cyclic_blocks() if data is None else data, LoopSettings(**values), output, "search",
        MetricsWriter(output, tensorboard=False), weights, hybrid.model.mixture.parameters(), mixture_kind,
        held_out,
    )


def assert_same_tensors(first: dict, second: dict):
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def optimizer_tensors(loop) -> dict:
    tensors = {}
    for name, optimizer in loop.optimizers.items():
        for index, state in optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"{name}/{index}/{key}"] = value
    return tensors


# Learning


def test_loss_decreases_on_repetitive_data(tmp_path):
    torch.manual_seed(0)
    hybrid = tiny_hybrid()
    data = cyclic_blocks()
    before = evaluate_language_model(hybrid, data)["loss"]
    summary = make_loop(hybrid, tmp_path, data, steps=30, log_every=5, checkpoint_every=30).run()
    after = evaluate_language_model(hybrid, data)["loss"]
    assert summary["steps"] == 30
    assert summary["tokens"] == 30 * 4 * BLOCK
    assert after < before - 1.0
    logged = [float(r["value"]) for r in read_metrics(tmp_path / "metrics.csv") if r["name"] == "loss"]
    assert len(logged) == 6
    assert logged[-1] < logged[0]


# Resume


@pytest.mark.parametrize("mixture", ["softmax", "gumbel", "simplex"])
def test_resume_matches_uninterrupted_run(tmp_path, mixture):
    kind = "simplex" if mixture == "simplex" else "softmax"

    torch.manual_seed(0)
    reference_hybrid = tiny_hybrid(mixture)
    reference = make_loop(reference_hybrid, tmp_path / "reference", mixture_kind=kind)
    reference_summary = reference.run()

    # Interrupted after step 5: the last checkpoint is from step 3, so steps 4 and 5 are redone.
    torch.manual_seed(0)
    interrupted = make_loop(tiny_hybrid(mixture), tmp_path / "resumed", mixture_kind=kind)
    partial = interrupted.run(stop_after=5)
    assert partial["steps"] == 5
    assert json.loads((tmp_path / "resumed" / CHECKPOINT_DIR / "state.json").read_text())["extra"]["step"] == 3

    torch.manual_seed(123)  # the checkpoint restores the random state
    resumed_hybrid = tiny_hybrid(mixture)
    resumed = make_loop(resumed_hybrid, tmp_path / "resumed", mixture_kind=kind)
    resumed_summary = resumed.run(resume=True)

    assert_same_tensors(reference_hybrid.state_dict(), resumed_hybrid.state_dict())
    assert torch.equal(reference_hybrid.mixture_weights(), resumed_hybrid.mixture_weights())
    assert_same_tensors(optimizer_tensors(reference), optimizer_tensors(resumed))
    for name in reference.schedulers:
        assert reference.schedulers[name].get_last_lr() == resumed.schedulers[name].get_last_lr()
    assert resumed_summary["loss"] == reference_summary["loss"]
    assert resumed_summary["tokens"] == reference_summary["tokens"]


def test_resume_keeps_metrics_unique(tmp_path):
    torch.manual_seed(0)
    make_loop(tiny_hybrid(), tmp_path).run(stop_after=5)
    make_loop(tiny_hybrid(), tmp_path).run(resume=True)
    rows = read_metrics(tmp_path / "metrics.csv")
    keys = [(r["stage"], r["step"], r["name"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert sorted({int(r["step"]) for r in rows}) == list(range(1, 9))


def test_resume_finished_run_loss(tmp_path):
    torch.manual_seed(0)
    finished = make_loop(tiny_hybrid(), tmp_path).run()
    again = make_loop(tiny_hybrid(), tmp_path).run(resume=True)
    assert again["steps"] == 8
    assert again["loss"] == finished["loss"]
    assert math.isfinite(again["loss"])


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    torch.manual_seed(0)
    summary = make_loop(tiny_hybrid(), tmp_path, steps=2).run(resume=True)
    assert summary["steps"] == 2


def test_resume_uses_new_learning_rate(tmp_path):
    torch.manual_seed(0)
    make_loop(tiny_hybrid(), tmp_path, learning_rate=3e-3, mixture_learning_rate=0.05).run(stop_after=3)
    loop = make_loop(tiny_hybrid(), tmp_path, learning_rate=1e-4, mixture_learning_rate=0.01)
    loop.run(resume=True, stop_after=3)
    remaining = (8 - 3) / 8  # linear decay to zero at step 8
    assert loop.optimizers["weights"].param_groups[0]["lr"] == pytest.approx(1e-4 * remaining)
    assert loop.optimizers["mixture"].param_groups[0]["lr"] == pytest.approx(0.01 * remaining)


# Checkpoints


def test_checkpoint_files(tmp_path):
    torch.manual_seed(0)
    make_loop(tiny_hybrid(), tmp_path).run()
    checkpoint = tmp_path / CHECKPOINT_DIR
    assert sorted(p.name for p in checkpoint.iterdir()) == ["model.safetensors", "optimizers.safetensors", "state.json"]
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["extra"]["step"] == 8
    assert state["extra"]["stage"] == "search"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".checkpoint-") or p.name.endswith(".previous")]
    assert leftovers == []
    pickles = [p for p in tmp_path.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".pickle", ".bin")]
    assert pickles == []


def test_leftover_staging_folder_ignored(tmp_path):
    torch.manual_seed(0)
    make_loop(tiny_hybrid(), tmp_path).run(stop_after=4)  # checkpoint at step 3
    staging = tmp_path / ".checkpoint-interrupted"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half a file")
    (staging / "state.json").write_text('{"extra": {"step": 99')

    hybrid = tiny_hybrid()
    loop = make_loop(hybrid, tmp_path)
    summary = loop.run(resume=True, stop_after=6)  # resumes at 3, writes the step-6 checkpoint
    assert summary["steps"] == 6
    assert not staging.exists()  # the next save removes it
    state = json.loads((tmp_path / CHECKPOINT_DIR / "state.json").read_text())
    assert state["extra"]["step"] == 6


def test_previous_checkpoint_after_crash(tmp_path):
    torch.manual_seed(0)
    make_loop(tiny_hybrid(), tmp_path).run(stop_after=4)
    checkpoint = tmp_path / CHECKPOINT_DIR
    checkpoint.rename(checkpoint.with_name(CHECKPOINT_DIR + ".previous"))

    loop = make_loop(tiny_hybrid(), tmp_path)
    stateful = {**loop.optimizers, **{f"{n}_schedule": s for n, s in loop.schedulers.items()}}
    extra = load_checkpoint(tmp_path, loop.unwrapped, stateful)
    assert extra["step"] == 3


def test_missing_checkpoint_error(tmp_path):
    loop = make_loop(tiny_hybrid(), tmp_path)
    with pytest.raises(FileNotFoundError, match="--resume"):
        load_checkpoint(tmp_path, loop.unwrapped, loop.optimizers)


def test_non_finite_loss_keeps_checkpoint(tmp_path):
    torch.manual_seed(0)
    hybrid = tiny_hybrid()
    calls = []

    def poison_fourth_step(module, inputs, output):
        calls.append(1)
        return output * math.nan if len(calls) == 4 else output

    hybrid.model.projectors_in[0][0].register_forward_hook(poison_fourth_step)
    loop = make_loop(hybrid, tmp_path, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError) as caught:
        loop.run()
    message = str(caught.value)
    assert "at step 4" in message
    assert "'search'" in message
    assert "--resume" in message

    restored = tiny_hybrid()
    resumed = make_loop(restored, tmp_path, checkpoint_every=2)
    stateful = {**resumed.optimizers, **{f"{n}_schedule": s for n, s in resumed.schedulers.items()}}
    assert load_checkpoint(tmp_path, restored, stateful)["step"] == 2
    assert all(torch.isfinite(p).all() for p in restored.parameters())
    assert resumed.run(resume=True)["steps"] == 8


def test_batch_larger_than_data(tmp_path):
    with pytest.raises(ValueError, match="fewer than the batch size"):
        make_loop(tiny_hybrid(), tmp_path, data=cyclic_blocks(count=3))


def test_unknown_search_mode(tmp_path):
    with pytest.raises(ValueError, match="'greedy'"):
        make_loop(tiny_hybrid(), tmp_path, search_mode="greedy")


# Search modes


class StepRecorder:
    """Record a weight, the mixture weights and the input rows at every forward of the hybrid."""

    def __init__(self, hybrid):
        self.hybrid = hybrid
        self.weights, self.mixtures, self.inputs = [], [], []
        hybrid.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.weights.append(self.hybrid.model.projectors_out[0][0].linear.weight.detach().clone())
        self.mixtures.append(self.hybrid.mixture_weights())
        self.inputs.append(kwargs["input_ids"].clone())

    def changed(self, series):
        return [not torch.equal(before, after) for before, after in zip(series, series[1:])]


def test_joint_search_updates_both_every_step(tmp_path):
    torch.manual_seed(0)
    hybrid = tiny_hybrid()
    recorder = StepRecorder(hybrid)
    make_loop(hybrid, tmp_path, steps=6, search_mode="joint").run()
    assert recorder.changed(recorder.weights) == [True] * 5
    assert recorder.changed(recorder.mixtures) == [True] * 5


def test_alternating_search_splits_steps(tmp_path):
    torch.manual_seed(0)
    hybrid = tiny_hybrid()
    recorder = StepRecorder(hybrid)
    loop = make_loop(hybrid, tmp_path, steps=6, search_mode="alternating")
    loop.run()
    # Forward i runs before step i (counted from 0), so change i is made by step i.
    assert recorder.changed(recorder.weights) == [True, False, True, False, True]
    assert recorder.changed(recorder.mixtures) == [False, True, False, True, False]
    # Both schedules advance every step, so both rates reach zero at the end.
    assert loop.schedulers["weights"].get_last_lr() == [0.0]
    assert loop.schedulers["mixture"].get_last_lr() == [0.0]


def test_bilevel_search_uses_held_out_data(tmp_path):
    torch.manual_seed(0)
    hybrid = tiny_hybrid()
    recorder = StepRecorder(hybrid)
    held_out = cyclic_blocks(count=8, first_token=40)
    make_loop(hybrid, tmp_path, steps=4, search_mode="bilevel", held_out=held_out).run()
    assert len(recorder.inputs) == 8  # a training and a held-out forward per step
    for step in range(4):
        assert recorder.inputs[2 * step].max() < 40  # training batch, weights step
        assert recorder.inputs[2 * step + 1].min() >= 40  # held-out batch, mixture step
    assert recorder.changed(recorder.weights) == [True, False] * 3 + [True]
    assert recorder.changed(recorder.mixtures) == [False, True] * 3 + [False]


def test_bilevel_search_needs_held_out_data(tmp_path):
    with pytest.raises(ValueError, match="bilevel") as caught:
        make_loop(tiny_hybrid(), tmp_path, search_mode="bilevel")
    assert "data.validation" in str(caught.value)


def test_bilevel_held_out_too_small(tmp_path):
    with pytest.raises(ValueError, match="got 2"):
        make_loop(tiny_hybrid(), tmp_path, search_mode="bilevel", held_out=cyclic_blocks(count=2))


def test_gaea_keeps_rows_on_floored_simplex(tmp_path):
    torch.manual_seed(0)
    hybrid = tiny_hybrid("simplex")
    recorder = StepRecorder(hybrid)
    loop = make_loop(hybrid, tmp_path, steps=10, mixture_kind="simplex", mixture_learning_rate=20.0)
    assert isinstance(loop.optimizers["mixture"], ExponentiatedGradient)
    loop.run()
    final = hybrid.mixture_weights()
    assert final.min().item() == pytest.approx(1e-5)  # the large rate drives an entry to the floor
    for probs in recorder.mixtures[1:] + [final]:
        assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-6)
        assert (probs >= 1e-5).all(), probs


def test_floored_simplex_rows():
    weights = torch.tensor([[5.0, 1e-9, 1e-9], [0.2, 0.3, 0.5], [0.0, 0.0, 2.0]])
    projected = floored_simplex(weights, 1e-3)
    assert torch.allclose(projected.sum(-1), torch.ones(3))
    assert (projected >= 1e-3).all()
    assert torch.allclose(projected[1], torch.tensor([0.2, 0.3, 0.5]))
    assert projected[0, 1] == pytest.approx(1e-3)


def test_floored_simplex_floor_too_large():
    with pytest.raises(ValueError, match="1/4"):
        floored_simplex(torch.ones(1, 4), 0.3)


def test_mixture_weights_logged_every_log_step(tmp_path):
    torch.manual_seed(0)
    hybrid = tiny_hybrid()
    make_loop(hybrid, tmp_path, steps=6, log_every=2).run()
    rows = read_metrics(tmp_path / "metrics.csv")
    logged_steps = sorted({int(r["step"]) for r in rows})
    assert logged_steps == [2, 4, 6]
    for step in logged_steps:
        names = {r["name"] for r in rows if int(r["step"]) == step}
        for block in range(2):
            for component in range(2):
                assert f"alpha/block{block}/component{component}" in names
    last = {r["name"]: float(r["value"]) for r in rows if int(r["step"]) == 6}
    final = hybrid.mixture_weights()
    assert last["alpha/block1/component0"] == pytest.approx(final[1, 0].item())
    assert last["alpha/block0/component0"] + last["alpha/block0/component1"] == pytest.approx(1.0)


def test_fixed_mixture_no_mixture_optimizer(tmp_path):
    torch.manual_seed(0)
    hybrid = tiny_hybrid()
    hybrid.set_mixture_weights([[1.0, 0.0], [0.5, 0.5]])
    loop = make_loop(hybrid, tmp_path, steps=3)
    assert list(loop.optimizers) == ["weights"]
    loop.run()
    assert torch.equal(hybrid.mixture_weights(), torch.tensor([[1.0, 0.0], [0.5, 0.5]]))


@pytest.mark.slow
def test_mamba_component_trains(tmp_path):
    pytest.importorskip("manticore.kernels.mamba_layer")
    torch.manual_seed(0)
    neox = tiny_model("gpt_neox", width=32, depth=2, vocab_size=VOCAB)
    mamba = tiny_model("mamba", seed=1, width=24, depth=2, vocab_size=VOCAB)
    hybrid = manticore.build_hybrid([neox, mamba], n_blocks=2)
    data = cyclic_blocks()
    before = evaluate_language_model(hybrid, data)["loss"]
    make_loop(hybrid, tmp_path, data, steps=10, checkpoint_every=10).run()
    assert evaluate_language_model(hybrid, data)["loss"] < before
