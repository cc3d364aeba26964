"""MSF vs VVO on synthetic shapes (issue 17, VVO's Table 4 at CPU size): code usage, token maps and OCL guidance.

Usage::

    python benchmarks/msf_vs_vvo.py [--seeds 0 1 2] [--vq-steps 200] [--ocl-steps 400] [--train-images 192]
        [--val-images 48] [--methods vvo-tfd vvo-mlp] [--work-dir cache/bench-msf] [--json benchmarks/msf-vs-vvo-cpu.json]
        [--markdown benchmarks/msf-vs-vvo-cpu.md]

1. Synthetic shapes (train seed 0, held-out seed 1), DINOv2 ViT-S/14 with RANDOM weights at 112 px: an 8 x 8 grid,
   so MSF's levels are 8 x 8, 4 x 4 and 2 x 2.
2. Per seed: VVO's quantizer (configs/vq/tiny.yaml) and MSF (configs/vq/msf-c256.yaml + tiny.yaml: shared 64 codes,
   specified 64 / 32 / 16), same seed, steps and batch order; both tokenize the train and held-out stores.
3. On the held-out store: code usage and perplexity of every codebook; token-map FG-ARI per scale: each image's
   token map (VVO: the code; MSF level i: the (shared, specified) pair, and the shared code alone) taken as a
   segmentation, upsampled (nearest) to the mask size, scored by FG-ARI against the ground truth.
4. OCL (VVO-Tfd by default, ``--methods vvo-tfd vvo-mlp`` adds VVO-Mlp; tiny + random-vfm presets, 7 slots)
   guided by each token set, same seed and batch order, evaluated on the held-out store (protocol vvo).
Mean +- std (population) over seeds, written as JSON and a markdown table.
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
from synthetic_stores import mean_std, prepare_stores  # benchmarks/ (the script's folder is on sys.path)

from featcache.analysis.clustering import cell_index
from featcache.analysis.codes import code_statistics, multi_codebook_statistics
from featcache.config import load_config, merge, parse_overrides
from featcache.metrics.segmentation import ari_batch, mean_skipping_nan
from featcache.stages.evaluate import evaluate_run
from featcache.store import FeatureStore
from featcache.training.config import OCLTrainConfig, VQTrainConfig
from featcache.training.ocl import train_ocl
from featcache.training.runs import load_vq_run
from featcache.training.tokenize import tokenize_store
from featcache.training.vq import train_vq

ROOT = Path(__file__).resolve().parent.parent


def token_map_fg_ari(tokens: np.ndarray, masks: np.ndarray) -> float:
    """Mean FG-ARI of label maps ``tokens`` (N, h, w), upsampled by nearest cell to the masks (N, M, M)."""
    size = masks.shape[-1]
    rows, cols = cell_index(size, tokens.shape[1]), cell_index(size, tokens.shape[2])
    full = tokens[:, rows[:, None], cols[None, :]]  # (N, M, M)
    return mean_skipping_nan(ari_batch(masks.astype(np.int64), full.astype(np.int64), ignore_background=True))


def vq_config(kind: str, seed: int, steps: int) -> VQTrainConfig:
    files = ["configs/vq/tiny.yaml"] if kind == "vvo" else ["configs/vq/msf-c256.yaml", "configs/vq/tiny.yaml"]
    config = load_config(VQTrainConfig, [ROOT / f for f in files])
    return merge(config, parse_overrides([
        "decoder.image_size=64", f"train.steps={steps}", f"train.seed={seed}", "train.batch_size=16", "train.loader=memory",
        f"train.checkpoint_every={steps}", f"train.log_every={max(1, steps // 4)}",
    ]))


def code_rows(store: FeatureStore, name: str) -> dict[str, Any]:
    """Usage / perplexity of each codebook of token set ``name`` on the held-out store's centre view."""
    indices = store.valid_indices()
    tokens = store.tokens(name, indices, "center")
    arrays = store.token_arrays(name)
    if "codebook_specified" in arrays:
        stats = multi_codebook_statistics(tokens, {"shared": store.codebook(name), "specified": arrays["codebook_specified"]})
        assert stats.codebooks is not None
        result = {key: {"used_codes": s.used_codes, "num_codes": s.num_codes, "perplexity": s.perplexity} for key, s in stats.codebooks.items()}
        result["pairs"] = {"used": stats.joint_used_pairs, "perplexity": stats.joint_perplexity}
        return result
    stats = code_statistics(tokens, store.codebook(name))
    return {"codebook": {"used_codes": stats.used_codes, "num_codes": stats.num_codes, "perplexity": stats.perplexity}}


@torch.no_grad()
def token_maps(run: Path, store: FeatureStore) -> dict[str, float]:
    """Token-map FG-ARI per scale of a VQ run on the held-out store (MSF: pair and shared code per level)."""
    model, config, info, _ = load_vq_run(run, torch.device("cpu"))
    indices = store.valid_indices()
    features = torch.from_numpy(store.features(indices, view="center", kind=info["store"]["feature_kind"]).astype(np.float32))
    masks = store.masks(indices, view="center")
    if config.quantizer.kind == "vvo":
        tokens, _ = model.tokenize(features)
        return {"scale0": token_map_fg_ari(tokens.numpy(), masks)}
    result = {}
    for scale in range(config.quantizer.num_scales):  # type: ignore[attr-defined]
        tokens, _ = model.quantizer.tokenize(features, scale=scale)  # (N, 2, h_i, w_i)
        sizes = config.quantizer.specified_sizes()  # type: ignore[attr-defined]
        pair = tokens[:, 0] * sizes[scale] + tokens[:, 1]
        result[f"scale{scale}"] = token_map_fg_ari(pair.numpy(), masks)
        result[f"scale{scale}_shared"] = token_map_fg_ari(tokens[:, 0].numpy(), masks)
    return result


def ocl_config(method: str, tokens: str, seed: int, steps: int) -> OCLTrainConfig:
    config = load_config(OCLTrainConfig, [ROOT / f"configs/ocl/{method}.yaml", ROOT / "configs/ocl/tiny.yaml", ROOT / "configs/ocl/random-vfm.yaml"])
    return merge(config, parse_overrides([
        "model.aggregator.num_slots=7", f"tokens={tokens}", f"train.steps={steps}", f"train.seed={seed}", "train.data_seed=0",
        "train.batch_size=16", "train.loader=memory", f"train.checkpoint_every={steps}", f"train.log_every={max(1, steps // 4)}",
        "validate_every=0",
    ]))


def markdown(result: dict[str, Any]) -> str:
    def cell(entry: dict[str, float]) -> str:
        return f"{entry['mean']:.3f} ± {entry['std']:.3f}"

    summary = result["summary"]
    lines = [
        f"MSF vs VVO on synthetic shapes (random-weight DINOv2 ViT-S/14, 112 px, 8 x 8 grid; {len(result['seeds'])} seeds, "
        f"VQ {result['settings']['vq_steps']} steps, OCL {result['settings']['ocl_steps']} steps; mean ± std over seeds)",
        "",
        "| measure | VVO | MSF |",
        "| --- | --- | --- |",
    ]
    for key, label in (("used_codes", "used codes"), ("perplexity", "perplexity")):
        lines.append(f"| shared / only codebook {label} (of {result['codebook_sizes']['vvo']} / {result['codebook_sizes']['msf'][0]}) "
                     f"| {cell(summary['vvo']['codebook'][key])} | {cell(summary['msf']['shared'][key])} |")
        lines.append(f"| specified codebook (level 0) {label} (of {result['codebook_sizes']['msf'][1]}) | - | {cell(summary['msf']['specified'][key])} |")
    lines.append(f"| (shared, specified) pairs used / perplexity | - | {cell(summary['msf']['pairs']['used'])} / {cell(summary['msf']['pairs']['perplexity'])} |")
    for scale in range(3):
        vvo = cell(summary["vvo"]["token_fg_ari"]["scale0"]) if scale == 0 else "-"
        msf = summary["msf"]["token_fg_ari"]
        lines.append(f"| token-map FG-ARI, scale {scale} (MSF: pair / shared code) | {vvo} | {cell(msf[f'scale{scale}'])} / {cell(msf[f'scale{scale}_shared'])} |")
    for method in result["settings"]["methods"]:
        lines.append(f"| OCL FG-ARI, {method} | {cell(summary['vvo']['ocl'][method]['fg_ari'])} | {cell(summary['msf']['ocl'][method]['fg_ari'])} |")
        lines.append(f"| OCL mBO, {method} | {cell(summary['vvo']['ocl'][method]['mbo'])} | {cell(summary['msf']['ocl'][method]['mbo'])} |")
    lines.append("")
    lines.append(f"Total time {result['seconds']:.0f} s on {result['machine']}.")
    return "\n".join(lines) + "\n"


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean +- std over seeds of every leaf number of the per-seed records."""
    def walk(items: list[Any]) -> Any:
        first = items[0]
        if isinstance(first, dict):
            return {key: walk([item[key] for item in items]) for key in first}
        return mean_std([float(item) for item in items])

    return walk([{kind: record[kind] for kind in ("vvo", "msf")} for record in per_seed])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--vq-steps", type=int, default=200)
    parser.add_argument("--ocl-steps", type=int, default=400)
    parser.add_argument("--train-images", type=int, default=192)
    parser.add_argument("--val-images", type=int, default=48)
    parser.add_argument("--methods", nargs="+", default=["vvo-tfd"])
    parser.add_argument("--work-dir", type=Path, default=Path("cache/bench-msf"))
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "msf-vs-vvo-cpu.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "benchmarks" / "msf-vs-vvo-cpu.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    if args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    args.work_dir.mkdir(parents=True)
    train_store, val_store = prepare_stores(args.work_dir, args.train_images, args.val_images)
    print(f"stores ready ({time.perf_counter() - started:.0f} s)", flush=True)
    per_seed = []
    for seed in args.seeds:
        record: dict[str, Any] = {"seed": seed}
        for kind in ("vvo", "msf"):
            run = args.work_dir / f"vq-{kind}-{seed}"
            train_vq(train_store, vq_config(kind, seed, args.vq_steps), run, device="cpu", show_progress=False)
            name = f"{kind}-s{seed}"
            for store in (train_store, val_store):
                tokenize_store(store, run, name, device="cpu", show_progress=False)
            val = FeatureStore(val_store, warn_random=False)
            entry = code_rows(val, name)
            entry["token_fg_ari"] = token_maps(run, val)
            entry["ocl"] = {}
            for method in args.methods:
                ocl_run = args.work_dir / f"ocl-{method}-{kind}-{seed}"
                train_ocl(train_store, ocl_config(method, name, seed, args.ocl_steps), ocl_run, device="cpu", show_progress=False)
                metrics = evaluate_run(ocl_run, val_store, device="cpu", show_progress=False)["metrics"]
                entry["ocl"][method] = {"fg_ari": metrics["fg_ari"], "mbo": metrics["mbo"]}
            record[kind] = entry
            print(f"seed {seed} {kind}: {json.dumps(entry)} ({time.perf_counter() - started:.0f} s)", flush=True)
        per_seed.append(record)
    vvo_config, msf_config = vq_config("vvo", 0, 1).quantizer, vq_config("msf", 0, 1).quantizer
    result = {
        "what": "MSF vs VVO quantizer on synthetic shapes, random-weight DINOv2 ViT-S/14 (benchmarks/msf_vs_vvo.py)",
        "seeds": args.seeds,
        "settings": {"vq_steps": args.vq_steps, "ocl_steps": args.ocl_steps, "train_images": args.train_images,
                     "val_images": args.val_images, "methods": args.methods, "grid": [8, 8]},
        "codebook_sizes": {"vvo": vvo_config.codebook_size, "msf": [msf_config.codebook_size, *msf_config.specified_sizes()]},  # type: ignore[attr-defined]
        "per_seed": per_seed,
        "summary": summarise(per_seed),
        "seconds": time.perf_counter() - started,
        "machine": f"{platform.machine()} CPU, 1 torch thread",
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    args.markdown.write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
