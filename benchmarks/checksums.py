"""What the crc32c chunk checksums cost (issue 14): extraction images/s and streaming-read throughput, with and
without, side by side in one process.

Usage::

    python benchmarks/checksums.py [--images 48] [--resolution 224] [--rounds 3] [--read-samples 2048]
        [--work-dir cache/bench-checksums] [--json out.json]

1. Extraction: the same synthetic images extracted into a store with checksums (the default for new stores) and one
   without (``extract(..., checksums=False)``), DINOv2 ViT-S/14 with random weights on the CPU; the two sides alternate
   and the best of ``--rounds`` counts for each, so machine noise hits both alike.
2. Reading: the extracted features tiled to ``--read-samples`` samples x 1 view, written with the store's codecs with
   and without the checksum (32 samples per chunk), then read as the streaming loader reads (whole chunks in shuffled
   order) and whole (``[:]``, as the in-memory loader loads); best of ``--rounds``, alternating.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from featcache.bench.extract import machine_description
from featcache.datasets import open_dataset, write_synthetic
from featcache.extraction import ExtractConfig, extract
from featcache.store import FeatureStore
from featcache.store.writer import chunk_codecs

SAMPLES_PER_CHUNK = 32


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def measure_extraction(work_dir: Path, images: int, resolution: int, rounds: int) -> dict[str, float]:
    data = write_synthetic(work_dir / "shapes", images=images, seed=0)
    dataset = open_dataset(str(data))
    config = ExtractConfig(vfm="dino2-s14", weights="random", resolution=resolution, batch_size=16, samples_per_chunk=16)
    wall = {True: float("inf"), False: float("inf")}
    cpu = {True: float("inf"), False: float("inf")}
    for round_index in range(rounds):
        for checksums in ((True, False) if round_index % 2 == 0 else (False, True)):
            out = work_dir / f"store-{'crc' if checksums else 'plain'}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            started = time.process_time()
            summary = extract(dataset, out, config, device="cpu", show_progress=False, checksums=checksums)
            cpu[checksums] = min(cpu[checksums], time.process_time() - started)
            wall[checksums] = min(wall[checksums], summary.seconds)
    return {
        "with_checksums": images / wall[True],
        "without_checksums": images / wall[False],
        "cpu_seconds_per_image_with": cpu[True] / images,
        "cpu_seconds_per_image_without": cpu[False] / images,
    }


def measure_reading(work_dir: Path, features: np.ndarray, samples: int, rounds: int) -> dict[str, dict[str, float]]:
    tiled = np.concatenate([features] * -(-samples // features.shape[0]))[:samples]  # real feature statistics
    arrays = {}
    for checksums in (True, False):
        path = work_dir / f"read-{'crc' if checksums else 'plain'}.zarr"
        shutil.rmtree(path, ignore_errors=True)
        array = zarr.create_array(str(path), shape=tiled.shape, chunks=(SAMPLES_PER_CHUNK, *tiled.shape[1:]), dtype="float16",
                                  compressors=chunk_codecs(1, checksums))
        array[:] = tiled
        arrays[checksums] = zarr.open_array(str(path), mode="r")
    order = np.random.default_rng(0).permutation(samples // SAMPLES_PER_CHUNK)
    best: dict[bool, dict[str, float]] = {side: {"stream": 0.0, "whole": 0.0, "stream_cpu": 0.0} for side in (True, False)}
    for round_index in range(rounds):
        for checksums in ((True, False) if round_index % 2 == 0 else (False, True)):
            array, figures = arrays[checksums], best[checksums]
            started, started_cpu = time.perf_counter(), time.process_time()
            for chunk in order:
                array[chunk * SAMPLES_PER_CHUNK : (chunk + 1) * SAMPLES_PER_CHUNK]
            read = len(order) * SAMPLES_PER_CHUNK
            figures["stream"] = max(figures["stream"], read / (time.perf_counter() - started))
            figures["stream_cpu"] = max(figures["stream_cpu"], read / max(time.process_time() - started_cpu, 1e-9))
            started = time.perf_counter()
            array[:]
            figures["whole"] = max(figures["whole"], samples / (time.perf_counter() - started))
    return {"with_checksums": best[True], "without_checksums": best[False]}


def measure_crc(work_dir: Path) -> float:
    """MB/s of crc32c alone over the stored feature chunks (what reading and writing add per byte)."""
    import google_crc32c

    chunks = [path.read_bytes() for path in (work_dir / "read-plain.zarr").rglob("*") if path.is_file() and path.name != "zarr.json"]
    total = sum(len(chunk) for chunk in chunks)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for chunk in chunks:
            google_crc32c.value(chunk)
        best = min(best, time.perf_counter() - started)
    return total / best / 1e6


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--read-samples", type=int, default=2048)
    parser.add_argument("--work-dir", type=Path, default=Path("cache/bench-checksums"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    shutil.rmtree(args.work_dir, ignore_errors=True)
    args.work_dir.mkdir(parents=True)
    extraction = measure_extraction(args.work_dir, args.images, args.resolution, args.rounds)
    features = FeatureStore(args.work_dir / "store-crc.zarr", warn_random=False).load_features(view=0)
    reading = measure_reading(args.work_dir, features, args.read_samples, args.rounds)
    crc_megabytes_per_second = measure_crc(args.work_dir)
    result = {
        "machine": f"{cpu_model()}; {machine_description()}",
        "vfm": "dino2-s14 (random weights)",
        "resolution": args.resolution,
        "images": args.images,
        "rounds": args.rounds,
        "extract_images_per_second": extraction,
        "extract_ratio": extraction["with_checksums"] / extraction["without_checksums"],
        "extract_cpu_ratio": extraction["cpu_seconds_per_image_with"] / extraction["cpu_seconds_per_image_without"],
        "read_samples": args.read_samples,
        "read_samples_per_chunk": SAMPLES_PER_CHUNK,
        "read_feature_shape": list(features.shape[1:]),
        "read_samples_per_second": reading,
        "stream_ratio": reading["with_checksums"]["stream"] / reading["without_checksums"]["stream"],
        "stream_cpu_ratio": reading["with_checksums"]["stream_cpu"] / reading["without_checksums"]["stream_cpu"],
        "whole_ratio": reading["with_checksums"]["whole"] / reading["without_checksums"]["whole"],
        "crc32c_megabytes_per_second": crc_megabytes_per_second,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(args.work_dir, ignore_errors=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
