"""`featcache probe set-prediction`: the VVO Table 5 / DINOSAUR set-prediction probe on a slot set, with the
mean-pooled-feature reference row (protocol in :mod:`featcache.analysis.slot_probe`); rich table and probe.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featcache.operations import Operation, declare, param


@dataclass(frozen=True)
class SetPredictionParams:
    store: str = param("", help="A store with a slot set, instance masks and instance classes.", role="input", required=True)
    slots: str = param("", help="Slot set name (written by encode-slots).", required=True)
    view: str = param("center", help="View whose slots and objects are probed.")
    limit: int | None = param(None, help="Use at most this many images.")
    test_fraction: float = param(0.2, help="Fraction of images held out for scoring.")
    hidden: int = param(256, help="Hidden width of the probe MLP.")
    epochs: int = param(100, help="Training epochs of the probe.")
    batch_size: int = param(64, help="Images per probe training step.")
    learning_rate: float = param(1e-3, help="Adam learning rate of the probe.")
    class_weight: float = param(1.0, help="Weight of the class cross-entropy (matching cost and loss).")
    box_weight: float = param(5.0, help="Weight of the box L1 (matching cost and loss).")
    none_weight: float = param(0.1, help="Weight of the no-object class for unmatched slots.")
    reference: bool = param(True, help="Also probe mean-pooled features (the reference row).")
    seed: int = param(0, help="Seed of the split and the probe.")
    out: str | None = param(None, help="Folder for probe.json; default runs/probe/<store>-<slots>.", role="out")


class ProbeSetPrediction(Operation):
    """Set prediction from slots (class top-1 accuracy, box R²; Hungarian-matched), with a mean-pooled reference row."""

    name = "probe-set-prediction"
    command = ("probe", "set-prediction")
    params_type = SetPredictionParams
    replace = "overwrite"

    def out_dir(self, params: SetPredictionParams) -> Path:
        return Path(params.out) if params.out else Path("runs") / "probe" / f"{Path(params.store).stem}-{params.slots}"

    def outputs(self, params: SetPredictionParams) -> dict[str, str]:
        return {"out": str(self.out_dir(params)), "json": str(self.out_dir(params) / "probe.json")}

    def owned(self, params: SetPredictionParams) -> list[str]:
        return [str(self.out_dir(params))]

    def outputs_exist(self, params: SetPredictionParams) -> bool:
        return Path(self.outputs(params)["json"]).is_file()

    def run(self, params: SetPredictionParams, resume: bool = False, show_progress: bool = True) -> str:
        from featcache import records
        from featcache.analysis.slot_probe import ProbeSettings, print_probe_table, probe_slot_set

        settings = ProbeSettings(hidden=params.hidden, epochs=params.epochs, batch_size=params.batch_size, learning_rate=params.learning_rate,
                                 class_weight=params.class_weight, box_weight=params.box_weight, none_weight=params.none_weight, seed=params.seed)
        record = probe_slot_set(params.store, params.slots, view=params.view, settings=settings, test_fraction=params.test_fraction,
                                reference=params.reference, limit=params.limit, show_progress=show_progress)
        print_probe_table(record)
        path = records.write_record(self.outputs(params)["json"], record)
        return "; ".join(f"{name}: accuracy {row['accuracy']:.3f}, box R² {row['box_r2']:.3f}" for name, row in record["rows"].items()) + f"; wrote {path}"


PROBE_SET_PREDICTION = declare(ProbeSetPrediction())
