"""The embedded default pipeline that `featcache demo` runs on a fresh machine, without downloads.

Synthetic scenes go through the real ingest path (the folder adapter), then extraction with explicitly
random-initialised DINOv2 ViT-S/14 weights (no model hub is needed; the store records and warns about it),
then a CPU-sized VQ pre-training from the cache, tokenizing, and the code and separability diagnostics.
OCL training and evaluation join once their quality bar is met.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from featcache.analysis.codes import print_code_table
from featcache.analysis.separability import analyze_codes, analyze_separability, print_separability_table
from featcache.console import console, progress_bar
from featcache.datasets import open_dataset, write_synthetic
from featcache.extraction import ExtractConfig, extract
from featcache.inspect import print_store_summary, store_summary
from featcache.quantize import DecoderConfig, QuantizerConfig
from featcache.stages.tokenize import tokenize_store
from featcache.stages.train_vq import VQTrainConfig, train_vq
from featcache.training.loop import print_result
from featcache.training.checkpoint import CONFIG_NAME

#: The demo's quantizer: the tiny preset's shape, small enough for a minute of CPU.
DEMO_VQ = VQTrainConfig(
    quantizer=QuantizerConfig(codebook_size=64, code_dim=32, template_dim=32, encoder_layers=1, encoder_channels=64),
    decoder=DecoderConfig(target="pixels", channels=16, image_size=128),
    steps=150,
    batch_size=16,
    log_every=25,
    checkpoint_every=50,
)


def run_demo(out: Path, images: int = 64, resolution: int = 112, seed: int = 0, vq_steps: int = DEMO_VQ.steps) -> Path:
    """Run synth -> extract -> info -> train-vq -> tokenize -> analyze under ``out``; returns the store path.

    Re-running continues: finished steps are reused (extraction and tokenizing resume, training resumes).
    """
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

    vq_run = out / "vq-tiny"
    vq_config = replace(DEMO_VQ, steps=vq_steps)
    resume = (vq_run / CONFIG_NAME).exists()
    print_result(train_vq(store, vq_config, vq_run, resume=resume))
    tokenize_store(store, vq_run, "demo-vq", overwrite=True)
    print_code_table(analyze_codes(store, "demo-vq", out / "analysis-codes"))
    print_separability_table(analyze_separability([store], token_name="demo-vq"))
    return store
