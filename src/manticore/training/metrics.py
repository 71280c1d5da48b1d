"""Metrics of a run: always a CSV in long format, TensorBoard too when it is installed."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

FIELDS = ("stage", "step", "name", "value")


class MetricsWriter:
    """Append (stage, step, name, value) rows to `metrics.csv` in `output_dir`."""

    def __init__(self, output_dir: Path, tensorboard: bool = True):
        self.path = Path(output_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            with self.path.open("w", newline="") as handle:
                csv.writer(handle).writerow(FIELDS)
        self.tensorboard = _tensorboard_writer(self.path.parent / "tensorboard") if tensorboard else None

    def write(self, stage: str, step: int, values: dict) -> None:
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            for name, value in values.items():
                writer.writerow((stage, step, name, value))
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(f"{stage}/{name}", value, step)
            self.tensorboard.flush()

    def drop_stage(self, stage: str) -> None:
        """Forget every row of `stage` and its sub-stages (`stage/...`), before that stage reruns."""
        self._keep(lambda row: row["stage"] != stage and not row["stage"].startswith(stage + "/"))

    def drop_after(self, stage: str, step: int) -> None:
        """Forget rows of `stage` after `step`, so a resumed run does not log them twice."""
        self._keep(lambda row: not (row["stage"] == stage and int(row["step"]) > step))

    def _keep(self, predicate) -> None:
        kept = [row for row in read_metrics(self.path) if predicate(row)]
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(kept)


def read_metrics(path: Path) -> list[dict]:
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))


def _tensorboard_writer(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed; metrics go to CSV only")
        return None
    return SummaryWriter(str(directory))
