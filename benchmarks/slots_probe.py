"""The README's "Slots downstream" table: the set-prediction probe over seeds 0-2 on the slot sets that
pipelines/slots-synthetic.yaml writes, plus the oracle row (features pooled inside each true object's mask).

    featcache run pipelines/slots-synthetic.yaml --workdir runs/slots-synthetic
    python benchmarks/slots_probe.py runs/slots-synthetic/extract.zarr [--out benchmarks/slots-probe-cpu.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from featcache.analysis.clustering import cell_index
from featcache.analysis.slot_probe import ProbeSettings, mask_boxes, object_targets, probe_slot_set, run_probe, split_indices
from featcache.store import FeatureStore

SLOT_SETS = (("vvo-dinosaur-mlp", True), ("vvo-dinosaur-mlp-untrained", False))


def oracle_inputs(store: FeatureStore, indices: np.ndarray, num_slots: int) -> np.ndarray:
    """(N, S, C): the mean feature inside each true object's mask (nearest-patch upsampling), zero rows after."""
    features = store.features(indices, view="center").astype(np.float32)  # (N, h, w, C)
    masks = store.masks(indices, view="center")
    rows, columns = cell_index(masks.shape[-1], features.shape[1]), cell_index(masks.shape[-1], features.shape[2])
    inputs = np.zeros((len(indices), num_slots, features.shape[-1]), np.float32)
    for image in range(len(indices)):
        upsampled = features[image][rows[:, None], columns[None, :]]  # (M, M, C)
        for slot, instance in enumerate(mask_boxes(masks[image])[0][:num_slots]):
            inputs[image, slot] = upsampled[masks[image] == instance].mean(0)
    return inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: dict[str, list[dict[str, float]]] = {}
    for name, reference in SLOT_SETS:
        for seed in (0, 1, 2):
            record = probe_slot_set(args.store, name, settings=ProbeSettings(epochs=args.epochs, seed=seed), reference=reference)
            for row, values in record["rows"].items():
                rows.setdefault(name if row == "slots" else row, []).append(values)
    store = FeatureStore(args.store, warn_random=False)
    indices = store.valid_indices()
    targets, classes = object_targets(store.masks(indices, view="center"), store.instance_classes(indices))
    train, test = split_indices(len(indices), 0.2, 0)
    oracle = run_probe(oracle_inputs(store, indices, 8), targets, classes, train, test, ProbeSettings(epochs=args.epochs, seed=0))
    rows["oracle (seed 0)"] = [{key: value for key, value in oracle.items() if not isinstance(value, np.ndarray)}]
    summary = {}
    for name, values in rows.items():
        accuracy, r2 = np.array([v["accuracy"] for v in values]), np.array([v["box_r2"] for v in values])
        summary[name] = {"accuracy": [float(accuracy.mean()), float(accuracy.std())], "box_r2": [float(r2.mean()), float(r2.std())],
                         "majority_accuracy": float(np.mean([v["majority_accuracy"] for v in values])), "seeds": len(values)}
        print(f"{name}: accuracy {accuracy.mean():.3f} +- {accuracy.std():.3f}, box R2 {r2.mean():.3f} +- {r2.std():.3f}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
