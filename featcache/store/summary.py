"""Human-readable summaries of stores (`featcache info`; the store part of sweep and run provenance)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from featcache.console import console
from featcache.store.reader import FeatureStore


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"


def store_summary(path: str | Path) -> dict[str, Any]:
    """Provenance, layout, completeness and bytes on disk of the store at ``path`` as plain data."""
    store = FeatureStore(path)
    state = store.completeness()
    sizes = store.bytes_on_disk()
    attributes = store.attributes
    written = max(state.samples_written, 1)
    return {
        "path": str(store.path),
        "schema_version": attributes["schema_version"],
        "encoder": attributes["encoder"]["name"],
        "timm_name": attributes["encoder"]["timm_name"],
        "resolution": attributes["encoder"]["resolution"],
        "stored_kind": attributes["encoder"]["stored_kind"],
        "derivable_kinds": attributes["encoder"]["derivable_kinds"],
        "weights": attributes["weights"],
        "random_weights": store.weights_are_random,
        "dataset": attributes["dataset"],
        "layout": attributes["layout"],
        "completeness": {
            "units_done": state.units_done,
            "units_total": state.units_total,
            "samples_written": state.samples_written,
            "samples_bad": state.samples_bad,
            "samples_total": state.samples_total,
            "complete": state.complete,
        },
        "bad_samples": attributes.get("bad_samples", {}),
        "bytes_on_disk": sizes,
        "bytes_per_sample": sizes["total"] / written,
        "compression": attributes.get("compression", {}),
        "created": attributes["created"],
        "completed": attributes.get("completed"),
        "versions": attributes["versions"],
    }


def print_store_summary(summary: dict[str, Any]) -> None:
    """Print :func:`store_summary` as rich tables."""
    table = Table(title=f"featcache store {summary['path']}", show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    weights = summary["weights"]
    weight_text = f"{weights['source']}: {weights['location']} (sha256 {weights['sha256'][:12]})"
    if summary["random_weights"]:
        weight_text = f"[bold yellow]RANDOM[/] {weight_text}"
    layout = summary["layout"]
    state = summary["completeness"]
    dataset = summary["dataset"]
    compression = summary["compression"]
    rows = [
        ("encoder", f"{summary['encoder']} ({summary['timm_name']}) at {summary['resolution']} px"),
        ("features", f"{summary['stored_kind']} stored; derivable: {', '.join(summary['derivable_kinds']) or 'none'}"),
        ("weights", weight_text),
        ("dataset", f"{dataset['source']} split={dataset['split']} ({dataset['kind']}, {dataset['num_samples']} samples)"),
        ("views", ", ".join(layout["view_names"])),
        ("grid", f"{layout['grid'][0]} x {layout['grid'][1]} x {layout['channels']} float16"),
        ("images / masks", f"{layout['image_size']} px / {layout['mask_size'] or 'none'}"),
        ("chunking", f"{layout['samples_per_chunk']} samples per chunk and write unit"),
        (
            "completeness",
            f"{state['units_done']}/{state['units_total']} units, {state['samples_written']} samples written, "
            f"{state['samples_bad']} bad" + ("" if state["complete"] else " [bold red](incomplete)[/]"),
        ),
        ("bytes on disk", f"{_human_bytes(summary['bytes_on_disk']['total'])} ({_human_bytes(int(summary['bytes_per_sample']))} per sample)"),
        ("compression", f"zstd-{compression.get('clevel')} byte-shuffle, features {compression.get('feature_compression_ratio', 'n/a')}x"),
        ("created / completed", f"{summary['created']} / {summary['completed'] or '-'}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in summary["versions"].items())),
        ("schema", str(summary["schema_version"])),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    arrays = Table(title="arrays on disk")
    arrays.add_column("array")
    arrays.add_column("bytes", justify="right")
    for name, size in summary["bytes_on_disk"].items():
        arrays.add_row(name, _human_bytes(size))
    console.print(arrays)
    for sample_id, reason in list(summary["bad_samples"].items())[:20]:
        console.print(f"[yellow]bad sample[/] {sample_id}: {reason}")


__all__ = ["print_store_summary", "store_summary"]
