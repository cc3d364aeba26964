"""The embedded default pipeline that `featcache demo` runs on a fresh machine, without downloads.

Synthetic scenes go through the real ingest path (the folder adapter), then extraction with explicitly
random-initialised DINOv2 ViT-S/14 weights (no model hub is needed; the store records and warns about it).
Later stages (VQ, OCL training, evaluation) append their steps here.
"""

from __future__ import annotations

from pathlib import Path

from featcache.console import console, progress_bar
from featcache.datasets import open_dataset, write_synthetic
from featcache.extraction import ExtractConfig, extract
from featcache.inspect import print_store_summary, store_summary


def run_demo(out: Path, images: int = 64, resolution: int = 112, seed: int = 0) -> Path:
    """Run synth -> extract -> info under ``out``; returns the store path. Re-running resumes/reuses."""
    out = Path(out)
    data = out / "shapes"
    if not (data / "images").is_dir():
        with progress_bar("images") as progress:
            task = progress.add_task("synth", total=images, rate="")
            write_synthetic(data, images=images, seed=seed, progress=lambda n: progress.update(task, completed=n))
    store = out / f"shapes-dino2-s14-r{resolution}.zarr"
    config = ExtractConfig(vfm="dino2-s14", weights="random", resolution=resolution, samples_per_chunk=16, batch_size=16)
    summary = extract(open_dataset(str(data)), store, config)
    console.print(f"extracted {summary.samples_run} images at {summary.samples_per_second:.1f} images/s into {store}")
    print_store_summary(store_summary(store))
    return store
