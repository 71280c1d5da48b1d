"""Classification tasks: (text, label) data as padded token blocks, the classifier model, accuracy."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from datasets import Dataset

from ..modeling import ManticoreForCausalLM, ManticoreForSequenceClassification
from ..tasks.text import load_classification_dataset


def load_classification_blocks(source: str, tokenizer, block_size: int, text_field: str, label_field: str,
                               label_names: list[str] | None = None) -> tuple[Dataset, list[str]]:
    """Tokenize (text, label) rows into right-padded blocks with `input_ids`, `attention_mask` and `labels`.

    Texts longer than `block_size` tokens keep their first `block_size` tokens.
    With `label_names` (the training split's), labels are mapped onto those ids.

    Raises:
        ValueError: a label that the training split does not have.
    """
    dataset, names = load_classification_dataset(source, text_field=text_field, label_field=label_field)
    labels = np.asarray(dataset[label_field])
    if label_names is not None:
        unknown = sorted(set(names) - set(label_names))
        if unknown:
            raise ValueError(
                f"labels {unknown} in '{source}' do not occur in the training data: "
                f"use the training labels {label_names}"
            )
        labels = np.asarray([label_names.index(names[i]) for i in labels])
        names = label_names
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = tokenizer(list(dataset[text_field]), add_special_tokens=False, truncation=True, max_length=block_size)
    input_ids = np.full((len(dataset), block_size), pad_id, dtype=np.int64)
    mask = np.zeros((len(dataset), block_size), dtype=np.int64)
    for row, ids in enumerate(encoded["input_ids"]):
        ids = ids or [pad_id]  # an empty text still gets one token to pool
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    blocks = Dataset.from_dict({"input_ids": input_ids, "attention_mask": mask, "labels": labels.astype(np.int64)})
    return blocks.with_format("numpy"), names


def classifier_from(hybrid: ManticoreForCausalLM, num_labels: int, pooling: str = "last") -> ManticoreForSequenceClassification:
    """Build a classifier that shares the hybrid's components, projectors and mixture weights, with a fresh head."""
    config = copy.deepcopy(hybrid.config)
    config.num_labels = num_labels
    config.pooling = pooling
    classifier = ManticoreForSequenceClassification(config, components=list(hybrid.model.components))
    classifier.model.load_state_dict(hybrid.model.state_dict())
    classifier.tokenizer = hybrid.tokenizer
    return classifier


@torch.no_grad()
def evaluate_classifier(model, data, batch_size: int = 8) -> dict:
    """Mean cross-entropy and accuracy over every row of `data`."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        rows = data[start : start + batch_size]
        batch = {name: torch.as_tensor(rows[name]) for name in ("input_ids", "attention_mask", "labels")}
        output = model(**batch)
        total_loss += output.loss.item() * len(batch["labels"])
        correct += int((output.logits.argmax(-1) == batch["labels"]).sum())
    if len(data) == 0:
        raise ValueError("evaluation data is empty: give the evaluation split at least one row")
    mean = total_loss / len(data)
    return {"loss": mean, "accuracy": correct / len(data), "perplexity": math.exp(min(mean, 50.0)), "rows": len(data)}
