"""An append-only metrics log written as JSONL and CSV side by side (resumable: truncates past a step)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Rows of scalar metrics keyed by ``step``; the CSV's columns are fixed by the first row."""

    def __init__(self, run_dir: Path, resume_from_step: int | None = None) -> None:
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        rows: list[dict[str, Any]] = []
        if resume_from_step is not None and self.jsonl.exists():
            # Keep rows up to the checkpoint we resume from; later rows would be written again.
            rows = [row for row in self.read(self.jsonl) if row["step"] <= resume_from_step]
        self.columns: list[str] | None = list(rows[0]) if rows else None
        self.jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
        with open(self.csv, "w", newline="") as handle:
            if self.columns:
                writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

    def append(self, row: dict[str, Any]) -> None:
        with open(self.jsonl, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        with open(self.csv, "a", newline="") as handle:
            if self.columns is None:
                self.columns = list(row)
                csv.DictWriter(handle, fieldnames=self.columns).writeheader()
            csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore").writerow(row)
