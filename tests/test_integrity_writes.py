"""Every write path of stores and token sets survives a kill, a second writer, a bad name and a full disk (issue 14).

Faults are injected at named points: ``write_store_attributes`` / ``write_token_attributes`` (the last step of
creating a store / token set) and zarr's file write ``zarr.storage._local._put`` (a full disk).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import featcache.store.tokens as tokens_module
import featcache.store.writer as writer_module
import featcache.training.tokenize as tokenize_module
from featcache.datasets import open_dataset
from featcache.errors import StoreError
from featcache.extraction import ExtractConfig, extract
from featcache.store import FeatureStore, read_attributes, schema
from featcache.store.lock import StaleLockWarning, WriterLock, store_lock_path, token_lock_path
from featcache.store.tokens import TOKENS_GROUP
from featcache.store.writer import is_half_created_store, staging_path
from featcache.training.tokenize import tokenize_store

TOKENS = "vvo-c4"  # a token set of the session's ocl_store, made by ocl_store's vq-vvo-c4 run


def chunk_files(store: Path) -> dict[str, bytes]:
    """Every chunk file's bytes keyed by relative path (metadata excluded: it holds timestamps)."""
    files = {}
    for root, _, names in os.walk(store):
        for name in names:
            if name != "zarr.json":
                path = Path(root) / name
                files[str(path.relative_to(store))] = path.read_bytes()
    return files


def run_extract(data: Path, out: Path, config: ExtractConfig, **kwargs: Any) -> Any:
    return extract(open_dataset(str(data)), out, config, device="cpu", show_progress=False, **kwargs)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped) on this host."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path) -> Path:
    """An uninterrupted extraction of the fixture dataset with the tiny config."""
    config = ExtractConfig(vfm="dino2-s14", weights="random", resolution=28, image_size=32, mask_size=48, samples_per_chunk=4, batch_size=8)
    out = tmp_path_factory.mktemp("reference") / "reference.zarr"
    assert run_extract(shapes_dir, out, config).complete
    return out


@pytest.fixture()
def token_store(ocl_store: Path, tmp_path: Path) -> Path:
    """A private copy of the session's OCL store without its token sets (the session store stays read-only)."""
    copy = tmp_path / "store.zarr"
    shutil.copytree(ocl_store, copy)
    del zarr.open_group(str(copy), mode="r+")[TOKENS_GROUP]
    return copy


def vq_run(ocl_store: Path) -> Path:
    return ocl_store.parent / f"vq-{TOKENS}"


# ----------------------------------------------------------------------------- case 5: kill while creating a store


def test_kill_before_the_store_attributes_resumes(
    tmp_path: Path, shapes_dir: Path, tiny_config: ExtractConfig, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "store.zarr"

    def killed(group: zarr.Group, attributes: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(writer_module, "write_store_attributes", killed)
    with pytest.raises(KeyboardInterrupt):
        run_extract(shapes_dir, out, tiny_config)
    assert not out.exists() and staging_path(out).is_dir()  # the half-built store never took the name
    assert not store_lock_path(out).exists()  # released on the way out
    monkeypatch.undo()
    summary = run_extract(shapes_dir, out, tiny_config)
    assert summary.complete and summary.units_run == 3
    assert not staging_path(out).exists()
    assert chunk_files(out) == chunk_files(reference)


def test_a_store_an_older_featcache_left_half_created_is_recreated(
    tmp_path: Path, shapes_dir: Path, tiny_config: ExtractConfig, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before staging, a kill left the store folder itself without attributes: that folder is recreated."""
    out = tmp_path / "store.zarr"

    def killed(group: zarr.Group, attributes: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(writer_module, "write_store_attributes", killed)
    with pytest.raises(KeyboardInterrupt):
        run_extract(shapes_dir, out, tiny_config)
    monkeypatch.undo()
    staging_path(out).rename(out)  # what an older featcache, building in place, left at --out
    with pytest.raises(StoreError, match="not a featcache store"):
        read_attributes(out)
    assert is_half_created_store(out)
    summary = run_extract(shapes_dir, out, tiny_config)
    assert summary.complete and summary.units_run == 3
    assert chunk_files(out) == chunk_files(reference)


def test_a_folder_featcache_did_not_write_is_still_refused(tmp_path: Path, shapes_dir: Path, tiny_config: ExtractConfig) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="is not a zarr group"):
        run_extract(shapes_dir, plain, tiny_config)
    group = tmp_path / "group.zarr"
    zarr.open_group(str(group), mode="w-", zarr_format=3).create_array("features", shape=(2,), dtype="uint8")
    (group / "mine.txt").write_text("mine")
    assert not is_half_created_store(group)
    with pytest.raises(StoreError, match="not a featcache store"):
        run_extract(shapes_dir, group, tiny_config)
    assert (plain / "notes.txt").read_text() == "mine" and (group / "mine.txt").exists()
    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w-", zarr_format=3).attrs["something"] = 1  # someone else's group
    assert not is_half_created_store(other)


# ----------------------------------------------------------------------------- case 7: kill while creating a token set


@pytest.mark.parametrize("overwrite", [False, True])
def test_kill_while_creating_a_token_set_is_recreated(
    overwrite: bool, token_store: Path, ocl_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(group: zarr.Group, attributes: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tokens_module, "write_token_attributes", killed)
    with pytest.raises(KeyboardInterrupt):
        tokenize_store(token_store, vq_run(ocl_store), TOKENS, device="cpu", show_progress=False)
    monkeypatch.undo()
    assert f"{TOKENS_GROUP}/{TOKENS}" in zarr.open_group(str(token_store), mode="r")  # the half-created group
    assert FeatureStore(token_store, warn_random=False).token_names() == []
    summary = tokenize_store(token_store, vq_run(ocl_store), TOKENS, overwrite=overwrite, device="cpu", show_progress=False)
    assert summary.units_run == summary.units_total == 3
    store, original = FeatureStore(token_store, warn_random=False), FeatureStore(ocl_store, warn_random=False)
    assert store.token_attributes(TOKENS)["completed"]
    everything = slice(0, len(store))
    np.testing.assert_array_equal(store.tokens(TOKENS, everything, view=None), original.tokens(TOKENS, everything, view=None))
    assert not token_lock_path(token_store, TOKENS).exists()


# ----------------------------------------------------------------------------- case 10: one writer at a time


def test_a_second_tokenize_of_the_same_name_fails_naming_the_first(
    token_store: Path, ocl_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = tokenize_module.write_token_unit
    second: list[str] = []

    def write_then_start_another(*args: Any, **kwargs: Any) -> None:
        write(*args, **kwargs)
        if not second:
            with pytest.raises(StoreError) as error:
                tokenize_store(token_store, vq_run(ocl_store), TOKENS, device="cpu", show_progress=False)
            second.append(str(error.value))

    monkeypatch.setattr(tokenize_module, "write_token_unit", write_then_start_another)
    summary = tokenize_store(token_store, vq_run(ocl_store), TOKENS, device="cpu", show_progress=False)
    assert summary.units_run == 3  # the first one finished undisturbed
    lock = token_lock_path(token_store, TOKENS)
    (message,) = second
    assert "\n" not in message
    assert f"is being written by {os.getpid()}@{socket.gethostname()} since " in message
    assert str(lock) in message
    assert not lock.exists()


def test_a_second_extract_into_the_same_out_refuses(tmp_path: Path, shapes_dir: Path, tiny_config: ExtractConfig) -> None:
    out = tmp_path / "store.zarr"
    refusals: list[str] = []

    def start_another(unit: int) -> None:
        if not refusals:
            with pytest.raises(StoreError) as error:
                run_extract(shapes_dir, out, tiny_config)
            refusals.append(str(error.value))

    summary = run_extract(shapes_dir, out, tiny_config, on_unit_done=start_another)
    assert summary.complete and summary.units_run == 3
    (message,) = refusals
    assert "\n" not in message and f"store {out} is being written by {os.getpid()}@" in message
    assert str(store_lock_path(out)) in message
    assert not store_lock_path(out).exists()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path: Path, shapes_dir: Path, tiny_config: ExtractConfig) -> None:
    out = tmp_path / "store.zarr"
    lock = store_lock_path(out)
    stale = {"pid": dead_pid(), "host": socket.gethostname(), "command": "featcache extract", "started": "2026-01-01T00:00:00Z"}
    lock.write_text(json.dumps(stale))
    with pytest.warns(StaleLockWarning, match=f"took over stale lock {lock}.*{stale['pid']}@"):
        summary = run_extract(shapes_dir, out, tiny_config)
    assert summary.complete and not lock.exists()


def test_a_lock_of_a_live_or_remote_holder_is_kept(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    for holder in (
        {"pid": os.getppid(), "host": socket.gethostname(), "command": "c", "started": "t"},  # alive here
        {"pid": dead_pid(), "host": "elsewhere", "command": "c", "started": "t"},  # cannot be checked from here
    ):
        lock.write_text(json.dumps(holder))
        with pytest.raises(StoreError, match=f"by {holder['pid']}@{holder['host']} since t .*lock file {lock}"):
            WriterLock(lock, "thing").acquire()
        assert json.loads(lock.read_text()) == holder
    lock.unlink()
    with WriterLock(lock, "thing") as held:
        assert json.loads(lock.read_text())["token"] == held.token
    assert not lock.exists()


# ----------------------------------------------------------------------------- case 14: names used as paths


@pytest.mark.parametrize("name", ["../evil", "..", ".", "", ".hidden", "a/b", "a\\b"])
def test_bad_token_set_names_fail_before_anything_is_created(name: str, token_store: Path, ocl_store: Path) -> None:
    before = sorted(str(p.relative_to(token_store.parent)) for p in token_store.parent.rglob("*"))
    with pytest.raises(StoreError, match="token set name .* is invalid"):
        tokenize_store(token_store, vq_run(ocl_store), name, device="cpu", show_progress=False)
    assert sorted(str(p.relative_to(token_store.parent)) for p in token_store.parent.rglob("*")) == before
    with pytest.raises(StoreError, match="token set name .* is invalid"):  # as read from a config's `tokens:`
        FeatureStore(ocl_store, warn_random=False).tokens(name, [0])


# ----------------------------------------------------------------------------- case 15: a full disk


def full_disk(monkeypatch: pytest.MonkeyPatch, where: str) -> list[str]:
    """Make zarr's file writes whose path contains ``where`` fail as on a full disk; returns the refused paths."""
    put = zarr.storage._local._put
    refused: list[str] = []

    def put_or_fail(path: Path, value: Any, exclusive: bool = False) -> int:
        if where in path.as_posix():
            refused.append(path.as_posix())
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write(2) raises it: no file name
        return put(path, value, exclusive=exclusive)

    monkeypatch.setattr(zarr.storage._local, "_put", put_or_fail)
    return refused


def test_a_full_disk_during_a_unit_is_one_line_and_resumes_to_the_same_bytes(
    tmp_path: Path, shapes_dir: Path, tiny_config: ExtractConfig, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "store.zarr"
    refused = full_disk(monkeypatch, f"{out.name}/{schema.FEATURES}/c/1/")
    with pytest.raises(StoreError) as error:
        run_extract(shapes_dir, out, tiny_config)
    message = str(error.value)
    assert refused and "\n" not in message
    assert message.startswith(f"writing unit 1 of store {out} failed: [Errno 28] No space left on device")
    monkeypatch.undo()
    assert not store_lock_path(out).exists()
    done = FeatureStore(out, warn_random=False).group[schema.UNITS_DONE][:]
    assert done[1] == 0  # the unit that failed is still pending
    summary = run_extract(shapes_dir, out, tiny_config)
    assert summary.complete and summary.units_run == 3 - int(done.sum())
    assert chunk_files(out) == chunk_files(reference)


def test_a_full_disk_while_finalising_is_one_line_and_a_rerun_finalises(
    tmp_path: Path, shapes_dir: Path, tiny_config: ExtractConfig, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "store.zarr"
    finalising = writer_module.finalize_store

    def finalise_on_a_full_disk(path: Path) -> Any:
        full_disk(monkeypatch, f"{out.name}/zarr.json")
        return finalising(path)

    monkeypatch.setattr("featcache.extraction.run.finalize_store", finalise_on_a_full_disk)
    with pytest.raises(StoreError, match=f"^writing the completion attributes of store {out} failed: \\[Errno 28\\] No space"):
        run_extract(shapes_dir, out, tiny_config)
    monkeypatch.undo()
    assert read_attributes(out)["completed"] is None  # the attributes file is whole, only not yet updated
    summary = run_extract(shapes_dir, out, tiny_config)
    assert summary.complete and summary.units_run == 0
    assert read_attributes(out)["completed"]
    assert chunk_files(out) == chunk_files(reference)


def test_a_full_disk_while_creating_the_store_leaves_no_store(
    tmp_path: Path, shapes_dir: Path, tiny_config: ExtractConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "store.zarr"
    full_disk(monkeypatch, f"{schema.SAMPLE_IDS}/")
    with pytest.raises(StoreError, match=f"^writing the new store's arrays and attributes of store {out} failed: \\[Errno 28\\]"):
        run_extract(shapes_dir, out, tiny_config)
    assert not out.exists()


# ----------------------------------------------------------------------------- the command line: one line each


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from featcache.cli import main

    monkeypatch.setattr(sys, "argv", ["featcache", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.strip().splitlines() if line.startswith("error")]


@pytest.mark.parametrize("name", ["../evil", "a/b"])
def test_cli_tokenize_with_a_path_for_a_name_is_one_line_and_creates_nothing(
    name: str, token_store: Path, ocl_store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(monkeypatch, capsys, "tokenize", "--store", str(token_store), "--vq", str(vq_run(ocl_store)), "--name", name, "--device", "cpu")
    assert code == 2 and len(error_lines(err)) == 1 and f"token set name {name!r} is invalid" in " ".join(err.split())
    assert TOKENS_GROUP not in zarr.open_group(str(token_store), mode="r")  # no orphan group
    assert not (token_store.parent / "evil").exists()


def test_cli_extract_on_a_full_disk_is_one_line_naming_the_store(
    tmp_path: Path, shapes_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.zarr"
    full_disk(monkeypatch, f"{out.name}/{schema.FEATURES}/c/")
    code, err = run_cli(
        monkeypatch, capsys, "extract", "--data", str(shapes_dir), "--out", str(out), "--weights", "random", "--resolution", "28",
        "--samples-per-chunk", "6", "--mask-size", "32", "--set", "image_size=32", "--device", "cpu",
    )
    assert code == 2 and len(error_lines(err)) == 1
    assert f"writing unit 0 of store {out} failed: [Errno 28] No space left on device" in " ".join(err.split())


# ----------------------------------------------------------------------------- misuse found by probing
def test_one_sweep_and_one_pipeline_per_folder(tmp_path: Path) -> None:
    """A second sweep into a sweep folder (or a second run of a pipeline workdir) fails in one line naming the first."""
    from featcache.pipelines import load_pipeline, run_pipeline
    from featcache.sweeps import load_sweep_spec, run_sweep

    root = Path(__file__).resolve().parent.parent
    spec = load_sweep_spec(root / "configs" / "ablations" / "decoders-tiny.yaml", ["store=somewhere.zarr"])
    out = tmp_path / "sweep"
    with WriterLock(out.with_name("sweep.lock"), "a sweep already running"):
        with pytest.raises(StoreError, match=r"sweep folder .*sweep is being written by .*lock file") as error:
            run_sweep(spec, out=out, device="cpu", show_progress=False)
    assert "\n" not in str(error.value) and not out.exists()
    (tmp_path / "p.yaml").write_text("name: p\nstages:\n  - {name: synth, kind: synth, params: {images: 2, size: 32}}\n")
    pipeline = load_pipeline(tmp_path / "p.yaml", workdir=tmp_path / "work")
    with WriterLock(tmp_path / "work.lock", "a pipeline already running"):
        with pytest.raises(StoreError, match=r"pipeline workdir .*work is being written by"):
            run_pipeline(pipeline, show_progress=False)
    assert run_pipeline(pipeline, show_progress=False).error is None and not (tmp_path / "work.lock").exists()


def test_a_run_folder_inside_a_store_is_refused_before_anything_is_written(ocl_store: Path, tmp_path: Path) -> None:
    from featcache.config import load_config
    from featcache.errors import FeatcacheError
    from featcache.training.config import OCLTrainConfig
    from featcache.training.ocl import train_ocl

    store = tmp_path / "s.zarr"
    shutil.copytree(ocl_store, store)
    before = sorted(str(p.relative_to(store)) for p in store.rglob("*"))
    config = load_config(OCLTrainConfig, [Path(__file__).resolve().parent.parent / "configs" / "ocl" / "dinosaur-mlp.yaml"])
    for out in (store, store / "features" / "run"):
        with pytest.raises(FeatcacheError, match=r"--out .* (is|is inside) the zarr store .*; a run folder must lie outside stores"):
            train_ocl(store, config, out, device="cpu", show_progress=False)
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*")) == before


def test_negative_counts_are_refused_not_reinterpreted(shapes_dir: Path, ocl_store: Path, tmp_path: Path) -> None:
    """`eval --limit -1` once scored all images but the last; `extract --workers -1` ran serially."""
    from featcache.errors import FeatcacheError
    from featcache.stages.evaluate import evaluate_run

    with pytest.raises(FeatcacheError, match=r"--workers must be 0 .* got -1"):
        extract(open_dataset(str(shapes_dir)), tmp_path / "x.zarr", ExtractConfig(), workers=-1, show_progress=False)
    assert not (tmp_path / "x.zarr").exists()
    with pytest.raises(FeatcacheError, match=r"limit is -1; expected a positive number"):
        evaluate_run(tmp_path / "no-run-needed", ocl_store, limit=-1, show_progress=False)
