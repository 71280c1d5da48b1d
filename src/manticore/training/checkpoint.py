"""Atomic training checkpoints without pickle.

A checkpoint is a directory holding `model.safetensors` (the model's state),
`optimizers.safetensors` (every tensor of every optimizer and scheduler state,
keyed by its path in the nested state dict), and `state.json` (the step, the
non-tensor leaves of those states, and anything the loop adds). It is written
into a temporary sibling directory and renamed into place, so a crash leaves
either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"


def flatten_state(state, prefix: str = "") -> tuple[dict[str, torch.Tensor], object]:
    """Split a nested state into {path: tensor} and a JSON skeleton with tensor placeholders."""
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().cpu().contiguous()
        return tensors, {"__tensor__": prefix}
    if isinstance(state, dict):
        skeleton = {}
        for key, value in state.items():
            inner, skeleton[str(key)] = flatten_state(value, f"{prefix}/{key}")
            tensors.update(inner)
        return tensors, {"__dict__": skeleton, "__int_keys__": [k for k in state if isinstance(k, int)]}
    if isinstance(state, (list, tuple)):
        items = []
        for index, value in enumerate(state):
            inner, item = flatten_state(value, f"{prefix}/{index}")
            tensors.update(inner)
            items.append(item)
        return tensors, {"__list__": items}
    return tensors, state


def unflatten_state(skeleton, tensors: dict[str, torch.Tensor]):
    """Inverse of `flatten_state`."""
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        int_keys = {str(k) for k in skeleton["__int_keys__"]}
        return {
            (int(key) if key in int_keys else key): unflatten_state(value, tensors)
            for key, value in skeleton["__dict__"].items()
        }
    if isinstance(skeleton, dict) and "__list__" in skeleton:
        return [unflatten_state(item, tensors) for item in skeleton["__list__"]]
    return skeleton


def save_checkpoint(directory: Path, model, stateful: dict, extra: dict) -> Path:
    """Write a checkpoint atomically to `directory / CHECKPOINT_DIR`.

    Args:
        model: the (unwrapped) model; tied weights are stored once.
        stateful: named objects with `state_dict()` (optimizers, schedulers).
        extra: JSON-serialisable loop state (step, metrics).
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_DIR
    staging = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=directory))
    tensors, skeleton = flatten_state({name: obj.state_dict() for name, obj in stateful.items()})
    tensors["rng/torch"] = torch.get_rng_state()
    save_model(model, str(staging / "model.safetensors"))
    save_file(tensors, staging / "optimizers.safetensors")
    (staging / "state.json").write_text(json.dumps({"extra": extra, "stateful": skeleton}, indent=1))
    _replace_directory(staging, target)
    _remove_stale_staging(directory)
    logger.info("checkpoint at step %s written to %s", extra.get("step"), target)
    return target


def _remove_stale_staging(directory: Path) -> None:
    """Delete staging folders left behind by an interrupted save. Loading never reads them."""
    for stale in directory.glob(".checkpoint-*"):
        if stale.is_dir():
            logger.info("removing %s, left by an interrupted checkpoint save", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _replace_directory(staging: Path, target: Path) -> None:
    previous = target.with_name(target.name + ".previous")
    if previous.exists():
        shutil.rmtree(previous)
    if target.exists():
        os.replace(target, previous)
    os.replace(staging, target)
    if previous.exists():
        shutil.rmtree(previous)


def load_checkpoint(directory: Path, model, stateful: dict) -> dict:
    """Restore model, optimizers, schedulers and the torch RNG; return the loop state."""
    source = directory / CHECKPOINT_DIR
    if not (source / "state.json").exists():
        previous = source.with_name(source.name + ".previous")
        if (previous / "state.json").exists():
            source = previous  # a crash between the two renames of _replace_directory
        else:
            raise FileNotFoundError(f"no checkpoint in {directory}: run without --resume to start from scratch")
    state = json.loads((source / "state.json").read_text())
    load_model(model, str(source / "model.safetensors"), strict=True)
    tensors = load_file(source / "optimizers.safetensors")
    restored = unflatten_state(state["stateful"], tensors)
    for name, obj in stateful.items():
        obj.load_state_dict(restored[name])
    torch.set_rng_state(tensors["rng/torch"])
    return state["extra"]
