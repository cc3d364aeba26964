"""The `featcache` command line: parse arguments, call library functions, print results.

Every command's work lives in a library function that tests call directly; this module only adapts
arguments, prints rich output, and turns ``FeatcacheError`` into one red line and exit code 2.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import typer

from featcache.console import RandomWeightsWarning, console, error_console
from featcache.errors import FeatcacheError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0] if __doc__ else None)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: generate synthetic scenes.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks measured side by side in one run.")
analyze_app = typer.Typer(no_args_is_help=True, help="Diagnostics of features and codes.")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
app.add_typer(analyze_app, name="analyze")


def _write_json(path: Path | None, result: dict[str, Any]) -> None:
    """Write a benchmark's figures to ``path`` when given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    if issubclass(category, RandomWeightsWarning):
        error_console.print(f"[bold yellow]WARNING[/]: {message}")
    else:
        error_console.print(f"[yellow]{category.__name__}[/]: {message}")


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., help="Folder to write (image-folder layout; clip folders with --video)."),
    images: int = typer.Option(2000, help="Number of images (or clips with --video)."),
    seed: int = typer.Option(0, help="Scenes are a pure function of the seed."),
    size: int = typer.Option(256, help="Image side in pixels."),
    video: bool = typer.Option(False, "--video", help="Write clips of moving, bouncing objects."),
    frames: int = typer.Option(8, help="Frames per clip with --video."),
) -> None:
    """Write procedural multi-object scenes with instance masks, classes and boxes."""
    from featcache.console import progress_bar
    from featcache.datasets import write_synthetic

    with progress_bar("images") as progress:
        task = progress.add_task("synth", total=images, rate="")
        write_synthetic(out, images=images, seed=seed, size=size, video=video, frames=frames, progress=lambda n: progress.update(task, completed=n))
    console.print(f"wrote {images} {'clips' if video else 'images'} to {out}")


@app.command()
def extract(
    data: str = typer.Option(..., help="Dataset: a folder, or FORMAT:PATH with FORMAT folder|coco|voc|clevrtex|clips."),
    out: Path = typer.Option(..., help="Store to create, or to resume when it exists with the same inputs."),
    vfm: Optional[str] = typer.Option(None, help="VFM name (see `featcache encoders`); default dino2-s14."),
    split: Optional[str] = typer.Option(None, help="Dataset split (coco: val2017, voc: val, clevrtex: test/val/train)."),
    weights: Optional[str] = typer.Option(None, help="hub (default), random (explicit), or a checkpoint file."),
    weight_seed: Optional[int] = typer.Option(None, help="Seed of --weights random."),
    resolution: Optional[int] = typer.Option(None, help="Model input side; default the VFM's own."),
    crops: Optional[int] = typer.Option(None, help="Random resized crops added to the centre crop and its flip."),
    mask_size: Optional[int] = typer.Option(None, help="Side of cached masks (evaluation resolution)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per forward pass."),
    samples_per_chunk: Optional[int] = typer.Option(None, help="Samples per chunk / write unit."),
    config: Optional[Path] = typer.Option(None, help="YAML extraction config (configs/extract/); flags override it."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    workers: int = typer.Option(0, help="Run on a local dask cluster of N worker processes."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing dask scheduler (workers must see --out and --data)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Record unreadable images in the store and go on."),
    decode_threads: int = typer.Option(2, help="Image-decoding threads feeding the model."),
    set_: list[str] = typer.Option([], "--set", help="Config override key=value (repeatable)."),
) -> None:
    """Run a frozen VFM over every view of a dataset once and write the feature store."""
    from featcache.config import load_config
    from featcache.datasets import open_dataset
    from featcache.extraction import ExtractConfig
    from featcache.extraction import extract as run_extract

    flags = {
        "vfm": vfm,
        "weights": weights,
        "weight_seed": weight_seed,
        "resolution": resolution,
        "crops": crops,
        "mask_size": mask_size,
        "batch_size": batch_size,
        "samples_per_chunk": samples_per_chunk,
    }
    overrides = [f"{key}={value}" for key, value in flags.items() if value is not None] + list(set_)
    extract_config = load_config(ExtractConfig, config, overrides)
    dataset = open_dataset(data, split)
    summary = run_extract(
        dataset,
        out,
        extract_config,
        device=device,
        workers=workers,
        scheduler=scheduler,
        skip_bad=skip_bad,
        decode_threads=decode_threads,
    )
    state = "complete" if summary.complete else "incomplete"
    console.print(
        f"{out}: {summary.samples_run} samples in {summary.seconds:.1f} s ({summary.samples_per_second:.1f} images/s), "
        f"{summary.units_run} units written, {summary.samples_bad} bad, store {state}"
    )
    for sample_id, reason in summary.bad.items():
        error_console.print(f"[yellow]skipped[/] {sample_id}: {reason}")


@app.command("train-vq")
def train_vq_command(
    store: Path = typer.Option(..., help="A complete feature store."),
    out: Path = typer.Option(..., help="Run folder (weights, config.yaml, run.json, metrics, reconstructions.png)."),
    config: Optional[Path] = typer.Option(None, help="YAML config (configs/vq/); default: the paper's settings."),
    set_: list[str] = typer.Option([], "--set", help="Config override key=value, e.g. quantizer.codebook_size=1024."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    online: bool = typer.Option(False, "--online", help="Baseline: compute VFM features from the images every step."),
) -> None:
    """Pre-train the VVO quantizer on cached features (only the quantizer and its decoder train)."""
    from featcache.config import load_config
    from featcache.training.config import VQTrainConfig
    from featcache.training.loop import print_result
    from featcache.training.runs import read_run_config
    from featcache.training.vq import train_vq

    if resume and config is None:
        train_config = read_run_config(out, VQTrainConfig, list(set_))
    else:
        train_config = load_config(VQTrainConfig, config, list(set_))
    result = train_vq(store, train_config, out, device=device, resume=resume, online=online)
    print_result(result)


@app.command()
def tokenize(
    store: Path = typer.Option(..., help="A complete feature store."),
    vq: Path = typer.Option(..., help="A train-vq run folder."),
    name: str = typer.Option(..., help="Name of the token set in the store (several may coexist)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing token set of this name."),
    batch_size: int = typer.Option(256, help="Views per forward pass."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
) -> None:
    """Write the VQ run's token indices (uint16) for every view into the store, with the projected codebook."""
    from featcache.stages.tokenize import tokenize_store

    summary = tokenize_store(store, vq, name, overwrite=overwrite, batch_size=batch_size, device=device)
    console.print(
        f"{store}: token set {summary.name!r} ({summary.codebook_size} codes), {summary.units_run} of {summary.units_total} units "
        f"written in {summary.seconds:.1f} s"
    )


@app.command("import-vvo")
def import_vvo_command(
    checkpoint: Path = typer.Argument(..., help="An official VVO checkpoint (.pth written by Genera1Z/VQ-VFM-OCL)."),
    out: Path = typer.Option(..., help="Folder for the run folders vq/ and ocl/ (must not hold runs)."),
    vfm: str = typer.Option("dino2-s14", help="The featcache VFM whose final-norm features the model reads."),
    tokens: str = typer.Option("vvo-imported", help="Token set the OCL run reads; write it with tokenize --vq OUT/vq."),
    grid: int = typer.Option(16, help="Patch-grid side where the weights hold no position embedding (Dfz, VQ)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="key=value changes of the OCL config for what the weights cannot tell."),
) -> None:
    """Convert an official VVO checkpoint (VQ pre-training, VVO-Tfd/Mlp/Dfz, VVO's DINOSAUR) into featcache run folders."""
    from featcache.stages.import_vvo import import_vvo

    result = import_vvo(checkpoint, out, vfm=vfm, tokens=tokens, grid=(grid, grid), overrides=list(set_ or []))
    console.print(f"{checkpoint}: {result.kind} checkpoint")
    if result.vq_run is not None:
        console.print(f"  quantizer -> {result.vq_run}")
    if result.ocl_run is not None:
        console.print(f"  OCL model -> {result.ocl_run}")
    if result.tokens:
        console.print(f"next: featcache tokenize --store STORE --vq {result.vq_run} --name {result.tokens}; featcache eval {result.ocl_run} --store STORE")
    elif result.ocl_run is not None:
        console.print(f"next: featcache eval {result.ocl_run} --store STORE")


@analyze_app.command("codes")
def analyze_codes_command(
    store: Path = typer.Option(..., help="A store with a token set."),
    tokens: str = typer.Option(..., help="Token set name."),
    out: Optional[Path] = typer.Option(None, help="Folder for codes.json and PNG plots; default runs/analysis/<store>-<tokens>."),
) -> None:
    """Code usage, dead codes, perplexity, nearest-neighbour distances (faiss), quantization error, codes per image."""
    from featcache.analysis.codes import analyze_codes, print_code_table

    out_dir = out or Path("runs") / "analysis" / f"{store.stem}-{tokens}"
    statistics = analyze_codes(store, tokens, out_dir)
    print_code_table(statistics)
    console.print(f"wrote {out_dir}")


@analyze_app.command("separability")
def analyze_separability_command(
    store: list[Path] = typer.Option(..., help="One or more stores with masks (repeat --store to compare)."),
    view: str = typer.Option("center", help="View to analyse."),
    limit: Optional[int] = typer.Option(None, help="Use at most this many images per store."),
    tokens: Optional[str] = typer.Option(None, help="Also analyse the quantized codes of this token set."),
    pca_dims: int = typer.Option(32, help="PCA dimensions for the distance statistics."),
    seed: int = typer.Option(0, help="Seed of PCA subsampling and kMeans."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows as JSON."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write the rows as CSV."),
) -> None:
    """Do the features separate objects? Intra/inter-object distances and per-image kMeans ARI / FG-ARI."""
    from featcache.analysis.separability import analyze_separability, print_separability_table, write_separability_csv, write_separability_json

    rows = analyze_separability(list(store), view=view, limit=limit, token_name=tokens, pca_dims=pca_dims, seed=seed)
    print_separability_table(rows)
    if json_out is not None:
        write_separability_json(rows, json_out)
    if csv_out is not None:
        write_separability_csv(rows, csv_out)


@app.command("train-ocl")
def train_ocl_command(
    store: Path = typer.Option(..., help="A complete feature store (with the token set the config names, if any)."),
    out: Path = typer.Option(..., help="Run folder (weights, config.yaml, run.json, metrics)."),
    config: list[Path] = typer.Option([], help="YAML config(s) (configs/ocl/), layered in order, e.g. a method then tiny.yaml."),
    set_: list[str] = typer.Option([], "--set", help="Config override key=value, e.g. model.aggregator.num_slots=5."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    online: bool = typer.Option(False, "--online", help="Baseline: compute VFM features (and tokens) from the images every step."),
    val_store: Optional[Path] = typer.Option(None, help="Store for periodic validation (default: the training store's first images)."),
) -> None:
    """Train an OCL model (aggregator + decoder only) straight from cached features and tokens."""
    from featcache.config import load_config
    from featcache.training.config import OCLTrainConfig
    from featcache.training.loop import print_result
    from featcache.training.ocl import train_ocl
    from featcache.training.runs import read_run_config

    if resume and not config:
        train_config = read_run_config(out, OCLTrainConfig, list(set_))
    else:
        train_config = load_config(OCLTrainConfig, list(config), list(set_))
    result = train_ocl(store, train_config, out, device=device, resume=resume, online=online, validation_store=val_store)
    print_result(result)


@app.command("eval")
def eval_command(
    run: Path = typer.Argument(..., help="A train-ocl run folder."),
    store: Optional[Path] = typer.Option(None, help="Store to evaluate on (default: the run's training store)."),
    protocol: str = typer.Option(
        "vvo",
        help="featcache's own: vvo (background counted in mBO/mIoU) | dinosaur (not counted); each anchor's metric code "
        "exactly: vvo-code | oclf | videosaur | videosaur-instances. Every choice is written to eval.json.",
    ),
    view: str = typer.Option("center", help="View of the store to score."),
    limit: Optional[int] = typer.Option(None, help="Score at most this many images."),
    baseline: bool = typer.Option(False, "--baseline", help="Also score per-image kMeans on the same features."),
    out: Optional[Path] = typer.Option(None, help="Output folder for eval.json and masks.png."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    masks: Optional[str] = typer.Option(None, help="attention | decoder: masks to score (default: the run's mask_source)."),
) -> None:
    """ARI, FG-ARI, mBO, mIoU (Hungarian) with the protocol recorded; rich table, JSON and a PNG grid."""
    from featcache.stages.evaluate import evaluate_run, print_evaluation

    result = evaluate_run(run, store, protocol_name=protocol, view=view, limit=limit, baseline=baseline, out=out, device=device,
                          mask_source=masks)
    print_evaluation(result)


@app.command()
def sweep(
    spec: Path = typer.Argument(..., help="Sweep spec YAML (configs/ablations/)."),
    seeds: Optional[int] = typer.Option(None, help="Run seeds 0..N-1 instead of the spec's seeds."),
    out: Optional[Path] = typer.Option(None, help="Sweep folder; default runs/sweeps/<name>."),
    set_: list[str] = typer.Option([], "--set", help="Override key=value: a spec key (store=, eval.limit=, grid.KEY=[..]) or any OCL config key for every run."),
    workers: int = typer.Option(0, help="Run on a local dask cluster of N single-threaded worker processes."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing dask scheduler (workers must see the stores and --out)."),
    fuse_seeds: bool = typer.Option(False, "--fuse-seeds", help="Train the seeds of each configuration together over shared batches."),
    online: bool = typer.Option(False, "--online", help="Baseline: compute VFM features from the images every step."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    gpu_fraction: Optional[float] = typer.Option(None, help="Share of a GPU one run takes on a dask cluster (default: the spec's, 1.0)."),
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="Also write rows and summary to this JSON file."),
) -> None:
    """Train and evaluate every configuration x seed of a sweep spec; skips finished runs; exit 1 if a run failed."""
    from featcache.sweeps import load_sweep_spec, run_sweep
    from featcache.sweeps.results import print_summary_table

    sweep_spec = load_sweep_spec(spec, list(set_))
    result = run_sweep(sweep_spec, out=out, seeds=seeds, workers=workers, scheduler=scheduler, fuse_seeds=fuse_seeds,
                       online=online, device=device, gpu_fraction=gpu_fraction)
    print_summary_table(result.summary, f"sweep {sweep_spec.name} ({result.ran} runs done now, {result.skipped} finished before)"
                        + (" - RANDOM VFM weights" if result.random_weights else ""))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"out": str(result.out), "rows": result.rows, "summary": result.summary}, indent=2, default=float))
    error_console.print(f"wrote {result.out}")
    for row in result.failed:
        error_console.print(f"[bold red]failed[/] {row['config_id']} seed {row['seed']}: {row['error']} ({result.out / row['run_dir'] / 'error.txt'})")
    if result.failed:
        raise typer.Exit(1)


@app.command()
def report(
    sweep_dir: Path = typer.Argument(..., help="A sweep folder written by `featcache sweep`."),
    out: Path = typer.Option(..., help="Folder for report.md, report.html and their PNG files."),
) -> None:
    """Markdown + static HTML report of a sweep: summary table, metric bar charts, loss curves, mask grids."""
    from featcache.sweeps import write_report

    path = write_report(sweep_dir, out)
    console.print(f"wrote {path} and {path.with_suffix('.html')}")


@app.command()
def info(
    store: Path = typer.Argument(..., help="A featcache store."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of a table."),
) -> None:
    """Summarise a store: provenance, layout, completeness and bytes on disk."""
    from featcache.store.summary import print_store_summary, store_summary

    summary = store_summary(store)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_store_summary(summary)


@app.command()
def encoders() -> None:
    """List the registered VFMs with their default configs."""
    from featcache.encoders.table import print_encoders

    print_encoders()


@bench_app.command("extract")
def bench_extract(
    images: int = typer.Option(96, help="Images to extract (each gives 2 views)."),
    resolution: int = typer.Option(224, help="Model input side."),
    batch_size: int = typer.Option(16, help="Images per forward pass."),
    vfm: str = typer.Option("dino2-s14", help="VFM (random weights)."),
    work_dir: Path = typer.Option(Path("cache/bench"), help="Scratch folder (re-created)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Extraction images/s vs the bare model forward, store bytes/image, random-batch read throughput."""
    from featcache.bench.extract import print_extract_benchmark, run_extract_benchmark

    result = run_extract_benchmark(work_dir, images=images, resolution=resolution, batch_size=batch_size, vfm=vfm)
    print_extract_benchmark(result)
    _write_json(json_out, result)


@bench_app.command("vq")
def bench_vq(
    config: Path = typer.Option(Path("configs/vq/tiny.yaml"), help="VQ config used by both sides."),
    images: int = typer.Option(64, help="Synthetic images extracted into the benchmark store."),
    resolution: int = typer.Option(224, help="VFM input side."),
    steps: int = typer.Option(10, help="Training steps per round and side."),
    rounds: int = typer.Option(2, help="Alternating rounds; the best of each side counts."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    work_dir: Path = typer.Option(Path("cache/bench-vq"), help="Scratch folder (re-created)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """VQ pre-training samples/s from the cache vs online VFM features, same config, same run."""
    from featcache.bench.vq import print_vq_benchmark, run_vq_benchmark

    result = run_vq_benchmark(work_dir, config, images=images, resolution=resolution, steps=steps, rounds=rounds, device=device)
    print_vq_benchmark(result)
    _write_json(json_out, result)


@bench_app.command("ocl")
def bench_ocl(
    configs: Path = typer.Option(Path("configs/ocl"), help="Folder with the OCL configs (vvo-tfd, dinosaur-mlp, tiny)."),
    images: int = typer.Option(64, help="Synthetic images extracted into the benchmark store."),
    resolution: int = typer.Option(224, help="VFM input side."),
    steps: int = typer.Option(10, help="Training steps per round and side."),
    rounds: int = typer.Option(2, help="Alternating rounds; the best of each side counts."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    work_dir: Path = typer.Option(Path("cache/bench-ocl"), help="Scratch folder (re-created)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """OCL training samples/s from the cache vs online, for vvo-tfd and dinosaur-mlp, same run."""
    from featcache.bench.ocl import print_ocl_benchmark, run_ocl_benchmark

    result = run_ocl_benchmark(work_dir, configs, images=images, resolution=resolution, steps=steps, rounds=rounds, device=device)
    print_ocl_benchmark(result)
    _write_json(json_out, result)


@bench_app.command("sweep")
def bench_sweep(
    configs: Path = typer.Option(Path("configs/ocl"), help="Folder with the OCL configs (its ../ablations holds decoders-tiny.yaml)."),
    seeds: int = typer.Option(3, help="Seeds per decoder."),
    images: int = typer.Option(64, help="Synthetic images extracted into the benchmark store."),
    resolution: int = typer.Option(224, help="VFM input side."),
    steps: int = typer.Option(20, help="Training steps per run."),
    rounds: int = typer.Option(2, help="Alternating rounds; the best of each side counts."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    work_dir: Path = typer.Option(Path("cache/bench-sweep"), help="Scratch folder."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Wall time of the tiny decoder sweep with seeds one after another, fused, and online, same run."""
    from featcache.bench.sweep import print_sweep_benchmark, run_sweep_benchmark

    result = run_sweep_benchmark(work_dir, configs, seeds=seeds, images=images, resolution=resolution, steps=steps, rounds=rounds, device=device)
    print_sweep_benchmark(result)
    _write_json(json_out, result)


@bench_app.command("known-answer")
def bench_known_answer(
    method: list[str] = typer.Option([], "--method", help="perfect-slots/dinosaur-mlp | segments/dinosaur-mlp | tokens/vvo-tfd (repeatable; default all)."),
    seeds: int = typer.Option(3, help="Seeds 0..N-1 of every method."),
    config: list[Path] = typer.Option([], "--config", help="Config file layered after the method config and configs/ocl/known-answer.yaml (repeatable)."),
    set_: list[str] = typer.Option([], "--set", help="Config override KEY=VALUE for every method (repeatable), e.g. train.lr_schedule=constant."),
    train_images: int = typer.Option(1024, help="Scenes in the training store."),
    validation_images: int = typer.Option(256, help="Held-out scenes every method is scored on."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    out: Path = typer.Option(Path("runs/known-answer"), help="Work folder (stores, runs, table, curves); finished seeds with the same settings are reused."),
) -> None:
    """Known-answer learning suite: FG-ARI on synthetic stores whose segmentation is known, against each task's bar."""
    from featcache.bench.known_answer import featcache_methods, print_summary, run_suite, write_summary

    methods = featcache_methods(list(method) or None, list(config), list(set_), device)
    summary = run_suite(out, methods, list(range(seeds)), train_images=train_images, validation_images=validation_images)
    paths = write_summary(summary, out)
    print_summary(summary)
    console.print(f"wrote {paths['csv']}, {paths['json']}, {paths['curves']} and {paths['png']}")


@app.command("run")
def run_command(
    pipeline: Path = typer.Argument(..., help="Pipeline YAML (pipelines/); shipped ones are found from any directory."),
    workdir: Optional[Path] = typer.Option(None, help="Folder for outputs and stage records; default the file's workdir or runs/pipelines/<name>."),
    set_: list[str] = typer.Option([], "--set", help="Stage param override STAGE.PARAM=VALUE, e.g. train-vq.set.train.steps=100 (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and show what would run, without running anything."),
    force: list[str] = typer.Option([], "--force", help="Re-run this stage (and everything downstream) even if done (repeatable)."),
) -> None:
    """Run a declarative pipeline: stages in order, skipping those done with the same inputs (by fingerprint)."""
    from featcache.pipelines import load_pipeline, print_pipeline_result, run_pipeline

    loaded = load_pipeline(pipeline, list(set_), workdir)
    result = run_pipeline(loaded, force=list(force), dry_run=dry_run)
    print_pipeline_result(result)
    if result.error is not None:
        raise FeatcacheError(result.error)


@app.command()
def quickstart(
    out: Optional[Path] = typer.Option(None, help="Workdir for everything it writes; default runs/pipelines/quickstart."),
    set_: list[str] = typer.Option([], "--set", help="Stage param override STAGE.PARAM=VALUE (as for `featcache run`)."),
) -> None:
    """Synthetic scenes -> extract (random weights) -> VQ -> tokens -> two OCL decoders -> report, in minutes on a CPU."""
    from featcache.pipelines import print_pipeline_result, run_quickstart

    result = run_quickstart(out, list(set_))
    print_pipeline_result(result)
    if result.error is not None:
        raise FeatcacheError(result.error)
    console.print(f"report: {result.output('report', 'report')} (and report.html next to it)")


def main() -> None:
    """Console-script entry point: one-line errors for bad input, tracebacks only for bugs."""
    warnings.showwarning = _show_warning
    try:
        app()
    except FeatcacheError as error:
        error_console.print(f"[bold red]error[/]: {error}", soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
