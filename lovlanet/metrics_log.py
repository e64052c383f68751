"""The training metrics log: one row per epoch in metrics.jsonl and metrics.csv (+ TensorBoard).

Both files are rewritten atomically on every row (they hold one row per epoch: tiny), so a kill
never leaves half a line. A damaged line from elsewhere (an editor, an old version) is reported
with the file and line number and skipped, never fatal; the epoch's row is then taken from the other
file when that one holds it intact (the CSV keeps what a damaged JSONL line lost). Rows are keyed by
epoch: a resumed run first truncates the log to its checkpoint's epoch, so epochs never repeat.
"""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

from kkattn._io import strict_json

from .checkpoints import atomic_write, atomic_write_text


class MetricsLog:
    """metrics.jsonl + metrics.csv (+ TensorBoard when installed); writes only when ``enabled`` (rank 0)."""

    def __init__(self, out: Path, enabled: bool):
        self.out, self.enabled = Path(out), enabled
        self.path = self.out / "metrics.jsonl"
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tensorboard"))
            except Exception:  # tensorboard not installed: CSV/JSONL are enough
                self.writer = None

    def rows(self) -> list[dict[str, Any]]:
        """The rows on disk, by epoch: metrics.jsonl's, and metrics.csv's for epochs whose JSON line is damaged
        (reported and skipped)."""
        rows: dict[int, dict[str, Any]] = {}
        if self.path.exists():
            for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                        raise ValueError("not a row with an integer 'epoch'")
                except ValueError as exc:
                    warnings.warn(f"{self.path} line {number} is damaged ({exc}); skipped", stacklevel=2)
                    continue
                rows[row["epoch"]] = row
        for row in self._csv_rows():
            rows.setdefault(row["epoch"], row)
        return [rows[epoch] for epoch in sorted(rows)]

    def _csv_rows(self) -> list[dict[str, Any]]:
        """metrics.csv's intact rows (every column filled, an integer epoch), values parsed back to numbers."""
        path = self.out / "metrics.csv"
        if not path.exists():
            return []
        try:
            with open(path, newline="", errors="replace") as handle:
                records = list(csv.DictReader(handle))
        except csv.Error:
            return []
        rows = []
        for record in records:
            if None in record or None in record.values():  # a torn line: too many or too few fields
                continue
            row = strict_json({key: _parse(value) for key, value in record.items()})
            if isinstance(row.get("epoch"), int):
                rows.append(row)
        return rows

    def truncate(self, epoch: int, row: dict[str, Any] | None = None) -> None:
        """Keep the rows of epochs ≤ ``epoch`` (what a checkpoint of that epoch has seen), adding that
        epoch's ``row`` when the log lacks it (a kill between the checkpoint and its row)."""
        if not self.enabled:
            return
        rows = [r for r in self.rows() if r["epoch"] <= epoch]
        if row is not None and not any(r["epoch"] == epoch for r in rows):
            rows.append(row)
        self._write(rows)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = strict_json(row)
        self._write([r for r in self.rows() if r["epoch"] < row["epoch"]] + [row])
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def _write(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))
        keys = list(dict.fromkeys(k for r in rows for k in r))

        def write_csv(handle):
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)

        atomic_write(self.out / "metrics.csv", write_csv, mode="w")


def _parse(text: str) -> Any:
    """A CSV cell back to what the row held: int, float, None (an empty cell) or the text."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
