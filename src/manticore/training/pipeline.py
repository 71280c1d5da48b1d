"""The stages of a run (align, search, retrain, baselines, sweep, evaluate) on the shared loop.

Outputs of a run in `recipe.output_dir`:
    recipe.yaml            the resolved recipe
    metrics.csv            every logged value, long format
    <stage>/done.json      a finished stage's summary; `--resume` skips it
    <stage>/checkpoint     the latest checkpoint of an unfinished stage
    align/model, retrain/model, baselines/<name>/model   save_pretrained directories
    search/mixture.json    the searched mixture weights
    sweep/landscape.json   validation loss at each fixed mixture weight
    results.json           the evaluation table
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from ..build import build_hybrid
from ..flops import component_forward_flops, hybrid_forward_flops
from ..mixture import MixtureWeights
from ..modeling import ManticoreForCausalLM, ManticoreForSequenceClassification
from ..recipe import Recipe
from ..tasks.text import load_text_dataset, pack_for_language_modeling, split_dataset
from .checkpoint import CHECKPOINT_DIR
from .classification import classifier_from, evaluate_classifier, load_classification_blocks
from .loop import LoopSettings, TrainingLoop, distributed_state, evaluate_language_model
from .metrics import MetricsWriter

logger = logging.getLogger(__name__)

SEARCH_MIXTURE_KIND = {"darts": "softmax", "gaea": "simplex", "gumbel": "gumbel"}

# Data splits that each stage trains or evaluates on. Bilevel search also needs "validation".
STAGE_SPLITS = {
    "align": ("align",),
    "search": ("train",),
    "retrain": ("train",),
    "baselines": ("train",),
    "sweep": ("train", "validation"),
    "evaluate": ("test",),
}


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_output_dir(output: Path, overwrite: bool, resume: bool, only_stages=None) -> None:
    """Raise if `output` contains an earlier run that neither `overwrite` nor `resume` allows touching.

    With `only_stages` (a single-stage command), the rest of an earlier run is the
    input of those stages, so only their own finished results count as a conflict.
    """
    if resume or overwrite or not output.exists() or not any(output.iterdir()):
        return
    if only_stages is None:
        raise FileExistsError(
            f"output folder {str(output)!r} already contains a run: pass --overwrite to replace it, "
            "--resume to continue it, or set output_dir to a new folder"
        )
    for stage in only_stages:
        if (output / stage).exists():
            raise FileExistsError(
                f"stage {stage!r} already ran in {str(output / stage)!r}: pass --overwrite to rerun only "
                "this stage, or --resume to continue it"
            )


def prepare_output_dir(recipe: Recipe, overwrite: bool, resume: bool, only_stages=None) -> Path:
    """Create the output folder; never replace an earlier run without `overwrite`.

    With `only_stages`, `overwrite` replaces those stages' folders and keeps the rest of the run.
    """
    output = Path(recipe.output_dir)
    check_output_dir(output, overwrite, resume, only_stages)
    if output.exists() and any(output.iterdir()) and not resume:
        doomed = [output / stage for stage in only_stages] if only_stages is not None else [output]
        for path in doomed:
            if path.exists():
                shutil.rmtree(path)
    output.mkdir(parents=True, exist_ok=True)
    (output / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return output


class Pipeline:
    """Run the stages a recipe lists, in order, resuming finished ones when asked.

    Nothing is written until `run` has loaded the data, so a recipe with a missing
    data source leaves no output folder that a corrected rerun would have to overwrite.
    Under `torchrun`, every process trains and only the main process writes files.
    """

    def __init__(self, recipe: Recipe, overwrite: bool = False, resume: bool = False, only_stages=None):
        self.recipe, self.overwrite, self.resume = recipe, overwrite, resume
        self.only_stages = list(only_stages) if only_stages is not None else None
        self.output = Path(recipe.output_dir)
        self.state = distributed_state()
        check_output_dir(self.output, overwrite, resume, self.only_stages)
        self.metrics: MetricsWriter | None = None  # created with the output folder by `run`
        self._data: dict = {}
        self._tokenizer = None
        self._max_contexts: dict = {}
        self.label_names: list[str] | None = None  # classification: the training split's labels

    # -- data ------------------------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            hybrid = self.initial_hybrid()
            self._tokenizer = hybrid.tokenizer
            self._max_contexts = dict(zip(hybrid.config.component_names, (a.max_context for a in hybrid.model.adapters)))
            if self._tokenizer is None:
                raise ValueError("no tokenizer found with the components: set hybrid.tokenizer in the recipe")
        return self._tokenizer

    def programmed_out(self) -> set[str]:
        """Components whose programmed mixture weight is 0 in every block."""
        probs = self.recipe.hybrid.mixture_probs
        if probs is None:
            return set()
        names = self.recipe.hybrid.components
        return {names[k] for k in range(len(names)) if all(row[k] == 0 for row in probs)}

    def check_block_size(self) -> None:
        """Raise if a component cannot take blocks of `data.block_size` tokens."""
        self.tokenizer  # loads the components' metadata
        block_size = self.recipe.data.block_size
        for name, max_context in self._max_contexts.items():
            if block_size > max_context and name not in self.programmed_out():
                raise ValueError(
                    f"data.block_size = {block_size} is longer than the maximum context of component {name!r} "
                    f"({max_context} tokens): set data.block_size to {max_context} or less"
                )

    def blocks(self, name: str):
        """Packed token blocks of split `name`: align, train, validation or test."""
        if name not in self._data:
            self._data[name] = self._load_blocks(name)
        return self._data[name]

    @property
    def is_classification(self) -> bool:
        return self.recipe.data.task_type == "classification"

    def _load_blocks(self, name):
        data = self.recipe.data
        if self.is_classification and name != "align":
            return self._load_classification_blocks(name)
        if name == "align":
            documents = load_text_dataset(data.align.source, text_field=data.align.text_field)
            field = data.align.text_field
        elif name == "test":
            documents = load_text_dataset(data.test.source, text_field=data.test.text_field)
            field = data.test.text_field
        elif data.validation is not None:
            source = data.task if name == "train" else data.validation
            documents, field = load_text_dataset(source.source, text_field=source.text_field), source.text_field
        else:
            task = load_text_dataset(data.task.source, text_field=data.task.text_field)
            splits = split_dataset(task, {"validation": data.validation_fraction, "train": None}, seed=self.recipe.seed)
            documents, field = splits[name], data.task.text_field
        blocks = pack_for_language_modeling(documents, self.tokenizer, data.block_size, text_field=field)
        return blocks.with_format("numpy")

    def _load_classification_blocks(self, name):
        """Padded (text, label) blocks; label ids follow the training split's labels."""
        data = self.recipe.data
        if name != "train" and self.label_names is None:
            self.blocks("train")
        split_by_fraction = data.validation is None and name in ("train", "validation")
        source = {"train": data.task, "validation": data.validation or data.task, "test": data.test}[name]
        blocks, names = load_classification_blocks(
            source.source, self.tokenizer, data.block_size, source.text_field, data.label_field,
            None if name == "train" and not split_by_fraction else self.label_names,
        )
        if name == "train" or (split_by_fraction and self.label_names is None):
            self.label_names = names
        if split_by_fraction:
            splits = split_dataset(blocks, {"validation": data.validation_fraction, "train": None}, seed=self.recipe.seed)
            blocks = splits[name].with_format("numpy")
        return blocks

    # -- models ----------------------------------------------------------

    def task_model(self, hybrid):
        """Return the hybrid for language modelling, or a classifier that shares its parts for classification."""
        if not self.is_classification:
            return hybrid
        self.blocks("train")  # sets label_names
        return classifier_from(hybrid, len(self.label_names), self.recipe.hybrid.pooling)

    def load_task_model(self, directory):
        model_class = ManticoreForSequenceClassification if self.is_classification else ManticoreForCausalLM
        return model_class.from_pretrained(directory)

    def evaluate_model(self, model, data) -> dict:
        if self.is_classification:
            return evaluate_classifier(model, data, self.recipe.evaluate_batch_size)
        return evaluate_language_model(model, data, self.recipe.evaluate_batch_size)

    @staticmethod
    def initial_hybrid_for(recipe: Recipe) -> ManticoreForCausalLM:
        h = recipe.hybrid
        # Programmed mixture weights stay fixed through alignment, so a component
        # programmed out (weight 0 in every block) never runs.
        mixture = {"mixture": "fixed", "mixture_probs": h.mixture_probs} if h.mixture_probs is not None else {}
        return build_hybrid(
            h.components, n_blocks=h.n_blocks, tokenizer=h.tokenizer, fresh_embeddings=h.fresh_embeddings,
            layer_splits=h.layer_splits, projector=h.projector, **mixture,
        )

    def initial_hybrid(self) -> ManticoreForCausalLM:
        return self.initial_hybrid_for(self.recipe)

    def aligned_hybrid(self) -> ManticoreForCausalLM:
        """Load the hybrid saved after alignment (the rewind point), or build an unaligned one if no alignment ran."""
        directory = self.output / "align" / "model"
        if directory.exists():
            return ManticoreForCausalLM.from_pretrained(directory)
        logger.warning("no aligned hybrid in %s; starting from unaligned projectors", directory)
        return self.initial_hybrid()

    # -- running ---------------------------------------------------------

    def run(self, stages=None) -> dict:
        """Run `stages` (default: the recipe's) in order. With `resume`, skip stages that have a done.json."""
        stages = list(stages or self.recipe.stages)
        pending = [stage for stage in stages if not (self.resume and (self.output / stage / "done.json").exists())]
        needs_weights = {"retrain", "baselines"} & set(pending)
        if needs_weights and "search" not in stages:
            self.searched_mixture()  # raises before any data loads when no weights exist
        self.load_data(pending)
        if self.metrics is None:
            if self.state.is_main_process:
                prepare_output_dir(self.recipe, self.overwrite, self.resume, self.only_stages)
            self.state.wait_for_everyone()
            self.metrics = MetricsWriter(self.output, tensorboard=self.state.is_main_process)
            if self.only_stages is not None and self.overwrite and self.state.is_main_process:
                for stage in self.only_stages:
                    self.metrics.drop_stage(stage)
        summaries = {}
        for stage in stages:
            done = self.output / stage / "done.json"
            if stage not in pending:
                logger.info("stage %s already finished; skipping", stage)
                summaries[stage] = json.loads(done.read_text())
                continue
            summary = getattr(self, f"stage_{stage}")()
            self._write_json(done, summary)
            self._remove_checkpoints(stage)
            self.state.wait_for_everyone()  # later stages read what this one wrote
            summaries[stage] = summary
        return summaries

    def _remove_checkpoints(self, stage: str) -> None:
        """Delete a finished stage's training checkpoints; its models and done.json remain."""
        if self.state.is_main_process:
            for checkpoint in sorted((self.output / stage).rglob(CHECKPOINT_DIR)):
                if checkpoint.is_dir():
                    shutil.rmtree(checkpoint)

    def _write_json(self, path: Path, value) -> None:
        if self.state.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value, indent=1))

    def _save_model(self, model, directory: Path) -> None:
        if self.state.is_main_process:
            model.save_pretrained(directory)

    def load_data(self, stages) -> None:
        """Load and pack every split that `stages` use.

        A missing source, one shorter than a block, or a block longer than a
        component's context then fails before any training starts.
        """
        self.check_block_size()
        for stage in stages:
            splits = list(STAGE_SPLITS[stage])
            if stage == "search" and self.recipe.search.mode == "bilevel":
                splits.append("validation")
            for split in splits:
                self.blocks(split)

    def _settings(self, section, **changes) -> LoopSettings:
        values = dict(
            steps=section.steps, batch_size=section.batch_size, learning_rate=section.learning_rate,
            weight_decay=section.weight_decay, warmup_steps=section.warmup_steps, log_every=section.log_every,
            checkpoint_every=section.checkpoint_every, seed=self.recipe.seed,
        )
        values.update(changes)
        return LoopSettings(**values)

    def _train(self, model, stage, settings, data, weights, mixture=(), mixture_kind="softmax", held_out=None):
        loop = TrainingLoop(
            model, data, settings, self.output / stage, stage, self.metrics, weights, mixture, mixture_kind, held_out
        )
        summary = loop.run(resume=self.resume)
        summary["peak_memory_mib"] = peak_memory_mib()
        return summary

    def stage_align(self) -> dict:
        """Train projectors (and fresh embeddings) with frozen components."""
        torch.manual_seed(self.recipe.seed)
        hybrid = self.initial_hybrid()
        section = self.recipe.align
        if hybrid.config.mixture == "fixed" and all(max(row) == 1.0 for row in hybrid.config.mixture_probs):
            # Every block passes one component straight through, so no projector runs.
            logger.info("alignment skipped: the programmed mixture weights are one-hot in every block")
            self._save_model(hybrid, self.output / "align" / "model")
            return {"skipped": "one-hot programmed mixture weights leave no projector to align"}
        freeze_components(hybrid)
        weights = [p for n, p in hybrid.named_parameters() if not n.startswith("model.mixture")]
        mixture = list(hybrid.model.mixture.parameters()) if section.train_mixture else []
        summary = self._train(hybrid, "align", self._settings(section), self.blocks("align"), weights, mixture)
        self._save_model(hybrid, self.output / "align" / "model")
        return summary

    def stage_search(self) -> dict:
        """Search mixture weights together with all other weights on the task's training split."""
        torch.manual_seed(self.recipe.seed)
        hybrid = self.task_model(self.aligned_hybrid())
        section = self.recipe.search
        kind = SEARCH_MIXTURE_KIND[section.method]
        probs = hybrid.mixture_weights()
        hybrid.model.mixture = MixtureWeights(*probs.shape, kind=kind, probs=probs)
        held_out = self.blocks("validation") if section.mode == "bilevel" else None
        settings = self._settings(section, search_mode=section.mode, mixture_learning_rate=section.mixture_learning_rate)
        weights = [p for n, p in hybrid.named_parameters() if not n.startswith("model.mixture")]
        summary = self._train(
            hybrid, "search", settings, self.blocks("train"), weights, hybrid.model.mixture.parameters(), kind, held_out
        )
        searched = hybrid.mixture_weights().tolist()
        self._write_json(self.output / "search" / "mixture.json", {"mixture_weights": searched})
        summary["mixture_weights"] = searched
        return summary

    def searched_mixture(self):
        path = self.output / "search" / "mixture.json"
        if path.exists():
            return json.loads(path.read_text())["mixture_weights"]
        if self.recipe.hybrid.mixture_probs is not None:
            return self.recipe.hybrid.mixture_probs
        raise ValueError("retrain needs mixture weights: run the search stage or set hybrid.mixture_probs")

    def stage_retrain(self) -> dict:
        """Rewind to the aligned hybrid, fix the searched mixture weights, fine-tune the rest."""
        torch.manual_seed(self.recipe.seed)
        hybrid = self.task_model(self.aligned_hybrid())
        hybrid.set_mixture_weights(self.searched_mixture())
        summary = self._train(hybrid, "retrain", self._settings(self.recipe.retrain), self.blocks("train"), hybrid.parameters())
        summary["mixture_weights"] = hybrid.mixture_weights().tolist()
        self._save_model(hybrid, self.output / "retrain" / "model")
        return summary

    def component_baseline(self, k: int) -> ManticoreForCausalLM:
        """Component k alone (with its own, possibly aligned, embeddings) as a one-component hybrid."""
        aligned = self.aligned_hybrid()
        component = aligned.model.components[k]
        options = {}
        if self.is_classification:
            self.blocks("train")  # sets label_names
            options = dict(task="classification", num_labels=len(self.label_names), pooling=self.recipe.hybrid.pooling)
        return build_hybrid([component], n_blocks=1, tokenizer=aligned.tokenizer, projector="none", mixture="fixed",
                            mixture_probs=[[1.0]], **options)

    def stage_baselines(self) -> dict:
        """Fine-tune each component alone: same steps and tokens, and (optionally) the same compute."""
        section = self.recipe.baselines
        context = self.recipe.data.block_size
        reference = self.aligned_hybrid()
        reference.set_mixture_weights(self.searched_mixture())
        hybrid_flops = hybrid_forward_flops(reference, context)
        summaries = {}
        names = [short_name(name) for name in reference.config.component_names]
        for k, name in enumerate(names):
            if reference.config.component_names[k] in self.programmed_out():
                logger.info("no baseline for %s: its programmed mixture weight is 0 in every block", name)
                continue
            if names.count(name) > 1:
                name = f"{k}-{name}"  # two components from folders of the same name
            budgets = {"same-steps": section.steps}
            if section.equal_compute:
                ratio = hybrid_flops / component_forward_flops(reference.model.components[k], context)
                budgets["same-compute"] = max(1, round(section.steps * ratio))
            for budget, steps in budgets.items():
                torch.manual_seed(self.recipe.seed)
                label = f"{name}-{budget}"
                model = self.component_baseline(k)
                summary = self._train(model, f"baselines/{label}", self._settings(section, steps=steps),
                                      self.blocks("train"), model.parameters())
                self._save_model(model, self.output / "baselines" / label / "model")
                summaries[label] = summary
        return summaries

    def sweep_grid(self, n_blocks: int) -> list[list[list[float]]]:
        """Fixed mixture weights (M, 2) on a grid of `sweep.points` values per block."""
        values = np.linspace(0.0, 1.0, self.recipe.sweep.points)
        if n_blocks == 1:
            return [[[1 - a, a]] for a in values]
        if n_blocks == 2:
            return [[[1 - a, a], [1 - b, b]] for a in values for b in values]
        raise ValueError(f"sweep supports 1 or 2 blocks, not n_blocks={n_blocks}: lower hybrid.n_blocks or drop the sweep stage")

    def stage_sweep(self) -> dict:
        """Fine-tune at each fixed mixture weight and record the validation loss (the landscape)."""
        reference = self.aligned_hybrid()
        if reference.config.n_components != 2:
            raise ValueError("the sweep needs exactly 2 components: drop the sweep stage or use two components")
        points = []
        for index, probs in enumerate(self.sweep_grid(reference.config.n_blocks)):
            torch.manual_seed(self.recipe.seed)
            hybrid = self.task_model(self.aligned_hybrid())
            hybrid.set_mixture_weights(probs)
            summary = self._train(hybrid, f"sweep/point{index}", self._settings(self.recipe.sweep), self.blocks("train"),
                                  hybrid.parameters())
            validation = self.evaluate_model(hybrid, self.blocks("validation"))
            point = {"mixture_weights": probs, "train_loss": summary["loss"], "validation_loss": validation["loss"]}
            if "accuracy" in validation:
                point["validation_accuracy"] = validation["accuracy"]
            points.append(point)
        self._write_json(self.output / "sweep" / "landscape.json", points)
        return {"points": len(points), "best": min(points, key=lambda p: p["validation_loss"])}

    def stage_evaluate(self) -> dict:
        """Test loss, perplexity (and accuracy for classification) of the retrained hybrid and every baseline, with their costs."""
        test = self.blocks("test")
        context = self.recipe.data.block_size
        rows = []
        candidates = [("manticore", self.output / "retrain" / "model")]
        candidates += sorted((p.name, p / "model") for p in (self.output / "baselines").glob("*") if (p / "model").exists())
        for name, directory in candidates:
            if not directory.exists():
                continue
            model = self.load_task_model(directory)
            result = self.evaluate_model(model, test)
            training = self._training_summary(name)
            if "accuracy" in result:
                rows.append({"model": name, "test_accuracy": result["accuracy"]})
            else:
                rows.append({"model": name})
            rows[-1].update({
                "test_loss": result["loss"],
                "test_perplexity": result["perplexity"],
                "parameters": sum(p.numel() for p in model.parameters()),
                "forward_flops_per_token": hybrid_forward_flops(model, context),
                "training_seconds": training.get("seconds"),
                "training_tokens": training.get("tokens"),
                "peak_memory_mib": training.get("peak_memory_mib"),
                "mixture_weights": model.mixture_weights().tolist(),
            })
        self._write_json(self.output / "results.json", rows)
        return {"rows": rows}

    def _training_summary(self, name: str) -> dict:
        if name == "manticore":
            path = self.output / "retrain" / "done.json"
            return json.loads(path.read_text()) if path.exists() else {}
        path = self.output / "baselines" / "done.json"
        return json.loads(path.read_text()).get(name, {}) if path.exists() else {}


def freeze_components(hybrid) -> None:
    """Freeze every component weight except fresh embeddings (and the heads tied to them)."""
    for k, component in enumerate(hybrid.model.components):
        fresh = hybrid.config.fresh_embeddings[k]
        embedding = component.get_input_embeddings().weight
        for parameter in component.parameters():
            parameter.requires_grad_(fresh and parameter is embedding)


def short_name(name: str) -> str:
    return Path(str(name).rstrip("/")).name or str(name)
