"""An append-only metrics log written as JSONL and CSV side by side (resumable: truncates past a step).

A kill or a full disk can tear the last line of metrics.jsonl; reading drops such a line (it is rewritten when the
run resumes from its checkpoint). A damaged line before the last is a one-line error naming the file and line.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from featcache.errors import FeatcacheError


def _replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: a kill leaves the old log or the new one."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class MetricsLog:
    """Rows of scalar metrics keyed by ``step``; the CSV's columns are fixed by the first row. ``rows`` counts the
    rows in the log (a checkpoint records it, so a resume can tell the log belongs to the checkpoint)."""

    def __init__(self, run_dir: Path, resume_from_step: int | None = None) -> None:
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        rows: list[dict[str, Any]] = []
        if resume_from_step is not None and self.jsonl.exists():
            # Keep rows up to the checkpoint we resume from; later rows would be written again.
            rows = [row for row in self.read(self.jsonl) if row["step"] <= resume_from_step]
        self.rows = len(rows)
        self.columns: list[str] | None = list(rows[0]) if rows else None
        table = io.StringIO()
        if self.columns:
            writer = csv.DictWriter(table, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        try:
            _replace_text(self.jsonl, "".join(json.dumps(row) + "\n" for row in rows))
            _replace_text(self.csv, table.getvalue())
        except OSError as error:
            raise FeatcacheError(f"cannot write the metrics log {self.jsonl}: {error.strerror or error}") from None

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """The rows of a metrics.jsonl; a torn last line (no newline, not JSON) is dropped."""
        path = Path(path)
        lines = path.read_text(errors="replace").split("\n")
        rows = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                    raise ValueError("not a row with a step")
            except ValueError as error:
                if number == len(lines):  # the last line, without its newline: a write a kill or full disk cut short
                    break
                raise FeatcacheError(f"{path} line {number} is not a metrics row ({str(error).splitlines()[0]})") from None
            rows.append(row)
        return rows

    def append(self, row: dict[str, Any]) -> None:
        """Append one row to both files; a failed write (a full disk) is a one-line error naming the file."""
        path = self.jsonl
        try:
            with open(path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            path = self.csv
            with open(path, "a", newline="") as handle:
                if self.columns is None:
                    self.columns = list(row)
                    csv.DictWriter(handle, fieldnames=self.columns).writeheader()
                csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        except OSError as error:
            raise FeatcacheError(
                f"cannot append to the metrics log {path}: {error.strerror or error}; the run's last checkpoint is intact "
                "(free space, then --resume)"
            ) from None
        self.rows += 1
