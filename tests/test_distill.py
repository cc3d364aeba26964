"""SPOT self-training (featcache.ocl.distill, train-ocl ``distill``): the matched cross-entropy against a hand-computed
case, brute-force matching and the official code's output; the teacher run's checks, fingerprint and resume."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from featcache.cli import app
from featcache.config import load_config, merge
from featcache.datasets import open_dataset, write_synthetic
from featcache.errors import ConfigError, FeatcacheError, StoreError
from featcache.extraction import extract
from featcache.ocl.distill import EMPTY_TEACHER_SLOT_COST, match_slots, pairwise_iou, spot_distillation_loss
from featcache.training.config import OCLTrainConfig
from featcache.training.ocl import train_ocl
from tests.conftest import OCL_EXTRACT
from tests.parity import assert_close, load_fixture

CONFIGS = Path(__file__).parent.parent / "configs" / "ocl"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_hand_computed_case() -> None:
    """Two slots, four positions: the student's slots are the teacher's swapped, so matching undoes the swap."""
    logits = torch.tensor([[[2.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.0]]], requires_grad=True)  # student labels 0 0 1 1
    teacher = torch.tensor([[[0.1, 0.2, 0.9, 0.8], [0.9, 0.8, 0.1, 0.2]]])  # teacher labels 1 1 0 0
    result = spot_distillation_loss(logits, teacher)
    assert result.assignment.tolist() == [[1, 0]] and result.iou.tolist() == [[1.0, 1.0]]
    # channel 0 <- student slot 1 (0 0 1 3), channel 1 <- slot 0 (2 2 0 0); targets 1 1 0 0
    expected = (2 * math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-3))) / 4
    assert result.loss.item() == pytest.approx(expected, rel=1e-6)
    result.loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_partial_overlap_and_an_empty_teacher_slot() -> None:
    """Student 0 0 0 1 1 2, teacher 1 1 2 2 2 2 (slot 0 empty): IoUs by hand; the empty teacher row costs 1e3."""
    student = torch.tensor([[0, 0, 0, 1, 1, 2]])
    teacher = torch.tensor([[1, 1, 2, 2, 2, 2]])
    iou = pairwise_iou(teacher, student, 3)[0]
    expected = torch.tensor([[0, 0, 0], [2 / 3, 0, 0], [1 / 6, 2 / 4, 1 / 4]])  # rows teacher, columns student
    torch.testing.assert_close(iou, expected)
    assignment, matched = match_slots(teacher, student, 3)
    assert assignment.tolist() == [[2, 0, 1]]  # teacher 1 <- student 0, teacher 2 <- student 1, empty 0 <- leftover 2
    torch.testing.assert_close(matched, torch.tensor([[0.0, 2 / 3, 0.5]]))


@pytest.mark.parametrize("seed", range(6))
def test_matching_minimises_the_cost_over_every_permutation(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    slots, positions = 4, 12
    teacher = torch.randint(0, slots - 1, (2, positions), generator=generator)  # slot 3 stays empty
    student = torch.randint(0, slots, (2, positions), generator=generator)
    assignment, _ = match_slots(teacher, student, slots)
    for b in range(2):
        cost = np.zeros((slots, slots))
        for t, s in itertools.product(range(slots), range(slots)):  # IoU by sets
            a, c = set(np.flatnonzero(teacher[b].numpy() == t)), set(np.flatnonzero(student[b].numpy() == s))
            cost[t, s] = EMPTY_TEACHER_SLOT_COST if not a else 1 - len(a & c) / max(len(a | c), 1e-6)
        best = min(sum(cost[t, p[t]] for t in range(slots)) for p in itertools.permutations(range(slots)))
        chosen = sum(cost[t, assignment[b, t].item()] for t in range(slots))
        assert sorted(assignment[b].tolist()) == list(range(slots)) and chosen == pytest.approx(best)


def test_a_student_that_copies_the_teacher_up_to_a_permutation_has_near_zero_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    teacher = torch.rand(3, 5, 20, generator=generator)
    labels = teacher.argmax(1)  # (B, N)
    permutation = torch.tensor([3, 0, 4, 1, 2])
    logits = 20.0 * torch.nn.functional.one_hot(permutation[labels], 5).float().transpose(1, 2)  # student slot perm[t]
    result = spot_distillation_loss(logits, teacher)
    assert result.loss.item() < 1e-6
    used = [t for t in range(5) if (labels == t).any()]
    assert all((result.assignment[:, t] == permutation[t]).all() for t in used)


def test_parity_with_the_official_training_step() -> None:
    """tests/fixtures/parity/spot_distill.safetensors: train_spot_2.py's step (att_matching + CrossEntropyLoss)."""
    tensors, metadata = load_fixture("spot_distill")
    result = spot_distillation_loss(tensors["input"]["student_logits"], tensors["input"]["teacher_masks"])
    assert metadata["repository"] == "gkakogeorgiou/spot"
    assert torch.equal(result.assignment, tensors["output"]["assignment"])
    assert_close(result.loss.reshape(1), tensors["output"]["loss"], what="ce_loss")


# ----------------------------------------------------------------------------- train-ocl wiring


def tiny(name: str, steps: int, **sections: object) -> OCLTrainConfig:
    config = load_config(OCLTrainConfig, [CONFIGS / f"{name}.yaml", CONFIGS / "tiny.yaml"])
    train = {"steps": steps, "batch_size": 4, "log_every": 2, "checkpoint_every": 4, "loader": "memory"}
    small = {"model": {"aggregator": {"num_slots": 4, "slot_dim": 16, "mlp_hidden": 32}, "decoder": {"tfd": {"dim": 16, "feedforward": 32, "layers": 1}}}}
    return merge(config, {**small, "train": train, "validate_every": 0, **sections})


@pytest.fixture(scope="module")
def teacher(ocl_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("teacher") / "run"
    train_ocl(ocl_store, tiny("spot-tfd9", 4), run, device="cpu", show_progress=False)
    return run


def student(teacher: Path, steps: int = 8, **distill: object) -> OCLTrainConfig:
    return tiny("spot-distill", steps, distill={"teacher": str(teacher), **distill})


def test_student_records_the_teacher_and_resumes_to_the_uninterrupted_weights(ocl_store: Path, teacher: Path, tmp_path: Path) -> None:
    config = student(teacher)
    train_ocl(ocl_store, config, tmp_path / "a", device="cpu", show_progress=False)
    info = json.loads((tmp_path / "a" / "run.json").read_text())
    teacher_info = json.loads((teacher / "run.json").read_text())
    assert info["teacher"]["weights_sha256"] == teacher_info["weights_sha256"]
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if "loss_distill" in row]
    assert logged and all(r["loss_total"] == pytest.approx(r["loss_mse_features"] + 0.005 * r["loss_distill"], rel=1e-4) for r in logged)
    train_ocl(ocl_store, config, tmp_path / "b", device="cpu", show_progress=False, stop_after=4)
    train_ocl(ocl_store, config, tmp_path / "b", device="cpu", show_progress=False, resume=True)
    first, resumed = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(first[key], resumed[key]) for key in first)
    # the weight of L_att matters: lambda 0 trains other weights from the same start
    train_ocl(ocl_store, student(teacher, weight=0.0), tmp_path / "c", device="cpu", show_progress=False)
    plain = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert any(not torch.equal(first[key], plain[key]) for key in first)


def test_resume_refuses_a_teacher_whose_weights_changed(ocl_store: Path, teacher: Path, tmp_path: Path) -> None:
    own_teacher = tmp_path / "teacher"
    shutil.copytree(teacher, own_teacher)
    config = student(own_teacher)
    train_ocl(ocl_store, config, tmp_path / "run", device="cpu", show_progress=False, stop_after=4)
    shutil.rmtree(own_teacher)
    train_ocl(ocl_store, replace(tiny("spot-tfd9", 4), train=replace(tiny("spot-tfd9", 4).train, seed=1)), own_teacher, device="cpu", show_progress=False)
    with pytest.raises(FeatcacheError, match="cannot --resume .*teacher weights sha256"):
        train_ocl(ocl_store, config, tmp_path / "run", device="cpu", show_progress=False, resume=True)


def test_init_from_teacher_starts_the_student_at_the_teacher(ocl_store: Path, teacher: Path, tmp_path: Path) -> None:
    config = merge(student(teacher, steps=1, init_from_teacher=True), {"model": {"aggregator": {"queries": "per_slot_gaussian"}}})
    start = load_file(str(teacher / "model.safetensors"))
    train_ocl(ocl_store, merge(config, {"train": {"learning_rate": 1e-12, "lr_schedule": "constant", "warmup_steps": 0}}), tmp_path / "r", device="cpu", show_progress=False)
    after = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert all(torch.allclose(start[key], after[key], atol=1e-6) for key in start)
    with pytest.raises(ConfigError, match="differs from the teacher"):  # learned queries: another parameter set
        train_ocl(ocl_store, student(teacher, steps=1, init_from_teacher=True), tmp_path / "s", device="cpu", show_progress=False)


def test_teachers_that_do_not_fit_are_refused_in_one_line(ocl_store: Path, teacher: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="distill.teacher' must name"):
        train_ocl(ocl_store, tiny("spot-distill", 1), tmp_path / "a", device="cpu", show_progress=False)
    with pytest.raises(ConfigError, match="4 slots, the student 5"):
        train_ocl(ocl_store, merge(student(teacher, 1), {"model": {"aggregator": {"num_slots": 5}}}), tmp_path / "b", device="cpu", show_progress=False)
    other = tmp_path / "other.zarr"  # same extraction, other scenes: another store identity
    extract(open_dataset(str(write_synthetic(tmp_path / "shapes", images=4, seed=5, size=64))), other, OCL_EXTRACT, device="cpu", show_progress=False)
    with pytest.raises(StoreError, match="another identity") as error:
        train_ocl(other, student(teacher, 1), tmp_path / "c", device="cpu", show_progress=False)
    assert "\n" not in str(error.value)
    coarse = tmp_path / "coarse.zarr"  # a 2 x 2 grid (refused by load_ocl_run)
    extract(open_dataset(str(tmp_path / "shapes")), coarse, replace(OCL_EXTRACT, resolution=28), device="cpu", show_progress=False)
    with pytest.raises(StoreError, match=r"grid \[4, 4\].*grid \[2, 2\]"):
        train_ocl(coarse, student(teacher, 1), tmp_path / "d", device="cpu", show_progress=False)


def test_cli_sets_the_teacher(ocl_store: Path, teacher: Path, tmp_path: Path) -> None:
    args = ["train-ocl", "--store", str(ocl_store), "--out", str(tmp_path / "run"), "--device", "cpu",
            "--config", str(CONFIGS / "spot-distill.yaml"), "--config", str(CONFIGS / "tiny.yaml"),
            "--set", f"distill.teacher={teacher}", "--set", "model.aggregator.num_slots=4", "--set", "model.aggregator.slot_dim=16",
            "--set", "model.decoder.tfd.dim=16", "--set", "model.decoder.tfd.layers=1", "--set", "train.steps=2", "--set", "train.batch_size=2",
            "--set", "validate_every=0"]
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["teacher"]["run"] == str(teacher)
    missing = [a if not a.startswith("distill.teacher=") else f"distill.teacher={tmp_path / 'none'}" for a in args]
    refused = CliRunner().invoke(app, [a if a != str(tmp_path / "run") else str(tmp_path / "other") for a in missing])
    assert isinstance(refused.exception, ConfigError) and "is not a folder" in str(refused.exception)


def test_teacher_masks_are_its_decoder_masks_in_raster_or_one_drawn_order_per_batch(ocl_store: Path, teacher: Path) -> None:
    from featcache.ocl.distill import teacher_decoder_masks
    from featcache.store import FeatureStore
    from featcache.training.runs import load_ocl_run

    store = FeatureStore(ocl_store, warn_random=False)
    model, _, _ = load_ocl_run(teacher, store, torch.device("cpu"))
    features = torch.from_numpy(store.features(store.valid_indices()[:3], view="center", kind="final_norm").astype(np.float32))
    raster = teacher_decoder_masks(model, features, None, None, "raster")  # (B, S, N)
    model.use_mask_source("decoder")
    torch.testing.assert_close(raster, model.predict_masks(features).flatten(2))
    drawn = teacher_decoder_masks(model, features, None, torch.Generator().manual_seed(3), "random")
    order = int(torch.randint(0, 9, (1,), generator=torch.Generator().manual_seed(3)))
    slots = model.aggregate(features).slots
    _, attention = model.decoder.predict(slots, model.decoder_targets(features, None), torch.full((3,), order))
    assert order != 0 and torch.allclose(drawn, attention.transpose(1, 2)) and not torch.allclose(drawn, raster)
