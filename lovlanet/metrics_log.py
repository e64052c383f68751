"""The training metrics log: one row per epoch to metrics.jsonl and metrics.csv (+ TensorBoard)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .checkpoints import atomic_write


class MetricsLog:
    """metrics.jsonl + metrics.csv (+ TensorBoard when installed); rank 0 only."""

    def __init__(self, out: Path, enabled: bool):
        self.out, self.enabled = out, enabled
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"))
            except Exception:  # tensorboard not installed: CSV/JSONL are enough
                self.writer = None

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
        rows = [json.loads(line) for line in (self.out / "metrics.jsonl").read_text().splitlines() if line]
        keys = list(dict.fromkeys(k for r in rows for k in r))

        def write_csv(handle):
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)

        atomic_write(self.out / "metrics.csv", write_csv, mode="w")
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()
