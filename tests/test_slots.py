"""Slots downstream: encode-slots (store layout, resume, refusal), the set-prediction probe and slot clustering,
checked against brute force, hand-computed cases and scikit-learn."""

from __future__ import annotations

import itertools
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.numpy import load_file
from sklearn.metrics import accuracy_score, normalized_mutual_info_score, r2_score
from typer.testing import CliRunner

from featcache.analysis.slot_clusters import match_slots_to_objects, purity, slot_object_classes, substitution_error
from featcache.analysis.slot_probe import (
    ObjectTargets,
    ProbeSettings,
    hungarian,
    mask_boxes,
    matching_cost,
    object_targets,
    pooled_queries,
    run_probe,
    score_probe,
    train_probe,
)
from featcache.cli import app, main
from featcache.config import load_config, merge
from featcache.errors import FeatcacheError, StoreError
from featcache.store import FeatureStore
from featcache.store.slots import SlotSet
from featcache.store.summary import store_summary
from featcache.training.config import OCLTrainConfig
from featcache.training.ocl import train_ocl

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = Path(__file__).parent.parent / "configs" / "ocl"


def tiny_run_config(name: str = "dinosaur-mlp", steps: int = 2) -> OCLTrainConfig:
    config = load_config(OCLTrainConfig, [CONFIGS / f"{name}.yaml", CONFIGS / "tiny.yaml"])
    train = {"steps": steps, "batch_size": 4, "log_every": 1, "checkpoint_every": steps, "loader": "memory"}
    changes = {"train": train, "validate_every": 0, "model": {"aggregator": {"num_slots": 4, "slot_dim": 16, "mlp_hidden": 32},
                                                             "projection_hidden": 32, "decoder": {"mlp": {"hidden": 32}}}}
    return merge(config, changes)


@pytest.fixture(scope="module")
def slot_run(ocl_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A private copy of the shared 4x4-grid store (3 units of 4 images) and a 2-step DINOSAUR-Mlp run on it."""
    root = tmp_path_factory.mktemp("slots")
    store = root / "store.zarr"
    shutil.copytree(ocl_store, store)
    run = root / "run"
    train_ocl(store, tiny_run_config(), run, device="cpu", show_progress=False)
    return store, run


# ----------------------------------------------------------------------------- matching and scores
def brute_force_cost(cost: np.ndarray) -> float:
    """Minimum total cost over every assignment of min(S, k) rows to distinct columns."""
    rows, columns = cost.shape
    if rows >= columns:
        return min(sum(cost[r, c] for c, r in enumerate(chosen)) for chosen in itertools.permutations(range(rows), columns))
    return min(sum(cost[r, c] for r, c in enumerate(chosen)) for chosen in itertools.permutations(range(columns), rows))


@pytest.mark.parametrize("shape", [(3, 3), (5, 3), (3, 5), (6, 2), (1, 4)])
def test_hungarian_matching_equals_brute_force(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        cost = rng.random(shape)
        rows, columns = hungarian(cost)
        assert len(rows) == min(shape) and len(set(rows)) == len(rows) and len(set(columns)) == len(columns)
        assert cost[rows, columns].sum() == pytest.approx(brute_force_cost(cost), abs=1e-12)


def test_matching_cost_is_weighted_cross_entropy_plus_box_l1() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # 2 slots, 2 classes + none
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    classes, true_boxes = torch.tensor([1]), torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    cost = matching_cost(logits, boxes, classes, true_boxes, class_weight=2.0, box_weight=3.0)
    for slot in range(2):
        cross_entropy = -np.log(np.exp(logits[slot, 1].item()) / np.exp(logits[slot].numpy()).sum())
        l1 = np.abs(boxes[slot].numpy() - true_boxes[0].numpy()).sum()
        assert cost[slot, 0].item() == pytest.approx(2.0 * cross_entropy + 3.0 * l1, rel=1e-6)


def test_boxes_and_classes_from_an_instance_mask() -> None:
    mask = np.zeros((8, 8), np.uint16)
    mask[1:3, 2:6] = 1  # rows 1-2, columns 2-5
    mask[5:8, 0:1] = 2
    mask[0, 0] = 65535  # ignore pixels are no object
    ids, boxes = mask_boxes(mask)
    assert ids.tolist() == [1, 2]
    np.testing.assert_allclose(boxes, [[2 / 8, 1 / 8, 6 / 8, 3 / 8], [0, 5 / 8, 1 / 8, 1]])
    targets, seen = object_targets(mask[None], np.array([[4, 9, -1]]))
    assert targets[0][0].tolist() == [4, 9] and seen.tolist() == [4, 9]
    with pytest.raises(FeatcacheError, match="no class"):
        object_targets(mask[None], np.array([[4, -1, -1]]))


def synthetic_set(count: int, slots: int, seed: int) -> tuple[np.ndarray, list[ObjectTargets]]:
    """Slots that carry their object's class (one-hot) and box plus noise; extra slots are empty."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(0, 0.05, (count, slots, 7)).astype(np.float32)
    targets = []
    for image in range(count):
        objects = int(rng.integers(1, slots))
        classes = rng.integers(0, 3, objects)
        corners = rng.uniform(0, 0.5, (objects, 2))
        boxes = np.concatenate([corners, corners + rng.uniform(0.1, 0.5, (objects, 2))], 1).astype(np.float32)
        order = rng.permutation(slots)[:objects]
        inputs[image, order, classes] += 1.0
        inputs[image, order, 3:] += boxes
        targets.append(ObjectTargets(classes.astype(np.int64), boxes))
    return inputs, targets


def test_probe_scores_equal_sklearn_and_by_hand() -> None:
    inputs, targets = synthetic_set(160, 4, seed=0)
    settings = ProbeSettings(hidden=32, epochs=20, batch_size=16, learning_rate=1e-2)
    probe = train_probe(inputs[:128], targets[:128], 3, settings)
    scores = score_probe(probe, inputs[128:], targets[128:], settings)
    true, predicted = scores["true_classes"], scores["predicted_classes"]
    assert scores["accuracy"] == accuracy_score(true, predicted) == pytest.approx(np.mean(true == predicted))
    true_boxes, predicted_boxes = scores["true_boxes"], scores["predicted_boxes"]
    by_hand = np.mean(1 - ((true_boxes - predicted_boxes) ** 2).sum(0) / ((true_boxes - true_boxes.mean(0)) ** 2).sum(0))
    assert scores["box_r2"] == pytest.approx(r2_score(true_boxes, predicted_boxes)) == pytest.approx(by_hand, rel=1e-5)
    assert scores["objects_matched"] == scores["objects_total"] == sum(len(t.classes) for t in targets[128:])
    # The slots hold class and box: the probe learns them (far above the majority class and the mean box).
    assert scores["accuracy"] > 0.8 and scores["box_r2"] > 0.5


def test_probe_on_class_free_inputs_stays_near_chance() -> None:
    """Inputs without the class: accuracy cannot beat the majority class by much (the probe does not see labels)."""
    inputs, targets = synthetic_set(96, 4, seed=1)
    inputs[..., :3] = np.random.default_rng(2).normal(size=inputs[..., :3].shape)
    raw = [(t.classes, t.boxes) for t in targets]
    scores = run_probe(inputs, raw, np.arange(3), np.arange(64), np.arange(64, 96), ProbeSettings(hidden=32, epochs=10, batch_size=16))
    assert scores["accuracy"] < scores["majority_accuracy"] + 0.25


def test_pooled_reference_inputs() -> None:
    features = np.arange(2 * 2 * 2 * 3, dtype=np.float32).reshape(2, 2, 2, 3)
    queries = pooled_queries(features, 3)
    assert queries.shape == (2, 3, 6)
    np.testing.assert_allclose(queries[1, 2, :3], features[1].reshape(4, 3).mean(0))
    np.testing.assert_array_equal(queries[0, :, 3:], np.eye(3))


def test_slot_object_matching_equals_brute_force_iou() -> None:
    rng = np.random.default_rng(3)
    for _ in range(10):
        true = rng.integers(0, 4, (6, 6)).astype(np.uint16)
        slot_labels = rng.integers(0, 3, (6, 6))
        matched = match_slots_to_objects(slot_labels, true, 3)
        objects = [v for v in np.unique(true) if v != 0]

        def iou(slot: int, obj: int) -> float:
            a, b = slot_labels == slot, true == obj
            return (a & b).sum() / max((a | b).sum(), 1)

        best = max(sum(iou(s, o) for s, o in zip(chosen, objects)) for chosen in itertools.permutations(range(3), min(3, len(objects))))
        if len(objects) > 3:
            best = max(sum(iou(s, o) for s, o in zip(range(3), chosen)) for chosen in itertools.permutations(objects, 3))
        assert sum(iou(s, int(matched[s])) for s in range(3) if matched[s]) == pytest.approx(best)


def test_slot_classes_purity_nmi_and_substitution_error_by_hand() -> None:
    masks = np.zeros((1, 3, 2, 2), np.float32)  # 3 slots on a 2x2 grid: slot 0 left column, slot 1 top right, slot 2 bottom right
    masks[0, 0, :, 0] = masks[0, 1, 0, 1] = masks[0, 2, 1, 1] = 1
    true = np.zeros((1, 4, 4), np.uint16)
    true[0, :, :2] = 1  # object 1 = left half; background on the right
    true[0, :2, 2:] = 2  # object 2 = top right quarter
    classes = slot_object_classes(masks, true, np.array([[7, 5]]))
    assert classes.tolist() == [[7, 5, -1]]
    labels, clusters = np.array([0, 0, 1, 1, 1, 2]), np.array([0, 0, 0, 1, 1, 1])
    assert purity(labels, clusters) == pytest.approx(4 / 6)
    assert normalized_mutual_info_score(labels, clusters) == pytest.approx(
        normalized_mutual_info_score(clusters, labels))  # symmetric: the score the analysis records is sklearn's
    points = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [12.0, 0.0]])
    centroids, assignment = np.array([[1.0, 0.0], [11.0, 0.0]]), np.array([0, 0, 1, 1])
    assert substitution_error(points, centroids, assignment) == pytest.approx(1.0 / 26.0)  # residual 1 / variance 26


# ----------------------------------------------------------------------------- encode-slots
def test_encode_slots_equals_the_models_forward(slot_run: tuple[Path, Path]) -> None:
    from featcache.training.encode_slots import encode_slots
    from featcache.training.runs import evaluation_generator, load_ocl_run

    store_path, run = slot_run
    summary = encode_slots(run, store_path, "fwd", device="cpu", show_progress=False, batch_size=3)
    assert summary.units_run == summary.units_total == 3
    store = FeatureStore(store_path)
    slot_set = SlotSet(store, "fwd")
    slot_set.require_current()
    model, config, info = load_ocl_run(run, store, torch.device("cpu"))
    first = slice(0, 4)  # unit 0, one forward pass here (the store wrote it in batches of 3)
    features = torch.from_numpy(store.features(first, view="center").astype(np.float32))
    features = store.derive(features, info["store"]["feature_kind"]) if info["store"]["feature_kind"] != store.stored_kind else features
    with torch.no_grad():
        output = model(features, None, model.draw_noise(4, evaluation_generator(torch.device("cpu")), features.device))
    np.testing.assert_allclose(slot_set.slots(first), output.slots.numpy(), atol=1e-5)
    np.testing.assert_allclose(slot_set.attention_masks(first), output.attention_masks.numpy(), atol=1e-3)  # float16 masks
    np.testing.assert_allclose(slot_set.decoder_masks(first), output.decoder_masks.numpy(), atol=1e-3)
    assert slot_set.slots(first).shape == (4, 4, 16) and slot_set.attention_masks(first).shape == (4, 4, 4, 4)
    attributes = slot_set.attributes
    assert attributes["run"]["weights_sha256"] == json.loads((run / "run.json").read_text())["weights_sha256"]
    assert attributes["views"] == ["center"] and attributes["integrity"]["chunk_checksums"]
    import xarray as xr  # slot sets open in xarray with named dimensions, like the store and its token sets

    opened = xr.open_zarr(store_path, group="slots/fwd", consolidated=False)
    assert opened["slots"].dims == ("sample", "view", "slot", "slot_channel")
    assert opened["attention_masks"].dims == ("sample", "view", "slot", "y", "x")
    np.testing.assert_allclose(opened["slots"].values[first, 0], slot_set.slots(first))


def test_encode_slots_resumes_only_unfinished_units(slot_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import featcache.training.encode_slots as module

    store_path, run = slot_run
    real = module.write_slot_unit
    written: list[int] = []

    def interrupted(*args: object, **kwargs: object) -> None:
        if written:
            raise KeyboardInterrupt
        real(*args, **kwargs)  # type: ignore[arg-type]
        written.append(int(args[3]))  # type: ignore[arg-type]

    monkeypatch.setattr(module, "write_slot_unit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        module.encode_slots(run, store_path, "resume", device="cpu", show_progress=False)
    assert written == [0]
    store = FeatureStore(store_path)
    assert SlotSet(store, "resume").completeness() == (1, 3)
    with pytest.raises(StoreError, match="incomplete"):
        SlotSet(store, "resume").require_current()

    def counting(*args: object, **kwargs: object) -> None:
        written.append(int(args[3]))  # type: ignore[arg-type]
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "write_slot_unit", counting)
    summary = module.encode_slots(run, store_path, "resume", device="cpu", show_progress=False)
    assert summary.units_run == 2 and written == [0, 1, 2]
    module.encode_slots(run, store_path, "whole", device="cpu", show_progress=False)
    resumed, whole = SlotSet(store, "resume"), SlotSet(store, "whole")
    resumed.require_current()
    np.testing.assert_array_equal(resumed.slots(slice(0, 12)), whole.slots(slice(0, 12)))
    with pytest.raises(StoreError, match="is complete"):
        module.encode_slots(run, store_path, "resume", device="cpu", show_progress=False)


def test_a_slot_set_whose_run_changed_is_refused(slot_run: tuple[Path, Path], tmp_path: Path) -> None:
    from featcache.training.encode_slots import encode_slots

    store_path, run = slot_run
    copy = tmp_path / "run-copy"
    shutil.copytree(run, copy)
    encode_slots(copy, store_path, "changing", device="cpu", show_progress=False)
    SlotSet(FeatureStore(store_path), "changing").require_current()
    train_ocl(store_path, replace(tiny_run_config(steps=3)), copy.parent / "other", device="cpu", show_progress=False)
    shutil.rmtree(copy)
    shutil.copytree(copy.parent / "other", copy)  # the folder now holds other weights
    with pytest.raises(StoreError, match="now holds weights") as error:
        SlotSet(FeatureStore(store_path), "changing").require_current()
    assert "\n" not in str(error.value)
    with pytest.raises(StoreError, match="other weights"):  # and encoding it again without --overwrite is refused
        encode_slots(copy, store_path, "changing", device="cpu", show_progress=False)
    with pytest.raises(StoreError, match="no slot set 'nothere'"):
        SlotSet(FeatureStore(store_path), "nothere")
    other = tmp_path / "other.zarr"  # the slot set inside a store of other data (its identity differs)
    shutil.copytree(store_path, other)
    root = zarr.open_group(str(other), mode="r+")
    attributes = dict(root.attrs["featcache"])
    root.attrs["featcache"] = {**attributes, "identity": {**attributes["identity"], "dataset_fingerprint": "other"}}
    with pytest.raises(StoreError, match="was made from another store") as error:
        SlotSet(FeatureStore(other, warn_random=False), "changing").require_current()
    assert "\n" not in str(error.value)
    with pytest.raises(StoreError, match="slot set name '../x' is invalid"):
        encode_slots(copy, store_path, "../x", device="cpu", show_progress=False)
    group = zarr.open_group(str(store_path), mode="r+")["slots/changing"]
    group.attrs["featcache_slots"] = {**group.attrs["featcache_slots"], "num_slots": 99}  # an edited record
    with pytest.raises(StoreError, match="attributes edited since it was completed: num_slots"):
        SlotSet(FeatureStore(store_path), "changing").require_current()
    problems = store_summary(store_path)["integrity"]["problems"]
    assert any(problem.startswith("slot set 'changing': attributes edited") for problem in problems)


# ----------------------------------------------------------------------------- CLI round trip
def test_encode_probe_analyze_from_the_cli(
    slot_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store_path, run = slot_run
    runner = CliRunner()
    result = runner.invoke(app, ["encode-slots", str(run), "--store", str(store_path), "--name", "cli", "--views", "all", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "slot set 'cli'" in result.output
    info = runner.invoke(app, ["info", str(store_path), "--json"])
    listed = {entry["name"]: entry for entry in json.loads(info.output)["slot_sets"]}
    assert listed["cli"]["complete"] and listed["cli"]["views"] == list(FeatureStore(store_path).view_names)

    probe_out = tmp_path / "probe"
    result = runner.invoke(app, ["probe", "set-prediction", "--store", str(store_path), "--slots", "cli", "--epochs", "3", "--hidden", "16",
                                 "--test-fraction", "0.25", "--out", str(probe_out)])
    assert result.exit_code == 0, result.output
    record = json.loads((probe_out / "probe.json").read_text())
    assert set(record["rows"]) == {"slots", "mean-pooled features"} and record["images"] == {"train": 9, "test": 3}
    assert all(0.0 <= row["accuracy"] <= 1.0 and row["objects_matched"] > 0 for row in record["rows"].values())
    assert record["slot_set"]["weights_sha256"] and "versions" in record

    analysis_out = tmp_path / "clusters"
    result = runner.invoke(app, ["analyze", "slots", "--store", str(store_path), "--slots", "cli", "--k", "3", "--k-range", "2..4",
                                 "--silhouette-samples", "50", "--grid-slots", "2", "--out", str(analysis_out)])
    assert result.exit_code == 0, result.output
    clusters = json.loads((analysis_out / "slot_clusters.json").read_text())
    centroids = np.load(analysis_out / "centroids.npy")
    np.testing.assert_array_equal(load_file(str(analysis_out / "centroids.safetensors"))["centroids"], centroids)
    slots = SlotSet(FeatureStore(store_path), "cli").slots(slice(0, 12), view=None).reshape(-1, 16)
    assignment = ((slots[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert clusters["substitution_error"] == pytest.approx(substitution_error(slots, centroids, assignment), rel=1e-4)
    assert [row["k"] for row in clusters["k_table"]] == [2, 3, 4] and clusters["points"] == len(slots)
    assert 0.0 <= clusters["purity"] <= 1.0 and 0.0 <= clusters["nmi"] <= 1.0
    assert clusters["none_fraction"] < 1.0 and 0.0 <= clusters["purity_objects"] <= 1.0
    assert (analysis_out / "slot_clusters.png").is_file()
    from featcache.store.verify import verify_store
    from featcache.training.encode_slots import encode_slots

    encode_slots(run, store_path, "intact", device="cpu", show_progress=False, batch_size=3)  # a second, undamaged set
    chunk = store_path / "slots" / "cli" / "slots" / "c" / "1" / "0" / "0" / "0"
    chunk.unlink()  # a done unit's chunk gone: verify names it (and reads the other chunks of every slot set)
    report = verify_store(store_path, show_progress=False)
    slot_rows = {row.subject: row for row in report.rows if row.check == "slot set"}
    assert slot_rows["cli"].ok and slot_rows["intact"].ok  # complete, attributes as recorded
    arrays = {row.subject: row for row in report.rows}
    assert arrays["slots/intact/slots"].ok and arrays["slots/intact/slots"].chunks_read == 3
    assert not arrays["slots/cli/slots"].ok and "missing" in arrays["slots/cli/slots"].problems[0]
    monkeypatch.setattr(sys, "argv", ["featcache", "analyze", "slots", "--store", str(store_path), "--slots", "nothere", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit) as exit_:
        main()
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and "no slot set 'nothere'" in " ".join(error.split())
    assert len([line for line in error.splitlines() if line.startswith("error")]) == 1 and "Traceback" not in error
