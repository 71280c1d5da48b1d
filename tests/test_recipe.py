"""Recipes: loading YAML, `--set` overrides, validation errors, and the shipped recipes."""

from pathlib import Path

import pytest
import yaml

from manticore.recipe import Recipe, RecipeError, apply_overrides, from_mapping, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def valid_mapping() -> dict:
    return {
        "output_dir": "runs/test",
        "stages": ["align", "search", "retrain", "evaluate"],
        "hybrid": {"components": ["components/neox", "components/llama"], "n_blocks": 2},
        "data": {
            "align": {"source": "data/align"},
            "task": {"source": "data/task.jsonl", "text_field": "body"},
            "test": {"source": "data/test"},
            "block_size": 64,
        },
        "search": {"steps": 20, "mode": "alternating", "mixture_learning_rate": 0.1},
    }


def write_recipe(tmp_path, mapping, name="recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(mapping))
    return path


def check_error(mapping, *fragments) -> str:
    """Build the recipe, expect a RecipeError, and check its message names every fragment."""
    with pytest.raises(RecipeError) as caught:
        from_mapping(Recipe, mapping).validate()
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"
    return message


# Loading


def test_valid_yaml_loads(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, valid_mapping()))
    assert recipe.hybrid.components == ["components/neox", "components/llama"]
    assert recipe.hybrid.n_blocks == 2
    assert recipe.data.task.source == "data/task.jsonl"
    assert recipe.data.task.text_field == "body"
    assert recipe.data.block_size == 64
    assert recipe.search.steps == 20
    assert recipe.search.mode == "alternating"
    assert recipe.search.mixture_learning_rate == 0.1
    assert recipe.retrain.steps == 100  # default


def test_exponent_floats_without_dot(tmp_path):
    # PyYAML's YAML 1.1 rules alone read 2e-4 as a string.
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(valid_mapping()) + "retrain:\n  learning_rate: 2e-4\n  weight_decay: 1E-2\n")
    recipe = load_recipe(path)
    assert recipe.retrain.learning_rate == pytest.approx(2e-4)
    assert recipe.retrain.weight_decay == pytest.approx(0.01)


def test_integer_for_float_field():
    mapping = valid_mapping()
    mapping["search"]["learning_rate"] = 1
    recipe = from_mapping(Recipe, mapping).validate()
    assert recipe.search.learning_rate == 1.0
    assert isinstance(recipe.search.learning_rate, float)


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, valid_mapping()))
    reloaded = load_recipe(write_recipe(tmp_path, recipe.to_dict(), "resolved.yaml"))
    assert reloaded == recipe


def test_missing_recipe_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(FileNotFoundError) as caught:
        load_recipe(path)
    assert str(path) in str(caught.value)


def test_invalid_yaml_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("hybrid: [unclosed\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert str(path) in str(caught.value)


def test_top_level_list_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- align\n- search\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(path)


# Overrides


def test_overrides_change_nested_fields(tmp_path):
    recipe = load_recipe(
        write_recipe(tmp_path, valid_mapping()),
        ["search.steps=50", "search.mode=bilevel", "hybrid.n_blocks=1", "retrain.learning_rate=5e-5",
         "stages=[search, retrain]", "data.validation_fraction=0.25"],
    )
    assert recipe.search.steps == 50
    assert recipe.search.mode == "bilevel"
    assert recipe.hybrid.n_blocks == 1
    assert recipe.retrain.learning_rate == pytest.approx(5e-5)
    assert recipe.stages == ["search", "retrain"]
    assert recipe.data.validation_fraction == 0.25


def test_override_values_parsed_as_yaml():
    mapping = apply_overrides({}, ["a.b=3", "a.c=true", "a.d=[1, 2]", "e=text", "f=null", "g=2e-4"])
    assert mapping == {"a": {"b": 3, "c": True, "d": [1, 2]}, "e": "text", "f": None, "g": 2e-4}


def test_override_creates_missing_sections():
    mapping = apply_overrides({"data": {"task": None}}, ["data.task.source=texts/", "baselines.steps=7"])
    assert mapping["data"]["task"] == {"source": "texts/"}
    assert mapping["baselines"] == {"steps": 7}


def test_override_without_equals_sign():
    with pytest.raises(RecipeError, match="search.steps"):
        apply_overrides({}, ["search.steps"])


def test_override_empty_key_part():
    with pytest.raises(RecipeError, match="key.subkey=value"):
        apply_overrides({}, ["search..steps=3"])


def test_override_into_scalar_field():
    with pytest.raises(RecipeError) as caught:
        apply_overrides({"seed": 3}, ["seed.value=1"])
    assert "seed = 3" in str(caught.value)
    assert "not a section" in str(caught.value)


def test_override_invalid_value(tmp_path):
    with pytest.raises(RecipeError) as caught:
        load_recipe(write_recipe(tmp_path, valid_mapping()), ["search.steps=many"])
    assert "search.steps = 'many'" in str(caught.value)


# Errors: each names the field, the value and the fix


def test_unknown_top_level_field():
    mapping = valid_mapping()
    mapping["epochs"] = 3
    check_error(mapping, "unknown recipe field epochs = 3", "remove it", "search")


def test_unknown_nested_field():
    mapping = valid_mapping()
    mapping["search"]["lr"] = 0.1
    check_error(mapping, "unknown recipe field search.lr = 0.1", "learning_rate", "mixture_learning_rate")


def test_unknown_field_in_data_source():
    mapping = valid_mapping()
    mapping["data"]["task"]["path"] = "x"
    check_error(mapping, "unknown recipe field data.task.path = 'x'", "source", "text_field")


def test_string_for_int():
    mapping = valid_mapping()
    mapping["search"]["steps"] = "20"
    check_error(mapping, "search.steps = '20'", "wrong type", "expected int")


def test_bool_for_int():
    mapping = valid_mapping()
    mapping["hybrid"]["n_blocks"] = True
    check_error(mapping, "hybrid.n_blocks = True", "expected int")


def test_float_for_int():
    mapping = valid_mapping()
    mapping["data"]["block_size"] = 64.5
    check_error(mapping, "data.block_size = 64.5", "expected int")


def test_string_where_list_expected():
    mapping = valid_mapping()
    mapping["hybrid"]["components"] = "components/neox"
    check_error(mapping, "hybrid.components = 'components/neox'", "expected a list")


def test_wrong_type_inside_list():
    mapping = valid_mapping()
    mapping["stages"] = ["align", 3]
    check_error(mapping, "stages[1] = 3", "expected str")


def test_scalar_where_section_expected():
    mapping = valid_mapping()
    mapping["search"] = 5
    check_error(mapping, "search = 5", "expected a mapping")


def test_invalid_search_method():
    mapping = valid_mapping()
    mapping["search"]["method"] = "random"
    check_error(mapping, "search.method = 'random'", "darts, gaea or gumbel")


def test_invalid_search_mode():
    mapping = valid_mapping()
    mapping["search"]["mode"] = "sequential"
    check_error(mapping, "search.mode = 'sequential'", "joint, alternating or bilevel")


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1])
def test_invalid_validation_fraction(fraction):
    mapping = valid_mapping()
    mapping["data"]["validation_fraction"] = fraction
    check_error(mapping, f"data.validation_fraction = {float(fraction)!r}", "between 0 and 1")


@pytest.mark.parametrize("section", ["align", "search", "retrain", "baselines", "sweep"])
def test_zero_steps(section):
    mapping = valid_mapping()
    mapping.setdefault(section, {})["steps"] = 0
    check_error(mapping, f"{section}.steps = 0", "1 or more")


@pytest.mark.parametrize("field", ["batch_size", "log_every", "checkpoint_every"])
def test_zero_loop_counts(field):
    mapping = valid_mapping()
    mapping["retrain"] = {field: 0}
    check_error(mapping, f"retrain.{field} = 0", "1 or more")


def test_negative_warmup():
    mapping = valid_mapping()
    mapping["align"] = {"warmup_steps": -1}
    check_error(mapping, "align.warmup_steps = -1", "0 or more")


def test_sweep_needs_two_points():
    mapping = valid_mapping()
    mapping["sweep"] = {"points": 1}
    check_error(mapping, "sweep.points = 1", "2 or more")


def test_empty_components():
    mapping = valid_mapping()
    mapping["hybrid"]["components"] = []
    check_error(mapping, "hybrid.components = []", "at least one component")


def test_unknown_stage():
    mapping = valid_mapping()
    mapping["stages"] = ["align", "serch"]
    check_error(mapping, "stages = ['align', 'serch']", "replace 'serch'", "retrain")


def test_empty_data_source():
    mapping = valid_mapping()
    mapping["data"]["test"] = {"source": ""}
    check_error(mapping, "data.test.source = ''", "file, a folder or a dataset name")


@pytest.mark.parametrize("stage", ["search", "retrain", "baselines", "sweep", "evaluate"])
def test_task_stage_without_task_data(stage):
    mapping = valid_mapping()
    mapping["stages"] = [stage]
    del mapping["data"]["task"]
    check_error(mapping, "data.task = None", "task dataset", stage)


def test_align_only_needs_no_task_data():
    mapping = valid_mapping()
    mapping["stages"] = ["align"]
    del mapping["data"]["task"]
    del mapping["data"]["test"]
    assert from_mapping(Recipe, mapping).validate().stages == ["align"]


def test_evaluate_without_test_data():
    mapping = valid_mapping()
    del mapping["data"]["test"]
    check_error(mapping, "data.test = None", "evaluate stage")


def test_align_without_align_data():
    mapping = valid_mapping()
    del mapping["data"]["align"]
    check_error(mapping, "data.align = None", "alignment")


# Shipped recipes


@pytest.mark.parametrize("name", ["pythia70m_mamba130m.yaml", "pythia410m_mamba370m.yaml"])
def test_shipped_recipe_validates(name):
    path = RECIPES / name
    recipe = load_recipe(path)
    assert recipe.hybrid.components[0].startswith("EleutherAI/pythia-")
    assert recipe.hybrid.components[1].startswith("state-spaces/mamba-")
    assert recipe.hybrid.fresh_embeddings is False
    for section in (recipe.align, recipe.search, recipe.retrain, recipe.baselines):
        assert section.learning_rate == pytest.approx(2e-4)
        assert section.weight_decay == pytest.approx(0.01)
    assert recipe.search.mixture_learning_rate == pytest.approx(0.05)
    assert f"manticore run recipes/{name}" in path.read_text()


def test_tokenizer_may_be_component_index():
    recipe = from_mapping(Recipe, {"hybrid": {"components": ["a", "b"], "tokenizer": 1}, "stages": []})
    assert recipe.hybrid.tokenizer == 1


def test_unknown_task_type_rejected():
    mapping = {"hybrid": {"components": ["a"]}, "stages": [], "data": {"task_type": "regression"}}
    with pytest.raises(RecipeError, match="data.task_type = 'regression' is invalid: use language_modeling or classification"):
        from_mapping(Recipe, mapping).validate()


@pytest.mark.parametrize(
    "probs, message",
    [
        ([[0.5, 0.5]], "give 2 rows"),
        ([[0.5, 0.6], [0.5, 0.5]], "sum to 1"),
        ([[1.5, -0.5], [0.5, 0.5]], "non-negative"),
    ],
)
def test_invalid_mixture_probs_rejected(probs, message):
    mapping = {"hybrid": {"components": ["a", "b"], "n_blocks": 2, "mixture_probs": probs}, "stages": []}
    with pytest.raises(RecipeError, match=message):
        from_mapping(Recipe, mapping).validate()
