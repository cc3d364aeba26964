"""VQ pre-training from the cache vs the online baseline (VFM run on the images every step), in one run.

Both sides use the same store, config, seed and (sample, view) sequence; rounds alternate between the
two and the best round of each counts, so machine noise hits both alike.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from rich.table import Table

from featcache.bench.extract import machine_description
from featcache.config import load_config
from featcache.console import console
from featcache.datasets import open_dataset, write_synthetic
from featcache.extraction import ExtractConfig, extract
from featcache.training.config import VQTrainConfig
from featcache.training.loop import TrainResult
from featcache.training.vq import train_vq


def build_benchmark_store(work_dir: Path, images: int, resolution: int, device: str, video: bool = False) -> Path:
    """A fresh synthetic store (DINOv2 ViT-S/14, random weights) under ``work_dir`` for training benchmarks; ``video``:
    clips of 8 frames, ``images`` frames in all."""
    if work_dir.exists():
        shutil.rmtree(work_dir)
    if video:
        data = write_synthetic(work_dir / "clips", images=max(2, images // 8), seed=0, video=True, frames=8)
    else:
        data = write_synthetic(work_dir / "shapes", images=images, seed=0)
    store = work_dir / "store.zarr"
    config = ExtractConfig(vfm="dino2-s14", weights="random", resolution=resolution, samples_per_chunk=16, batch_size=16)
    extract(open_dataset(f"clips:{data}" if video else str(data)), store, config, device=device, show_progress=False)
    return store


def cache_versus_online(train: Callable[[bool, int], TrainResult], rounds: int) -> dict[str, float]:
    """Alternate ``train(online, round)`` between the cached and the online side; the best round of each counts."""
    cached, online, waits = [], [], []
    for round_index in range(rounds):
        for is_online in (False, True):
            result = train(is_online, round_index)
            (online if is_online else cached).append(result.samples_per_second)
            if not is_online:
                waits.append(result.data_wait_fraction)
    return {
        "cached_samples_per_second": max(cached),
        "online_samples_per_second": max(online),
        "cached_over_online": max(cached) / max(online),
        "cached_data_wait_fraction": min(waits),
    }


def run_vq_benchmark(
    work_dir: Path,
    config_path: Path,
    images: int = 64,
    resolution: int = 224,
    steps: int = 10,
    rounds: int = 2,
    device: str = "cpu",
) -> dict[str, Any]:
    store = build_benchmark_store(Path(work_dir), images, resolution, device)
    config = load_config(VQTrainConfig, config_path)
    config = replace(config, train=replace(config.train, steps=steps, log_every=steps, checkpoint_every=steps, loader="memory"))

    def train(online: bool, round_index: int) -> TrainResult:
        run = Path(work_dir) / f"run-{'online' if online else 'cached'}-{round_index}"
        return train_vq(store, config, run, device=device, online=online, show_progress=False)

    figures = cache_versus_online(train, rounds)
    return {
        "machine": machine_description(),
        "config": str(config_path),
        "vfm": "dino2-s14 (random weights)",
        "resolution": resolution,
        "batch_size": config.train.batch_size,
        "steps_per_round": steps,
        "rounds": rounds,
        **figures,
    }


def print_vq_benchmark(result: dict[str, Any]) -> None:
    table = Table(title=f"VQ pre-training, cache vs online ({result['config']}, {result['vfm']} at {result['resolution']} px; {result['machine']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("from the cache (samples/s)", f"{result['cached_samples_per_second']:.2f}")
    table.add_row("online: VFM on the images every step (samples/s)", f"{result['online_samples_per_second']:.2f}")
    table.add_row("[bold]cache / online[/]", f"[bold]{result['cached_over_online']:.2f}x[/]")
    table.add_row("share of cached step time waiting for data", f"{100 * result['cached_data_wait_fraction']:.2f}%")
    console.print(table)
