"""`featcache extract`: run a frozen VFM over every view of a dataset once and write the feature store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from featcache.errors import FeatcacheError
from featcache.operations import Operation, declare, param


@dataclass(frozen=True)
class ExtractParams:
    data: str = param("", help="Dataset: a folder, or FORMAT:PATH with FORMAT folder|coco|voc|clevrtex|clips|movi|ytvis|video (video:PATH?stride=N&max_frames=M).", required=True)
    split: str | None = param(None, help="Dataset split (coco: val2017, voc: val, clevrtex: test/val/train, movi: train/validation, ytvis: train/valid).")
    config: list[str] = param(help="Extraction config file(s) (configs/extract/), layered in order.", role="config", default_factory=list)
    set: dict[str, Any] = param(help="Config override key=value (repeatable), e.g. weights=random.", role="set", default_factory=dict)
    out: str = param("", help="Store to create, or to resume when it exists with the same inputs.", role="out", required=True)
    device: str = param("auto", help="auto | cpu | cuda", role="runtime")
    workers: int = param(0, help="Run on a local dask cluster of N worker processes.", role="runtime")
    scheduler: str | None = param(None, help="Address of an existing dask scheduler (workers must see --out and --data).", role="runtime")
    skip_bad: bool = param(False, help="Record unreadable images in the store and go on.")
    decode_threads: int = param(2, help="Image-decoding threads feeding the model.", role="runtime")


class Extract(Operation):
    """Run a frozen VFM over every view of a dataset once and write the feature store."""

    name = "extract"
    params_type = ExtractParams
    config_options = {
        "vfm": "VFM name (see `featcache encoders`); default dino2-s14.",
        "weights": "hub (default), random (explicit), or a checkpoint file.",
        "weight_seed": "Seed of --weights random.",
        "resolution": "Model input side; default the VFM's own.",
        "crops": "Random resized crops added to the centre crop and its flip.",
        "mask_size": "Side of cached masks (evaluation resolution).",
        "batch_size": "Images per forward pass.",
        "samples_per_chunk": "Samples per chunk / write unit.",
    }
    out_suffix = ".zarr"
    adopts_existing = True

    def config_class(self) -> type:
        from featcache.extraction.config import ExtractConfig

        return ExtractConfig

    def validate(self, params: ExtractParams) -> None:
        from featcache.encoders import ENCODERS

        super().validate(params)
        ENCODERS.get(self.typed_config(params).vfm)

    def outputs(self, params: ExtractParams) -> dict[str, str]:
        return {"store": params.out}

    def fingerprint_data(self, params: ExtractParams) -> dict[str, Any]:
        data = super().fingerprint_data(params)
        data["config"].pop("batch_size")  # runtime only: the store's bytes do not depend on it
        return data

    def run(self, params: ExtractParams, resume: bool = False, show_progress: bool = True) -> str:
        from featcache.console import error_console
        from featcache.datasets import open_dataset
        from featcache.extraction import extract

        summary = extract(
            open_dataset(params.data, params.split), params.out, self.typed_config(params), device=params.device, workers=params.workers,
            scheduler=params.scheduler, skip_bad=params.skip_bad, decode_threads=params.decode_threads, show_progress=show_progress,
        )
        for sample_id, reason in summary.bad.items():
            error_console.print(f"[yellow]skipped[/] {sample_id}: {reason}")
        if not summary.complete:
            raise FeatcacheError(f"store {params.out} is incomplete after extraction; run the same command again to resume it")
        return (
            f"{params.out}: {summary.samples_run} samples in {summary.seconds:.1f} s ({summary.samples_per_second:.1f} images/s), "
            f"{summary.units_run} units written, {summary.samples_bad} bad, store complete"
        )


EXTRACT = declare(Extract())
