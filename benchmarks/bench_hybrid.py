"""Overhead of the hybrid over its components: forward+backward time, parameters, peak memory.

For each size (tiny, and Pythia-160M + Mamba-130M shapes with random weights)
this prints the time of one forward+backward pass of a two-component, one-block
hybrid with softmax mixture weights, divided by the sum of the times of the same
two components run alone through the same layer code (target <= 1.10).

Times come from one process that interleaves the three models step by step, so
load from other processes hits all three alike; each is the median of
`--repeats` steps after one warm-up round. Peak memory comes from a fresh
process per model: the increase of peak resident memory over the resident memory
before its first forward+backward step. Only ratios measured in one run are
comparable.

    .venv/bin/python benchmarks/bench_hybrid.py --threads 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

MODELS = ("neox", "mamba", "hybrid")
SIZES = {
    # name: (neox config, mamba config, batch, length)
    "tiny": (
        dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256, vocab_size=4096),
        dict(hidden_size=64, num_hidden_layers=4, state_size=16, vocab_size=4096),
        4, 512,
    ),
    "pythia-160m+mamba-130m": (
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
             vocab_size=50304, rotary_pct=0.25),
        dict(hidden_size=768, num_hidden_layers=24, state_size=16, vocab_size=50280),
        1, 512,
    ),
}


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; Linux only."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_rss_kib() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1])


def current_rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() // 1024


def build(size: str):
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, MambaConfig

    neox_options, mamba_options, batch, length = SIZES[size]
    torch.manual_seed(0)
    neox = AutoModelForCausalLM.from_config(GPTNeoXConfig(max_position_embeddings=2048, **neox_options))
    mamba = AutoModelForCausalLM.from_config(MambaConfig(use_mambapy=True, **mamba_options))
    ids = torch.randint(0, 4000, (batch, length))
    return neox, mamba, ids


def component_step(model, ids):
    """Run one forward+backward step of a component alone, through the adapter code the hybrid runs."""
    from manticore.components import adapter_for
    from manticore.modeling import causal_lm_loss, positions_from_mask

    adapter = adapter_for(model)
    positions = positions_from_mask(None, *ids.shape, ids.device)
    hidden = adapter.embed(ids)
    context = adapter.prepare(hidden, None, positions)
    logits = adapter.logits(adapter.run_layers(hidden, 0, adapter.depth, context))
    causal_lm_loss(logits, ids).backward()


def make_step(size: str, which: str):
    """Return (model, step function) for one of "neox", "mamba" or "hybrid"."""
    import manticore

    neox, mamba, ids = build(size)
    if which == "hybrid":
        model = manticore.build_hybrid([neox, mamba], n_blocks=1)
        step = lambda: model(ids, labels=ids).loss.backward()  # noqa: E731
    else:
        model = neox if which == "neox" else mamba
        step = lambda: component_step(model, ids)  # noqa: E731
    model.train()
    return model, step


def measure_memory(size: str, which: str, threads: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    model, step = make_step(size, which)
    rss_before = current_rss_kib()
    reset_peak_rss()
    step()
    peak_kib = peak_rss_kib() - rss_before
    queue.put((sum(p.numel() for p in model.parameters()), peak_kib))


def isolated_memory(size, which, threads):
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure_memory, args=(size, which, threads, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def interleaved_times(size: str, repeats: int) -> dict[str, float]:
    """Median forward+backward seconds per model, the three models taking turns."""
    steps = {which: make_step(size, which) for which in MODELS}
    times = {which: [] for which in MODELS}
    for round_index in range(repeats + 1):
        for which, (model, step) in steps.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            step()
            if round_index > 0:
                times[which].append(time.perf_counter() - start)
    return {which: statistics.median(values) for which, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    print(f"torch threads: {args.threads}; forward+backward, median of {args.repeats} interleaved steps")
    print("| size | batch x length | model | parameters | time (s) | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        _, _, batch, length = SIZES[size]
        times = interleaved_times(size, args.repeats)
        for which in MODELS:
            parameters, peak_kib = isolated_memory(size, which, args.threads)
            print(f"| {size} | {batch} x {length} | {which} | {parameters / 1e6:.2f}M | {times[which]:.3f} | {peak_kib / 1024:.0f} |")
        ratio = times["hybrid"] / (times["neox"] + times["mamba"])
        print(f"| {size} | | hybrid / (neox + mamba) | | **{ratio:.3f}** | |")


if __name__ == "__main__":
    main()
