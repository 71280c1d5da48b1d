"""Measure Mamba training throughput on CPU with and without the numba selective-scan kernel.

Builds a MambaForCausalLM (width 128, 4 layers, state 16, vocab 4096) and a
GPTNeoXForCausalLM of the same width, depth and vocabulary, both with random
weights, and times one forward and backward pass of the language-model loss
per step. The Mamba model runs three ways: transformers' sequential scan
(use_mambapy=False), transformers with mambapy's parallel scan
(use_mambapy=True), and every block through
``manticore.kernels.mamba_layer.mamba_block_forward``. Prints the median
time per step after the warm-up steps and the throughput in tokens/s.

Example: python benchmarks/bench_mamba_kernel.py --threads 2 --skip-reference
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, MambaConfig, MambaForCausalLM

from manticore.kernels.mamba_layer import mamba_block_forward
from manticore.kernels.selective_scan import kernel_available

WIDTH = 128
LAYERS = 4
STATE_SIZE = 16
VOCAB_SIZE = 4096


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch and numba threads (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones (default 1)")
    parser.add_argument(
        "--skip-reference",
        action="store_true",
        help="skip transformers' sequential scan, which takes about 40 s per step at 16 x 256",
    )
    parser.add_argument("--skip-long", action="store_true", help="skip the length-2048 batch-4 comparison")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and token ids (default 0)")
    return parser.parse_args()


def build_mamba() -> MambaForCausalLM:
    config = MambaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=WIDTH, num_hidden_layers=LAYERS, state_size=STATE_SIZE, use_mambapy=True
    )
    return MambaForCausalLM(config).train()


def build_gpt_neox() -> GPTNeoXForCausalLM:
    config = GPTNeoXConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=4 * WIDTH,
        max_position_embeddings=2048,
    )
    return GPTNeoXForCausalLM(config).train()


@contextlib.contextmanager
def mambapy_scan(model: MambaForCausalLM, enabled: bool) -> Iterator[None]:
    """Set use_mambapy on every mixer for the duration of the block."""
    for block in model.backbone.layers:
        block.mixer.use_mambapy = enabled
    yield


@contextlib.contextmanager
def kernel_blocks(model: MambaForCausalLM) -> Iterator[None]:
    """Route every block's forward through mamba_block_forward, and restore the blocks on exit."""
    for block in model.backbone.layers:
        block.forward = _kernel_forward(block)
    try:
        yield
    finally:
        for block in model.backbone.layers:
            del block.forward


def _kernel_forward(block: torch.nn.Module) -> Callable[..., torch.Tensor]:
    def forward(hidden_states, cache=None, attention_mask=None, **kwargs):
        if cache is not None:
            raise ValueError("the benchmark's kernel blocks run without a cache")
        return mamba_block_forward(block, hidden_states, attention_mask=attention_mask)

    return forward


def time_training_step(model: torch.nn.Module, input_ids: torch.Tensor) -> float:
    """Return the seconds of one forward and backward pass of the language-model loss."""
    start = time.perf_counter()
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def run_shape(args, mamba, gpt_neox, batch, length, include_reference) -> list[tuple[str, float]]:
    """Time every configuration for one (batch, length) shape and return (name, median seconds per step) rows.

    The configurations take turns step by step, so that load from other
    processes on the machine affects them alike. The sequential scan runs
    once, after the others, because one step takes about 40 s.
    """
    generator = torch.Generator().manual_seed(args.seed)
    input_ids = torch.randint(0, VOCAB_SIZE, (batch, length), generator=generator)
    configurations = [
        ("Mamba, mambapy (use_mambapy=True)", mamba, lambda: mambapy_scan(mamba, True)),
        ("Mamba, numba kernel", mamba, lambda: kernel_blocks(mamba)),
        ("GPT-NeoX", gpt_neox, contextlib.nullcontext),
    ]
    durations: dict[str, list[float]] = {name: [] for name, _, _ in configurations}
    rounds = args.warmup + args.steps
    for round_index in range(rounds):
        for name, model, mode in configurations:
            with mode():
                elapsed = time_training_step(model, input_ids)
            if round_index >= args.warmup:
                durations[name].append(elapsed)
    rows = [(name, statistics.median(values)) for name, values in durations.items()]
    if include_reference:
        with mambapy_scan(mamba, False):
            rows.insert(0, ("Mamba, transformers sequential scan", time_training_step(mamba, input_ids)))
    return rows


def print_table(batch: int, length: int, rows: list[tuple[str, float]]) -> None:
    seconds = dict(rows)
    mambapy = seconds["Mamba, mambapy (use_mambapy=True)"]
    gpt_neox = seconds["GPT-NeoX"]
    print(f"\nbatch {batch} x length {length}, forward + backward")
    print("| model and scan | s/step | tokens/s | speed-up over mambapy | throughput / GPT-NeoX |")
    print("| --- | --- | --- | --- | --- |")
    for name, step_seconds in rows:
        tokens_per_second = batch * length / step_seconds
        print(
            f"| {name} | {step_seconds:.3f} | {tokens_per_second:,.0f} | "
            f"{mambapy / step_seconds:.2f}x | {gpt_neox / step_seconds:.2f} |"
        )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if not kernel_available():
        raise SystemExit("The numba selective-scan kernel is unavailable; see the warning above.")
    mamba = build_mamba()
    gpt_neox = build_gpt_neox()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    print_table(16, 256, run_shape(args, mamba, gpt_neox, 16, 256, not args.skip_reference))
    if not args.skip_long:
        print_table(4, 2048, run_shape(args, mamba, gpt_neox, 4, 2048, False))


if __name__ == "__main__":
    main()
