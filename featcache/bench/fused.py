"""Fused multi-seed OCL training vs the same seeds trained one after another, in one run.

Both sides train the same configs (method config + tiny preset, a shared data_seed) on the same store;
rounds alternate between the sides and the best round of each counts, so machine noise hits both alike.
Reported: end-to-end wall time (setup included: the fused side opens the store, loads the batches and
builds its stacked model once) and training-loop time, and their ratios separate / fused.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from rich.table import Table

from featcache.bench.extract import machine_description
from featcache.bench.ocl import METHODS, build_tokenized_benchmark_store
from featcache.config import load_config
from featcache.console import console
from featcache.stages.train_ocl import OCLTrainConfig, train_ocl
from featcache.training.fused import train_ocl_fused_seeds


def _timed(train: Callable[[Path], float], folder: Path) -> tuple[float, float]:
    """(wall seconds, training-loop seconds) of one side of a round; ``train(folder)`` returns its loop seconds."""
    started = time.perf_counter()
    loop_seconds = train(folder)
    return time.perf_counter() - started, loop_seconds


def fused_versus_separate(
    store: Path, configs: list[OCLTrainConfig], work_dir: Path, rounds: int, device: str
) -> dict[str, float]:
    """Alternate fused and sequential training of ``configs``; the best round of each side counts."""

    def fused(folder: Path) -> float:
        results = train_ocl_fused_seeds(store, configs, [folder / f"fused-seed{c.seed}" for c in configs], device=device, show_progress=False)
        return results[0].seconds  # every seed reports the one fused loop's time

    def separate(folder: Path) -> float:
        return sum(train_ocl(store, c, folder / f"separate-seed{c.seed}", device=device, show_progress=False).seconds for c in configs)

    times: dict[str, list[tuple[float, float]]] = {"fused": [], "separate": []}
    for round_index in range(rounds):
        folder = work_dir / f"round-{round_index}"
        times["fused"].append(_timed(fused, folder))
        times["separate"].append(_timed(separate, folder))
    fused_wall, separate_wall = min(t[0] for t in times["fused"]), min(t[0] for t in times["separate"])
    fused_loop, separate_loop = min(t[1] for t in times["fused"]), min(t[1] for t in times["separate"])
    samples = len(configs) * configs[0].steps * configs[0].batch_size
    return {
        "fused_seconds": fused_wall,
        "separate_seconds": separate_wall,
        "speedup": separate_wall / fused_wall,
        "fused_loop_seconds": fused_loop,
        "separate_loop_seconds": separate_loop,
        "loop_speedup": separate_loop / fused_loop,
        "fused_samples_per_second": samples / fused_loop,
        "separate_samples_per_second": samples / separate_loop,
    }


def run_fused_benchmark(
    work_dir: Path,
    configs_dir: Path,
    seeds: int = 3,
    images: int = 64,
    resolution: int = 224,
    steps: int = 10,
    rounds: int = 2,
    device: str = "cpu",
    methods: tuple[str, ...] = METHODS,
) -> dict[str, Any]:
    """Fused vs sequential training of ``seeds`` seeds for each method (tiny preset) on a synthetic store."""
    work_dir = Path(work_dir)
    store = build_tokenized_benchmark_store(work_dir, configs_dir, images, resolution, device)
    result: dict[str, Any] = {
        "machine": machine_description(),
        "resolution": resolution,
        "seeds": seeds,
        "steps_per_round": steps,
        "rounds": rounds,
        "device": device,
        "methods": {},
    }
    for method in methods:
        base = load_config(OCLTrainConfig, [configs_dir / f"{method}.yaml", configs_dir / "tiny.yaml"])
        base = replace(base, steps=steps, log_every=steps, checkpoint_every=steps, validate_every=0, loader="memory", data_seed=0)
        configs = [replace(base, seed=seed) for seed in range(seeds)]
        result["methods"][method] = {"batch_size": base.batch_size, **fused_versus_separate(store, configs, work_dir / method, rounds, device)}
    return result


def print_fused_benchmark(result: dict[str, Any]) -> None:
    table = Table(
        title=f"{result['seeds']} seeds fused vs one after another (tiny preset, {result['steps_per_round']} steps, "
        f"DINOv2 ViT-S/14 random weights at {result['resolution']} px, {result['device']}; {result['machine']})"
    )
    for column in ("method", "fused (s)", "separate (s)", "separate / fused", "loop: fused (s)", "loop: separate (s)", "loop: separate / fused"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, figures in result["methods"].items():
        table.add_row(
            method,
            f"{figures['fused_seconds']:.2f}",
            f"{figures['separate_seconds']:.2f}",
            f"[bold]{figures['speedup']:.2f}x[/]",
            f"{figures['fused_loop_seconds']:.2f}",
            f"{figures['separate_loop_seconds']:.2f}",
            f"{figures['loop_speedup']:.2f}x",
        )
    console.print(table)
