"""`manticore quickstart`: the whole method, offline, on Shakespeare.

1. Train a byte-level BPE tokenizer on the modern-spelling plays.
2. Pretrain a small GPT-NeoX and a small Mamba with the real `transformers`
   classes on the modern-spelling plays and save them as ordinary Hugging Face
   checkpoints (cached next to the output folder, so a second run skips this).
3. Align the hybrid on modern text, search and retrain on First Folio plays
   (a spelling shift), run the same-budget component baselines, and evaluate
   on held-out Folio plays that no stage trains or selects on.
4. Print the results table and the report's path.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, GPTNeoXConfig, MambaConfig

from .build import build_hybrid
from .recipe import Recipe, from_mapping
from .report import results_table, write_report
from .tasks.shakespeare import shakespeare_splits
from .tasks.text import pack_for_language_modeling
from .tasks.tokenizer import train_bpe_tokenizer
from .training.loop import LoopSettings, TrainingLoop
from .training.metrics import MetricsWriter
from .training.pipeline import Pipeline

logger = logging.getLogger(__name__)

VOCAB_SIZE = 4096
WIDTH = 128
DEPTH = 4
BLOCK_SIZE = 128
BATCH_SIZE = 16
PRETRAIN_STEPS = 300
STAGE_STEPS = {"align": 100, "search": 150, "retrain": 150, "baselines": 150}


def write_documents(dataset, directory: Path) -> Path:
    """Write one .txt file per document (the format `load_text_dataset` reads as a folder)."""
    directory.mkdir(parents=True, exist_ok=True)
    for row in dataset:
        (directory / f"{row['name']}.txt").write_text(row["text"])
    return directory


def component_configs(vocab_size: int) -> dict:
    return {
        "pythia-style": GPTNeoXConfig(
            vocab_size=vocab_size, hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=4,
            intermediate_size=4 * WIDTH, max_position_embeddings=1024, bos_token_id=0, eos_token_id=0,
        ),
        "mamba": MambaConfig(
            vocab_size=vocab_size, hidden_size=WIDTH, num_hidden_layers=DEPTH, state_size=16, use_mambapy=True,
            bos_token_id=0, eos_token_id=0, pad_token_id=1,
        ),
    }


def pretrain_component(name, config, tokenizer, blocks, directory: Path, steps: int, metrics) -> Path:
    """Pretrain one component from scratch and save it as a Hugging Face checkpoint."""
    if (directory / "config.json").exists():
        logger.info("reusing pretrained %s in %s", name, directory)
        return directory
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    # A one-component hybrid with a fixed weight of 1 is the component itself, run through
    # the same layer code (and Mamba kernel) as every later stage.
    wrapper = build_hybrid([model], tokenizer=tokenizer, projector="none", mixture="fixed", mixture_probs=[[1.0]])
    settings = LoopSettings(steps=steps, batch_size=BATCH_SIZE, learning_rate=2e-3, weight_decay=0.01,
                            warmup_steps=steps // 10, log_every=25, checkpoint_every=steps)
    staging = directory.with_name(directory.name + ".partial")
    TrainingLoop(wrapper, blocks, settings, staging, f"pretrain/{name}", metrics, wrapper.parameters()).run()
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(directory)
    return directory


def prepare_components(cache: Path, splits, scale: float) -> list[Path]:
    """Tokenizer and pretrained components, cached in `cache`."""
    cache.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = cache / "tokenizer"
    modern_texts = [row["text"] for row in splits.modern_train]
    tokenizer = train_bpe_tokenizer(modern_texts, vocab_size=VOCAB_SIZE, output_dir=tokenizer_dir)
    blocks = pack_for_language_modeling(splits.modern_train, tokenizer, BLOCK_SIZE).with_format("numpy")
    metrics = MetricsWriter(cache, tensorboard=False)
    steps = max(1, round(PRETRAIN_STEPS * scale))
    # Components pretrained at another scale must not be reused, so the cache folder names the step count.
    return [
        pretrain_component(name, config, tokenizer, blocks, cache / f"{name}-{steps}steps", steps, metrics)
        for name, config in component_configs(len(tokenizer)).items()
    ]


def quickstart_recipe(output_dir: Path, components: list[Path], data: dict[str, Path], scale: float) -> Recipe:
    stage = lambda name: {  # noqa: E731
        "steps": max(1, round(STAGE_STEPS[name] * scale)), "batch_size": BATCH_SIZE, "log_every": 10,
        "checkpoint_every": 50, "learning_rate": 1e-3 if name == "align" else 5e-4,
    }
    mapping = {
        "output_dir": str(output_dir),
        "stages": ["align", "search", "retrain", "baselines", "evaluate"],
        "hybrid": {"components": [str(c) for c in components], "n_blocks": 1},
        "data": {
            "align": {"source": str(data["modern"])},
            "task": {"source": str(data["folio_train"])},
            "validation": {"source": str(data["folio_validation"])},
            "test": {"source": str(data["folio_test"])},
            "block_size": BLOCK_SIZE,
        },
        "align": stage("align"),
        "search": {**stage("search"), "mixture_learning_rate": 0.05},
        "retrain": stage("retrain"),
        "baselines": stage("baselines"),
    }
    return from_mapping(Recipe, mapping).validate()


def run_quickstart(output_dir="runs/quickstart", overwrite=False, resume=False, scale: float = 1.0) -> Path:
    """Run the quickstart end to end; return the report's path."""
    started = time.perf_counter()
    output = Path(output_dir)
    cache = output.parent / ".quickstart-cache"
    splits = shakespeare_splits(seed=0)
    data = {
        "modern": write_documents(splits.modern_train, cache / "data" / "modern_train"),
        "folio_train": write_documents(splits.folio_train, cache / "data" / "folio_train"),
        "folio_validation": write_documents(splits.folio_validation, cache / "data" / "folio_validation"),
        "folio_test": write_documents(splits.folio_test, cache / "data" / "folio_test"),
    }
    components = prepare_components(cache, splits, scale)
    recipe = quickstart_recipe(output, components, data, scale)
    pipeline = Pipeline(recipe, overwrite=overwrite, resume=resume)
    pipeline.run()
    report = write_report(pipeline.output)
    rows = yaml.safe_load((pipeline.output / "results.json").read_text())
    print(results_table(rows))
    print(f"quickstart finished in {time.perf_counter() - started:.0f} s; report: {report}")
    return report
