"""SPOT self-training on synthetic shapes (issue 16): the teacher's decoder and attention masks vs the student's.

Usage::

    python benchmarks/spot_distill.py [--seeds 0 1 2] [--teacher-steps 500] [--student-steps 500] [--weights 0.005 0.5]
        [--train-images 192] [--val-images 48] [--work-dir cache/bench-spot] [--json benchmarks/spot-distill-cpu.json]

1. Synthetic shapes (train seed 0, held-out seed 1), DINOv2 ViT-S/14 with RANDOM weights at 112 px (8 x 8 grid).
2. Per seed: the teacher, SPOT's first stage (configs/ocl/spot-tfd9.yaml + tiny + random-vfm, 7 slots); the student,
   SPOT's second stage (spot-distill.yaml, same presets) distilled from that teacher with SPOT's lambda = 0.005 and,
   to see the mechanism at this short length, lambda = 0.5; and a control, the same student config with
   ``distill.enabled=false`` (the student's own recipe without the teacher). Same seed and batch order for all.
3. Each model on the held-out store (protocol vvo): FG-ARI and mBO of the slot-attention masks, and of the decoder
   masks, with how many slots the hard masks use and the largest slot's share of the grid; for students also the last
   logged matched IoU of their hard attention masks with the teacher's (mean over all S matched pairs, so a teacher
   whose masks fill one slot caps it near 1/S). ``--reuse`` scores the finished runs of a work dir again.
Mean +- std (population) over seeds, as JSON and a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from synthetic_stores import mean_std, prepare_stores  # benchmarks/ (the script's folder is on sys.path)

from featcache.config import load_config, merge, parse_overrides
from featcache.stages.evaluate import evaluate_run
from featcache.store import FeatureStore
from featcache.training.config import OCLTrainConfig
from featcache.training.ocl import train_ocl
from featcache.training.runs import evaluation_generator, load_ocl_run, resolve_feature_kind

ROOT = Path(__file__).resolve().parent.parent


def config(method: str, seed: int, steps: int, extra: list[str]) -> OCLTrainConfig:
    layers = [ROOT / f"configs/ocl/{method}.yaml", ROOT / "configs/ocl/tiny.yaml", ROOT / "configs/ocl/random-vfm.yaml"]
    return merge(load_config(OCLTrainConfig, layers), parse_overrides([
        "model.aggregator.num_slots=7", f"train.steps={steps}", f"train.seed={seed}", "train.data_seed=0", "train.batch_size=16",
        "train.loader=memory", f"train.checkpoint_every={steps}", f"train.log_every={max(1, steps // 4)}", "validate_every=0", *extra,
    ]))


def occupancy(run: Path, val_store: Path, masks: str) -> dict[str, float]:
    """How the hard masks (argmax over slots, patch grid) share the image: slots used and the largest slot's share,
    averaged over the held-out centre views (a collapse shows as few slots and a large share)."""
    store = FeatureStore(val_store, warn_random=False)
    model, config, _ = load_ocl_run(run, store, torch.device("cpu"))
    model.use_mask_source(masks)  # type: ignore[union-attr]
    indices = store.valid_indices()
    features = torch.from_numpy(store.features(indices, view="center", kind=resolve_feature_kind(store, config.feature_kind)).astype(np.float32))
    labels = model.predict_masks(features, generator=evaluation_generator(torch.device("cpu"))).argmax(1).flatten(1)  # (B, N)
    used = [len(torch.unique(row)) for row in labels]
    share = [torch.bincount(row).max().item() / row.numel() for row in labels]
    return {"slots_used": float(np.mean(used)), "largest_slot_share": float(np.mean(share))}


def scores(run: Path, val_store: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for masks in ("attention", "decoder"):
        metrics = evaluate_run(run, val_store, device="cpu", show_progress=False, mask_source=masks, out=run / f"eval-{masks}")["metrics"]
        out[masks] = {"fg_ari": metrics["fg_ari"], "mbo": metrics["mbo"], **occupancy(run, val_store, masks)}
    return out


def finished(run: Path, steps: int) -> bool:
    """``--reuse``: the run folder holds a finished run of ``steps`` steps."""
    return (run / "run.json").is_file() and json.loads((run / "run.json").read_text()).get("step") == steps


def last_matched_iou(run: Path) -> float:
    """The last logged ``loss_distill_iou``: mean IoU of the student's hard attention masks with the matched teacher's."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return float([row for row in rows if "loss_distill_iou" in row][-1]["loss_distill_iou"])


def table(result: dict[str, Any]) -> Table:
    view = Table(title=f"SPOT self-training, held-out synthetic shapes, {len(result['seeds'])} seeds (random-weight DINOv2)")
    for column in ("model", "masks", "FG-ARI", "mBO", "slots used", "largest slot"):
        view.add_column(column)
    for model, by_masks in result["summary"].items():
        for masks in ("decoder", "attention") if model == "teacher" else ("attention", "decoder"):
            row = by_masks[masks]
            view.add_row(model, masks, *(f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" for k in ("fg_ari", "mbo", "slots_used", "largest_slot_share")))
    return view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-steps", type=int, default=500)
    parser.add_argument("--student-steps", type=int, default=500)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.005, 0.5])
    parser.add_argument("--train-images", type=int, default=192)
    parser.add_argument("--val-images", type=int, default=48)
    parser.add_argument("--work-dir", type=Path, default=Path("cache/bench-spot"))
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "spot-distill-cpu.json")
    parser.add_argument("--reuse", action="store_true", help="Keep the work dir's stores and finished runs; only score again.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    if args.reuse and (args.work_dir / "val.zarr").is_dir():
        train_store, val_store = args.work_dir / "train.zarr", args.work_dir / "val.zarr"
    else:
        if args.work_dir.exists():
            shutil.rmtree(args.work_dir)
        args.work_dir.mkdir(parents=True)
        train_store, val_store = prepare_stores(args.work_dir, args.train_images, args.val_images)
    print(f"stores ready ({time.perf_counter() - started:.0f} s)", flush=True)
    per_seed = []
    for seed in args.seeds:
        teacher = args.work_dir / f"teacher-{seed}"
        if not (args.reuse and finished(teacher, args.teacher_steps)):
            train_ocl(train_store, config("spot-tfd9", seed, args.teacher_steps, []), teacher, device="cpu", show_progress=False)
        record: dict[str, Any] = {"seed": seed, "teacher": scores(teacher, val_store)}
        students = [(f"student λ={weight:g}", [f"distill.teacher={teacher}", f"distill.weight={weight}"]) for weight in args.weights]
        for name, extra in [*students, ("control (no teacher)", ["distill.enabled=false"])]:
            run = args.work_dir / f"{name.split()[0]}-{extra[-1].split('=')[-1]}-{seed}"
            if not (args.reuse and finished(run, args.student_steps)):
                train_ocl(train_store, config("spot-distill", seed, args.student_steps, extra), run, device="cpu", show_progress=False)
            record[name] = scores(run, val_store)
            if name.startswith("student"):
                record[name]["matched_iou_with_teacher"] = last_matched_iou(run)
        per_seed.append(record)
        print(f"seed {seed}: {json.dumps(record)} ({time.perf_counter() - started:.0f} s)", flush=True)
    models = [key for key in per_seed[0] if key != "seed"]
    summary = {
        model: {masks: {key: mean_std([r[model][masks][key] for r in per_seed]) for key in ("fg_ari", "mbo", "slots_used", "largest_slot_share")}
                for masks in ("attention", "decoder")}
        for model in models
    }
    for model in models:
        if model.startswith("student"):
            summary[model]["matched_iou_with_teacher"] = mean_std([r[model]["matched_iou_with_teacher"] for r in per_seed])
    result = {
        "what": "SPOT self-training on synthetic shapes, random-weight DINOv2 ViT-S/14 (benchmarks/spot_distill.py)",
        "seeds": args.seeds,
        "settings": {"teacher_steps": args.teacher_steps, "student_steps": args.student_steps, "train_images": args.train_images,
                     "val_images": args.val_images, "grid": [8, 8], "num_slots": 7, "distill_weights": args.weights,
                     "control": "spot-distill with distill.enabled=false (the student's recipe without the teacher)"},
        "per_seed": per_seed,
        "summary": summary,
        "seconds": time.perf_counter() - started,
        "reused_runs": args.reuse,
        "machine": f"{platform.machine()} CPU, 1 torch thread",
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    Console().print(table(result))


if __name__ == "__main__":
    main()
