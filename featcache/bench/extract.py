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


def machine_description() -> str:
    import os
    import platform

    return f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def _random_batch_throughput(read: Any, num_samples: int, batch: int, batches: int, seed: int = 0, rounds: int = 3) -> float:
    """Samples/s reading ``batches`` random batches; best of ``rounds`` (same batches each round)."""
    best = 0.0
    for _ in range(rounds):
        rng = np.random.default_rng(seed)
        started = time.perf_counter()
        for _ in range(batches):
            read(rng.choice(num_samples, size=min(batch, num_samples), replace=False))
        best = max(best, batches * min(batch, num_samples) / (time.perf_counter() - started))
    return best


def _chunking_sweep(work_dir: Path, features: np.ndarray, samples: int, batches: int) -> dict[str, dict[str, float]]:
    """Samples/s of three read patterns for several samples-per-chunk values, on ``features`` tiled to ``samples``.

    random: batches of 64 random indices (each touched chunk read whole); blocks: whole chunks in random
    order, as a shuffle-buffer loader streams them; RAM: the same random batches from a numpy array.
    """
    repeats = -(-samples // features.shape[0])
    tiled = np.concatenate([features] * repeats)[:samples]  # (samples, h, w, C), real feature statistics
    results: dict[str, dict[str, float]] = {}
    for samples_per_chunk in (1, 8, 32, 64):
        path = work_dir / f"chunks-{samples_per_chunk}.zarr"
        array = zarr.create_array(
            str(path), shape=tiled.shape, chunks=(samples_per_chunk, *tiled.shape[1:]), dtype="float16", compressors=[blosc_compressor(1)]
        )
        array[:] = tiled
        array = zarr.open_array(str(path), mode="r")
        random = _random_batch_throughput(lambda idx: array.oindex[np.sort(idx)], samples, 64, batches)
        # Whole chunks in random order, at least 64 samples' worth per measurement step; best of 3.
        chunk_order = np.random.default_rng(0).permutation(samples // samples_per_chunk)
        chunks_read = chunk_order[: max(1, batches * 64 // samples_per_chunk)]
        blocks = 0.0
        for _ in range(3):
            started = time.perf_counter()
            for chunk in chunks_read:
                array[chunk * samples_per_chunk : (chunk + 1) * samples_per_chunk]
            blocks = max(blocks, len(chunks_read) * samples_per_chunk / (time.perf_counter() - started))
        results[str(samples_per_chunk)] = {"random_batches": random, "shuffled_blocks": blocks}
        shutil.rmtree(path)
    return results


def run_extract_benchmark(
    work_dir: Path,
    images: int = 48,
    resolution: int = 224,
    batch_size: int = 16,
    vfm: str = "dino2-s14",
    read_batches: int = 20,
    read_samples: int = 2048,
    rounds: int = 3,
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

    # 1. Bare forward on prepared in-memory inputs vs the whole pipeline, interleaved and best of ``rounds``
    #    so machine noise (CPU steal on shared VMs) hits both sides alike.
    encoder = create_encoder(vfm, weights="random", resolution=resolution)
    computer = FeatureComputer(encoder, torch.device("cpu"), batch_size)
    ids = dataset.sample_ids
    inputs = np.concatenate(
        [prepare_sample(dataset, i, ids[i], views, config, resolution, False).model_inputs for i in range(len(dataset))]  # type: ignore[misc]
    )
    computer(inputs[:batch_size])  # warm-up
    store_path = work_dir / "bench.zarr"
    forward_seconds, pipeline_seconds = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        computer(inputs)
        forward_seconds.append(time.perf_counter() - started)
        shutil.rmtree(store_path, ignore_errors=True)
        summary = extract(dataset, store_path, config, device="cpu", show_progress=False)
        pipeline_seconds.append(summary.seconds)
    forward_views_per_second = inputs.shape[0] / min(forward_seconds)
    pipeline_views_per_second = inputs.shape[0] / min(pipeline_seconds)

    # 2. bytes per image.
    store = FeatureStore(store_path, warn_random=False)
    sizes = store.bytes_on_disk()

    # 3. random batches of 64 from the store vs RAM, and the chunking choice on a larger copy of the features.
    in_ram = store.load_features(view=0)  # (N, h, w, C)
    read_store = _random_batch_throughput(lambda idx: store.features(idx, view=0), len(store), 64, read_batches)
    read_ram = _random_batch_throughput(lambda idx: in_ram[np.sort(idx)], len(store), 64, read_batches)
    chunking = _chunking_sweep(work_dir, in_ram, read_samples, read_batches)
    return {
        "machine": machine_description(),
        "vfm": vfm,
        "resolution": resolution,
        "images": images,
        "views_per_image": len(views),
        "batch_size": batch_size,
        "forward_views_per_second": forward_views_per_second,
        "pipeline_views_per_second": pipeline_views_per_second,
        "pipeline_images_per_second": pipeline_views_per_second / len(views),
        "rounds": rounds,
        "pipeline_over_forward": pipeline_views_per_second / forward_views_per_second,
        "store_bytes_per_image": sizes["total"] / len(store),
        "feature_bytes_per_image": sizes["features"] / len(store),
        "feature_compression_ratio": store.attributes["compression"].get("feature_compression_ratio"),
        "read_random64_store_samples_per_second": read_store,
        "read_random64_ram_samples_per_second": read_ram,
        "read_store_over_ram": read_store / read_ram,
        "read_sweep_samples": read_samples,
        "read_by_samples_per_chunk": chunking,
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
    console.print(table)
    sweep = Table(title=f"reading {result['read_sweep_samples']} samples x 1 view by samples per chunk (samples/s)")
    sweep.add_column("samples per chunk", justify="right")
    sweep.add_column("random batches of 64", justify="right")
    sweep.add_column("whole chunks, shuffled order", justify="right")
    for size, figures in result["read_by_samples_per_chunk"].items():
        sweep.add_row(size, f"{figures['random_batches']:.0f}", f"{figures['shuffled_blocks']:.0f}")
    sweep.add_row("RAM (numpy)", f"{result['read_random64_ram_samples_per_second']:.0f}", "")
    console.print(sweep)
