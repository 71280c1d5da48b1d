"""Train a tiny hybrid with TrainingLoop and save each process's final weights.

Run as `torchrun --standalone --nproc_per_node=2 distributed_worker.py OUTPUT`
for the multi-process run; tests/test_distributed.py also calls `train` in its
own process for the single-process reference. Writes, per scenario and process,
`OUTPUT/<scenario>/rank<i>.safetensors` and `rank<i>.json` (process count and
index as reported by the loop's Accelerator).
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import save_model  # noqa: E402

import manticore  # noqa: E402
from manticore.testing import tiny_model  # noqa: E402
from manticore.training.loop import LoopSettings, TrainingLoop  # noqa: E402
from manticore.training.metrics import MetricsWriter  # noqa: E402

# search: joint search of weights and mixture weights.
# fixed: fixed mixture weights with a 0 and a 1, so some parameters get no gradient.
SCENARIOS = {"search": None, "fixed": [[1.0, 0.0], [0.5, 0.5]]}


def tiny_blocks(count: int = 16, length: int = 16) -> Dataset:
    rows = torch.randint(3, 60, (count, length), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": rows}).with_format("numpy")


def initial_hybrid(scenario: str):
    """The scenario's GPT-NeoX + Llama hybrid before training, the same in every process."""
    torch.manual_seed(0)
    neox = tiny_model("gpt_neox", width=32, depth=2, vocab_size=72)
    llama = tiny_model("llama", seed=1, width=24, depth=2, vocab_size=72)
    hybrid = manticore.build_hybrid([neox, llama], n_blocks=2)
    fixed = SCENARIOS[scenario]
    if fixed is not None:
        hybrid.set_mixture_weights(fixed)
    return hybrid


def train(output: Path, scenario: str) -> None:
    """Train the scenario's hybrid for 6 steps with a global batch of 4 and save this process's weights."""
    hybrid = initial_hybrid(scenario)
    weights = [p for n, p in hybrid.named_parameters() if not n.startswith("model.mixture")]

    # A small learning rate keeps Adam from magnifying the rounding differences between
    # one batch mean and the mean of two all-reduced half-batch means.
    settings = LoopSettings(steps=6, batch_size=4, learning_rate=1e-3, log_every=2, checkpoint_every=3)
    directory = output / scenario
    loop = TrainingLoop(
        hybrid, tiny_blocks(), settings, directory, "search", MetricsWriter(directory, tensorboard=False),
        weights, hybrid.model.mixture.parameters(),
    )
    loop.run()

    rank = loop.accelerator.process_index
    save_model(hybrid, str(directory / f"rank{rank}.safetensors"))
    info = {"num_processes": loop.accelerator.num_processes, "process_index": rank}
    (directory / f"rank{rank}.json").write_text(json.dumps(info))
    loop.accelerator.wait_for_everyone()


def main() -> None:
    torch.set_num_threads(1)
    output = Path(sys.argv[1])
    for scenario in SCENARIOS:
        train(output, scenario)


if __name__ == "__main__":
    main()
