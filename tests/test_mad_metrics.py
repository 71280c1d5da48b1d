"""Tests of the MAD metrics on small cases with values computed by hand."""

import math

import numpy as np
import pytest
import torch

from manticore import mad

IGNORE = -100

# Skewed toy case: 8 scored positions, 6 of class 0. Class 1 is predicted as 3, a
# class that never occurs as a target; the ignored positions predict 1 and 5.
TARGETS = np.array([[0, 0, 0, 0, 0, 0, 1, 2, IGNORE, IGNORE]])
PREDICTIONS = np.array([[0, 0, 0, 0, 0, 0, 3, 2, 1, 5]])
MICRO = 7 / 8  # 6 correct of class 0, 1 of class 2
MACRO = (1 + 0 + 1 + 0) / 4  # recall of classes 0, 1, 2 and the predicted-only 3
MACRO_TARGET_CLASSES = (1 + 0 + 1) / 3  # classes 0, 1, 2


def one_hot_logits(predictions, vocab_size=6):
    return np.eye(vocab_size)[predictions] * 5.0


def test_micro_accuracy():
    assert mad.micro_accuracy(PREDICTIONS, TARGETS) == pytest.approx(MICRO)


def test_macro_accuracy():
    assert mad.macro_accuracy(PREDICTIONS, TARGETS) == pytest.approx(MACRO)


def test_macro_target_classes_only():
    value = mad.macro_accuracy(PREDICTIONS, TARGETS, include_predicted_classes=False)
    assert value == pytest.approx(MACRO_TARGET_CLASSES)


def test_accuracy_from_logits():
    logits = one_hot_logits(PREDICTIONS)
    assert mad.micro_accuracy(logits, TARGETS) == pytest.approx(MICRO)
    assert mad.macro_accuracy(logits, TARGETS) == pytest.approx(MACRO)


def test_accuracy_from_tensors():
    logits = torch.tensor(one_hot_logits(PREDICTIONS), dtype=torch.bfloat16)
    targets = torch.from_numpy(TARGETS)
    assert mad.micro_accuracy(logits, targets) == pytest.approx(MICRO)
    assert mad.macro_accuracy(logits, targets) == pytest.approx(MACRO)


def test_accuracy_counts_add():
    first = mad.accuracy_counts(PREDICTIONS[:, :5], TARGETS[:, :5])
    second = mad.accuracy_counts(PREDICTIONS[:, 5:], TARGETS[:, 5:])
    # Per batch the macro values are 1.0 and 0.5, whose mean 0.75 is not the split's value.
    assert first.macro() == pytest.approx(1.0)
    assert second.macro() == pytest.approx(0.5)
    assert (first + second).macro() == pytest.approx(MACRO)
    assert (first + second).micro() == pytest.approx(MICRO)


def test_accuracy_nothing_scored():
    targets = np.full((1, 3), IGNORE)
    assert math.isnan(mad.micro_accuracy(np.zeros((1, 3)), targets))
    assert math.isnan(mad.macro_accuracy(np.zeros((1, 3)), targets))


def test_accuracy_shape_mismatch_raises():
    with pytest.raises(ValueError, match="fits neither logits nor predicted ids"):
        mad.micro_accuracy(np.zeros((2, 3)), TARGETS)


def test_token_loss():
    # Scored: target 0 with probability 1/2 and target 1 with probability 1/4.
    probabilities = np.array([[[0.5, 0.25, 0.25], [0.25, 0.25, 0.5], [0.9, 0.05, 0.05]]])
    targets = np.array([[0, 1, IGNORE]])
    loss = mad.token_loss(np.log(probabilities), targets)
    assert loss.item() == pytest.approx(1.5 * math.log(2))


def test_token_loss_gradient():
    logits = torch.zeros((1, 3, 4), requires_grad=True)
    loss = mad.token_loss(logits, torch.tensor([[2, IGNORE, 0]]))
    loss.backward()
    assert loss.item() == pytest.approx(math.log(4))
    assert torch.all(logits.grad[0, 1] == 0)
    assert logits.grad[0, 0, 2].item() == pytest.approx((0.25 - 1) / 2)


def test_perplexity():
    probabilities = np.array([[[0.5, 0.5], [0.25, 0.75]]])
    targets = np.array([[0, 0]])
    assert mad.perplexity(np.log(probabilities), targets) == pytest.approx(2**1.5)


def test_token_loss_nothing_scored():
    assert math.isnan(mad.token_loss(np.zeros((1, 2, 3)), np.full((1, 2), IGNORE)).item())


def row(architecture, task, setting, optimizer, accuracy):
    return {"architecture": architecture, "task": task, "setting": setting,
            "optimizer": optimizer, "accuracy": accuracy}


def test_mad_scores():
    rows = [
        row("A", "in-context-recall", {"vocab_size": 16, "seq_len": 128}, "lr1e-4", 0.5),
        row("A", "in-context-recall", {"seq_len": 128, "vocab_size": 16}, "lr5e-4", 0.9),
        row("A", "in-context-recall", {"vocab_size": 32, "seq_len": 128}, "lr1e-4", 0.7),
        row("A", "in-context-recall", {"vocab_size": 32, "seq_len": 128}, "lr5e-4", float("nan")),
        row("A", "compression", {"seq_len": 32}, "lr1e-4", 0.3),
        row("A", "compression", {"seq_len": 32}, "lr5e-4", 0.2),
        row("B", "in-context-recall", {"vocab_size": 16, "seq_len": 128}, "lr1e-4", 0.4),
    ]
    scores = mad.mad_scores(rows)
    # A: recall = mean(0.9, 0.7) = 0.8, compression = 0.3, mean over tasks = 0.55.
    assert scores["A"]["tasks"] == pytest.approx({"in-context-recall": 0.8, "compression": 0.3})
    assert scores["A"]["mean"] == pytest.approx(0.55)
    assert scores["B"]["mean"] == pytest.approx(0.4)


def test_mad_scores_missing_key_raises():
    with pytest.raises(ValueError, match="lacks keys \\['optimizer'\\]"):
        mad.mad_scores([{"architecture": "A", "task": "compression", "setting": 1, "accuracy": 0.5}])
