"""Command-line parts of the MAD work: `manticore mad run`, `manticore mad report` and `manticore program`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_ARCHITECTURES = ("gpt-neo", "mamba", "mambaformer", "striped-hyena", "manticore-m1", "manticore-m2")


def add_mad_parser(commands) -> None:
    """Add `mad run` and `mad report` to the top-level subcommands."""
    from .architectures import ARCHITECTURES
    from .protocol import DEFAULT_MIXTURE_LEARNING_RATE, PROTOCOLS
    from .registry import TASKS

    mad = commands.add_parser("mad", help="train architectures on the MAD synthetic tasks and report their scores")
    mad_commands = mad.add_subparsers(dest="mad_command", required=True)

    run = mad_commands.add_parser("run", help="train and evaluate architectures on MAD tasks; resumes finished rows")
    run.add_argument("--architectures", nargs="+", default=list(DEFAULT_ARCHITECTURES), choices=list(ARCHITECTURES),
                     metavar="NAME", help=f"architectures to train (default: {' '.join(DEFAULT_ARCHITECTURES)}; "
                                         f"also {', '.join(a for a in ARCHITECTURES if a not in DEFAULT_ARCHITECTURES)})")
    run.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), metavar="TASK",
                     help="MAD tasks to train on (default: all six)")
    run.add_argument("--protocol", default="reduced", choices=list(PROTOCOLS),
                     help="reduced: the CPU protocol (default); full: the MAD reference protocol; smoke: a check "
                          "that runs in seconds")
    run.add_argument("--output", default=None, help="results folder (default: runs/mad/<protocol>)")
    run.add_argument("--mixture-learning-rate", type=float, default=DEFAULT_MIXTURE_LEARNING_RATE,
                     help=f"learning rate of Manticore's mixture weights (default {DEFAULT_MIXTURE_LEARNING_RATE}; "
                          "use 0.01 for runs that program a pretrained hybrid)")
    run.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")

    report = mad_commands.add_parser("report", help="print the MAD score table and draw the report figures")
    report.add_argument("directory", help="results folder written by `manticore mad run`")


def add_program_parser(commands) -> None:
    """Add `program` to the top-level subcommands."""
    program = commands.add_parser(
        "program", help="write a recipe fragment with mixture weights programmed from MAD results or metadata")
    source = program.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-mad", metavar="RESULTS",
                        help="results folder or results.jsonl of Manticore MAD runs: average their final weights")
    source.add_argument("--from-metadata", action="store_true",
                        help="start from equal weights and exclude components by maximum context")
    program.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                         help="MAD tasks to average over (default: every task in the results)")
    program.add_argument("--architecture", default=None, help="Manticore architecture of the MAD rows, e.g. manticore-m2")
    program.add_argument("--n-blocks", type=int, default=None,
                         help="number of blocks M: selects MAD rows, or sets M for --from-metadata (default 1)")
    program.add_argument("--component-order", nargs="+", default=None, metavar="NAME",
                         help="MAD component names in the order of the recipe's components, e.g. mamba gpt-neo")
    program.add_argument("--components", nargs="+", default=None, metavar="MODEL",
                         help="component directories or hub ids, in the recipe's order, for the context check")
    program.add_argument("--seq-len", type=int, default=None, help="sequence length of the target task, in tokens")
    program.add_argument("--output", required=True, help="path of the YAML fragment to write")


def run_mad_command(args: argparse.Namespace) -> None:
    """Run `mad run` or `mad report`."""
    from .results import write_report

    if args.mad_command == "report":
        table, figures = write_report(args.directory)
        print(table)
        for figure in figures:
            print(f"figure: {figure}")
        return

    import torch

    from .protocol import run_suite

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads} is invalid: pass 1 or more")
        torch.set_num_threads(args.threads)
    output = Path(args.output or f"runs/mad/{args.protocol}")
    rows = run_suite(args.architectures, args.tasks, args.protocol, output, args.mixture_learning_rate)
    print(f"{len(rows)} new runs written to {output / 'results.jsonl'}")
    table, figures = write_report(output)
    print(table)
    for figure in figures:
        print(f"figure: {figure}")


def run_program_command(args: argparse.Namespace) -> None:
    """Run `program`: build the mixture weights, write the fragment and print the equivalent --set values."""
    from .program import (
        exclude_short_contexts,
        load_max_contexts,
        program_from_mad,
        program_from_metadata,
        reorder_components,
        set_arguments,
        write_fragment,
    )
    from .results import read_rows, results_path

    if (args.components is None) != (args.seq_len is None):
        raise ValueError("--components and --seq-len go together: pass both for the context check, or neither")
    if args.from_metadata:
        if args.components is None:
            raise ValueError("--from-metadata needs --components and --seq-len: pass the models and the task length")
        mixture = program_from_metadata(args.components, args.seq_len, args.n_blocks or 1)
    else:
        rows = read_rows(args.from_mad)
        if not rows:
            raise ValueError(f"no results in {results_path(args.from_mad)}: pass a folder written by `manticore mad run`")
        mixture = program_from_mad(rows, args.tasks, args.architecture, args.n_blocks)
        if args.component_order:
            mixture = reorder_components(mixture, args.component_order)
        if args.components is not None:
            contexts = load_max_contexts(args.components)
            mixture.probs = exclude_short_contexts(mixture.probs, args.components, contexts, args.seq_len)
            mixture.sources.append(f"components {', '.join(args.components)} checked at seq_len {args.seq_len}")
    path = write_fragment(args.output, mixture)
    print(f"fragment: {path}")
    print("mixture weights (one row per block):")
    for row in mixture.probs:
        print("  " + ", ".join(f"{name} {value:.4f}" for name, value in zip(mixture.components, row)))
    print("apply with: manticore run RECIPE " + " ".join(f"--set '{value}'" for value in set_arguments(mixture)))
