"""Where do searched and MAD-programmed mixture weights land on the loss landscape?

On the quickstart's task (First Folio plays), with the quickstart's pretrained
GPT-NeoX-style and Mamba components in a two-block hybrid, this script:

1. aligns the hybrid, searches mixture weights, retrains with them, sweeps a
   grid of fixed mixture weights (each point fine-tuned, validation loss
   recorded) and evaluates on the held-out plays;
2. reuses that alignment to retrain and evaluate with the mixture weights
   programmed from MAD results (`manticore program --from-mad`);
3. writes `report.md` with the landscape, both points marked.

Run `make quickstart` first (it pretrains and caches the components), then:

    .venv/bin/python scripts/programming_experiment.py --programmed results/mad/reduced/programmed_m2.yaml
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import yaml

from manticore.recipe import Recipe, from_mapping
from manticore.report import results_table, write_report
from manticore.training.pipeline import Pipeline


def recipe_mapping(args, output: Path, stages: list[str], mixture_probs=None) -> dict:
    data = Path(args.cache) / "data"
    stage = {"steps": args.steps, "batch_size": 16, "log_every": 10, "checkpoint_every": 1000, "learning_rate": 5e-4}
    hybrid = {"components": [str(Path(args.cache) / name) for name in args.components], "n_blocks": 2}
    if mixture_probs is not None:
        hybrid["mixture_probs"] = mixture_probs
    return {
        "output_dir": str(output),
        "stages": stages,
        "hybrid": hybrid,
        "data": {
            "align": {"source": str(data / "modern_train")},
            "task": {"source": str(data / "folio_train")},
            "validation": {"source": str(data / "folio_validation")},
            "test": {"source": str(data / "folio_test")},
            "block_size": 128,
        },
        "align": {**stage, "learning_rate": 1e-3},
        "search": {**stage, "mixture_learning_rate": 0.05},
        "retrain": stage,
        "baselines": {**stage, "equal_compute": False},
        "sweep": {**stage, "steps": args.sweep_steps, "points": args.points},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programmed", required=True, help="recipe fragment written by `manticore program`")
    parser.add_argument("--cache", default="runs/.quickstart-cache", help="the quickstart's cache folder")
    parser.add_argument("--components", nargs=2, default=["pythia-style", "mamba"],
                        help="component folders in the cache, in the fragment's column order (Transformer, Mamba)")
    parser.add_argument("--output", default="runs/programming", help="output folder")
    parser.add_argument("--steps", type=int, default=100, help="steps of align, search, retrain and baselines")
    parser.add_argument("--sweep-steps", type=int, default=30, help="fine-tuning steps per sweep point")
    parser.add_argument("--points", type=int, default=5, help="grid values per block (points^2 sweep runs)")
    args = parser.parse_args()

    programmed = yaml.safe_load(Path(args.programmed).read_text())["hybrid"]["mixture_probs"]
    output = Path(args.output)
    searched_run = output / "searched"
    stages = ["align", "search", "retrain", "baselines", "sweep", "evaluate"]
    recipe: Recipe = from_mapping(Recipe, recipe_mapping(args, searched_run, stages)).validate()
    Pipeline(recipe, resume=True).run()

    programmed_run = output / "programmed"
    programmed_run.mkdir(parents=True, exist_ok=True)
    if not (programmed_run / "align").exists():
        shutil.copytree(searched_run / "align", programmed_run / "align")
    mapping = recipe_mapping(args, programmed_run, ["retrain", "evaluate"], mixture_probs=programmed)
    Pipeline(from_mapping(Recipe, mapping).validate(), resume=True, only_stages=["retrain", "evaluate"]).run()

    searched_rows = json.loads((searched_run / "results.json").read_text())
    programmed_row = json.loads((programmed_run / "results.json").read_text())[0]
    programmed_row["model"] = "manticore (MAD-programmed)"
    rows = searched_rows[:1] + [programmed_row] + searched_rows[1:]
    (searched_run / "results.json").write_text(json.dumps(rows, indent=1))
    report = write_report(searched_run, programmed=programmed)
    landscape = json.loads((searched_run / "sweep" / "landscape.json").read_text())
    best = min(landscape, key=lambda point: point["validation_loss"])
    print(results_table(rows))
    print(f"best sweep point: {best['mixture_weights']} validation loss {best['validation_loss']:.4f}")
    print(f"report: {report}")


if __name__ == "__main__":
    main()
