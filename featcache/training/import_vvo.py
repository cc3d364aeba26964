"""`featcache import-vvo`: an official VVO checkpoint as featcache run folders, so eval and tokenize use it.

Writes up to two ordinary run folders under ``out``:
  vq/   the quantizer (``mediat``): ``featcache tokenize --vq OUT/vq --name NAME`` writes its token set;
  ocl/  the OCL model (projection, aggregator, decoder): ``featcache eval OUT/ocl --store STORE``.
The OCL run names the token set ``tokens`` that the VQ run will write, so its decoder reads the imported
quantizer's codes. Each run.json records the checkpoint (path and sha256) and the features the model expects
(VFM, channels, grid, final-norm features as VVO's DINOv2 with ``norm_out=True``); eval and tokenize refuse
stores that differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featcache import records
from featcache.config import deep_update, merge, to_dict
from featcache.encoders import ENCODERS
from featcache.errors import FeatcacheError
from featcache.interop.vvo_checkpoint import (
    VVOCheckpoint,
    checkpoint_grid,
    feature_channels,
    ocl_model_config,
    ocl_state_dict,
    quantizer_parts,
    read_vvo_checkpoint,
)
from featcache.ocl import OCLModel
from featcache.operations import overrides_mapping
from featcache.provenance import file_sha256
from featcache.quantize.model import VQModel
from featcache.training.checkpoint import WEIGHTS_NAME, prepare_run_folder, save_checkpoint
from featcache.training.config import OCLTrainConfig, VQTrainConfig

#: Saved as train_state.pt: an imported run has no optimizer state, so ``--resume`` is refused by name.
IMPORTED_STATE_KEY = "imported_from"


@dataclass(frozen=True)
class ImportResult:
    """What was imported: the checkpoint's model kind and the run folders written (None where not applicable)."""

    kind: str
    vq_run: Path | None
    ocl_run: Path | None
    tokens: str | None


def expected_features(vfm: str, channels: int, grid: tuple[int, int], checkpoint: VVOCheckpoint, sha256: str) -> dict[str, Any]:
    """The ``store`` entry of run.json: what eval/tokenize check a store against (no store was trained on here)."""
    spec = ENCODERS.get(vfm)
    return {
        "path": None,
        "identity": None,
        "encoder": spec.name,
        "channels": channels,
        "grid": list(grid),
        "feature_kind": "final_norm",
        "weights": {"source": "official VVO checkpoint", "location": str(checkpoint.path), "sha256": sha256},
        "dataset": None,
    }


def import_vvo(
    checkpoint_path: str | Path,
    out: str | Path,
    vfm: str = "dino2-s14",
    tokens: str = "vvo-imported",
    grid: tuple[int, int] = (16, 16),
    overrides: dict[str, Any] | list[str] | None = None,
) -> ImportResult:
    """Convert ``checkpoint_path`` into run folders under ``out`` (refused if they exist).

    ``vfm``: the featcache encoder whose features the model reads (VVO's configs: DINOv2 ViT-S/14, 224 px input,
    final-norm features: ``dino2-s14``); ``grid``: the patch grid where the weights hold no position embedding
    (Dfz, VQ); ``overrides``: dotted-key changes (a mapping, or ``key=value`` strings) of the OCL train config for what the weights cannot tell,
    e.g. ``model.decoder.dfz.heads=8`` or ``model.aggregator.iterations=3`` (the official image configs' values
    are the defaults).
    """
    checkpoint = read_vvo_checkpoint(checkpoint_path)
    sha256 = file_sha256(checkpoint.path)
    out = Path(out)
    channels = feature_channels(checkpoint)
    if channels != ENCODERS.get(vfm).channels:
        raise FeatcacheError(f"{checkpoint.path} reads {channels}-channel features; --vfm {vfm} gives {ENCODERS.get(vfm).channels}")
    grid = checkpoint_grid(checkpoint, grid)
    features = expected_features(vfm, channels, grid, checkpoint, sha256)
    source = {"path": str(checkpoint.path), "sha256": sha256, "kind": checkpoint.kind, "format": "Genera1Z/VQ-VFM-OCL ModelWrap.save"}

    # Everything is built and checked before anything is written, so a bad --set leaves no half-imported folder.
    vq_model = ocl_model = None
    if checkpoint.kind != "dinosaur":  # VVO's DINOSAUR has no quantizer
        quantizer_config, decoder_config, vq_state, codebook = quantizer_parts(checkpoint, grid)
        vq_config = VQTrainConfig(quantizer=quantizer_config, decoder=decoder_config, feature_kind="final_norm")
        vq_model = VQModel(quantizer_config, decoder_config, channels, grid)
        vq_model.load_state_dict(vq_state, strict=True)
    if checkpoint.kind != "vq":
        changes = overrides_mapping(overrides)
        model_config = ocl_model_config(checkpoint, changes.pop("model", None))
        uses_tokens = checkpoint.kind != "dinosaur"
        config = merge(OCLTrainConfig(model=model_config), deep_update({"tokens": tokens if uses_tokens else "", "feature_kind": "final_norm"}, changes))
        ocl_model = OCLModel(config.model, channels, grid, codebook if uses_tokens else None)
        ocl_model.load_state_dict(ocl_state_dict(checkpoint, ocl_model), strict=True)

    vq_run = out / "vq" if vq_model is not None else None
    ocl_run = out / "ocl" if ocl_model is not None else None
    for run_dir in (vq_run, ocl_run):
        if run_dir is not None:
            prepare_run_folder(run_dir, {}, resume=False)  # refuses a folder that already holds a run
    if vq_model is not None:
        info = {"stage": "vq", **records.provenance(), "imported_from": source, "store": features}
        save_checkpoint(vq_run, vq_model, to_dict(vq_config), info, {IMPORTED_STATE_KEY: source})
    imported_tokens = None
    if ocl_model is not None:
        imported_tokens = config.tokens or None
        vq_weights = {"run": str(vq_run), "weights_sha256": file_sha256(vq_run / WEIGHTS_NAME)} if vq_run else None
        info = {
            "stage": "ocl",
            **records.provenance(),
            "imported_from": source,
            "store": features,
            "tokens": {"name": tokens, "vq": vq_weights} if config.tokens else None,
            "online": False,
            "device": "cpu",
        }
        save_checkpoint(ocl_run, ocl_model, to_dict(config), info, {IMPORTED_STATE_KEY: source})
    return ImportResult(kind=checkpoint.kind, vq_run=vq_run, ocl_run=ocl_run, tokens=imported_tokens)
