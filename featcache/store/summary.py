"""Human-readable summaries of stores (`featcache info`; the store part of sweep and run provenance)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from featcache.console import console
from featcache.store import integrity
from featcache.store.reader import FeatureStore
from featcache.store.slots import SlotSet, slot_names, slot_sets


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
        "integrity": {"chunk_checksums": store.chunk_checksums, "problems": integrity_problems(store, state.complete)},
        "token_sets": token_sets(store),
        "slot_sets": slot_sets(store),
    }


def integrity_problems(store: FeatureStore, complete: bool) -> list[str]:
    """What the cheap checks find (no chunk is read; `featcache verify` reads them all): edited attributes, chunk
    files missing, a store whose units are all written but that was never finalised, token sets' missing chunks."""
    problems = [f"attributes edited since completion: {item}" for item in store.changed_attributes() or []]
    if complete and not store.attributes.get("completed"):
        problems.append("every unit is written but the store was not finalised: re-run `featcache extract`")
    for name in store.token_names():
        problems += [f"token set {name!r}: attributes edited since it was completed: {item}"
                     for item in integrity.changed_attributes(store.token_attributes(name)) or []]
    for name in slot_names(store.group):
        problems += [f"slot set {name!r}: attributes edited since it was completed: {item}"
                     for item in integrity.changed_attributes(SlotSet(store, name).attributes) or []]
    arrays = store.missing_arrays()
    token_arrays = {name: store.missing_token_arrays(name) for name in store.token_names()}
    problems += [f"array {name!r} is missing (its zarr.json is gone)" for name in arrays + sum(token_arrays.values(), [])]
    if arrays:
        return problems  # chunk checks need the arrays
    missing = store.missing_chunks() + [chunk for name in store.token_names() if not token_arrays[name] for chunk in store.missing_token_chunks(name)]
    problems += [f"{chunk.describe()} is missing on disk" for chunk in missing[:5]]
    if len(missing) > 5:
        problems.append(f"... and {len(missing) - 5} more missing chunks")
    return problems


def token_sets(store: FeatureStore) -> list[dict[str, Any]]:
    """Every token set with its completeness (an unfinished `tokenize` leaves one incomplete)."""
    listed = []
    for name in store.token_names():
        done, total = store.token_completeness(name)
        attributes = store.token_attributes(name)
        codebook = store.group[f"tokens/{name}/codebook"] if not store.missing_token_arrays(name) else None
        listed.append({
            "name": name,
            "units_done": done,
            "units_total": total,
            "completed": attributes.get("completed"),
            "complete": done == total and bool(attributes.get("completed")),
            "codebook_size": int(codebook.shape[0]) if codebook is not None else None,  # type: ignore[union-attr]
            "vq_run": attributes.get("vq", {}).get("run"),
        })
    return listed


def _integrity_text(state: dict[str, Any]) -> str:
    checksums = f"{state['chunk_checksums']} chunk checksums" if state["chunk_checksums"] else "no chunk checksums (older store)"
    if not state["problems"]:
        return f"ok: attributes and chunk files checked ({checksums}; `featcache verify` reads every chunk)"
    return f"[bold red]DAMAGED[/] ({checksums}): " + "; ".join(state["problems"])


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
        ("integrity", _integrity_text(summary["integrity"])),
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
    if summary["token_sets"]:
        tokens = Table(title="token sets")
        for column in ("name", "codes", "units", "state", "VQ run"):
            tokens.add_column(column, overflow="fold")
        for entry in summary["token_sets"]:
            state_text = "complete" if entry["complete"] else "[bold red]incomplete[/] (re-run `featcache tokenize`)"
            tokens.add_row(entry["name"], str(entry["codebook_size"]), f"{entry['units_done']}/{entry['units_total']}", state_text, str(entry["vq_run"]))
        console.print(tokens)
    if summary.get("slot_sets"):
        slots = Table(title="slot sets")
        for column in ("name", "slots", "views", "decoder masks", "units", "state", "OCL run"):
            slots.add_column(column, overflow="fold")
        for entry in summary["slot_sets"]:
            state_text = "complete" if entry["complete"] else "[bold red]incomplete[/] (re-run `featcache encode-slots`)"
            slots.add_row(entry["name"], f"{entry['num_slots']} x {entry['slot_dim']} {entry['dtype']}", ", ".join(entry["views"]),
                          "yes" if entry["decoder_masks"] else "no", f"{entry['units_done']}/{entry['units_total']}", state_text, str(entry["run"]))
        console.print(slots)
    for sample_id, reason in list(summary["bad_samples"].items())[:20]:
        console.print(f"[yellow]bad sample[/] {sample_id}: {reason}")


__all__ = ["print_store_summary", "store_summary"]
