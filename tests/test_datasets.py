"""Dataset adapters on tiny layouts built in tmp_path: ids, pixels, masks, classes, specs and error messages."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featcache.datasets import DATASETS, IGNORE_LABEL, MASK_DTYPE, Dataset, open_dataset
from featcache.errors import DatasetError, FeatcacheError

HEIGHT, WIDTH = 32, 48


def rgb(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(height, width, 3) uint8 random image."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save_png(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def save_jpeg(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)
    return path


def save_palette_png(indices: np.ndarray, path: Path) -> Path:
    """A palette ("P") PNG whose pixel values are ``indices`` (how VOC and ClevrTex store ids)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.astype(np.uint8).tobytes())
    image.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    image.save(path)
    return path


def write_json(data: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def two_instance_mask() -> np.ndarray:
    """(HEIGHT, WIDTH) uint8 with instance 1 top-left and instance 2 bottom-right."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[2:10, 3:12] = 1
    mask[20:30, 30:45] = 2
    return mask


def assert_round_trip(dataset: Dataset) -> None:
    """``source()`` (with the split) opens the same samples again, and the adapter survives pickling
    (extraction workers receive it that way)."""
    again = open_dataset(dataset.source(), dataset.split)
    assert type(again) is type(dataset)
    assert again.sample_ids == dataset.sample_ids
    assert again.fingerprint() == dataset.fingerprint()
    copied = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(copied.load(0).image, dataset.load(0).image)


# --- folder ---------------------------------------------------------------------------------------------------


def make_folder(root: Path) -> Path:
    """Three images: 8-bit mask with annotated classes, 16-bit mask with ignore, jpg with an 8-bit mask."""
    save_png(rgb(0), root / "images" / "a.png")
    save_png(rgb(1), root / "images" / "b10.png")
    save_jpeg(rgb(2), root / "images" / "b2.jpg")
    save_png(two_instance_mask(), root / "masks" / "a.png")
    sixteen_bit = np.zeros((HEIGHT, WIDTH), dtype=np.uint16)
    sixteen_bit[0:5, 0:5] = 300
    sixteen_bit[10:12, :] = IGNORE_LABEL
    save_png(sixteen_bit, root / "masks" / "b10.png")
    save_png(np.zeros((HEIGHT, WIDTH), dtype=np.uint8), root / "masks" / "b2.png")
    annotations = {"classes": {"a": [7, 9]}, "boxes": {"a": [[3, 2, 12, 10], [30, 20, 45, 30]]}}
    write_json(annotations, root / "annotations.json")
    return root


def test_folder_adapter_lists_and_decodes(tmp_path: Path) -> None:
    dataset = open_dataset(f"folder:{make_folder(tmp_path / 'data')}")
    assert dataset.kind == "folder" and dataset.has_masks and not dataset.is_video
    assert dataset.sample_ids == ["a", "b2", "b10"]  # numbers inside ids sort numerically
    assert len(dataset) == 3
    assert dataset.max_instances == 64  # annotations.json does not cover every image
    assert dataset.clip_ids() == [None] * 3 and dataset.frame_indices() == [0] * 3
    first = dataset.load(0)
    assert first.image.shape == (HEIGHT, WIDTH, 3) and first.image.dtype == np.uint8
    np.testing.assert_array_equal(first.image, rgb(0))
    assert first.instance_mask is not None and first.instance_mask.dtype == MASK_DTYPE
    np.testing.assert_array_equal(first.instance_mask, two_instance_mask())
    assert first.instance_classes == [7, 9]
    last = dataset.load(2)  # 16-bit mask: id 300 and ignore survive, classes default to 0 per instance id
    assert last.instance_mask is not None
    assert set(np.unique(last.instance_mask).tolist()) == {0, 300, IGNORE_LABEL}
    assert last.instance_classes == [0] * 300
    assert dataset.load(1).instance_classes == []
    assert_round_trip(dataset)


def test_folder_without_masks_and_with_split(tmp_path: Path) -> None:
    save_png(rgb(0), tmp_path / "train" / "images" / "x.png")
    write_json({"classes": {"x": [1, 2, 3]}}, tmp_path / "train" / "annotations.json")
    dataset = open_dataset(str(tmp_path), split="train")  # detected through ROOT/train/images
    assert dataset.kind == "folder" and not dataset.has_masks and dataset.split == "train"
    assert dataset.max_instances == 3
    sample = dataset.load(0)
    assert sample.instance_mask is None and sample.instance_classes == [1, 2, 3]
    assert_round_trip(dataset)
    with pytest.raises(DatasetError, match="val"):
        open_dataset(f"folder:{tmp_path}", split="val")


def test_folder_errors_name_the_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    (root / "masks" / "b2.png").unlink()
    (root / "images" / "a.png").write_bytes(b"not a png at all")
    save_png(np.zeros((HEIGHT + 1, WIDTH), dtype=np.uint8), root / "masks" / "b10.png")
    dataset = open_dataset(str(root))
    with pytest.raises(DatasetError, match=r"images/a\.png"):
        dataset.load(0)
    with pytest.raises(DatasetError, match=r"masks/b2\.png does not exist"):
        dataset.load(1)
    with pytest.raises(DatasetError, match=r"masks/b10\.png is 48x33 but image .*b10\.png is 48x32"):
        dataset.load(2)
    truncated = root / "images" / "b2.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"b2\.jpg"):
        dataset.load(1)


def test_folder_rejects_colour_masks_and_short_class_lists(tmp_path: Path) -> None:
    save_png(rgb(0), tmp_path / "images" / "a.png")
    save_png(rgb(1), tmp_path / "masks" / "a.png")
    with pytest.raises(DatasetError, match=r"masks/a\.png has mode RGB"):
        open_dataset(str(tmp_path)).load(0)
    save_png(two_instance_mask(), tmp_path / "masks" / "a.png")
    write_json({"classes": {"a": [4]}}, tmp_path / "annotations.json")
    with pytest.raises(DatasetError, match=r"annotations\.json: classes\['a'\] lists 1 instances"):
        open_dataset(str(tmp_path)).load(0)


# --- clips ----------------------------------------------------------------------------------------------------


def make_clips(root: Path) -> Path:
    for clip, frames in (("clip_b", ("1", "2", "10")), ("clip_a", ("00000", "00001"))):
        for position, frame in enumerate(frames):
            save_png(rgb(position), root / clip / "images" / f"{frame}.png")
            mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
            mask[position : position + 4, 0:4] = 1  # instance 1 moves down, keeping its id
            save_png(mask, root / clip / "masks" / f"{frame}.png")
        write_json({"classes": {frame: [5] for frame in frames}}, root / clip / "annotations.json")
    return root


def test_clips_adapter(tmp_path: Path) -> None:
    root = make_clips(tmp_path / "videos")
    dataset = open_dataset(str(root))
    assert dataset.kind == "clips" and dataset.is_video and dataset.has_masks
    assert dataset.sample_ids == ["clip_a/00000", "clip_a/00001", "clip_b/1", "clip_b/2", "clip_b/10"]
    assert dataset.clip_ids() == ["clip_a", "clip_a", "clip_b", "clip_b", "clip_b"]
    assert dataset.frame_indices() == [0, 1, 0, 1, 2]
    assert dataset.max_instances == 1
    sample = dataset.load(4)
    assert (sample.sample_id, sample.clip_id, sample.frame_index) == ("clip_b/10", "clip_b", 2)
    assert sample.instance_classes == [5]
    assert sample.instance_mask is not None and sample.instance_mask[2:6, 0:4].min() == 1
    np.testing.assert_array_equal(sample.image, rgb(2))
    assert_round_trip(dataset)
    (root / "clip_b" / "masks" / "2.png").unlink()
    with pytest.raises(DatasetError, match=r"clip_b/masks/2\.png does not exist"):
        dataset.load(3)
    (root / "notes").mkdir()
    with pytest.raises(DatasetError, match=r"notes has no images/"):
        open_dataset(f"clips:{root}")


# --- COCO -----------------------------------------------------------------------------------------------------


def box_polygon(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def make_coco(root: Path) -> Path:
    images = [
        {"id": 42, "file_name": "000000000042.jpg", "height": HEIGHT, "width": WIDTH},
        {"id": 7, "file_name": "000000000007.png", "height": HEIGHT, "width": WIDTH},
        {"id": 9, "file_name": "000000000009.png", "height": HEIGHT, "width": WIDTH},  # no annotations
    ]
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 18, "iscrowd": 0, "segmentation": box_polygon(0, 0, 20, 16)},
        {"id": 2, "image_id": 7, "category_id": 3, "iscrowd": 1, "segmentation": box_polygon(30, 20, 46, 30)},
        {"id": 3, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": box_polygon(10, 8, 30, 24)},
        {"id": 4, "image_id": 42, "category_id": 5, "iscrowd": 0, "segmentation": box_polygon(2, 2, 10, 10)},
    ]
    write_json(
        {"images": images, "annotations": annotations, "categories": [{"id": 1}, {"id": 3}, {"id": 5}, {"id": 18}]},
        root / "annotations" / "instances_val2017.json",
    )
    save_jpeg(rgb(42), root / "val2017" / "000000000042.jpg")
    save_png(rgb(7), root / "val2017" / "000000000007.png")
    save_png(rgb(9), root / "val2017" / "000000000009.png")
    return root


# pycocotools' mask decoding predates numpy 2 and warns about the copy keyword on every call.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_coco_adapter(tmp_path: Path) -> None:
    root = make_coco(tmp_path / "coco")
    dataset = open_dataset(f"coco:{root}")
    assert dataset.kind == "coco" and dataset.split == "val2017" and dataset.has_masks
    assert dataset.sample_ids == ["7", "9", "42"]  # every listed image, sorted by image id
    assert dataset.max_instances == 2  # the crowd annotation does not count
    sample = dataset.load(0)
    assert sample.image.shape == (HEIGHT, WIDTH, 3)
    assert sample.instance_classes == [18, 1]  # annotation order, crowd excluded, COCO category ids
    mask = sample.instance_mask
    assert mask is not None and mask.dtype == MASK_DTYPE
    assert mask[2, 2] == 1 and mask[20, 25] == 2
    assert mask[12, 15] == IGNORE_LABEL  # covered by both instances
    assert mask[25, 40] == 0  # crowd region is background, not an instance
    assert np.count_nonzero(mask == IGNORE_LABEL) > 0
    empty = dataset.load(1)
    assert empty.instance_classes == [] and empty.instance_mask is not None and not empty.instance_mask.any()
    assert set(np.unique(dataset.load(2).instance_mask).tolist()) == {0, 1}
    assert_round_trip(dataset)
    with pytest.raises(DatasetError, match=r"annotations/instances_train2017\.json does not exist"):
        open_dataset(f"coco:{root}", split="train2017")
    (root / "val2017" / "000000000009.png").unlink()
    with pytest.raises(DatasetError, match=r"000000000009\.png does not exist"):
        dataset.load(1)


# --- VOC ------------------------------------------------------------------------------------------------------


def make_voc(devkit: Path) -> Path:
    year = devkit / "VOC2012"
    for position, sample_id in enumerate(("2008_000002", "2007_000033")):
        save_jpeg(rgb(position), year / "JPEGImages" / f"{sample_id}.jpg")
        objects = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
        classes = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
        objects[0:10, 0:10] = 1
        classes[0:10, 0:10] = 15
        classes[0:3, 0:10] = 12  # a minority of instance 1 labelled otherwise: the majority (15) wins
        objects[15:25, 20:40] = 2
        classes[15:25, 20:40] = 8
        objects[10, :] = 255  # boundary band
        classes[10, :] = 255
        save_palette_png(objects, year / "SegmentationObject" / f"{sample_id}.png")
        save_palette_png(classes, year / "SegmentationClass" / f"{sample_id}.png")
    (year / "ImageSets" / "Segmentation").mkdir(parents=True)
    (year / "ImageSets" / "Segmentation" / "val.txt").write_text("2008_000002\n2007_000033\n")
    (year / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000033\n")
    return devkit


def test_voc_adapter(tmp_path: Path) -> None:
    devkit = make_voc(tmp_path / "VOCdevkit")
    dataset = open_dataset(f"voc:{devkit}")
    assert dataset.kind == "voc" and dataset.split == "val" and dataset.has_masks
    assert dataset.sample_ids == ["2007_000033", "2008_000002"]
    sample = dataset.load(0)
    assert sample.image.shape == (HEIGHT, WIDTH, 3) and sample.image.dtype == np.uint8
    mask = sample.instance_mask
    assert mask is not None and mask.dtype == MASK_DTYPE
    assert set(np.unique(mask).tolist()) == {0, 1, 2, IGNORE_LABEL}
    assert (mask[10] == IGNORE_LABEL).all()
    assert sample.instance_classes == [15, 8]
    assert_round_trip(dataset)
    same = open_dataset(f"voc:{devkit / 'VOC2012'}", split="train")  # the year folder works as ROOT too
    assert same.sample_ids == ["2007_000033"]
    with pytest.raises(DatasetError, match=r"Segmentation/test\.txt does not exist; available splits: train, val"):
        open_dataset(f"voc:{devkit}", split="test")
    (devkit / "VOC2012" / "SegmentationObject" / "2008_000002.png").unlink()
    with pytest.raises(DatasetError, match=r"SegmentationObject/2008_000002\.png"):
        dataset.load(1)


# --- ClevrTex -------------------------------------------------------------------------------------------------


def make_clevrtex(root: Path, count: int = 10) -> Path:
    for index in range(count):
        folder = root / str(index // 5)  # the release shards files into numbered subfolders
        rgba = np.concatenate([rgb(index, 24, 32), np.full((24, 32, 1), 128, np.uint8)], axis=2)
        save_png(rgba, folder / f"CLEVRTEX_full_{index:06d}.png")
        mask = np.zeros((24, 32), dtype=np.uint8)
        mask[0:6, 0:6] = 1
        mask[10:20, 10:20] = 2
        save_palette_png(mask, folder / f"CLEVRTEX_full_{index:06d}_flat.png")
        objects = [{"shape": "sphere"}, {"shape": "monkey"}, {"shape": "pyramid"}]
        write_json({"objects": objects}, folder / f"CLEVRTEX_full_{index:06d}.json")
    return root


def test_clevrtex_adapter(tmp_path: Path) -> None:
    root = make_clevrtex(tmp_path / "clevrtex_full")
    everything = open_dataset(f"clevrtex:{root}")
    assert len(everything) == 10 and everything.max_instances == 10 and everything.has_masks
    sizes = {split: len(open_dataset(f"clevrtex:{root}", split)) for split in ("test", "val", "train")}
    assert sizes == {"test": 1, "val": 1, "train": 8}
    test = open_dataset(f"clevrtex:{root}", "test")
    assert test.sample_ids == ["CLEVRTEX_full_000000"]
    assert open_dataset(f"clevrtex:{root}", "val").sample_ids == ["CLEVRTEX_full_000001"]
    sample = test.load(0)
    assert sample.image.shape == (24, 32, 3)  # alpha dropped
    np.testing.assert_array_equal(sample.image, rgb(0, 24, 32))
    assert sample.instance_mask is not None and set(np.unique(sample.instance_mask).tolist()) == {0, 1, 2}
    assert sample.instance_classes == [3, 4, 0]  # sphere, monkey, unknown shape; hidden third object keeps its slot
    assert_round_trip(test)
    (root / "0" / "CLEVRTEX_full_000000.json").unlink()
    assert test.load(0).instance_classes == [0, 0]
    (root / "0" / "CLEVRTEX_full_000000_flat.png").unlink()
    with pytest.raises(DatasetError, match=r"CLEVRTEX_full_000000_flat\.png does not exist"):
        test.load(0)
    with pytest.raises(DatasetError, match="expected one of test, val, train"):
        open_dataset(f"clevrtex:{root}", "holdout")


# --- specs and detection --------------------------------------------------------------------------------------


def test_registry_lists_every_format() -> None:
    assert DATASETS.names() == ["clevrtex", "clips", "coco", "folder", "movi", "video", "voc", "ytvis"]


def test_open_dataset_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=f"{missing} does not exist"):
        open_dataset(str(missing))
    with pytest.raises(DatasetError, match=f"{missing} does not exist"):
        open_dataset(f"coco:{missing}")
    known = "clevrtex, clips, coco, folder, movi, video, voc, ytvis"
    with pytest.raises(FeatcacheError, match=f"unknown dataset format 'imagenet'; known: {known}"):
        open_dataset(f"imagenet:{tmp_path}")
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=f"write FORMAT:PATH with FORMAT one of {known}"):
        open_dataset(str(tmp_path))
    with pytest.raises(DatasetError, match="is a file"):
        open_dataset(str(tmp_path / "loose.png"))


def test_plain_path_with_a_colon_is_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_png(rgb(0), tmp_path / "set:one" / "images" / "x.png")
    monkeypatch.chdir(tmp_path)
    dataset = open_dataset("set:one")  # "set" is no format and the whole spec exists as a path
    assert dataset.kind == "folder" and dataset.sample_ids == ["x"]
    assert dataset.root == str(tmp_path / "set:one")
