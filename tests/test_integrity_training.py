"""Issue 14 (integrity), training: checkpoints as one unit, resume tied to its inputs, values checked where read.

Kills are injected at named points (``os.replace`` of a staged checkpoint file, the checkpoint's ``_write_file``,
``_write_journal``) and a full disk as ``OSError(ENOSPC)`` there; every resumed run is compared with an
uninterrupted one to zero difference.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from featcache.cli import app
from featcache.config import load_config
from featcache.datasets import open_dataset
from featcache.errors import ConfigError, FeatcacheError
from featcache.extraction import extract
from featcache.quantize import QuantizerConfig, VQDecoderConfig
from featcache.sweeps import load_sweep_spec
from featcache.training import checkpoint, loop
from featcache.training.checkpoint import check_resume_inputs, read_run
from featcache.training.config import OCLTrainConfig, TrainSettings, VQTrainConfig, with_seed
from featcache.training.fused import train_ocl_fused_seeds
from featcache.training.metrics_log import MetricsLog
from featcache.training.ocl import train_ocl
from featcache.training.vq import train_vq
from tests.conftest import OCL_EXTRACT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = Path(__file__).parent.parent / "configs" / "ocl"


def vq_config(steps: int = 20, **train: Any) -> VQTrainConfig:
    """A tiny VQ run (features target: no image decoder) checkpointing every 5 steps."""
    settings = {"steps": steps, "batch_size": 4, "learning_rate": 3e-3, "log_every": 5, "checkpoint_every": 5, "loader": "memory", **train}
    return VQTrainConfig(
        quantizer=QuantizerConfig(codebook_size=8, code_dim=4, template_dim=4, encoder_layers=1, encoder_channels=8),
        decoder=VQDecoderConfig(target="features", channels=8),
        train=TrainSettings(**settings),
    )


def ocl_configs(seeds: tuple[int, ...] = (0,), steps: int = 6) -> list[OCLTrainConfig]:
    """Tiny dinosaur-mlp runs checkpointing every 2 steps (one per seed, sharing data_seed 0: fusable)."""
    settings = [f"{key}={value}" for key, value in {
        "train.steps": steps, "train.batch_size": 4, "train.log_every": 2, "train.checkpoint_every": 2, "validate_every": 0,
        "train.loader": "memory", "train.data_seed": 0, "model.aggregator.slot_dim": 16, "model.aggregator.mlp_hidden": 16,
        "model.projection_hidden": 16, "model.decoder.mlp.hidden": 16, "model.aggregator.mlp_dropout": 0.0,
        "model.projection_dropout": 0.0,
    }.items()]
    config = load_config(OCLTrainConfig, [CONFIGS / "dinosaur-mlp.yaml", CONFIGS / "tiny.yaml"], settings)
    return [with_seed(config, seed) for seed in seeds]


@pytest.fixture(scope="module")
def other_stores(tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path) -> dict[str, Path]:
    """Stores beside the shared ``ocl_store``: ``same-grid`` (another identity: other mask size, same 4 x 4 grid and
    channels) and ``other-grid`` (2 x 2)."""
    root = tmp_path_factory.mktemp("integrity-stores")
    stores = {"same-grid": (root / "same.zarr", replace(OCL_EXTRACT, mask_size=48)), "other-grid": (root / "grid.zarr", replace(OCL_EXTRACT, resolution=28))}
    for path, config in stores.values():
        extract(open_dataset(str(shapes_dir)), path, config, device="cpu", show_progress=False)
    return {name: path for name, (path, _) in stores.items()}


@pytest.fixture(scope="module")
def vq_whole(tmp_path_factory: pytest.TempPathFactory, ocl_store: Path) -> Path:
    """The uninterrupted VQ run every interrupted one is compared with."""
    run = tmp_path_factory.mktemp("vq-whole") / "run"
    train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False)
    return run


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def assert_same_run(run: Path, reference: Path) -> None:
    """Same final weights (to 0 difference), same metrics log losses, run.json's checksum that of the weights."""
    a, b = weights(run), weights(reference)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)

    def losses(path: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in row.items() if k == "step" or k.startswith("loss_")} for row in MetricsLog.read(path / "metrics.jsonl")]

    assert losses(run) == losses(reference)
    _, info = read_run(run)
    assert info["weights_sha256"] == checkpoint.file_sha256(run / "model.safetensors")
    assert info["checkpoint"]["sha256"]["train_state.pt"] == checkpoint.file_sha256(run / "train_state.pt")
    assert not [p.name for p in run.iterdir() if p.name.endswith((".next", ".tmp")) or p.name == checkpoint.JOURNAL_NAME]


def snapshot(run: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(run.iterdir()) if path.is_file()}


def fail_at(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, when: Callable[..., bool], error: BaseException) -> None:
    """Make ``target.name`` raise ``error`` on the first call for which ``when(*args)`` holds (then behave)."""
    real = getattr(target, name)
    fired = []

    def patched(*args: Any, **kwargs: Any) -> Any:
        if not fired and when(*args):
            fired.append(args)
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, patched)


# ----------------------------------------------------------------------------- case 3: a torn checkpoint pair
def test_a_kill_between_the_renames_rolls_forward_and_resumes_exactly(ocl_store: Path, vq_whole: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kill of the issue: between model.safetensors' and train_state.pt's renames (step 10's checkpoint). The
    checkpoint was committed (its journal written), so the next writer finishes it; the run resumes from step 10."""
    run = tmp_path / "run"
    renames = []

    def second_checkpoint_weights(source: Any, target: Any) -> bool:
        renames.append(str(source))
        return str(source).endswith("train_state.pt.next") and sum(name.endswith("train_state.pt.next") for name in renames) == 2

    fail_at(monkeypatch, os, "replace", second_checkpoint_weights, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False)
    monkeypatch.undo()
    # Torn on disk: new weights, old train state; the journal says how to finish.
    assert (run / checkpoint.JOURNAL_NAME).is_file() and (run / "train_state.pt.next").is_file()
    assert json.loads((run / checkpoint.JOURNAL_NAME).read_text())["step"] == 10
    assert read_run(run)[1]["step"] == 10  # a reader completes the committed checkpoint first
    train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False, resume=True)
    assert_same_run(run, vq_whole)


def test_a_kill_while_staging_keeps_the_previous_checkpoint(ocl_store: Path, vq_whole: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    fail_at(monkeypatch, checkpoint, "_write_file", lambda path, data: path.name == "train_state.pt.next" and _step_of(path.parent) == 5,
            KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False)
    monkeypatch.undo()
    assert read_run(run)[1]["step"] == 5
    train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False, resume=True)
    assert_same_run(run, vq_whole)


def _step_of(run: Path) -> int | None:
    return checkpoint._recorded_step(run)


def test_a_torn_pair_without_a_journal_is_refused_in_one_line(ocl_store: Path, tmp_path: Path) -> None:
    """Weights of one checkpoint with the train state of another (copied by hand, or by an older featcache killed
    between its renames): refused naming the folder and the file, nothing changed."""
    run, later = tmp_path / "run", tmp_path / "later"
    train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False, stop_after=5)
    train_vq(ocl_store, vq_config(), later, device="cpu", show_progress=False, stop_after=10)
    own_weights = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes((later / "model.safetensors").read_bytes())
    before = snapshot(run)
    with pytest.raises(FeatcacheError, match=rf"cannot resume {run}: model.safetensors \(sha256 \w+\) is not the one run.json records for step 5") as error:
        train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False, resume=True)
    assert "\n" not in str(error.value) and snapshot(run) == before
    # An older run folder (run.json without the checkpoint block): the state's step must match run.json's.
    (run / "model.safetensors").write_bytes(own_weights)
    (run / "train_state.pt").write_bytes((later / "train_state.pt").read_bytes())
    info = json.loads(before["run.json"])
    del info["checkpoint"]
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(FeatcacheError, match=r"train_state.pt is at step 10 but run.json at step 5"):
        train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False, resume=True)


def test_fused_seeds_checkpoint_as_one_group(ocl_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill after seed 0 finished its step-4 checkpoint but before seed 1's renames: both roll forward and resume
    together. A kill after seed 0's journal but before seed 1's: the group was not committed, both stay at step 2."""
    configs = ocl_configs(seeds=(0, 1))
    whole = [tmp_path / f"whole-{seed}" for seed in (0, 1)]
    train_ocl_fused_seeds(ocl_store, configs, whole, device="cpu", show_progress=False)

    applied = [tmp_path / f"applied-{seed}" for seed in (0, 1)]
    fail_at(monkeypatch, os, "replace", lambda source, target: str(source).endswith("model.safetensors.next") and Path(source).parent == applied[1]
            and _step_of(applied[1]) == 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train_ocl_fused_seeds(ocl_store, configs, applied, device="cpu", show_progress=False)
    monkeypatch.undo()
    assert [_step_of(run) for run in applied] == [4, 2]
    train_ocl_fused_seeds(ocl_store, configs, applied, device="cpu", show_progress=False, resume=True)
    for run, reference in zip(applied, whole):
        assert_same_run(run, reference)

    uncommitted = [tmp_path / f"uncommitted-{seed}" for seed in (0, 1)]
    monkeypatch.setattr(checkpoint, "_discard_staged", lambda run_dir: None)  # a real kill cleans nothing up
    fail_at(monkeypatch, checkpoint, "_write_journal", lambda run_dir, journal: run_dir == uncommitted[1] and journal["step"] == 4, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train_ocl_fused_seeds(ocl_store, configs, uncommitted, device="cpu", show_progress=False)
    monkeypatch.undo()
    assert (uncommitted[0] / checkpoint.JOURNAL_NAME).is_file()
    assert [read_run(run)[1]["step"] for run in uncommitted] == [2, 2]  # a reader does not roll an uncommitted group forward
    train_ocl_fused_seeds(ocl_store, configs, uncommitted, device="cpu", show_progress=False, resume=True)
    for run, reference in zip(uncommitted, whole):
        assert_same_run(run, reference)


# ----------------------------------------------------------------------------- case 8: a torn metrics line
def test_a_torn_last_metrics_line_is_dropped_on_resume(ocl_store: Path, vq_whole: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False, stop_after=10)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 15, "loss_to')  # a kill mid-row after the checkpoint
    assert [row["step"] for row in MetricsLog.read(run / "metrics.jsonl")] == [1, 5, 10]
    train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False, resume=True)
    assert_same_run(run, vq_whole)
    # A damaged row before the last one is not a torn write: one line naming the file and the line.
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text('{"step": 1}\n{"step": 2, "loss\n{"step": 3}\n')
    with pytest.raises(FeatcacheError, match=rf"{damaged} line 2 is not a metrics row"):
        MetricsLog.read(damaged)


def test_a_metrics_log_that_is_not_the_checkpoints_is_refused(ocl_store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False, stop_after=10)
    rows = MetricsLog.read(run / "metrics.jsonl")
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[:1]))
    with pytest.raises(FeatcacheError, match=rf"cannot resume {run}: metrics.jsonl holds 1 rows up to step 10, its checkpoint recorded 3"):
        train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False, resume=True)


# ----------------------------------------------------------------------------- cases 2, 12: resume tied to its inputs
@pytest.mark.parametrize("store_name", ["same-grid", "other-grid"])
def test_resume_on_another_store_is_refused_naming_both(store_name: str, ocl_store: Path, other_stores: dict[str, Path], tmp_path: Path) -> None:
    """Case 2 (another store, same grid: it trained on, and run.json named only the new one) and case 12 (another
    grid: a load_state_dict traceback), for train-vq, train-ocl and fused seeds; the run folder is untouched."""
    other = other_stores[store_name]
    vq_run, ocl_run = tmp_path / "vq", tmp_path / "ocl"
    train_vq(ocl_store, vq_config(steps=10), vq_run, device="cpu", show_progress=False, stop_after=5)
    config = ocl_configs()[0]
    train_ocl(ocl_store, config, ocl_run, device="cpu", show_progress=False, stop_after=2)
    expected = rf"it was trained on store {ocl_store} \(identity \w+, dino2-s14, 384 ch, grid \[4, 4\], \w+\), not on store {other} \(identity \w+"
    for run, resume in (
        (vq_run, lambda: train_vq(other, vq_config(steps=10), vq_run, device="cpu", show_progress=False, resume=True)),
        (ocl_run, lambda: train_ocl(other, config, ocl_run, device="cpu", show_progress=False, resume=True)),
        (ocl_run, lambda: train_ocl_fused_seeds(other, [config], [ocl_run], device="cpu", show_progress=False, resume=True)),
    ):
        before = snapshot(run)
        with pytest.raises(FeatcacheError, match=rf"cannot --resume {run}: {expected}") as error:
            resume()
        assert "\n" not in str(error.value) and snapshot(run) == before
    if store_name == "other-grid":
        assert "grid [2, 2]" in str(error.value)


def test_resume_with_tokens_of_other_vq_weights_is_refused(tmp_path: Path, ocl_store: Path) -> None:
    run = tmp_path / "ocl"
    config = ocl_configs()[0]
    train_ocl(ocl_store, config, run, device="cpu", show_progress=False, stop_after=2)
    _, info = read_run(run)
    tokens = {"name": "vvo-c4", "vq": {"weights_sha256": "a" * 64}}
    with pytest.raises(FeatcacheError, match=r"not on store .* with tokens from VQ weights aaaaaaaaaaaa"):
        check_resume_inputs(run, {**info, "tokens": tokens})
    check_resume_inputs(run, {**info, "store": {**info["store"], "path": "/a/copy/of/the/store.zarr"}})  # a copy resumes


def test_cli_resume_on_another_grid_is_one_line(ocl_store: Path, other_stores: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "vq"
    train_vq(ocl_store, vq_config(steps=10), run, device="cpu", show_progress=False, stop_after=5)
    outcome = CliRunner().invoke(app, ["train-vq", "--store", str(other_stores["other-grid"]), "--out", str(run), "--resume", "--device", "cpu"])
    assert isinstance(outcome.exception, FeatcacheError), outcome.output
    assert "grid [2, 2]" in str(outcome.exception) and "load_state_dict" not in outcome.output


# ----------------------------------------------------------------------------- case 11: values checked where read
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("batch_size", 0, r"config key 'train.batch_size' must be an integer of at least 1, got 0"),
        ("batch_size", -4, r"config key 'train.batch_size' must be an integer of at least 1, got -4"),
        ("steps", 0, r"'train.steps' must be an integer of at least 1"),
        ("log_every", 0, r"'train.log_every' must be an integer of at least 1"),
        ("checkpoint_every", -1, r"'train.checkpoint_every' must be an integer of at least 1"),
        ("learning_rate", 0, r"'train.learning_rate' must be a positive finite number, got 0"),
        ("learning_rate", -0.001, r"'train.learning_rate' must be a positive finite number, got -0.001"),
        ("learning_rate", ".inf", r"'train.learning_rate' must be a positive finite number, got inf"),
        ("grad_clip", 0.0, r"'train.grad_clip' must be a positive number"),
    ],
)
def test_bad_training_values_are_refused_naming_the_key(key: str, value: Any, message: str) -> None:
    for config_class in (VQTrainConfig, OCLTrainConfig):
        with pytest.raises(ConfigError, match=message):
            load_config(config_class, None, [f"train.{key}={value}"])
    assert load_config(OCLTrainConfig, None, ["train.grad_clip=.inf"]).train.grad_clip == float("inf")  # no clipping
    with pytest.raises(ConfigError, match=r"'validation_images' must be an integer of at least 1, got 0"):
        load_config(OCLTrainConfig, None, ["validation_images=0"])


def test_train_and_sweep_refuse_a_negative_batch_size_before_any_run(ocl_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    for command in ("train-vq", "train-ocl"):
        outcome = CliRunner().invoke(app, [command, "--store", str(ocl_store), "--out", str(out), "--set", "train.batch_size=0", "--device", "cpu"])
        assert isinstance(outcome.exception, ConfigError) and "train.batch_size" in str(outcome.exception), outcome.output
        assert "NaN" not in str(outcome.exception) and "learning rate" not in str(outcome.exception)
    assert not out.exists()
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "store": str(ocl_store), "base": [str(CONFIGS / "tiny.yaml")],
                                    "cases": [{"name": "m", "base": [str(CONFIGS / "dinosaur-mlp.yaml")]}], "seeds": 1,
                                    "set": {"train.batch_size": -4}}))
    with pytest.raises(ConfigError, match=r"'train.batch_size' must be an integer of at least 1, got -4") as error:
        load_sweep_spec(spec)
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------- case 13: --out into a user's folder
def test_out_into_a_folder_with_a_users_metrics_is_refused(ocl_store: Path, vq_whole: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.jsonl").write_text('{"step": 1, "accuracy": 0.9}\n')
    (mine / "notes.txt").write_text("my notes\n")
    before = snapshot(mine)
    for train in (
        lambda: train_vq(ocl_store, vq_config(), mine, device="cpu", show_progress=False),
        lambda: train_ocl(ocl_store, ocl_configs()[0], mine, device="cpu", show_progress=False),
    ):
        with pytest.raises(FeatcacheError, match=rf"--out {mine} holds metrics.jsonl, which no featcache run started there wrote"):
            train()
        assert snapshot(mine) == before
    # Files a run does not write are never touched: training beside notes.txt is fine.
    (mine / "metrics.jsonl").unlink()
    train_vq(ocl_store, vq_config(), mine, device="cpu", show_progress=False)
    assert (mine / "notes.txt").read_text() == "my notes\n"
    assert_same_run(mine, vq_whole)
    # A run killed before its first checkpoint left featcache's own metrics: a new run there replaces them.
    killed = tmp_path / "killed"
    fail_at(monkeypatch, loop, "save_checkpoints", lambda units: True, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train_vq(ocl_store, vq_config(), killed, device="cpu", show_progress=False)
    monkeypatch.undo()
    assert (killed / "metrics.jsonl").is_file() and not (killed / "config.yaml").exists()
    train_vq(ocl_store, vq_config(), killed, device="cpu", show_progress=False)
    assert_same_run(killed, vq_whole)


# ----------------------------------------------------------------------------- case 15: a full disk
def test_a_full_disk_while_checkpointing_loses_nothing(ocl_store: Path, vq_whole: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    fail_at(monkeypatch, checkpoint, "_write_file", lambda path, data: path.name == "train_state.pt.next" and _step_of(path.parent) == 10, full)
    with pytest.raises(FeatcacheError) as error:
        train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False)
    monkeypatch.undo()
    assert str(error.value) == (
        f"cannot save the step-15 checkpoint to {run / 'train_state.pt.next'}: No space left on device; "
        f"{run}: its checkpoint of step 10 is intact (free space, then --resume)"
    )
    assert not [p.name for p in run.iterdir() if p.name.endswith(".next")]
    _, info = read_run(run)
    assert info["step"] == 10 and info["weights_sha256"] == checkpoint.file_sha256(run / "model.safetensors")
    train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False, resume=True)  # after freeing space
    assert_same_run(run, vq_whole)


def test_a_full_disk_while_logging_loses_nothing(ocl_store: Path, vq_whole: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from featcache.training import metrics_log

    run = tmp_path / "run"
    appended = []

    def when(path: Any, mode: str = "r", *args: Any) -> bool:
        appended.append(path)
        return mode == "a" and str(path).endswith("metrics.jsonl") and sum(str(p).endswith("metrics.jsonl") for p in appended) == 4

    monkeypatch.setattr(metrics_log, "open", builtins.open, raising=False)  # the module's own name for the builtin
    fail_at(monkeypatch, metrics_log, "open", when, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(FeatcacheError, match=rf"cannot append to the metrics log {run / 'metrics.jsonl'}: No space left on device"):
        train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False)
    monkeypatch.undo()
    assert read_run(run)[1]["step"] == 10
    train_vq(ocl_store, vq_config(), run, device="cpu", show_progress=False, resume=True)
    assert_same_run(run, vq_whole)


def test_two_trainings_into_one_run_folder_do_not_both_write(ocl_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second train-ocl into the --out a first one is writing fails in one line naming the holder; the first finishes."""
    import featcache.training.ocl as ocl_module
    from featcache.errors import StoreError as LockError

    (config,) = ocl_configs()
    run = tmp_path / "run"
    real = ocl_module.prepare_run_folder
    seen: list[str] = []

    def first_run(*args: Any, **kwargs: Any) -> Any:  # the first run's first step inside its lock
        if not seen:
            with pytest.raises(LockError) as error:  # the second writer, started while the first holds the lock
                ocl_module.train_ocl(ocl_store, config, run, device="cpu", show_progress=False)
            seen.append(str(error.value))
        return real(*args, **kwargs)

    monkeypatch.setattr(ocl_module, "prepare_run_folder", first_run)
    ocl_module.train_ocl(ocl_store, config, run, device="cpu", show_progress=False)
    assert len(seen) == 1 and "is being written by" in seen[0] and "\n" not in seen[0] and str(run) in seen[0]
    assert (run / "model.safetensors").is_file() and not run.with_name("run.lock").exists()


def test_damaged_or_replaced_weights_are_refused_in_one_line(ocl_store: Path, tmp_path: Path) -> None:
    """A flipped byte in model.safetensors (or another run's weights copied in) is caught by the sha256 run.json
    records, before any tensor is loaded; an unreadable file is one line too, never a safetensors traceback."""
    from featcache.training.runs import load_vq_run

    run = tmp_path / "vq"
    train_vq(ocl_store, vq_config(steps=4), run, device="cpu", show_progress=False)
    load_vq_run(run, torch.device("cpu"))  # intact: loads
    weights = run / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(FeatcacheError, match=r"model.safetensors is not the weights run.json records") as error:
        load_vq_run(run, torch.device("cpu"))
    assert "\n" not in str(error.value)
    weights.write_bytes(b"not a safetensors file")
    info = json.loads((run / "run.json").read_text())
    info.pop("weights_sha256")  # a folder that recorded no checksum: the read itself must fail in one line
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(FeatcacheError, match=r"is not a readable safetensors file"):
        load_vq_run(run, torch.device("cpu"))


def test_an_edited_config_that_no_longer_fits_the_weights_is_one_line(ocl_store: Path, tmp_path: Path) -> None:
    from featcache.training.runs import load_vq_run

    run = tmp_path / "vq"
    train_vq(ocl_store, vq_config(steps=4), run, device="cpu", show_progress=False)
    (run / "config.yaml").write_text(yaml.safe_dump({"quantizer": {"codebook_size": 32}}))
    with pytest.raises(FeatcacheError, match=r"does not fit the model of its config.yaml \(was it edited\?\): size mismatch") as error:
        load_vq_run(run, torch.device("cpu"))
    assert "\n" not in str(error.value)
