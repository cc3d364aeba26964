"""Extraction benchmark, measured side by side in one run (random weights, so it runs anywhere).

1. Bare model forward on in-memory, already-resized tensors vs the full `extract` pipeline (decode, views,
   forward, compress, write) over the same number of views: the ratio says how much the pipeline costs.
2. Store bytes per image.
3. Random mini-batches of 64 read from the store vs the same features held in RAM, and the same read
   pattern on copies of the features chunked with other samples-per-chunk values (the chunking choice).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from rich.table import Table

from featcache.console import console
from featcache.datasets import open_dataset, write_synthetic
from featcache.encoders import create_encoder
from featcache.extraction import ExtractConfig, extract
from featcache.extraction.units import FeatureComputer, prepare_sample
from featcache.store import FeatureStore
from featcache.store.writer import blosc_compressor
from featcache.views import default_views


def _machine() -> str:
    import os
    import platform

    return f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def _random_batch_throughput(read: Any, num_samples: int, batch: int, batches: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for _ in range(batches):
        read(rng.choice(num_samples, size=min(batch, num_samples), replace=False))
    return batches * min(batch, num_samples) / (time.perf_counter() - started)


def run_extract_benchmark(
    work_dir: Path, images: int = 48, resolution: int = 224, batch_size: int = 16, vfm: str = "dino2-s14", read_batches: int = 10
) -> dict[str, Any]:
    """Run every measurement and return the figures as plain data."""
    work_dir = Path(work_dir)
    if work_dir.exists():
        shutil.rmtree(work_dir)
    data = work_dir / "shapes"
    write_synthetic(data, images=images, seed=0)
    dataset = open_dataset(str(data))
    config = ExtractConfig(vfm=vfm, weights="random", resolution=resolution, batch_size=batch_size, samples_per_chunk=16)
    views = default_views(0)

    # 1a. the bare forward on in-memory tensors: inputs prepared beforehand, not timed.
    encoder = create_encoder(vfm, weights="random", resolution=resolution)
    computer = FeatureComputer(encoder, torch.device("cpu"), batch_size)
    ids = dataset.sample_ids
    inputs = np.concatenate(
        [prepare_sample(dataset, i, ids[i], views, config, resolution, False).model_inputs for i in range(len(dataset))]  # type: ignore[misc]
    )
    computer(inputs[:batch_size])  # warm-up
    started = time.perf_counter()
    computer(inputs)
    forward_seconds = time.perf_counter() - started
    forward_views_per_second = inputs.shape[0] / forward_seconds

    # 1b. the whole pipeline over the same images and views.
    store_path = work_dir / "bench.zarr"
    summary = extract(dataset, store_path, config, device="cpu", show_progress=False)
    pipeline_views_per_second = summary.samples_run * len(views) / summary.seconds

    # 2. bytes per image.
    store = FeatureStore(store_path, warn_random=False)
    sizes = store.bytes_on_disk()

    # 3. random batches of 64 from the store vs RAM, and other chunkings of the same features.
    in_ram = store.load_features(view=0)  # (N, h, w, C)
    read_store = _random_batch_throughput(lambda idx: store.features(idx, view=0), len(store), 64, read_batches)
    read_ram = _random_batch_throughput(lambda idx: in_ram[np.sort(idx)], len(store), 64, read_batches)
    chunking: dict[str, float] = {}
    for samples_per_chunk in (1, 8, 32, 64):
        path = work_dir / f"chunks-{samples_per_chunk}.zarr"
        array = zarr.create_array(
            str(path), shape=in_ram.shape, chunks=(samples_per_chunk, *in_ram.shape[1:]), dtype="float16", compressors=[blosc_compressor(1)]
        )
        array[:] = in_ram
        array = zarr.open_array(str(path), mode="r")
        chunking[str(samples_per_chunk)] = _random_batch_throughput(lambda idx: array.oindex[np.sort(idx)], len(store), 64, read_batches)
        started = time.perf_counter()
        for start in range(0, len(store), samples_per_chunk * max(1, 64 // samples_per_chunk)):
            array[start : start + 64]
        chunking[f"{samples_per_chunk} sequential"] = len(store) / (time.perf_counter() - started)
    return {
        "machine": _machine(),
        "vfm": vfm,
        "resolution": resolution,
        "images": images,
        "views_per_image": len(views),
        "batch_size": batch_size,
        "forward_views_per_second": forward_views_per_second,
        "pipeline_views_per_second": pipeline_views_per_second,
        "pipeline_images_per_second": summary.samples_per_second,
        "pipeline_over_forward": pipeline_views_per_second / forward_views_per_second,
        "store_bytes_per_image": sizes["total"] / len(store),
        "feature_bytes_per_image": sizes["features"] / len(store),
        "feature_compression_ratio": store.attributes["compression"].get("feature_compression_ratio"),
        "read_random64_store_samples_per_second": read_store,
        "read_random64_ram_samples_per_second": read_ram,
        "read_store_over_ram": read_store / read_ram,
        "read_random64_by_samples_per_chunk": chunking,
    }


def print_extract_benchmark(result: dict[str, Any]) -> None:
    table = Table(title=f"extraction benchmark ({result['vfm']} random weights at {result['resolution']} px; {result['machine']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("bare forward, in-memory tensors (views/s)", f"{result['forward_views_per_second']:.2f}")
    table.add_row("extract pipeline (views/s)", f"{result['pipeline_views_per_second']:.2f}")
    table.add_row("[bold]pipeline / forward[/]", f"[bold]{result['pipeline_over_forward']:.3f}[/]")
    table.add_row("store bytes per image (all arrays)", f"{result['store_bytes_per_image'] / 1024:.1f} KiB")
    table.add_row("feature bytes per image (2 views)", f"{result['feature_bytes_per_image'] / 1024:.1f} KiB")
    table.add_row("feature compression ratio", str(result["feature_compression_ratio"]))
    table.add_row("random batches of 64 from store (samples/s)", f"{result['read_random64_store_samples_per_second']:.0f}")
    table.add_row("random batches of 64 from RAM (samples/s)", f"{result['read_random64_ram_samples_per_second']:.0f}")
    table.add_row("[bold]store / RAM[/]", f"[bold]{result['read_store_over_ram']:.4f}[/]")
    for key, value in result["read_random64_by_samples_per_chunk"].items():
        label = f"samples/chunk={key.split()[0]}: " + ("sequential blocks of 64" if "sequential" in key else "random batches of 64")
        table.add_row(label, f"{value:.0f}")
    console.print(table)
