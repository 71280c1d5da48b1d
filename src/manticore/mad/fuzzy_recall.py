"""Fuzzy in-context recall: associative recall with multi-token keys and values.

Keys are tuples of 1 to ``k_motif_size`` distinct key tokens and values tuples of
1 to ``v_motif_size`` distinct value tokens. Test examples use keys of exactly
``k_motif_size`` tokens. One probe pair ``(k*, v*)`` is placed in the sequence and
queried again at the end; the sequence is left-padded to a fixed length.

Vocabulary, with ``base = (vocab_size - 1 if multi_query else vocab_size - 2) - noise_vocab_size``:
keys ``0 .. base//2 - 1``, values ``base//2 .. base - 1``, noise tokens
``base .. base + noise_vocab_size - 1``, pad token ``vocab_size - 1`` (multi-query)
or ``vocab_size - 2`` (single query), query prefix ``vocab_size - 1`` (single query).

Motifs are drawn directly as random distinct-token tuples, which has the same
distribution as the reference's uniform choice from a shuffled list of all
permutations but does not enumerate them (238,266 three-token keys at
vocab_size=128).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .common import (
    IGNORE_INDEX,
    Example,
    Sampler,
    check_at_least,
    check_noise,
    check_vocab_room,
    distinct_rows,
    invalid_setting,
)


@dataclass(frozen=True)
class FuzzyVocabulary:
    """Token ids of one fuzzy recall setting (stop ids are exclusive)."""

    num_keys: int
    num_values: int
    noise_stop: int
    pad: int
    prefix: int | None


def fuzzy_vocabulary(setting: dict) -> FuzzyVocabulary:
    """Return the key, value, noise, pad and prefix ids of a fuzzy recall setting."""
    vocab_size = setting["vocab_size"]
    multi_query = setting["multi_query"]
    base = (vocab_size - 1 if multi_query else vocab_size - 2) - setting["noise_vocab_size"]
    return FuzzyVocabulary(
        num_keys=base // 2,
        num_values=base - base // 2,
        noise_stop=base + setting["noise_vocab_size"],
        pad=vocab_size - 1 if multi_query else vocab_size - 2,
        prefix=None if multi_query else vocab_size - 1,
    )


def check_fuzzy_recall(task: str, setting: dict) -> None:
    """Raise ValueError for a fuzzy recall setting that cannot produce examples."""
    check_at_least(task, setting, "k_motif_size", 1, "a key needs at least one token")
    check_at_least(task, setting, "v_motif_size", 1, "a value needs at least one token")
    check_noise(task, setting)
    k_max, v_max = setting["k_motif_size"], setting["v_motif_size"]

    def vocabulary_for(vocab_size: int) -> FuzzyVocabulary:
        return fuzzy_vocabulary({**setting, "vocab_size": vocab_size})

    check_vocab_room(
        task, setting, lambda size: vocabulary_for(size).num_keys, k_max, "key tokens (a key has distinct tokens)"
    )
    check_vocab_room(
        task, setting, lambda size: vocabulary_for(size).num_values, v_max, "value tokens (a value has distinct tokens)"
    )
    minimum = 3 * (k_max + v_max)
    if setting["seq_len"] < minimum:
        raise invalid_setting(
            task, "seq_len", setting["seq_len"],
            f"it must hold the probe pair, the final query and one more pair of up to {k_max + v_max} tokens",
            f"Pass seq_len >= {minimum}",
        )


def fuzzy_recall_length(setting: dict) -> int:
    """Return the example length, which is seq_len."""
    return setting["seq_len"]


def build_fuzzy_sampler(setting: dict, is_training: bool, shared_rng: np.random.Generator) -> Sampler:
    """Return a sampler of fuzzy recall examples (``shared_rng`` is unused)."""
    return functools.partial(_sample_fuzzy, setting=setting, is_training=is_training)


@dataclass
class _StepDraws:
    """Random draws for up to ``len(key_sizes)`` steps of one sequence, made up front."""

    key_sizes: list[int]
    value_sizes: list[int]
    keys: list[list[int]]
    values: list[list[int]]
    is_noise: list[bool]
    noise: list[list[int]]


def _draw_steps(
    rng: np.random.Generator, setting: dict, vocabulary: FuzzyVocabulary, num_steps: int, is_training: bool
) -> _StepDraws:
    """Draw sizes, motifs and noise for ``num_steps`` steps at once (vectorised)."""
    k_max, v_max = setting["k_motif_size"], setting["v_motif_size"]
    if is_training:
        key_sizes = rng.integers(1, k_max + 1, size=num_steps)
    else:
        key_sizes = np.full(num_steps, k_max)
    value_sizes = rng.integers(1, v_max + 1, size=num_steps)
    keys = distinct_rows(rng, num_steps, vocabulary.num_keys, k_max)
    values = distinct_rows(rng, num_steps, vocabulary.num_values, v_max) + vocabulary.num_keys
    is_noise = [False] * num_steps
    noise: list[list[int]] = []
    if setting["frac_noise"] > 0:
        is_noise = (rng.random(num_steps) < setting["frac_noise"]).tolist()
        noise_start = vocabulary.num_keys + vocabulary.num_values
        noise = rng.integers(noise_start, vocabulary.noise_stop, size=(num_steps, k_max + v_max)).tolist()
    return _StepDraws(key_sizes.tolist(), value_sizes.tolist(), keys.tolist(), values.tolist(), is_noise, noise)


def _draw_probe(
    rng: np.random.Generator, setting: dict, vocabulary: FuzzyVocabulary, is_training: bool
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Draw the probe key (k_motif_size tokens at test time) and its value."""
    k_max, v_max = setting["k_motif_size"], setting["v_motif_size"]
    key_size = int(rng.integers(1, k_max + 1)) if is_training else k_max
    value_size = int(rng.integers(1, v_max + 1))
    key = distinct_rows(rng, 1, vocabulary.num_keys, key_size)[0]
    value = distinct_rows(rng, 1, vocabulary.num_values, value_size)[0] + vocabulary.num_keys
    return tuple(key.tolist()), tuple(value.tolist())


class _PairSequence:
    """Tokens and targets of one sequence of key-value pairs, built left to right."""

    def __init__(self, probe_key: tuple, probe_value: tuple, multi_query: bool) -> None:
        self.probe_key, self.probe_value = probe_key, probe_value
        self.multi_query = multi_query
        self.tokens: list[int] = []
        self.targets: list[int] = []
        self.value_of_key: dict[tuple, tuple] = {}
        self.probe_placed = False

    def add_probe(self) -> None:
        """Append the probe pair with ignored targets."""
        self.tokens += self.probe_key + self.probe_value
        self.targets += [IGNORE_INDEX] * (len(self.probe_key) + len(self.probe_value))
        self.value_of_key[self.probe_key] = self.probe_value
        self.probe_placed = True

    def add_noise(self, noise: list[int]) -> None:
        """Append noise tokens with ignored targets."""
        self.tokens += noise
        self.targets += [IGNORE_INDEX] * len(noise)

    def add_pair(self, key: tuple, new_value: tuple) -> None:
        """Append ``key`` and its value, scoring the value if multi_query is set and the key was shown.

        The value is the probe value for the probe key, the remembered value for a
        shown key, else ``new_value``.
        """
        key_seen = key in self.value_of_key
        if key == self.probe_key:
            value = self.probe_value
            self.probe_placed = True
        else:
            value = self.value_of_key[key] if key_seen else new_value
        self.value_of_key[key] = value
        self.tokens += key + value
        self.targets += [IGNORE_INDEX] * len(key)
        self.targets += list(value) if (key_seen and self.multi_query) else [IGNORE_INDEX] * len(value)


def _fill_pairs(draws: _StepDraws, sequence: _PairSequence, stop: int, probe_start: int) -> None:
    """Append steps to ``sequence`` until it reaches ``stop`` tokens.

    The probe pair goes in at the first step that starts at or after ``probe_start``,
    unless a drawn key equals the probe key before that.
    """
    for step in range(len(draws.key_sizes)):
        length = len(sequence.tokens)
        if length >= stop:
            break
        key_size, value_size = draws.key_sizes[step], draws.value_sizes[step]
        if not sequence.probe_placed and length >= probe_start:
            sequence.add_probe()
        elif draws.is_noise[step]:
            sequence.add_noise(draws.noise[step][: key_size + value_size])
        else:
            sequence.add_pair(tuple(draws.keys[step][:key_size]), tuple(draws.values[step][:value_size]))
    if not sequence.probe_placed:
        raise RuntimeError("fuzzy recall placed no probe pair, so the probe start bound is wrong")


def _sample_fuzzy(rng: np.random.Generator, setting: dict, is_training: bool) -> Example:
    """Draw one fuzzy recall example.

    Returns ``(inputs, targets)`` of length seq_len. Training targets are the inputs
    shifted by one. Test targets are IGNORE_INDEX except where the next token is a
    value token of a key shown before: repeated keys in multi-query mode, and the
    final query of the probe key.
    """
    vocabulary = fuzzy_vocabulary(setting)
    seq_len = setting["seq_len"]
    max_pair = setting["k_motif_size"] + setting["v_motif_size"]
    probe_key, probe_value = _draw_probe(rng, setting, vocabulary, is_training)
    stop = seq_len - len(probe_key) - len(probe_value) - max_pair
    # The reference draws the probe start in [0, seq_len - 2 * probe length). A start
    # past the last step, or one that a long step jumps over, leaves the final query
    # asking for an unseen key. Capping it at stop - max_pair guarantees that a step
    # starts in [probe_start, stop), because a step adds at most max_pair tokens.
    probe_start = int(rng.integers(0, stop - max_pair + 1))
    # Every step adds at least 2 tokens, so stop // 2 + 2 steps always reach stop.
    draws = _draw_steps(rng, setting, vocabulary, stop // 2 + 2, is_training)
    pairs = _PairSequence(probe_key, probe_value, setting["multi_query"])
    _fill_pairs(draws, pairs, stop, probe_start)
    sequence, targets = _add_query_and_pad(pairs, vocabulary, seq_len + 1)
    if is_training:
        return sequence[:-1], sequence[1:]
    return sequence[:-1], targets[1:]


def _add_query_and_pad(pairs: _PairSequence, vocabulary: FuzzyVocabulary, length: int) -> Example:
    """Append the final query ``[prefix,] k*, v*`` and left-pad to ``length`` tokens.

    Returns the token and target arrays of shape (length,). Only v* is scored in
    the query.
    """
    query = list(pairs.probe_key + pairs.probe_value)
    query_targets = [IGNORE_INDEX] * len(pairs.probe_key) + list(pairs.probe_value)
    if vocabulary.prefix is not None:
        query = [vocabulary.prefix, *query]
        query_targets = [IGNORE_INDEX, *query_targets]
    num_pad = length - len(pairs.tokens) - len(query)
    tokens = np.asarray([vocabulary.pad] * num_pad + pairs.tokens + query, dtype=np.int64)
    targets = np.asarray([IGNORE_INDEX] * num_pad + pairs.targets + query_targets, dtype=np.int64)
    return tokens, targets
