"""Command line: `manticore run RECIPE`, one stage at a time, and `manticore quickstart`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .recipe import STAGES, RecipeError, load_recipe
from .training.loop import NonFiniteLossError

logger = logging.getLogger("manticore")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="path of a YAML recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field, e.g. --set search.steps=50 (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in the output folder")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoints")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manticore", description="Build, search and fine-tune pretrained hybrids.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the stages a recipe lists")
    _add_run_arguments(run)
    run.add_argument("--dry-run", action="store_true",
                     help="validate the recipe, build the hybrid and print its structure, without training")
    for stage in STAGES:
        _add_run_arguments(commands.add_parser(stage, help=f"run only the {stage} stage of a recipe"))

    quickstart = commands.add_parser("quickstart", help="the offline Shakespeare demo, end to end")
    quickstart.add_argument("--output-dir", default="runs/quickstart", help="folder for the run (default: runs/quickstart)")
    quickstart.add_argument("--overwrite", action="store_true", help="replace an earlier quickstart run")
    quickstart.add_argument("--resume", action="store_true", help="continue an interrupted quickstart")
    quickstart.add_argument("--scale", type=float, default=1.0, help="multiply every step count (default 1.0)")

    from .mad.commands import add_mad_parser, add_program_parser

    add_mad_parser(commands)
    add_program_parser(commands)
    return parser


def check_data_paths(recipe) -> None:
    """Raise if a data source that names a local path does not exist (hub names are not checked)."""
    for field in ("align", "task", "validation", "test"):
        source = getattr(recipe.data, field)
        if source is None:
            continue
        path = Path(source.source).expanduser()
        looks_local = source.source.startswith((".", "/", "~")) or source.source.count("/") > 1
        if looks_local and not path.exists():
            raise FileNotFoundError(f"data.{field}.source {source.source!r} not found: point it at an existing file or folder")


def dry_run(recipe) -> None:
    from .flops import hybrid_forward_flops
    from .training.pipeline import Pipeline

    check_data_paths(recipe)
    hybrid = Pipeline.initial_hybrid_for(recipe)
    print(hybrid)
    total = sum(p.numel() for p in hybrid.parameters())
    projectors = sum(p.numel() for n, p in hybrid.named_parameters() if ".projectors_" in n)
    print(f"parameters: {total:,} (projectors {projectors:,})")
    print(f"layer splits per component: {hybrid.config.layer_splits}")
    print(f"forward FLOPs per token at {recipe.data.block_size} tokens: {hybrid_forward_flops(hybrid, recipe.data.block_size):.3e}")


def run_command(args) -> None:
    from .report import write_report
    from .training.pipeline import Pipeline

    recipe = load_recipe(args.recipe, args.overrides)
    if getattr(args, "dry_run", False):
        dry_run(recipe)
        return
    single_stage = args.command != "run"
    stages = [args.command] if single_stage else recipe.stages
    pipeline = Pipeline(recipe, overwrite=args.overwrite, resume=args.resume, only_stages=stages if single_stage else None)
    pipeline.run(stages)
    if pipeline.state.is_main_process:
        print(f"report: {write_report(pipeline.output)}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "quickstart":
            from .quickstart import run_quickstart

            run_quickstart(args.output_dir, overwrite=args.overwrite, resume=args.resume, scale=args.scale)
        elif args.command == "mad":
            from .mad.commands import run_mad_command

            run_mad_command(args)
        elif args.command == "program":
            from .mad.commands import run_program_command

            run_program_command(args)
        else:
            run_command(args)
    except (RecipeError, FileNotFoundError, FileExistsError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
