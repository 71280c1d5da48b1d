"""`manticore run` end to end on tiny saved GPT-NeoX and Llama components and tiny text folders."""

import json
import random
import re

import pytest
import yaml

from manticore.cli import main
from manticore.recipe import load_recipe
from manticore.testing import WORDS, save_component, tiny_model, tiny_tokenizer
from manticore.training import pipeline as pipeline_module
from manticore.training.loop import TrainingLoop

ALL_STAGES = ["align", "search", "retrain", "baselines", "sweep", "evaluate"]
STAGE = {"steps": 4, "batch_size": 4, "log_every": 2, "checkpoint_every": 2, "learning_rate": 1e-3}


def write_text_folder(directory, documents, seed):
    """Write `documents` .txt files of 150 random words each."""
    rng = random.Random(seed)
    directory.mkdir(parents=True)
    for index in range(documents):
        (directory / f"doc{index}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(150)))
    return directory


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Saved components and text folders, shared by every test here."""
    root = tmp_path_factory.mktemp("pipeline")
    tokenizer = tiny_tokenizer()
    save_component(tiny_model("gpt_neox", width=32, depth=2, vocab_size=72), root / "neox", tokenizer)
    save_component(tiny_model("llama", seed=1, width=24, depth=2, vocab_size=80), root / "llama", tokenizer)
    for seed, name in enumerate(["align", "task", "test"]):
        write_text_folder(root / name, documents=4, seed=seed)
    return root


def recipe_mapping(workspace, output, stages=ALL_STAGES):
    return {
        "output_dir": str(output),
        "stages": list(stages),
        "hybrid": {"components": [str(workspace / "neox"), str(workspace / "llama")], "n_blocks": 2},
        "data": {
            "align": {"source": str(workspace / "align")},
            "task": {"source": str(workspace / "task")},
            "test": {"source": str(workspace / "test")},
            "block_size": 16,
            "validation_fraction": 0.25,
        },
        "align": STAGE,
        "search": {**STAGE, "mixture_learning_rate": 0.05},
        "retrain": STAGE,
        "baselines": STAGE,
        "sweep": {**STAGE, "points": 3},
        "evaluate_batch_size": 4,
    }


def write_recipe(path, mapping):
    path.write_text(yaml.safe_dump(mapping))
    return str(path)


@pytest.fixture(scope="module")
def finished_run(workspace, tmp_path_factory):
    """Output folder of one complete run of every stage."""
    base = tmp_path_factory.mktemp("finished")
    output = base / "run"
    recipe = write_recipe(base / "recipe.yaml", recipe_mapping(workspace, output))
    assert main(["run", recipe]) == 0
    return output, recipe


# A complete run


def test_results_rows(finished_run):
    output, _ = finished_run
    rows = {row["model"]: row for row in json.loads((output / "results.json").read_text())}
    expected = {"manticore"} | {f"{c}-{b}" for c in ("neox", "llama") for b in ("same-steps", "same-compute")}
    assert set(rows) == expected
    for row in rows.values():
        assert row["test_loss"] > 0
        assert row["parameters"] > 0
        assert row["forward_flops_per_token"] > 0
        assert row["training_tokens"] > 0
    # The hybrid runs both components, so matching its compute takes more steps.
    for component in ("neox", "llama"):
        same_steps = rows[f"{component}-same-steps"]["training_tokens"]
        assert rows[f"{component}-same-compute"]["training_tokens"] > same_steps
        assert same_steps == rows["manticore"]["training_tokens"]


def test_searched_mixture_is_probability_matrix(finished_run):
    output, _ = finished_run
    mixture = json.loads((output / "search" / "mixture.json").read_text())["mixture_weights"]
    assert len(mixture) == 2  # M blocks
    for row in mixture:
        assert len(row) == 2  # K components
        assert all(0 <= value <= 1 for value in row)
        assert sum(row) == pytest.approx(1.0, abs=1e-5)
    retrained = json.loads((output / "results.json").read_text())[0]
    assert retrained["model"] == "manticore"
    for retrained_row, searched_row in zip(retrained["mixture_weights"], mixture, strict=True):
        assert retrained_row == pytest.approx(searched_row)


def test_every_stage_done(finished_run):
    output, _ = finished_run
    for stage in ALL_STAGES:
        assert (output / stage / "done.json").exists(), stage
    for directory in ("align", "retrain", "baselines/neox-same-steps", "baselines/llama-same-compute"):
        assert (output / directory / "model" / "model.safetensors").exists(), directory


def test_sweep_landscape(finished_run):
    output, _ = finished_run
    points = json.loads((output / "sweep" / "landscape.json").read_text())
    assert len(points) == 9  # 3 points in each of 2 blocks
    assert points[0]["mixture_weights"] == [[1.0, 0.0], [1.0, 0.0]]
    assert points[-1]["mixture_weights"] == [[0.0, 1.0], [0.0, 1.0]]
    for point in points:
        assert point["validation_loss"] > 0
        assert point["train_loss"] > 0


def test_report_and_figures(finished_run):
    output, _ = finished_run
    report = (output / "report.md").read_text()
    assert "| manticore |" in report
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"figures/mixture_weights.png", "figures/losses.png", "figures/landscape.png"} <= set(figures)
    for figure in figures:
        assert (output / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure


def test_resolved_recipe_written(finished_run):
    output, recipe_path = finished_run
    written = load_recipe(output / "recipe.yaml")
    assert written == load_recipe(recipe_path)
    assert written.sweep.points == 3


def test_metrics_log_search_mixture(finished_run):
    output, _ = finished_run
    text = (output / "metrics.csv").read_text()
    for step in (2, 4):
        assert f"search,{step},alpha/block1/component1," in text


def test_second_run_needs_overwrite(finished_run, capsys):
    output, recipe = finished_run
    before = sorted(p.name for p in output.iterdir())
    assert main(["run", recipe]) == 2
    error = capsys.readouterr().err
    assert str(output) in error
    assert "--overwrite" in error
    assert sorted(p.name for p in output.iterdir()) == before


# Failing early


def test_dry_run_prints_size_without_output(workspace, tmp_path, capsys):
    output = tmp_path / "never"
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_mapping(workspace, output))
    assert main(["run", recipe, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"parameters: [\d,]+ \(projectors [\d,]+\)", printed)
    assert re.search(r"forward FLOPs per token at 16 tokens: \d", printed)
    assert not output.exists()


def test_missing_data_fails_before_training(workspace, tmp_path, capsys, monkeypatch):
    mapping = recipe_mapping(workspace, tmp_path / "run")
    missing = tmp_path / "absent" / "task.jsonl"
    mapping["data"]["task"]["source"] = str(missing)
    recipe = write_recipe(tmp_path / "recipe.yaml", mapping)

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the data check")

    monkeypatch.setattr(TrainingLoop, "run", no_training)
    assert main(["run", recipe]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # a corrected rerun needs no --overwrite


def test_invalid_recipe_returns_2(workspace, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_mapping(workspace, tmp_path / "run"))
    assert main(["run", recipe, "--set", "search.mode=sideways"]) == 2
    assert "search.mode = 'sideways'" in capsys.readouterr().err


# Interrupt and resume


class SimulatedCrash(Exception):
    pass


def test_interrupted_run_resumes(workspace, tmp_path, monkeypatch):
    output = tmp_path / "run"
    stages = ["align", "search", "retrain", "evaluate"]
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_mapping(workspace, output, stages))
    original_run = TrainingLoop.run

    def crash_during_retrain(self, resume=False, stop_after=None):
        if self.stage == "retrain":
            original_run(self, resume=resume, stop_after=3)  # checkpoint at step 2, then 1 more step
            raise SimulatedCrash
        return original_run(self, resume=resume, stop_after=stop_after)

    with monkeypatch.context() as patch:
        patch.setattr(TrainingLoop, "run", crash_during_retrain)
        with pytest.raises(SimulatedCrash):
            main(["run", recipe])
    assert (output / "search" / "done.json").exists()
    assert not (output / "retrain" / "done.json").exists()
    state = json.loads((output / "retrain" / "checkpoint" / "state.json").read_text())
    assert state["extra"]["step"] == 2
    searched = (output / "search" / "mixture.json").read_text()

    def must_be_skipped(self):
        raise AssertionError("a finished stage ran again")

    resumed_stages = []
    original_loop_run = TrainingLoop.run

    def record_stage(self, resume=False, stop_after=None):
        resumed_stages.append((self.stage, resume))
        return original_loop_run(self, resume=resume, stop_after=stop_after)

    monkeypatch.setattr(pipeline_module.Pipeline, "stage_align", must_be_skipped)
    monkeypatch.setattr(pipeline_module.Pipeline, "stage_search", must_be_skipped)
    monkeypatch.setattr(TrainingLoop, "run", record_stage)
    assert main(["run", recipe, "--resume"]) == 0

    assert resumed_stages == [("retrain", True)]
    assert (output / "search" / "mixture.json").read_text() == searched
    assert json.loads((output / "retrain" / "done.json").read_text())["steps"] == 4
    assert not (output / "retrain" / "checkpoint").exists()  # removed once the stage finished
    assert [row["model"] for row in json.loads((output / "results.json").read_text())] == ["manticore"]
    retrain_rows = [line for line in (output / "metrics.csv").read_text().splitlines() if line.startswith("retrain,")]
    assert len(retrain_rows) == len(set(retrain_rows))


# Single-stage commands


def test_single_stages_build_on_each_other(workspace, tmp_path, capsys):
    output = tmp_path / "run"
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_mapping(workspace, output, ["align", "search"]))
    assert main(["align", recipe]) == 0
    aligned = (output / "align" / "model" / "model.safetensors").read_bytes()
    assert main(["search", recipe]) == 0
    assert (output / "search" / "mixture.json").exists()
    assert (output / "align" / "model" / "model.safetensors").read_bytes() == aligned


def test_single_stage_rerun_needs_overwrite(workspace, tmp_path, capsys):
    output = tmp_path / "run"
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_mapping(workspace, output, ["align", "search"]))
    assert main(["align", recipe]) == 0
    assert main(["search", recipe]) == 0
    capsys.readouterr()
    assert main(["search", recipe]) == 2
    error = capsys.readouterr().err
    assert "stage 'search' already ran" in error
    assert "--overwrite" in error
    assert main(["search", recipe, "--overwrite"]) == 0
    assert (output / "align" / "done.json").exists()
    search_rows = (output / "metrics.csv").read_text().count("\nsearch,2,loss,")
    assert search_rows == 1


def test_finished_stages_drop_checkpoints(finished_run):
    output, _ = finished_run
    assert list(output.rglob("checkpoint")) == []
    assert (output / "retrain" / "model" / "model.safetensors").exists()


def test_block_longer_than_context_fails_early(workspace, tmp_path, capsys):
    mapping = recipe_mapping(workspace, tmp_path / "run")
    mapping["data"]["block_size"] = 200  # the tiny components take at most 128 tokens
    recipe = write_recipe(tmp_path / "recipe.yaml", mapping)
    assert main(["run", recipe]) == 2
    error = capsys.readouterr().err
    assert "data.block_size = 200" in error
    assert "maximum context of component" in error
    assert "(128 tokens)" in error
    assert not (tmp_path / "run").exists()


# Classification


def write_labelled_jsonl(path, rows, seed):
    """Rows whose label is the word that dominates the text, so the task is learnable."""
    rng = random.Random(seed)
    lines = []
    for _ in range(rows):
        label = rng.choice(["king", "queen"])
        words = [label] * 6 + [rng.choice(WORDS) for _ in range(6)]
        rng.shuffle(words)
        lines.append(json.dumps({"text": " ".join(words), "label": label}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_classification_run_reports_accuracy(workspace, tmp_path):
    output = tmp_path / "run"
    mapping = recipe_mapping(workspace, output, ["align", "search", "retrain", "baselines", "sweep", "evaluate"])
    mapping["data"]["task_type"] = "classification"
    mapping["data"]["task"] = {"source": str(write_labelled_jsonl(tmp_path / "train.jsonl", 40, seed=0))}
    mapping["data"]["test"] = {"source": str(write_labelled_jsonl(tmp_path / "test.jsonl", 12, seed=1))}
    mapping["baselines"] = {**STAGE, "equal_compute": False}
    recipe = write_recipe(tmp_path / "recipe.yaml", mapping)
    assert main(["run", recipe]) == 0
    rows = json.loads((output / "results.json").read_text())
    assert [row["model"] for row in rows] == ["manticore", "llama-same-steps", "neox-same-steps"]
    for row in rows:
        assert 0.0 <= row["test_accuracy"] <= 1.0
    landscape = json.loads((output / "sweep" / "landscape.json").read_text())
    assert all(0.0 <= point["validation_accuracy"] <= 1.0 for point in landscape)
    assert "test accuracy" in (output / "report.md").read_text()


def test_programmed_out_component_never_runs(workspace, tmp_path):
    short = save_component(tiny_model("gpt2", seed=2, max_context=16, vocab_size=72), tmp_path / "short", tiny_tokenizer())
    output = tmp_path / "run"
    mapping = recipe_mapping(workspace, output, ["align", "retrain", "baselines", "evaluate"])
    mapping["hybrid"]["components"] = [str(workspace / "neox"), str(short)]
    mapping["hybrid"]["mixture_probs"] = [[1.0, 0.0], [1.0, 0.0]]
    mapping["data"]["block_size"] = 24  # longer than the programmed-out component's context
    recipe = write_recipe(tmp_path / "recipe.yaml", mapping)
    assert main(["run", recipe]) == 0
    models = [row["model"] for row in json.loads((output / "results.json").read_text())]
    assert models == ["manticore", "neox-same-compute", "neox-same-steps"]


def test_dry_run_checks_data_paths(workspace, tmp_path, capsys):
    mapping = recipe_mapping(workspace, tmp_path / "run")
    mapping["data"]["task"]["source"] = "/path/to/task_train"
    recipe = write_recipe(tmp_path / "recipe.yaml", mapping)
    assert main(["run", recipe, "--dry-run"]) == 2
    assert "data.task.source '/path/to/task_train' not found" in capsys.readouterr().err


def test_retrain_without_weights_fails_before_output(workspace, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_mapping(workspace, tmp_path / "run", ["retrain"]))
    assert main(["retrain", recipe]) == 2
    assert "retrain needs mixture weights" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
