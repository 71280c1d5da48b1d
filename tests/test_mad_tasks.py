"""Tests of the MAD task generators: layouts, scored positions, seeds and leakage.

Expected token ranges and scored positions are written out from the task
definitions (the MAD reference code, github.com/athms/mad-lab), not read back from
the generators.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from manticore import mad

IGNORE = -100
RECALL_TASKS = ("in-context-recall", "noisy-in-context-recall")


def draw(task, num_examples, split="test", seed=0, **setting):
    """Generate a few examples; the training split size defaults to a small 8."""
    setting.setdefault("num_train_examples", max(8, num_examples))
    return mad.generate(task, num_examples, split, seed, **setting)


def recall_expected_targets(inputs, last_target, num_keys):
    """Rebuild multi-query test targets: a key seen before is scored with its value."""
    raw = np.append(inputs, last_target)
    expected = np.full(inputs.size, IGNORE)
    seen_keys = set()
    for position in range(0, raw.size, 2):
        key = raw[position]
        if key >= num_keys:
            continue
        if key in seen_keys:
            expected[position] = raw[position + 1]
        seen_keys.add(key)
    return expected


def fuzzy_pairs(raw, key_size, num_keys, pad):
    """Split a test sequence into (key, value, value start) after the leading pads."""
    position = int(np.argmax(raw != pad))
    pairs = []
    while position < raw.size:
        key = tuple(raw[position : position + key_size])
        position += key_size
        end = position
        while end < raw.size and raw[end] >= num_keys:
            end += 1
        pairs.append((key, tuple(raw[position:end]), position))
        position = end
    return pairs


# Registry and grid.


def test_task_names():
    assert list(mad.TASKS) == [
        "in-context-recall", "fuzzy-in-context-recall", "noisy-in-context-recall",
        "selective-copying", "compression", "memorization",
    ]


def test_grid_sizes():
    sizes = {task: len(mad.settings_grid(task)) for task in mad.TASKS}
    assert sizes == {
        "in-context-recall": 11, "fuzzy-in-context-recall": 11, "noisy-in-context-recall": 14,
        "selective-copying": 13, "compression": 11, "memorization": 6,
    }


@pytest.mark.parametrize("task", list(mad.TASKS))
def test_grid_changes_one_factor(task):
    baseline = mad.baseline_setting(task)
    grid = mad.settings_grid(task)
    assert grid[0] == baseline
    for setting in grid[1:]:
        changed = [key for key in baseline if setting[key] != baseline[key]]
        assert len(changed) == 1, setting


def test_baselines():
    assert mad.baseline_setting("noisy-in-context-recall") == {
        "vocab_size": 32, "seq_len": 128, "multi_query": True, "noise_vocab_size": 16,
        "frac_noise": 0.2, "num_train_examples": 12800,
    }
    fuzzy = mad.baseline_setting("fuzzy-in-context-recall")
    assert (fuzzy["k_motif_size"], fuzzy["v_motif_size"], fuzzy["multi_query"]) == (3, 3, True)
    copying = mad.baseline_setting("selective-copying")
    assert (copying["vocab_size"], copying["seq_len"], copying["num_tokens_to_copy"]) == (16, 256, 16)
    memorization = mad.baseline_setting("memorization")
    assert (memorization["vocab_size"], memorization["num_train_examples"]) == (256, 256)


def test_noisy_grid_vocab_sizes():
    values = [setting["vocab_size"] for setting in mad.settings_grid("noisy-in-context-recall")]
    assert sorted(set(values)) == [32, 48, 80, 144]


@pytest.mark.parametrize("task", list(mad.TASKS))
def test_grid_settings_generate(task):
    for setting in mad.settings_grid(task):
        expected_length = setting["seq_len"] - 1 if task in RECALL_TASKS else setting["seq_len"]
        small = {**setting, "num_train_examples": 4}
        for split in ("train", "test"):
            inputs, targets = mad.generate(task, 2, split, 0, **small)
            assert inputs.shape == (2, expected_length), (split, setting)
            assert targets.shape == (2, expected_length), (split, setting)
            assert inputs.dtype == np.int64
            assert inputs.max() < setting["vocab_size"]


# In-context recall and noisy recall.


def test_recall_multi_query_layout():
    inputs, _ = draw("in-context-recall", 20)
    assert inputs.shape == (20, 127)
    assert set(np.unique(inputs[:, 0::2])) <= set(range(0, 8))
    assert set(np.unique(inputs[:, 1::2])) <= set(range(8, 16))


def test_recall_value_map_fixed_per_sequence():
    inputs, targets = draw("in-context-recall", 20)
    for row, last in zip(inputs, targets[:, -1]):
        raw = np.append(row, last)
        pairs = set(zip(raw[0::2].tolist(), raw[1::2].tolist()))
        assert len(pairs) == len({key for key, _ in pairs})


def test_recall_train_targets_shifted():
    inputs, targets = draw("in-context-recall", 10, split="train")
    assert np.array_equal(targets[:, :-1], inputs[:, 1:])
    assert (targets != IGNORE).all()


def test_recall_test_scored_positions():
    inputs, targets = draw("in-context-recall", 30, seq_len=16)
    for row, target in zip(inputs, targets):
        expected = recall_expected_targets(row, target[-1], num_keys=8)
        assert np.array_equal(target, expected), (row, target)


def test_recall_final_query_scored():
    inputs, targets = draw("in-context-recall", 30, seq_len=16)
    assert (targets[:, -1] != IGNORE).all()
    assert (targets[:, -1] >= 8).all()


def test_recall_single_query_layout():
    inputs, targets = draw("in-context-recall", 20, seq_len=16, multi_query=False)
    assert inputs.shape == (20, 16)
    assert (inputs[:, 14] == 15).all()
    assert set(np.unique(inputs[:, 0:14:2])) <= set(range(0, 7))
    assert set(np.unique(inputs[:, 1:14:2])) <= set(range(7, 15))
    assert (targets[:, :-1] == IGNORE).all()
    assert set(np.unique(targets[:, -1])) <= set(range(7, 15))


def test_noisy_recall_layout():
    inputs, targets = draw("noisy-in-context-recall", 20)
    keys, values = inputs[:, 0:-1:2], inputs[:, 1::2]
    is_noise_slot = keys >= 16
    assert set(np.unique(keys[~is_noise_slot])) <= set(range(0, 8))
    assert set(np.unique(values[~is_noise_slot])) <= set(range(8, 16))
    assert set(np.unique(values[is_noise_slot])) <= set(range(16, 32))
    assert is_noise_slot.any()


def test_noisy_recall_scored_positions():
    inputs, targets = draw("noisy-in-context-recall", 30, seq_len=32, frac_noise=0.6)
    for row, target in zip(inputs, targets):
        expected = recall_expected_targets(row, target[-1], num_keys=8)
        assert np.array_equal(target, expected), (row, target)


def test_noisy_recall_trains_on_noise():
    inputs, targets = draw("noisy-in-context-recall", 10, split="train")
    assert np.array_equal(targets[:, :-1], inputs[:, 1:])


# Fuzzy in-context recall.


def test_fuzzy_baseline_layout():
    inputs, targets = draw("fuzzy-in-context-recall", 20)
    assert inputs.shape == (20, 128)
    assert (inputs[:, 0] == 15).all()
    body = inputs[inputs != 15]
    assert set(np.unique(body)) <= set(range(0, 15))
    assert set(np.unique(targets[targets != IGNORE])) <= set(range(7, 15))


def test_fuzzy_test_scored_positions():
    inputs, targets = draw("fuzzy-in-context-recall", 30)
    for row, target in zip(inputs, targets):
        raw = np.append(row, target[-1])
        expected = np.full(raw.size, IGNORE)
        seen_keys = set()
        for key, value, start in fuzzy_pairs(raw, key_size=3, num_keys=7, pad=15):
            assert len(key) == 3
            assert max(key) < 7
            if key in seen_keys:
                expected[start : start + len(value)] = value
            seen_keys.add(key)
        assert np.array_equal(target, expected[1:]), (row, target)


def test_fuzzy_final_query_answerable():
    inputs, targets = draw("fuzzy-in-context-recall", 50)
    for row, target in zip(inputs, targets):
        pairs = fuzzy_pairs(np.append(row, target[-1]), key_size=3, num_keys=7, pad=15)
        *earlier, (query_key, query_value, _) = pairs
        assert (query_key, query_value) in {(key, value) for key, value, _ in earlier}


def test_fuzzy_motifs_distinct_tokens():
    inputs, targets = draw("fuzzy-in-context-recall", 20)
    for row, target in zip(inputs, targets):
        for key, value, _ in fuzzy_pairs(np.append(row, target[-1]), 3, 7, 15):
            assert len(set(key)) == len(key)
            assert len(set(value)) == len(value)
            assert 1 <= len(value) <= 3


def test_fuzzy_train_targets_shifted():
    inputs, targets = draw("fuzzy-in-context-recall", 10, split="train")
    assert np.array_equal(targets[:, :-1], inputs[:, 1:])


def test_fuzzy_single_query_layout():
    # Pad 14, prefix 15; the prefix precedes a 3-token key and a 1- to 3-token value.
    inputs, targets = draw("fuzzy-in-context-recall", 20, multi_query=False)
    assert (inputs[:, 0] == 14).all()
    assert ((inputs == 15).sum(axis=1) == 1).all()
    for row, target in zip(inputs, targets):
        prefix = int(np.flatnonzero(row == 15)[0])
        assert 122 <= prefix <= 124
        assert (target[: prefix + 3] == IGNORE).all()
        assert (target[prefix + 3 :] != IGNORE).all()


def test_fuzzy_largest_vocab():
    inputs, targets = draw("fuzzy-in-context-recall", 50, vocab_size=128)
    assert inputs.shape == (50, 128)
    assert (inputs[:, 0] == 127).all()
    assert set(np.unique(targets[targets != IGNORE])) <= set(range(63, 127))
    for row, target in zip(inputs, targets):
        pairs = fuzzy_pairs(np.append(row, target[-1]), key_size=3, num_keys=63, pad=127)
        assert pairs[-1][:2] in {pair[:2] for pair in pairs[:-1]}


def test_fuzzy_longest_sequence():
    inputs, targets = draw("fuzzy-in-context-recall", 20, seq_len=1024)
    assert inputs.shape == (20, 1024)
    assert (targets[:, -1] != IGNORE).all()


# Selective copying, compression, memorization.


def test_copying_layout():
    inputs, targets = draw("selective-copying", 20, seq_len=16, num_tokens_to_copy=4)
    assert inputs.shape == (20, 16)
    assert (inputs[:, 11] == 15).all()
    assert (inputs[:, 12:] == 14).all()
    assert (inputs[:, 10] < 14).all()
    assert ((inputs[:, :11] < 14).sum(axis=1) == 4).all()
    assert (targets[:, :12] == IGNORE).all()


def test_copying_targets_in_order():
    inputs, targets = draw("selective-copying", 20, seq_len=16, num_tokens_to_copy=4)
    for row, target in zip(inputs, targets):
        content = row[:11][row[:11] < 14]
        assert np.array_equal(target[12:], content)


def test_compression_layout():
    inputs, targets = draw("compression", 20, seq_len=8)
    assert inputs.shape == (20, 8)
    assert (inputs[:, -1] == 15).all()
    assert inputs[:, :-1].max() <= 14
    assert np.array_equal(targets, inputs)


def test_compression_noise_ignored():
    inputs, targets = draw("compression", 20, noise_vocab_size=4, frac_noise=0.5)
    is_noise = (inputs >= 11) & (inputs <= 14)
    assert is_noise.any()
    assert (targets[is_noise] == IGNORE).all()
    assert np.array_equal(targets[~is_noise], inputs[~is_noise])


def test_memorization_layout():
    inputs, targets = draw("memorization", 20, vocab_size=16, seq_len=8)
    assert inputs.shape == (20, 8)
    assert (inputs[:, 1::2] == 15).all()
    assert inputs[:, 0::2].max() <= 6
    assert (targets[:, 0::2] == IGNORE).all()
    assert set(np.unique(targets[:, 1::2])) <= set(range(7, 15))


def test_memorization_map_shared():
    value_of_key = {}
    for split in ("train", "test"):
        inputs, targets = draw("memorization", 40, split=split, vocab_size=16, seq_len=8)
        for key, value in zip(inputs[:, 0::2].ravel(), targets[:, 1::2].ravel()):
            assert value_of_key.setdefault(key, value) == value
    assert len(set(value_of_key.values())) == len(value_of_key)
    assert len(value_of_key) == 7


def test_memorization_baseline_keys():
    inputs, targets = draw("memorization", 50)
    assert inputs[:, 0::2].max() <= 126
    assert targets[:, 1::2].min() >= 127
    assert targets[:, 1::2].max() <= 254


# Seeds, duplicates and leakage.


def test_same_seed_same_data():
    first = draw("in-context-recall", 5, seed=3)
    second = draw("in-context-recall", 5, seed=3)
    assert np.array_equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])


def test_seeds_differ():
    first, _ = draw("compression", 5, seed=1)
    second, _ = draw("compression", 5, seed=2)
    assert not np.array_equal(first, second)


def test_splits_differ():
    train, _ = draw("compression", 5, split="train", seed=1)
    test, _ = draw("compression", 5, split="test", seed=1)
    assert not np.array_equal(train[0], test[0])


def test_settings_differ():
    small, _ = draw("compression", 5, num_train_examples=800)
    large, _ = draw("compression", 5, num_train_examples=1600)
    assert not np.array_equal(small, large)


def test_prefix_stable():
    short, _ = draw("selective-copying", 3, split="train", num_train_examples=10)
    long, _ = draw("selective-copying", 10, split="train", num_train_examples=10)
    assert np.array_equal(short, long[:3])


def test_setting_spelling_irrelevant():
    first, _ = mad.generate("compression", 4, "train", 0, frac_noise=0, seq_len=32, num_train_examples=8)
    second, _ = mad.generate("compression", 4, "train", 0, num_train_examples=8, seq_len=32, frac_noise=0.0)
    assert np.array_equal(first, second)


def test_seed_ignores_hash_salt():
    code = (
        "from manticore import mad; import sys; "
        "x, _ = mad.generate('compression', 3, 'test', 5, num_train_examples=8); "
        "sys.stdout.write(x.tobytes().hex())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    inputs, _ = draw("compression", 3, seed=5)
    assert output.stdout == inputs.tobytes().hex()


def test_small_space_no_duplicates():
    # Two content tokens and 5 free positions: 32 distinct sequences in all.
    inputs, _ = draw("compression", 24, split="train", vocab_size=3, seq_len=6, num_train_examples=24)
    assert len({row.tobytes() for row in inputs}) == 24


def test_small_space_no_overlap():
    setting = {"vocab_size": 3, "seq_len": 6, "num_train_examples": 24}
    train, _ = mad.generate("compression", 24, "train", 0, **setting)
    test, _ = mad.generate("compression", 8, "test", 0, **setting)
    train_rows = {row.tobytes() for row in train}
    assert len({row.tobytes() for row in test}) == 8
    assert not train_rows & {row.tobytes() for row in test}


def test_space_too_small_raises():
    with pytest.raises(ValueError, match="compression.*too few distinct"):
        mad.generate("compression", 9, "train", 0, vocab_size=3, seq_len=4, num_train_examples=9)


def test_train_test_matches_generate():
    setting = {"seq_len": 16, "num_train_examples": 20}
    both = mad.generate_train_test("in-context-recall", 4, num_test_examples=6, **setting)
    train = mad.generate("in-context-recall", 20, "train", 4, **setting)
    test = mad.generate("in-context-recall", 6, "test", 4, **setting)
    assert np.array_equal(both["train"][0], train[0])
    assert np.array_equal(both["test"][0], test[0])
    assert np.array_equal(both["test"][1], test[1])


# Invalid requests.


@pytest.mark.parametrize(
    ("task", "setting", "message"),
    [
        ("in-context-recall", {"seq_len": 127}, "seq_len=127.*even"),
        ("memorization", {"seq_len": 31}, "seq_len=31.*even"),
        ("fuzzy-in-context-recall", {"vocab_size": 6}, "vocab_size=6.*key tokens"),
        ("fuzzy-in-context-recall", {"seq_len": 17}, "seq_len=17.*seq_len >= 18"),
        ("selective-copying", {"seq_len": 33}, "seq_len=33.*seq_len >= 34"),
        ("noisy-in-context-recall", {"frac_noise": 1.0}, "frac_noise=1.0"),
        ("in-context-recall", {"frac_noise": 0.2}, "noise_vocab_size=0"),
        ("in-context-recall", {"vocab_size": 1}, "vocab_size=1"),
        ("compression", {"multi_query": True}, "unknown setting key 'multi_query'"),
        ("compression", {"seq_len": 32.5}, "seq_len=32.5.*an integer"),
        ("fuzzy-in-context-recall", {"k_motif_size": 9}, "vocab_size=16.*vocab_size >= 19"),
        ("in-context-recall", {"multi_query": 1}, "multi_query=1.*True or False"),
        ("compression", {"num_train_examples": 0}, "num_train_examples=0"),
    ],
)
def test_invalid_setting_raises(task, setting, message):
    with pytest.raises(ValueError, match=message):
        mad.generate(task, 1, "train", 0, **setting)


def test_unknown_task_raises():
    with pytest.raises(ValueError, match="unknown MAD task 'recall'"):
        mad.generate("recall", 1, "train", 0)


def test_unknown_split_raises():
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        mad.generate("compression", 1, "valid", 0)


def test_train_request_too_large_raises():
    with pytest.raises(ValueError, match="exceeds num_train_examples=8"):
        mad.generate("compression", 9, "train", 0, num_train_examples=8)
