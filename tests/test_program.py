"""Programming mixture weights from MAD results and from component metadata, and the recipe fragment."""

import json
import math

import numpy as np
import pytest
import yaml

from manticore.cli import main
from manticore.mad.program import (
    ProgrammedMixture,
    exclude_short_contexts,
    fragment_mapping,
    program_from_mad,
    program_from_metadata,
    reorder_components,
    set_arguments,
    write_fragment,
)
from manticore.recipe import load_recipe
from manticore.testing import save_component, tiny_model


def manticore_row(task, setting, accuracy, weights, learning_rate=1e-3, architecture="manticore-m2"):
    return {
        "protocol": "hand", "architecture": architecture, "task": task, "setting": setting,
        "optimizer": {"learning_rate": learning_rate, "weight_decay": 0.0, "mixture_learning_rate": 0.01},
        "accuracy": accuracy, "components": ["gpt-neo", "mamba"], "final_mixture_weights": weights,
    }


def hand_table():
    """Manticore M = 2 rows on two tasks, plus a GPT-Neo row without mixture weights.

    in-context-recall, setting L=64: the lr 1e-4 run wins (0.9 > 0.8), so its
    weights [[0.2, 0.8], [0.6, 0.4]] count. Setting L=128: [[0.4, 0.6], [0.2, 0.8]].
    Task mean: [[0.3, 0.7], [0.4, 0.6]].
    compression, one setting: [[0.5, 0.5], [0.0, 1.0]].
    Mean over both tasks: [[0.4, 0.6], [0.2, 0.8]].
    """
    return [
        manticore_row("in-context-recall", {"seq_len": 64}, 0.8, [[0.9, 0.1], [0.9, 0.1]]),
        manticore_row("in-context-recall", {"seq_len": 64}, 0.9, [[0.2, 0.8], [0.6, 0.4]], learning_rate=1e-4),
        manticore_row("in-context-recall", {"seq_len": 128}, 0.5, [[0.4, 0.6], [0.2, 0.8]]),
        manticore_row("compression", {"seq_len": 32}, 0.3, [[0.5, 0.5], [0.0, 1.0]]),
        {"protocol": "hand", "architecture": "gpt-neo", "task": "compression", "setting": {"seq_len": 32},
         "optimizer": {"learning_rate": 1e-3, "weight_decay": 0.0}, "accuracy": 0.6,
         "final_mixture_weights": None},
    ]


def test_mad_average_by_hand():
    mixture = program_from_mad(hand_table())

    np.testing.assert_allclose(mixture.probs, [[0.4, 0.6], [0.2, 0.8]])
    assert mixture.components == ["gpt-neo", "mamba"]
    assert mixture.n_blocks == 2


def test_mad_average_over_chosen_tasks():
    mixture = program_from_mad(hand_table(), tasks=["in-context-recall"])

    np.testing.assert_allclose(mixture.probs, [[0.3, 0.7], [0.4, 0.6]])
    assert "in-context-recall" in mixture.sources[0]


def test_mad_without_manticore_rows():
    rows = [row for row in hand_table() if row["architecture"] == "gpt-neo"]

    with pytest.raises(ValueError, match="no Manticore rows"):
        program_from_mad(rows)


def test_mad_mismatched_blocks():
    rows = hand_table() + [manticore_row("compression", {"seq_len": 32}, 0.4, [[0.5, 0.5]], architecture="manticore-m1")]

    with pytest.raises(ValueError, match=r"M = \[1, 2\].*--n-blocks"):
        program_from_mad(rows)
    np.testing.assert_allclose(program_from_mad(rows, n_blocks=1).probs, [[0.5, 0.5]])
    np.testing.assert_allclose(program_from_mad(rows, architecture="manticore-m2").probs, [[0.4, 0.6], [0.2, 0.8]])


def test_mad_task_without_rows():
    with pytest.raises(ValueError, match=r"no manticore-m2 rows for tasks \['memorization'\]"):
        program_from_mad(hand_table(), tasks=["memorization"])


def test_mad_unknown_selection():
    with pytest.raises(ValueError, match="n_blocks=3"):
        program_from_mad(hand_table(), n_blocks=3)


def test_reorder_components():
    mixture = reorder_components(program_from_mad(hand_table()), ["mamba", "gpt-neo"])

    np.testing.assert_allclose(mixture.probs, [[0.6, 0.4], [0.8, 0.2]])
    assert mixture.components == ["mamba", "gpt-neo"]
    with pytest.raises(ValueError, match="not a permutation"):
        reorder_components(mixture, ["mamba", "pythia"])


# Metadata


def test_exclusion_renormalises():
    probs = np.array([[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]])

    result = exclude_short_contexts(probs, ["a", "b", "c"], [512, math.inf, 2048], seq_len=1024)

    # Block 0 keeps b and c: 0.3 / 0.8 and 0.5 / 0.8. Block 1 keeps only b's 0.4, so b gets everything.
    np.testing.assert_allclose(result, [[0.0, 0.375, 0.625], [0.0, 1.0, 0.0]])


def test_exclusion_of_every_component():
    with pytest.raises(ValueError, match="every component has a maximum context shorter than seq_len=4096"):
        exclude_short_contexts(np.array([[0.5, 0.5]]), ["a", "b"], [1024, 2048], seq_len=4096)


@pytest.fixture(scope="module")
def saved_components(tmp_path_factory):
    """A GPT-NeoX component with a 128-token context and a Mamba component, saved as directories."""
    root = tmp_path_factory.mktemp("components")
    neox = save_component(tiny_model("gpt_neox", max_context=128), root / "neox")
    mamba = save_component(tiny_model("mamba"), root / "mamba")
    return str(neox), str(mamba)


def test_metadata_excludes_short_context(saved_components):
    mixture = program_from_metadata(saved_components, seq_len=256, n_blocks=2)

    np.testing.assert_allclose(mixture.probs, [[0.0, 1.0], [0.0, 1.0]])
    assert "unbounded" in mixture.sources[0]


def test_metadata_keeps_fitting_components(saved_components):
    mixture = program_from_metadata(saved_components, seq_len=128)

    np.testing.assert_allclose(mixture.probs, [[0.5, 0.5]])


def test_metadata_missing_component(tmp_path):
    with pytest.raises(ValueError, match="could not load the config"):
        program_from_metadata([str(tmp_path / "absent")], seq_len=16)


# Fragment


def test_fragment_contents(tmp_path):
    mixture = ProgrammedMixture(np.array([[0.25, 0.75]]), ["gpt-neo", "mamba"], ["hand"])

    path = write_fragment(tmp_path / "fragment.yaml", mixture)

    text = path.read_text()
    assert "Columns are the components gpt-neo, mamba" in text
    assert yaml.safe_load(text) == {
        "hybrid": {"n_blocks": 1, "mixture_probs": [[0.25, 0.75]]},
        "stages": ["align", "retrain", "baselines", "evaluate"],
    }


def test_fragment_applies_to_recipe(tmp_path):
    mixture = ProgrammedMixture(np.array([[0.4, 0.6], [0.2, 0.8]]), ["gpt-neo", "mamba"])
    recipe = {
        "hybrid": {"components": ["components/neox", "components/mamba"], "n_blocks": 1},
        "data": {"align": {"source": "a"}, "task": {"source": "t"}, "test": {"source": "e"}},
    }
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))

    loaded = load_recipe(recipe_path, set_arguments(mixture))

    assert loaded.hybrid.mixture_probs == fragment_mapping(mixture)["hybrid"]["mixture_probs"]
    assert loaded.hybrid.n_blocks == 2
    assert "search" not in loaded.stages


def test_cli_program_from_mad(tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(row) + "\n" for row in hand_table()))
    output = tmp_path / "fragment.yaml"

    status = main(["program", "--from-mad", str(tmp_path), "--tasks", "compression", "--output", str(output)])

    assert status == 0
    assert yaml.safe_load(output.read_text())["hybrid"]["mixture_probs"] == [[0.5, 0.5], [0.0, 1.0]]
    assert "--set 'hybrid.mixture_probs=[[0.5, 0.5], [0.0, 1.0]]'" in capsys.readouterr().out


def test_cli_program_from_metadata(tmp_path, saved_components):
    output = tmp_path / "fragment.yaml"

    status = main(["program", "--from-metadata", "--components", *saved_components, "--seq-len", "512",
                   "--output", str(output)])

    assert status == 0
    assert yaml.safe_load(output.read_text())["hybrid"]["mixture_probs"] == [[0.0, 1.0]]


def test_cli_program_from_mad_with_context_check(tmp_path, saved_components):
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(row) + "\n" for row in hand_table()))
    output = tmp_path / "fragment.yaml"

    status = main(["program", "--from-mad", str(results), "--components", *saved_components, "--seq-len", "512",
                   "--output", str(output)])

    assert status == 0
    assert yaml.safe_load(output.read_text())["hybrid"]["mixture_probs"] == [[0.0, 1.0], [0.0, 1.0]]


def test_cli_program_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()

    missing_results = main(["program", "--from-mad", str(empty), "--output", str(tmp_path / "f.yaml")])
    missing_length = main(["program", "--from-metadata", "--components", "a", "--output", str(tmp_path / "f.yaml")])

    errors = capsys.readouterr().err
    assert missing_results == 2
    assert missing_length == 2
    assert "no results in" in errors
    assert "--components and --seq-len go together" in errors
