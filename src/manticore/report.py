"""`report.md` with PNG figures, written from what a run left in its output folder."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .training.metrics import read_metrics  # noqa: E402


def _series(rows, stage_prefix: str, name_prefix: str) -> dict[tuple[str, str], tuple[list, list]]:
    """{(stage, name): (steps, values)} for rows whose stage and name start with the prefixes."""
    series = defaultdict(lambda: ([], []))
    for row in rows:
        if row["stage"].startswith(stage_prefix) and row["name"].startswith(name_prefix):
            steps, values = series[(row["stage"], row["name"])]
            steps.append(int(row["step"]))
            values.append(float(row["value"]))
    return dict(series)


def plot_mixture_trajectory(rows, path: Path, component_names) -> bool:
    series = _series(rows, "search", "alpha/")
    if not series:
        return False
    blocks = sorted({name.split("/")[1] for _, name in series})
    figure, axes = plt.subplots(1, len(blocks), figsize=(5 * len(blocks), 3.5), squeeze=False)
    for axis, block in zip(axes[0], blocks):
        for (_, name), (steps, values) in sorted(series.items()):
            if name.split("/")[1] == block:
                k = int(name.rsplit("component", 1)[1])
                axis.plot(steps, values, marker=".", label=component_names[k] if k < len(component_names) else name)
        axis.set(title=f"mixture weights, {block}", xlabel="search step", ylabel="alpha", ylim=(0, 1))
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def plot_losses(rows, path: Path) -> bool:
    series = _series(rows, "", "loss")
    if not series:
        return False
    figure, axis = plt.subplots(figsize=(7, 4))
    for (stage, _), (steps, values) in sorted(series.items()):
        if not stage.startswith("sweep/"):
            axis.plot(steps, values, marker=".", label=stage)
    axis.set(title="training loss per stage", xlabel="step", ylabel="loss")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def plot_landscape(points, marks: dict, path: Path, component_names) -> bool:
    """Validation loss over the sweep, with searched or programmed mixture weights marked."""
    if not points:
        return False
    second = component_names[1] if len(component_names) > 1 else "component 1"
    figure, axis = plt.subplots(figsize=(6, 4.5))
    if len(points[0]["mixture_weights"]) == 1:
        xs = [p["mixture_weights"][0][1] for p in points]
        axis.plot(xs, [p["validation_loss"] for p in points], marker="o", label="sweep")
        for label, probs in marks.items():
            axis.axvline(probs[0][1], linestyle="--", label=label, color="C1" if label == "searched" else "C2")
        axis.set(xlabel=f"alpha of {second}", ylabel="validation loss")
        axis.legend()
    else:
        xs = [p["mixture_weights"][0][1] for p in points]
        ys = [p["mixture_weights"][1][1] for p in points]
        scatter = axis.scatter(xs, ys, c=[p["validation_loss"] for p in points], cmap="viridis", s=60)
        figure.colorbar(scatter, label="validation loss")
        for label, probs in marks.items():
            axis.scatter([probs[0][1]], [probs[1][1]], marker="*", s=250, edgecolor="black", label=label)
        axis.set(xlabel=f"block 1 alpha of {second}", ylabel=f"block 2 alpha of {second}")
        axis.legend()
    axis.set_title("mixture-weight landscape")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _cell(value, template: str) -> str:
    return template.format(value) if value is not None else ""


def results_table(rows) -> str:
    """Markdown table of evaluation rows; a test accuracy column appears for classification."""
    with_accuracy = any("test_accuracy" in row for row in rows)
    header = ["model"] + (["test accuracy"] if with_accuracy else []) + [
        "test loss", "test perplexity", "parameters", "forward FLOPs/token", "training time (s)", "training tokens",
        "peak memory (MiB)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"]]
        if with_accuracy:
            cells.append(_cell(row.get("test_accuracy"), "{:.3f}"))
        cells += [
            _cell(row["test_loss"], "{:.4f}"),
            _cell(row["test_perplexity"], "{:.2f}"),
            _cell(row["parameters"] / 1e6, "{:.2f}M"),
            _cell(row["forward_flops_per_token"], "{:.3e}"),
            _cell(row.get("training_seconds"), "{:.0f}"),
            _cell(row.get("training_tokens"), "{:,}"),
            _cell(row.get("peak_memory_mib"), "{:.0f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _load_json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def write_report(output_dir, programmed=None) -> Path:
    """Write `report.md` and its figures into `output_dir`; return the report's path.

    Args:
        programmed: optional (M, K) mixture weights programmed without search, marked on the landscape.
    """
    output = Path(output_dir)
    figures = output / "figures"
    figures.mkdir(exist_ok=True)
    rows = read_metrics(output / "metrics.csv") if (output / "metrics.csv").exists() else []
    recipe_names = _component_names(output)
    sections = ["# Manticore run report", "", f"Output folder: `{output}`", ""]

    results = _load_json(output / "results.json", [])
    if results:
        sections += ["## Results on the held-out test split", "", results_table(results), "",
                     "FLOPs are estimates (see `manticore.flops`); peak memory is the process's peak resident memory "
                     "when the model's training stage ended.", ""]
    searched = _load_json(output / "search" / "mixture.json", {}).get("mixture_weights")
    if searched is not None:
        rounded = [[round(value, 3) for value in row] for row in searched]
        sections += ["## Searched mixture weights", "", f"`{rounded}` (rows: blocks; columns: {recipe_names})", ""]
    if plot_mixture_trajectory(rows, figures / "mixture_weights.png", recipe_names):
        sections += ["![mixture weights during search](figures/mixture_weights.png)", ""]
    if plot_losses(rows, figures / "losses.png"):
        sections += ["## Training loss", "", "![loss curves](figures/losses.png)", ""]
    marks = {k: v for k, v in (("searched", searched), ("programmed", programmed)) if v is not None}
    if plot_landscape(_load_json(output / "sweep" / "landscape.json", []), marks, figures / "landscape.png", recipe_names):
        sections += ["## Mixture-weight sweep", "", "![sweep landscape](figures/landscape.png)", ""]
    path = output / "report.md"
    path.write_text("\n".join(sections))
    return path


def _component_names(output: Path) -> list[str]:
    import yaml

    recipe_path = output / "recipe.yaml"
    if not recipe_path.exists():
        return []
    recipe = yaml.safe_load(recipe_path.read_text())
    return [Path(str(c)).name for c in recipe.get("hybrid", {}).get("components", [])]
