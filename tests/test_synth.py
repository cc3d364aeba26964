"""The synthetic scene generator: determinism, scene statistics, ground-truth consistency, video, read-back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featcache.datasets import open_dataset, synth, write_synthetic
from featcache.errors import DatasetError

SIZE = 64


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Forty still scenes, enough for every shape, fill and some occlusion to show up."""
    return write_synthetic(tmp_path_factory.mktemp("synth") / "scenes", images=40, seed=3, size=SIZE)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "clips"
    return write_synthetic(out, images=3, seed=5, size=SIZE, video=True, frames=6)


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    calls: list[int] = []
    first = write_synthetic(tmp_path / "first", images=4, seed=1, size=32, progress=calls.append)
    second = write_synthetic(tmp_path / "second", images=4, seed=1, size=32)
    assert calls == [1, 2, 3, 4]
    assert file_bytes(first) == file_bytes(second)
    other = write_synthetic(tmp_path / "other", images=4, seed=2, size=32)
    assert (first / "images" / "000000.png").read_bytes() != (other / "images" / "000000.png").read_bytes()
    write_synthetic(first, images=4, seed=1, size=32)  # re-running on its own output is idempotent
    assert file_bytes(first) == file_bytes(second)
    write_synthetic(first, images=2, seed=1, size=32)  # a smaller re-run leaves no stale files behind
    assert sorted(path.name for path in (first / "images").iterdir()) == ["000000.png", "000001.png"]
    assert (first / "images" / "000001.png").read_bytes() == (second / "images" / "000001.png").read_bytes()


def test_parallel_run_writes_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serial = write_synthetic(tmp_path / "serial", images=6, seed=4, size=32)
    monkeypatch.setattr(synth, "_PARALLEL_MIN_FRAMES", 1)
    monkeypatch.setattr(synth, "_worker_count", lambda frames_total: 2)
    calls: list[int] = []
    parallel = write_synthetic(tmp_path / "parallel", images=6, seed=4, size=32, progress=calls.append)
    assert calls == list(range(1, 7))
    assert file_bytes(parallel) == file_bytes(serial)


def test_refuses_foreign_folders_and_bad_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not written by write_synthetic"):
        write_synthetic(tmp_path, images=1, size=32)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(DatasetError, match="object counts 5..3"):
        write_synthetic(tmp_path / "new", images=1, min_objects=5, max_objects=3)
    with pytest.raises(DatasetError, match="image size 8"):
        write_synthetic(tmp_path / "new", images=1, size=8)
    monkeypatch.setattr(synth, "_MAX_ATTEMPTS", 3)
    with pytest.raises(DatasetError, match="could not draw a scene with 30 visible objects"):
        write_synthetic(tmp_path / "crowded", images=1, size=16, min_objects=30, max_objects=30)


def test_scene_statistics_and_ground_truth(scenes: Path) -> None:
    annotations = json.loads((scenes / "annotations.json").read_text())
    assert annotations["generator"]["seed"] == 3 and annotations["generator"]["version"] == 1
    ids = sorted(annotations["classes"])
    assert len(ids) == 40 and ids[0] == "000000"
    shapes_seen: set[int] = set()
    fills_seen: set[str] = set()
    occluded = 0
    for sample_id in ids:
        mask = read_mask(scenes / "masks" / f"{sample_id}.png")
        classes = annotations["classes"][sample_id]
        boxes = annotations["boxes"][sample_id]
        areas = annotations["areas"][sample_id]
        full_areas = annotations["full_areas"][sample_id]
        assert 3 <= len(classes) <= 7
        assert mask.shape == (SIZE, SIZE) and int(mask.max()) == len(classes)
        assert set(np.unique(mask).tolist()) - {0} == set(range(1, len(classes) + 1))  # ids 1..K, all visible
        for instance_id, (box, area, full_area) in enumerate(zip(boxes, areas, full_areas), start=1):
            rows, columns = np.nonzero(mask == instance_id)
            assert box == [columns.min(), rows.min(), columns.max() + 1, rows.max() + 1]  # tight, x1/y1 exclusive
            assert area == rows.size and 0 < area <= full_area
            occluded += area < full_area
        shapes_seen.update(classes)
        fills_seen.update(annotations["fills"][sample_id])
    assert len(shapes_seen) >= 5
    assert "solid" in fills_seen and fills_seen & {"stripes", "checkers", "noise"}
    assert occluded > 0


def test_textured_objects_have_several_colours(scenes: Path) -> None:
    annotations = json.loads((scenes / "annotations.json").read_text())
    colour_counts = {"solid": [], "textured": []}
    for sample_id, fills in annotations["fills"].items():
        image = np.asarray(Image.open(scenes / "images" / f"{sample_id}.png"))
        mask = read_mask(scenes / "masks" / f"{sample_id}.png")
        for instance_id, fill in enumerate(fills, start=1):
            pixels = image[mask == instance_id]
            if pixels.shape[0] >= 40:
                kind = "solid" if fill == "solid" else "textured"
                colour_counts[kind].append(len(np.unique(pixels, axis=0)))
    assert max(colour_counts["solid"]) == 1
    assert np.median(colour_counts["textured"]) > 1


def test_read_back_through_open_dataset(scenes: Path) -> None:
    dataset = open_dataset(str(scenes))
    annotations = json.loads((scenes / "annotations.json").read_text())
    assert dataset.kind == "folder" and dataset.has_masks and len(dataset) == 40
    assert dataset.max_instances == max(len(classes) for classes in annotations["classes"].values())
    sample = dataset.load(5)
    assert sample.sample_id == "000005" and sample.image.shape == (SIZE, SIZE, 3)
    assert sample.instance_classes == annotations["classes"]["000005"]
    assert sample.instance_mask is not None
    np.testing.assert_array_equal(sample.instance_mask, read_mask(scenes / "masks" / "000005.png"))


def test_video_ids_are_stable_and_objects_move(clips: Path) -> None:
    clip_folders = sorted(path for path in clips.iterdir() if path.is_dir())
    assert [folder.name for folder in clip_folders] == ["000000", "000001", "000002"]
    moved = 0
    for folder in clip_folders:
        annotations = json.loads((folder / "annotations.json").read_text())
        frames = sorted(annotations["classes"])
        assert frames == [f"{index:05d}" for index in range(6)]
        first_classes = annotations["classes"][frames[0]]
        assert 3 <= len(first_classes) <= 7
        masks = [read_mask(folder / "masks" / f"{frame}.png") for frame in frames]
        seen: set[int] = set()
        for frame, mask in zip(frames, masks):
            assert annotations["classes"][frame] == first_classes  # one class list per clip: ids do not change
            assert int(mask.max()) <= len(first_classes)
            seen.update(np.unique(mask).tolist())
        assert seen - {0} == set(range(1, len(first_classes) + 1))  # every id shows up in some frame
        for instance_id in range(1, len(first_classes) + 1):
            centres = []
            for frame, mask in zip(frames, masks):
                box = annotations["boxes"][frame][instance_id - 1]
                if box is not None:
                    centres.append(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
                    assert (mask == instance_id).any()
            steps = np.linalg.norm(np.diff(np.array(centres), axis=0), axis=1)
            assert (steps < 0.25 * SIZE).all()  # the same object from frame to frame, not another one
            moved += bool(np.any(steps > 0.5))
    assert moved > 0


def test_video_read_back_through_open_dataset(clips: Path) -> None:
    dataset = open_dataset(str(clips))
    assert dataset.kind == "clips" and dataset.is_video and len(dataset) == 18
    assert dataset.clip_ids()[:7] == ["000000"] * 6 + ["000001"]
    assert dataset.frame_indices()[:7] == [0, 1, 2, 3, 4, 5, 0]
    sample = dataset.load(7)
    annotations = json.loads((clips / "000001" / "annotations.json").read_text())
    assert (sample.clip_id, sample.frame_index, sample.sample_id) == ("000001", 1, "000001/00001")
    assert sample.instance_classes == annotations["classes"]["00001"]
    assert dataset.max_instances == max(
        len(json.loads((folder / "annotations.json").read_text())["classes"]["00000"])
        for folder in clips.iterdir()
        if folder.is_dir()
    )
