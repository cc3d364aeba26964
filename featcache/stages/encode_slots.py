"""`featcache encode-slots`: a trained OCL run's slots, slot-attention masks and (mlp/tfd decoders) decoder masks for
every sample, written into the store under ``slots/<name>`` (resumable by unit, checksummed, with provenance).

The work lives in :mod:`featcache.training.encode_slots`; the layout in :mod:`featcache.store.slots`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featcache.errors import FeatcacheError
from featcache.operations import Operation, declare, param


@dataclass(frozen=True)
class EncodeSlotsParams:
    run: str = param("", help="A train-ocl run folder.", role="input", required=True, argument=True)
    store: str = param("", help="A complete feature store (the run's VFM and grid).", role="input", required=True)
    name: str = param("", help="Name of the slot set in the store (several may coexist).", required=True)
    views: str = param("center", help="center | all: which views of every sample to encode.")
    dtype: str = param("float32", help="float32 | float16: how slots are stored (masks are always float16).")
    batch_size: int = param(64, help="Views per forward pass.", role="runtime")
    device: str = param("auto", help="auto | cpu | cuda", role="runtime")
    overwrite: bool = param(False, help="Replace an existing slot set of this name.", role="cli")


class EncodeSlots(Operation):
    """Write a trained OCL run's slots and masks for every sample into the store (slots/<name>)."""

    name = "encode-slots"
    params_type = EncodeSlotsParams
    writes_out = False

    def validate(self, params: EncodeSlotsParams) -> None:
        super().validate(params)
        if params.views not in ("center", "all"):
            raise FeatcacheError(f"views is {params.views!r}; expected center or all")
        if params.dtype not in ("float16", "float32"):
            raise FeatcacheError(f"dtype is {params.dtype!r}; expected float32 or float16")

    def outputs(self, params: EncodeSlotsParams) -> dict[str, str]:
        return {"store": params.store, "slots": params.name}

    def owned(self, params: EncodeSlotsParams) -> list[str]:
        from featcache.store.slots import slot_group_path

        return [str(Path(params.store) / slot_group_path(params.name))]

    def outputs_exist(self, params: EncodeSlotsParams) -> bool:
        from featcache.store import FeatureStore
        from featcache.store.slots import SlotSet, slot_names

        if not Path(params.store).is_dir():
            return False
        store = FeatureStore(params.store, warn_random=False)
        return params.name in slot_names(store.group) and bool(SlotSet(store, params.name).attributes.get("completed"))

    def run(self, params: EncodeSlotsParams, resume: bool = False, show_progress: bool = True) -> str:
        from featcache.training.encode_slots import encode_slots

        summary = encode_slots(params.run, params.store, params.name, views=params.views, dtype=params.dtype, overwrite=params.overwrite,
                               batch_size=params.batch_size, device=params.device, show_progress=show_progress)
        return (
            f"{params.store}: slot set {summary.name!r} ({summary.num_slots} slots, views {', '.join(summary.views)}), "
            f"{summary.units_run} of {summary.units_total} units written in {summary.seconds:.1f} s"
        )


ENCODE_SLOTS = declare(EncodeSlots())
