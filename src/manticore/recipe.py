"""Run recipes: typed, validated configuration of a whole run, loaded from YAML.

Every error names the field, the value and the fix. The resolved recipe is
written next to the run's outputs so the run can be repeated.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

STAGES = ("align", "search", "retrain", "baselines", "sweep", "evaluate")


class RecipeError(ValueError):
    """A recipe field is missing, unknown, or of the wrong type or value."""


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads exponent floats without a dot (`2e-4`) as floats.

    PyYAML follows YAML 1.1, which reads `2e-4` as a string, while YAML 1.2 reads it as a float.
    """


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass
class HybridSection:
    components: list[str] = field(default_factory=list)
    n_blocks: int = 1
    projector: str = "linear"
    mixture_probs: list[list[float]] | None = None
    layer_splits: list[list[int]] | None = None
    pooling: str = "last"  # classification: "last" (last real token) or "mean"
    tokenizer: str | int | None = None  # a path, or the index of the component whose tokenizer to use
    fresh_embeddings: bool | str = False


@dataclass
class DataSource:
    source: str = ""
    text_field: str = "text"


@dataclass
class DataSection:
    align: DataSource | None = None
    task: DataSource | None = None
    validation: DataSource | None = None  # None: the first validation_fraction of task documents
    test: DataSource | None = None
    task_type: str = "language_modeling"  # or "classification", with (text, label) rows
    label_field: str = "label"
    block_size: int = 256
    validation_fraction: float = 0.1


@dataclass
class StageSection:
    steps: int = 100
    batch_size: int = 8
    learning_rate: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    log_every: int = 10
    checkpoint_every: int = 100


@dataclass
class AlignSection(StageSection):
    train_mixture: bool = False


@dataclass
class SearchSection(StageSection):
    method: str = "darts"  # darts | gaea | gumbel
    mode: str = "joint"  # joint | alternating | bilevel
    mixture_learning_rate: float = 0.05


@dataclass
class BaselinesSection(StageSection):
    equal_compute: bool = True


@dataclass
class SweepSection(StageSection):
    points: int = 11


@dataclass
class Recipe:
    output_dir: str = "runs/manticore"
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: ["align", "search", "retrain", "baselines", "evaluate"])
    hybrid: HybridSection = field(default_factory=HybridSection)
    data: DataSection = field(default_factory=DataSection)
    align: AlignSection = field(default_factory=AlignSection)
    search: SearchSection = field(default_factory=SearchSection)
    retrain: StageSection = field(default_factory=StageSection)
    baselines: BaselinesSection = field(default_factory=BaselinesSection)
    sweep: SweepSection = field(default_factory=SweepSection)
    evaluate_batch_size: int = 8

    def validate(self) -> "Recipe":
        """Check cross-field rules that single types cannot express."""
        _require(bool(self.hybrid.components), "hybrid.components", self.hybrid.components, "list at least one component")
        for stage in self.stages:
            _require(stage in STAGES, "stages", self.stages, f"replace {stage!r} with one of {', '.join(STAGES)}")
        _require(self.hybrid.n_blocks >= 1, "hybrid.n_blocks", self.hybrid.n_blocks, "use 1 or more")
        if self.hybrid.mixture_probs is not None:
            self._check_mixture_probs()
        _require(self.search.method in ("darts", "gaea", "gumbel"), "search.method", self.search.method, "use darts, gaea or gumbel")
        _require(self.search.mode in ("joint", "alternating", "bilevel"), "search.mode", self.search.mode,
                 "use joint, alternating or bilevel")
        _require(0 < self.data.validation_fraction < 1, "data.validation_fraction", self.data.validation_fraction,
                 "use a fraction between 0 and 1")
        _require(self.data.task_type in ("language_modeling", "classification"), "data.task_type", self.data.task_type,
                 "use language_modeling or classification")
        _require(self.hybrid.pooling in ("last", "mean"), "hybrid.pooling", self.hybrid.pooling, "use last or mean")
        _require(self.data.block_size >= 2, "data.block_size", self.data.block_size, "use 2 tokens or more")

        for name in ("align", "search", "retrain", "baselines", "sweep"):
            section = getattr(self, name)
            _require(section.steps >= 1, f"{name}.steps", section.steps, "use 1 or more")
            _require(section.batch_size >= 1, f"{name}.batch_size", section.batch_size, "use 1 or more")
            _require(section.log_every >= 1, f"{name}.log_every", section.log_every, "use 1 or more")
            _require(section.checkpoint_every >= 1, f"{name}.checkpoint_every", section.checkpoint_every, "use 1 or more")
            _require(section.warmup_steps >= 0, f"{name}.warmup_steps", section.warmup_steps, "use 0 or more")
        _require(self.sweep.points >= 2, "sweep.points", self.sweep.points, "use 2 or more grid points")

        for name in ("align", "task", "validation", "test"):
            source = getattr(self.data, name)
            if source is not None:
                _require(bool(source.source), f"data.{name}.source", source.source,
                         "give a file, a folder or a dataset name")

        needs_task = {"search", "retrain", "baselines", "sweep", "evaluate"} & set(self.stages)
        if needs_task:
            _require(self.data.task is not None, "data.task", None, f"give a task dataset for stages {sorted(needs_task)}")
        if "evaluate" in self.stages:
            _require(self.data.test is not None, "data.test", None, "give a held-out test dataset for the evaluate stage")
        if "align" in self.stages:
            _require(self.data.align is not None, "data.align", None, "give a general-text dataset for alignment")
        return self

    def _check_mixture_probs(self) -> None:
        probs = self.hybrid.mixture_probs
        shape = (self.hybrid.n_blocks, len(self.hybrid.components))
        rows_ok = len(probs) == shape[0] and all(len(row) == shape[1] for row in probs)
        _require(rows_ok, "hybrid.mixture_probs", probs,
                 f"give {shape[0]} rows (one per block) of {shape[1]} weights (one per component)")
        valid = all(min(row) >= 0 and abs(sum(row) - 1.0) <= 1e-4 for row in probs)
        _require(valid, "hybrid.mixture_probs", probs, "every row must be non-negative and sum to 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _require(condition: bool, name: str, value, fix: str) -> None:
    if not condition:
        raise RecipeError(f"recipe field {name} = {value!r} is invalid: {fix}")


def _convert(value, annotation, name: str):
    """Convert a YAML value to `annotation`, or raise naming the field."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, name)
            except RecipeError as error:
                errors.append(str(error))
        raise RecipeError(errors[0])
    if dataclasses.is_dataclass(annotation):
        return from_mapping(annotation, value, name)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"recipe field {name} = {value!r} has the wrong type: expected a list")
        (inner,) = typing.get_args(annotation)
        return [_convert(item, inner, f"{name}[{i}]") for i, item in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and not (isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))):
        raise RecipeError(f"recipe field {name} = {value!r} has the wrong type: expected {annotation.__name__}")
    return value


def from_mapping(cls, mapping, name: str = "recipe"):
    """Build dataclass `cls` from a mapping, rejecting unknown keys."""
    if not isinstance(mapping, dict):
        raise RecipeError(f"recipe field {name} = {mapping!r} has the wrong type: expected a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - known, key=str)
    if unknown:
        key = unknown[0]
        field_name = key if name == "recipe" else f"{name}.{key}"
        raise RecipeError(
            f"unknown recipe field {field_name} = {mapping[key]!r}: remove it or use one of {', '.join(sorted(known))}"
        )
    values = {key: _convert(value, hints[key], f"{name}.{key}" if name != "recipe" else key) for key, value in mapping.items()}
    return cls(**values)


def apply_overrides(mapping: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` strings (values parsed as YAML) to a nested mapping."""
    for override in overrides:
        key, separator, raw = override.partition("=")
        if not separator:
            raise RecipeError(f"override {override!r} is invalid: write it as key.subkey=value")
        *parents, leaf = key.split(".")
        if not all(parents) or not leaf:
            raise RecipeError(f"override {override!r} is invalid: write it as key.subkey=value")
        target = mapping
        for depth, parent in enumerate(parents):
            if target.get(parent) is None:  # a missing section, or an empty one such as `task:`
                target[parent] = {}
            target = target[parent]
            if not isinstance(target, dict):
                prefix = ".".join(parents[: depth + 1])
                raise RecipeError(
                    f"override {override!r} is invalid: recipe field {prefix} = {target!r} is not a section, "
                    "so it has no subfields to set"
                )
        target[leaf] = yaml.load(raw, Loader=RecipeLoader)
    return mapping


def load_recipe(path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a YAML recipe."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recipe {str(path)!r} not found: pass the path of a YAML recipe")
    try:
        mapping = yaml.load(path.read_text(), Loader=RecipeLoader) or {}
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe {str(path)!r} is not valid YAML: fix the syntax ({error})") from error
    if not isinstance(mapping, dict):
        raise RecipeError(f"recipe {str(path)!r} contains {mapping!r}, not a mapping: write the recipe as key: value pairs")
    return from_mapping(Recipe, apply_overrides(mapping, list(overrides))).validate()
