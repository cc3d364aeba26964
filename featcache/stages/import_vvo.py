"""`featcache import-vvo`: an official VVO checkpoint (VQ pre-training, VVO-Tfd/Mlp/Dfz, VVO's DINOSAUR) as featcache run folders.

The conversion lives in :mod:`featcache.training.import_vvo`; the weight mappings in :mod:`featcache.interop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featcache.operations import Operation, declare, param


@dataclass(frozen=True)
class ImportVVOParams:
    checkpoint: str = param("", help="An official VVO checkpoint (.pth written by Genera1Z/VQ-VFM-OCL).", role="input", required=True,
                            argument=True)
    out: str = param("", help="Folder for the run folders vq/ and ocl/ (must not hold runs).", role="out", required=True)
    vfm: str = param("dino2-s14", help="The featcache VFM whose final-norm features the model reads.")
    tokens: str = param("vvo-imported", help="Token set the OCL run reads; write it with tokenize --vq OUT/vq.")
    grid: int = param(16, help="Patch-grid side where the weights hold no position embedding (Dfz, VQ).")
    set: dict[str, Any] = param(help="key=value changes of the OCL config for what the weights cannot tell.", role="set", default_factory=dict)


class ImportVVO(Operation):
    """Convert an official VVO checkpoint (VQ pre-training, VVO-Tfd/Mlp/Dfz, VVO's DINOSAUR) into featcache run folders."""

    name = "import-vvo"
    params_type = ImportVVOParams

    def outputs(self, params: ImportVVOParams) -> dict[str, str]:
        return {"out": params.out, "vq": str(Path(params.out) / "vq"), "ocl": str(Path(params.out) / "ocl")}

    def outputs_exist(self, params: ImportVVOParams) -> bool:
        return any((Path(params.out) / name / "model.safetensors").is_file() for name in ("vq", "ocl"))

    def run(self, params: ImportVVOParams, resume: bool = False, show_progress: bool = True) -> str:
        from featcache.console import console
        from featcache.training.import_vvo import import_vvo

        result = import_vvo(params.checkpoint, params.out, vfm=params.vfm, tokens=params.tokens, grid=(params.grid, params.grid),
                            overrides=params.set)
        console.print(f"{params.checkpoint}: {result.kind} checkpoint")
        if result.vq_run is not None:
            console.print(f"  quantizer -> {result.vq_run}")
        if result.ocl_run is not None:
            console.print(f"  OCL model -> {result.ocl_run}")
        if result.tokens:
            return (f"next: featcache tokenize --store STORE --vq {result.vq_run} --name {result.tokens}; "
                    f"featcache eval {result.ocl_run} --store STORE")
        if result.ocl_run is not None:
            return f"next: featcache eval {result.ocl_run} --store STORE"
        return f"next: featcache tokenize --store STORE --vq {result.vq_run} --name NAME"


IMPORT_VVO = declare(ImportVVO())
