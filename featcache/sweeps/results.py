"""Sweep results: one row per run, aggregated per configuration (mean and std over seeds), as files and a table.

Files in the sweep folder: ``results.jsonl`` (one row per run, as in each run's result.json),
``summary.json`` and ``summary.csv`` (per configuration: each metric's mean and std over the seeds that
finished, seeds ok and failed, training throughput). The std is the sample standard deviation (ddof=1);
with a single finished seed it is left empty.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from featcache.console import console
from featcache.sweeps.spec import Configuration

RESULTS_NAME = "results.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
#: The headline metrics, in the order tables and charts show them.
HEADLINE_METRICS = ("fg_ari", "ari", "mbo", "miou")
METRIC_LABELS = {"fg_ari": "FG-ARI", "ari": "ARI", "mbo": "mBO", "miou": "mIoU", "clip_ari": "clip ARI"}


def metric_label(name: str) -> str:
    if name.startswith("kmeans_"):
        return f"kMeans {metric_label(name.removeprefix('kmeans_'))}"
    return METRIC_LABELS.get(name, name)


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def mean_std(values: list[Any]) -> dict[str, Any]:
    """Mean and sample std (ddof=1) of the finite values; std is None with fewer than two."""
    finite = _finite(values)
    return {
        "mean": float(np.mean(finite)) if finite else None,
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        "n": len(finite),
    }


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    """Metrics present in the rows: the headline ones first, then the rest in first-seen order."""
    seen: list[str] = []
    for row in rows:
        for name in row.get("metrics", {}):
            if name not in seen:
                seen.append(name)
    return [m for m in HEADLINE_METRICS if m in seen] + [m for m in seen if m not in HEADLINE_METRICS]


def summarise(rows: list[dict[str, Any]], configurations: list[Configuration]) -> list[dict[str, Any]]:
    """One entry per configuration (in sweep order) aggregating its runs' rows over seeds."""
    names = metric_names(rows)
    summary = []
    for configuration in configurations:
        runs = [row for row in rows if row["config_id"] == configuration.config_id]
        ok = [row for row in runs if row["status"] == "ok"]
        summary.append({
            "config_id": configuration.config_id,
            "values": configuration.values,
            "seeds_ok": sorted(row["seed"] for row in ok),
            "seeds_failed": sorted(row["seed"] for row in runs if row["status"] != "ok"),
            "n_ok": len(ok),
            "n_failed": len(runs) - len(ok),
            "metrics": {name: mean_std([row["metrics"].get(name) for row in ok]) for name in names},
            "samples_per_second": mean_std([row.get("samples_per_second") for row in ok]),
            "train_seconds": mean_std([row.get("train_seconds") for row in ok]),
        })
    return summary


def format_mean_std(entry: dict[str, Any], digits: int = 4) -> str:
    """``0.1234 ± 0.0100``; ``0.1234`` for one seed; ``-`` when no seed finished."""
    if entry["mean"] is None:
        return "-"
    if entry["std"] is None:
        return f"{entry['mean']:.{digits}f}"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def summary_columns(summary: list[dict[str, Any]]) -> list[str]:
    """Metric names of a summary (in its order)."""
    return list(summary[0]["metrics"]) if summary else []


def table_rows(summary: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of the summary table (shared by the terminal table and the report)."""
    metrics = summary_columns(summary)
    header = ["configuration", *[metric_label(m) for m in metrics], "seeds ok/failed", "train samples/s"]
    rows = []
    for entry in summary:
        rate = entry["samples_per_second"]["mean"]
        rows.append([
            entry["config_id"],
            *[format_mean_std(entry["metrics"][m]) for m in metrics],
            f"{entry['n_ok']}/{entry['n_failed']}",
            f"{rate:.1f}" if rate is not None else "-",
        ])
    return header, rows


def print_summary_table(summary: list[dict[str, Any]], title: str) -> None:
    header, rows = table_rows(summary)
    table = Table(title=title)
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def write_results(out: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]], sweep_name: str) -> None:
    """results.jsonl, summary.json and summary.csv in the sweep folder."""
    (out / RESULTS_NAME).write_text("".join(json.dumps(row, default=float) + "\n" for row in rows))
    metrics = summary_columns(summary)
    (out / SUMMARY_JSON).write_text(json.dumps({"sweep": sweep_name, "metrics": metrics, "configurations": summary}, indent=2))
    value_keys = list(dict.fromkeys(key for entry in summary for key in entry["values"]))
    with open(out / SUMMARY_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["config_id", *value_keys, "n_ok", "n_failed",
                         *[f"{m}_{part}" for m in metrics for part in ("mean", "std")],
                         "samples_per_second_mean", "train_seconds_mean"])
        for entry in summary:
            writer.writerow([
                entry["config_id"],
                *[entry["values"].get(key, "") for key in value_keys],
                entry["n_ok"],
                entry["n_failed"],
                *["" if entry["metrics"][m][part] is None else entry["metrics"][m][part] for m in metrics for part in ("mean", "std")],
                "" if entry["samples_per_second"]["mean"] is None else entry["samples_per_second"]["mean"],
                "" if entry["train_seconds"]["mean"] is None else entry["train_seconds"]["mean"],
            ])


def read_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    path = Path(sweep_dir) / RESULTS_NAME
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = [
    "HEADLINE_METRICS",
    "format_mean_std",
    "mean_std",
    "metric_label",
    "metric_names",
    "print_summary_table",
    "read_rows",
    "summarise",
    "table_rows",
    "write_results",
]
