"""MAD protocol: smoke runs, resuming, protocol checks, the score table and the report."""

import dataclasses
import json
import math

import pytest
import torch

from manticore.cli import main
from manticore.mad import protocol as protocol_module
from manticore.mad import settings_grid
from manticore.mad.protocol import PROTOCOLS, evaluate, get_protocol, run_suite
from manticore.mad.registry import TASKS
from manticore.mad.results import read_rows, score_table, task_mixture_weights, write_report

SMOKE = PROTOCOLS["smoke"]


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    """Results folder of a smoke run: GPT-Neo and Manticore (M = 1) on all six tasks."""
    output = tmp_path_factory.mktemp("smoke")
    rows = run_suite(["gpt-neo", "manticore-m1"], list(TASKS), "smoke", output)
    return output, rows


def test_smoke_writes_one_row_per_run(smoke_results):
    output, rows = smoke_results

    stored = read_rows(output)

    assert len(rows) == 12
    assert stored == rows
    assert {(row["architecture"], row["task"]) for row in rows} == {
        (architecture, task) for architecture in ("gpt-neo", "manticore-m1") for task in TASKS
    }


def test_smoke_rows_record_protocol_and_metrics(smoke_results):
    output, rows = smoke_results

    for row in rows:
        assert row["protocol"] == "smoke"
        for key in ("accuracy", "micro_accuracy", "macro_accuracy"):
            assert 0.0 <= row[key] <= 1.0, (key, row)
        assert math.isfinite(row["loss"])
        assert row["loss"] > 0
        assert row["accuracy"] == row["macro_accuracy"]
        assert row["epochs_run"] == 1
    assert json.loads((output / "protocol.json").read_text())["name"] == "smoke"


def test_smoke_manticore_rows_have_mixture_weights(smoke_results):
    _, rows = smoke_results

    for row in rows:
        if row["architecture"] == "manticore-m1":
            assert row["components"] == ["gpt-neo", "mamba"]
            assert row["optimizer"]["mixture_learning_rate"] == 0.1
            assert len(row["final_mixture_weights"]) == 1
            assert sum(row["final_mixture_weights"][0]) == pytest.approx(1.0, abs=1e-5)
            assert row["final_mixture_weights"][0] != [0.5, 0.5]  # the mixture weights trained
        else:
            assert row["mixture_weights"] is None
            assert row["final_mixture_weights"] is None


def test_resume_skips_finished_rows(smoke_results, tmp_path):
    output, rows = smoke_results
    copy = tmp_path / "copy"
    copy.mkdir()
    lines = (output / "results.jsonl").read_text().splitlines()
    (copy / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # the last run did not finish

    again = run_suite(["gpt-neo", "manticore-m1"], list(TASKS), "smoke", copy)

    assert [(row["architecture"], row["task"]) for row in again] == [(rows[-1]["architecture"], rows[-1]["task"])]
    assert len(read_rows(copy)) == 12


def test_resume_rejects_other_protocol(smoke_results):
    output, _ = smoke_results

    with pytest.raises(ValueError, match="contains results of protocol 'smoke', not 'reduced'"):
        run_suite(["gpt-neo"], ["compression"], "reduced", output)


def test_unknown_protocol_lists_valid_ones():
    with pytest.raises(ValueError, match="Valid protocols: full, reduced, smoke"):
        get_protocol("tiny")


def test_full_protocol_covers_benchmark():
    full = get_protocol("full")

    num_settings = sum(len(full.settings(task)) for task in TASKS)

    assert num_settings == 66
    assert full.settings("memorization") == settings_grid("memorization")
    assert len(full.optimizer_grid()) == 6
    assert full.epochs_for("compression") == 200
    assert full.checkpoint == "lowest-test-loss"


def test_reduced_protocol_shortens_settings():
    reduced = get_protocol("reduced")

    settings = {task: reduced.settings(task) for task in TASKS}

    assert all(len(chosen) == 1 for chosen in settings.values())
    assert settings["in-context-recall"][0]["seq_len"] == 64
    assert settings["selective-copying"][0]["num_tokens_to_copy"] == 8
    assert settings["memorization"][0] == settings_grid("memorization")[0]
    assert reduced.epochs_for("memorization") == 48


def test_early_stop_at_threshold(tmp_path):
    always_stop = dataclasses.replace(SMOKE, name="smoke-stop", epochs=3, early_stop_accuracy=0.0)

    (row,) = run_suite(["gpt-neo"], ["compression"], always_stop, tmp_path)

    assert row["epochs_run"] == 1
    assert row["stopped_early"] is True


def test_lowest_test_loss_checkpoint(tmp_path):
    best_epoch = dataclasses.replace(SMOKE, name="smoke-best", epochs=3, checkpoint="lowest-test-loss")

    (row,) = run_suite(["gpt-neo"], ["compression"], best_epoch, tmp_path)

    losses = [epoch["test_loss"] for epoch in row["history"]]
    assert row["epochs_run"] == 3
    assert row["selected_epoch"] == losses.index(min(losses)) + 1
    assert row["loss"] == pytest.approx(min(losses), rel=1e-5)


def test_diverged_run_records_null_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(protocol_module, "token_loss", lambda logits, targets: logits.sum() * math.nan)

    (row,) = run_suite(["gpt-neo"], ["compression"], SMOKE, tmp_path)

    assert row["diverged"] is True
    assert row["accuracy"] is None
    assert row["loss"] is None
    assert "gpt-neo" not in score_table(read_rows(tmp_path))


class StoredLogits(torch.nn.Module):
    """A model whose input is a row index into stored logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids):
        return self.logits[input_ids[:, 0]]


def test_evaluate_counts_whole_split():
    # Targets 0, 1, 1, 1 with predictions 0, 0, 1, 1: micro 3/4, macro (1 + 2/3) / 2.
    logits = torch.tensor([[[5.0, 0.0]], [[5.0, 0.0]], [[0.0, 5.0]], [[0.0, 5.0]]])
    targets = torch.tensor([[0], [1], [1], [1]])

    result = evaluate(StoredLogits(logits), torch.arange(4)[:, None], targets, batch_size=2)

    assert result["micro_accuracy"] == pytest.approx(0.75)
    assert result["macro_accuracy"] == pytest.approx((1 + 2 / 3) / 2)


def hand_rows():
    """Two architectures; the best of two optimiser settings counts per setting."""
    def row(architecture, task, setting, learning_rate, accuracy):
        return {"protocol": "hand", "architecture": architecture, "task": task, "setting": setting,
                "optimizer": {"learning_rate": learning_rate, "weight_decay": 0.0}, "accuracy": accuracy}

    return [
        row("a", "in-context-recall", {"seq_len": 64}, 1e-3, 0.5),
        row("a", "in-context-recall", {"seq_len": 64}, 1e-4, 0.7),
        row("a", "in-context-recall", {"seq_len": 128}, 1e-3, 0.3),
        row("a", "compression", {"seq_len": 32}, 1e-3, 0.2),
        row("b", "compression", {"seq_len": 32}, 1e-3, 0.4),
    ]


def test_score_table_by_hand():
    table = score_table(hand_rows())

    lines = table.splitlines()
    assert lines[0] == "| architecture | in-context-recall | compression | mean |"
    # a: recall (0.7 + 0.3) / 2 = 0.5, compression 0.2, mean 0.35
    assert lines[2] == "| a | 0.500 | 0.200 | 0.350 |"
    assert lines[3] == "| b | - | 0.400 | 0.400 |"


def test_report_writes_table_and_figures(smoke_results):
    output, _ = smoke_results

    table, figures = write_report(output)

    assert table.startswith("Protocol: smoke")
    assert "| gpt-neo |" in table
    assert "| manticore-m1 |" in table
    assert [figure.name for figure in figures] == ["task_accuracy.png", "mixture_weights.png"]
    assert all(figure.stat().st_size > 0 for figure in figures)
    assert (output / "scores.md").read_text().strip() == table


def test_task_mixture_weights_per_task(smoke_results):
    _, rows = smoke_results

    weights = task_mixture_weights(rows)

    assert list(weights) == ["manticore-m1"]
    assert set(weights["manticore-m1"]) == set(TASKS)
    assert weights["manticore-m1"]["compression"].shape == (1, 2)


def test_cli_mad_run_and_report(tmp_path, capsys):
    output = tmp_path / "cli"

    status = main(["mad", "run", "--protocol", "smoke", "--architectures", "striped-hyena", "--tasks",
                   "selective-copying", "--output", str(output), "--threads", "1"])
    report_status = main(["mad", "report", str(output)])

    printed = capsys.readouterr().out
    assert status == 0
    assert report_status == 0
    assert "1 new runs written" in printed
    assert "| striped-hyena |" in printed
    assert (output / "task_accuracy.png").exists()


def test_cli_report_without_results(tmp_path, capsys):
    status = main(["mad", "report", str(tmp_path)])

    assert status == 2
    assert "no MAD results" in capsys.readouterr().err
