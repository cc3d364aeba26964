"""Sweeps: grid expansion, validation before any run, skip-if-done, resume, failure isolation, dask == serial."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_cli import run_cli  # the CLI test helper: main() with its one-line errors and exit codes

from featcache.errors import ConfigError, FeatcacheError, StoreError
from featcache.sweeps import SweepSpec, execute, expand_runs, load_sweep_spec, run_sweep
from featcache.sweeps.results import mean_std, summarise
from featcache.sweeps.spec import Configuration, config_sha
from featcache.training.ocl import train_ocl

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny runs (the dask workers use one thread too)

REPO = Path(__file__).parent.parent
OCL = REPO / "configs" / "ocl"
#: Every run of these tests: a few steps of the tiny preset, checkpoints every 2 steps, 8 images scored.
TINY_SET = {"train.steps": 4, "train.batch_size": 8, "train.log_every": 2, "train.checkpoint_every": 2, "validate_every": 0, "train.loader": "memory"}


def write_spec(tmp_path: Path, name: str = "spec", **fields: Any) -> Path:
    """A spec file with the two tiny decoder cases (dinosaur-mlp, vvo-tfd) unless ``fields`` say otherwise."""
    data: dict[str, Any] = {
        "name": name,
        "store": "STORE",
        "base": [str(OCL / "tiny.yaml")],
        "set": dict(TINY_SET),
        "cases": [
            {"name": "dinosaur-mlp", "base": [str(OCL / "dinosaur-mlp.yaml")]},
            {"name": "vvo-tfd", "base": [str(OCL / "vvo-tfd.yaml")]},
        ],
        "seeds": 1,
        "data_seed": 0,
        "eval": {"protocol": "vvo", "limit": 8},
        **fields,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny_spec(tmp_path: Path, store: Path, name: str = "spec", **fields: Any) -> SweepSpec:
    return load_sweep_spec(write_spec(tmp_path, name, **fields), [f"store={store}"])


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory, ocl_store: Path) -> tuple[SweepSpec, Path, Any]:
    """The two tiny cases, one seed each, run serially."""
    root = tmp_path_factory.mktemp("sweep")
    spec = tiny_spec(root, ocl_store)
    return spec, root / "serial", run_sweep(spec, out=root / "serial", device="cpu", show_progress=False)


# ----------------------------------------------------------------------------- spec
def test_grid_times_cases_expands_to_hand_computed_ids_and_overrides(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        set={**TINY_SET, "train.learning_rate": 0.001},
        grid={"model.aggregator.name": ["slot_attention", "bo_qsa"], "model.aggregator.num_slots": [5, 6], "train.amp": [False]},
        cases=[
            {"name": "feat", "base": [str(OCL / "dinosaur-mlp.yaml")], "set": {"train": {"learning_rate": 0.003}}},
            {"name": "vq", "base": [str(OCL / "vvo-mlp.yaml")], "set": {"model": {"decoder": {"target": "codes+features"}}}},
        ],
        seeds=[3, 7],
        data_seed=11,
    )
    spec = load_sweep_spec(path, ["store=somewhere.zarr", "set.train.log_every=1"])
    runs = expand_runs(spec)
    expected_ids = [
        f"aggregator.name={name},aggregator.num_slots={slots},case={case}"
        for case in ("feat", "vq") for name in ("slot_attention", "bo_qsa") for slots in (5, 6)
    ]
    assert [run.config_id for run in runs] == [i for i in expected_ids for _ in (3, 7)]
    assert [run.seed for run in runs] == [3, 7] * 8
    first = runs[0]
    assert first.relative_dir == Path("runs") / expected_ids[0] / "seed3"
    assert first.overrides == {
        **TINY_SET, "train.learning_rate": 0.003, "train.log_every": 1, "model.aggregator.name": "slot_attention",
        "model.aggregator.num_slots": 5, "train.amp": False, "train.data_seed": 11, "train.seed": 3,
    }
    config = first.config
    train = config.train
    assert (train.seed, train.data_seed, train.learning_rate, train.log_every, train.amp) == (3, 11, 0.003, 1, False)
    assert (config.model.aggregator.name, config.model.aggregator.num_slots, config.model.aggregator.slot_dim) == ("slot_attention", 5, 64)
    assert config.feature_kind == "last_block" and config.model.decoder.target == "features"  # case base, then tiny.yaml
    vq = runs[-1].config
    assert (vq.model.aggregator.name, vq.model.aggregator.num_slots, vq.train.learning_rate, vq.tokens) == ("bo_qsa", 6, 0.001, "vvo-c256")
    assert runs[-1].configuration.values == {"model.aggregator.name": "bo_qsa", "model.aggregator.num_slots": 6, "case": "vq"}
    # The CLI's --seeds N replaces the spec's seeds; without grid or cases there is one configuration, "base".
    assert [r.seed for r in expand_runs(spec, seeds=2)][:2] == [0, 1]
    plain = load_sweep_spec(write_spec(tmp_path, "plain", cases=[]), ["store=s.zarr"])
    assert [(r.config_id, r.seed) for r in expand_runs(plain)] == [("base", 0)]
    assert config_sha(runs[0].config) != config_sha(runs[1].config)  # seeds differ


@pytest.mark.parametrize(
    ("fields", "overrides", "message"),
    [
        ({"grid": {"model.decoder.nme": ["mlp"]}}, [], r"configuration .*unknown config key 'model.decoder.nme'; valid keys: model.decoder.dfz"),
        ({"grid": {"train.steps": []}}, [], r"grid key 'train.steps' has an empty list of values"),
        ({"grid": {"train.steps": 3}}, [], r"grid key 'train.steps' must map to a list"),
        ({"cases": [{"name": "a"}, {"name": "a"}]}, [], r"case names must be unique"),
        ({"set": {"train.seed": 3}}, [], r"set may not set 'train.seed'; use the spec's seeds / data_seed keys"),
        ({"set": {"train": {"data_seed": 3}}}, [], r"set may not set 'train.data_seed'"),
        ({"grid": {"seed": [1, 2]}}, [], r"grid may not set 'seed'"),  # the old key of train.seed is reserved too
        # A training key typed at its old top-level place names where it went.
        ({"cases": [{"name": "a", "set": {"learning_rate": 0.1}}]}, [],
         r"configuration a: unknown config key 'learning_rate' \(moved: train.learning_rate\); valid keys: distill, feature_kind, model"),
        ({}, ["set.steps=5"], r"unknown config key 'steps' \(moved: train.steps\)"),
        ({}, ["steps=5"], r"unknown config key 'steps'; valid keys: base, .*e.g. set.train.steps=\.\.\."),
        ({"seeds": []}, [], r"seeds: the list of seeds is empty"),
        ({"stor": "x"}, [], r"unknown config key 'stor'; valid keys: base, cases"),
        ({}, ["set.learning_rat=0.1"], r"unknown config key 'learning_rat'"),
        # One grammar: an override names a key of the spec file; an OCL key without set. is refused with the hint.
        ({}, ["learning_rate=0.1"], r"unknown config key 'learning_rate'; valid keys: base, .*under set., e.g. set.train.learning_rate="),
        # A grid value the base config cannot take: Tfd cannot reconstruct the Mlp case's codes+features target.
        ({"cases": [{"name": "vvo-mlp", "base": [str(OCL / "vvo-mlp.yaml")]}], "grid": {"model.decoder.name": ["mlp", "tfd"]}}, [],
         r"configuration decoder.name=tfd,case=vvo-mlp: decoder 'tfd' cannot reconstruct target 'codes\+features'"),
    ],
)
def test_bad_specs_fail_in_one_line_naming_the_file(fields: dict[str, Any], overrides: list[str], message: str, tmp_path: Path) -> None:
    path = write_spec(tmp_path, **fields)
    with pytest.raises(ConfigError, match=message) as error:
        load_sweep_spec(path, ["store=s.zarr", *overrides])
    assert str(path) in str(error.value) and "\n" not in str(error.value)


SHIPPED_SPECS = sorted((Path(__file__).parent.parent / "configs" / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_SPECS, ids=lambda path: path.stem)
def test_every_shipped_sweep_spec_loads_and_expands(path: Path) -> None:
    """Every spec in configs/ablations/ resolves its layered configs and overrides (a bad key raises) into runs."""
    spec = load_sweep_spec(path)
    assert expand_runs(spec)


def test_shapes_quality_spec_layers_the_method_before_the_presets() -> None:
    """The case's spot-tfd9.yaml comes first, then tiny.yaml and random-vfm.yaml, then the spec's overrides."""
    spec = load_sweep_spec(Path(__file__).parent.parent / "configs" / "ablations" / "shapes-quality.yaml")
    runs = expand_runs(spec)
    assert [run.seed for run in runs] == [0, 1, 2]
    config = runs[0].config
    decoder = config.model.decoder
    assert (decoder.name, decoder.target, decoder.tfd.orders, config.model.aggregator.name, config.tokens) == ("tfd", "features", 9, "bo_qsa", "")
    assert config.model.aggregator.slot_dim == 64 and decoder.tfd.dim == 64  # tiny, not the paper's 256
    assert config.model.input_position == "soft" and config.model.aggregator.num_slots == 7 and config.train.steps == 1800


def test_store_tokens_and_scheduler_are_checked_before_any_run(tmp_path: Path, ocl_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    with pytest.raises(StoreError, match=r"store: store .*missing.zarr does not exist"):
        run_sweep(tiny_spec(tmp_path, tmp_path / "missing.zarr"), out=out, device="cpu")
    spec = tiny_spec(tmp_path, ocl_store, cases=[{"name": "tfd", "base": [str(OCL / "vvo-tfd.yaml")], "set": {"tokens": "vvo-c999"}}])
    with pytest.raises(ConfigError, match=rf"needs token set 'vvo-c999'.*featcache tokenize --store {ocl_store} --vq VQ_RUN --name vvo-c999"):
        run_sweep(spec, out=out, device="cpu")
    spec = tiny_spec(tmp_path, ocl_store, cases=[{"name": "tfd", "base": [str(OCL / "vvo-tfd.yaml")], "set": {"tokens": ""}}])
    with pytest.raises(ConfigError, match=r"configuration tfd: decoder tfd with target 'tokens' needs a token set"):
        run_sweep(spec, out=out, device="cpu")
    monkeypatch.setattr(execute, "CONNECT_TIMEOUT_S", 1)
    with pytest.raises(FeatcacheError, match=r"--scheduler tcp://127.0.0.1:1: no dask scheduler answers there within 1 s"):
        run_sweep(tiny_spec(tmp_path, ocl_store), out=out, scheduler="tcp://127.0.0.1:1", device="cpu")
    assert not out.exists()


# ----------------------------------------------------------------------------- results
def test_summary_is_mean_and_sample_std_over_finished_seeds() -> None:
    configuration = Configuration("a", {"case": "a"}, {}, [], None)  # type: ignore[arg-type]
    rows = [
        {"config_id": "a", "seed": 0, "status": "ok", "metrics": {"fg_ari": 0.2, "ari": float("nan")}, "samples_per_second": 10.0},
        {"config_id": "a", "seed": 1, "status": "ok", "metrics": {"fg_ari": 0.4, "ari": 0.5}, "samples_per_second": 30.0},
        {"config_id": "a", "seed": 2, "status": "failed", "metrics": {}, "samples_per_second": None},
    ]
    (entry,) = summarise(rows, [configuration])
    assert entry["metrics"]["fg_ari"]["mean"] == pytest.approx(0.3) and entry["metrics"]["fg_ari"]["std"] == pytest.approx(math.sqrt(0.02))
    assert entry["metrics"]["ari"] == {"mean": 0.5, "std": None, "n": 1}  # nan dropped, one value: no std
    assert (entry["n_ok"], entry["n_failed"], entry["seeds_failed"]) == (2, 1, [2])
    assert entry["samples_per_second"]["mean"] == pytest.approx(20.0)
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}


# ----------------------------------------------------------------------------- running
def test_sweep_writes_results_and_a_second_call_runs_nothing(serial: tuple[SweepSpec, Path, Any]) -> None:
    spec, out, result = serial
    assert (result.ran, result.skipped, result.failed) == (2, 0, [])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["config_id"], r["seed"], r["status"]) for r in rows] == [("dinosaur-mlp", 0, "ok"), ("vvo-tfd", 0, "ok")]
    for row in rows:
        saved = json.loads((out / row["run_dir"] / "result.json").read_text())
        assert saved == row and set(row["metrics"]) >= {"ari", "fg_ari", "mbo", "miou"} and row["samples_per_second"] > 0
        assert (out / row["run_dir"] / row["eval_dir"] / "eval.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert [c["config_id"] for c in summary["configurations"]] == ["dinosaur-mlp", "vvo-tfd"]
    assert summary["configurations"][0]["metrics"]["fg_ari"]["mean"] == pytest.approx(rows[0]["metrics"]["fg_ari"])
    assert "fg_ari_mean" in (out / "summary.csv").read_text().splitlines()[0]
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["store"]["random_weights"] is True and sweep["runs"]["ran"] == 2 and "torch" in sweep["versions"]
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed0/*") if p.is_file()}
    again = run_sweep(spec, out=out, device="cpu", show_progress=False)
    assert (again.ran, again.skipped) == (0, 2) and again.rows == rows
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_runs_saved_before_the_train_section_are_evaluated_not_retrained(serial: tuple[SweepSpec, Path, Any], tmp_path: Path) -> None:
    """A sweep folder from before the ``train`` section: flat config.yaml files, and result.json files whose config
    sha was of the flat layout. The trained runs are recognised as the same config and only evaluated again."""
    spec, out, _ = serial
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for config_file in (copy / "runs").glob("*/seed*/config.yaml"):
        saved = yaml.safe_load(config_file.read_text())
        train = saved.pop("train")
        config_file.write_text(yaml.safe_dump({**saved, **train}, sort_keys=False))
    for result_file in (copy / "runs").glob("*/seed*/result.json"):
        result_file.write_text(json.dumps({**json.loads(result_file.read_text()), "config_sha": "sha of the flat layout"}))
    result = run_sweep(spec, out=copy, device="cpu", show_progress=False)
    assert result.ran == 2 and not result.failed and [row["training"] for row in result.rows] == ["done", "done"]
    assert not list((copy / "runs").glob("*/*.replaced-*"))


def test_changed_configuration_reruns_alone_and_keeps_the_old_folder(serial: tuple[SweepSpec, Path, Any], tmp_path: Path) -> None:
    spec, out, _ = serial
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    cases = [spec.cases[0], dataclasses.replace(spec.cases[1], set={"train.learning_rate": 0.001})]
    result = run_sweep(dataclasses.replace(spec, cases=cases), out=copy, device="cpu", show_progress=False)
    assert (result.ran, result.skipped) == (1, 1) and result.rows[1]["overrides"]["train.learning_rate"] == 0.001
    (aside,) = (copy / "runs" / "vvo-tfd").glob("seed0.replaced-*")
    assert "another config" in (aside / "REPLACED.txt").read_text() and (aside / "model.safetensors").is_file()


def test_interrupted_run_resumes_to_the_uninterrupted_weights(serial: tuple[SweepSpec, Path, Any], tmp_path: Path, ocl_store: Path) -> None:
    spec, out, _ = serial
    only_mlp = dataclasses.replace(spec, cases=spec.cases[:1])
    (run,) = expand_runs(only_mlp)
    train_ocl(ocl_store, run.config, tmp_path / run.relative_dir, device="cpu", show_progress=False, stop_after=2)  # "killed" at step 2
    result = run_sweep(only_mlp, out=tmp_path, device="cpu", show_progress=False)
    assert result.rows[0]["training"] == "resume"
    resumed = load_file(str(tmp_path / run.relative_dir / "model.safetensors"))
    uninterrupted = load_file(str(out / run.relative_dir / "model.safetensors"))
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=0, msg=key)


def test_a_failing_configuration_is_recorded_and_the_others_finish(
    tmp_path: Path, ocl_store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tfd has no decoder masks: mask_source=decoder passes the config checks and fails when the model is built."""
    path = write_spec(tmp_path, cases=[
        {"name": "good", "base": [str(OCL / "dinosaur-mlp.yaml")]},
        {"name": "broken", "base": [str(OCL / "vvo-dfz.yaml")], "set": {"model.mask_source": "decoder"}},
    ])
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "sweep", str(path), "--set", f"store={ocl_store}", "--out", str(out), "--device", "cpu",
                                   "--seeds", "1", "--json-out", str(tmp_path / "sweep.json"))
    assert code == 1
    written = json.loads((tmp_path / "sweep.json").read_text())
    assert written["out"] == str(out) and [(r["config_id"], r["seed"], r["status"]) for r in written["rows"]] == [("good", 0, "ok"), ("broken", 0, "failed")]
    assert "failed broken seed 0: ConfigError: mask_source 'decoder' needs a decoder with masks" in " ".join(stderr.split())
    assert "good" in stdout and "1/0" in stdout and "0/1" in stdout  # seeds ok/failed per configuration
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["config_id"], r["status"]) for r in rows] == [("good", "ok"), ("broken", "failed")]
    assert "Traceback" in (out / "runs" / "broken" / "seed0" / "error.txt").read_text()
    assert rows[1]["metrics"] == {} and rows[0]["metrics"]["fg_ari"] >= -1
    again = run_sweep(load_sweep_spec(path, [f"store={ocl_store}"]), out=out, device="cpu", show_progress=False)
    assert (again.ran, again.skipped, len(again.failed)) == (1, 1, 1)  # failed runs are retried, finished ones are not


def test_two_worker_dask_sweep_equals_the_serial_one(
    serial: tuple[SweepSpec, Path, Any], tmp_path: Path, dask_local_cluster: list[dict[str, object]]
) -> None:
    """Real dask worker processes; the default suite lends featcache the session's cluster (tests/conftest.py)."""
    spec, _, reference = serial
    result = run_sweep(spec, out=tmp_path, workers=2, device="cpu", show_progress=False)
    assert result.ran == 2 and not result.failed
    assert [(call["n_workers"], call["threads_per_worker"], call["resources"]) for call in dask_local_cluster] == [(2, 1, None)]
    for got, want in zip(result.rows, reference.rows):
        assert (got["config_id"], got["seed"], got["config_sha"]) == (want["config_id"], want["seed"], want["config_sha"])
        for name, value in want["metrics"].items():
            assert got["metrics"][name] == pytest.approx(value, abs=1e-4), name
        got_log = (tmp_path / got["run_dir"] / "metrics.jsonl").read_text().splitlines()
        want_log = (reference.out / want["run_dir"] / "metrics.jsonl").read_text().splitlines()
        for got_row, want_row in zip(map(json.loads, got_log), map(json.loads, want_log)):
            assert got_row["loss_total"] == pytest.approx(want_row["loss_total"], rel=1e-4)


def test_fused_seeds_give_the_separate_runs_results(ocl_store: Path, tmp_path: Path) -> None:
    pytest.importorskip("featcache.training.fused")
    spec = tiny_spec(tmp_path, ocl_store, cases=[{"name": "dinosaur-mlp", "base": [str(OCL / "dinosaur-mlp.yaml")]}], seeds=2)
    separate = run_sweep(spec, out=tmp_path / "separate", device="cpu", show_progress=False)
    fused = run_sweep(spec, out=tmp_path / "fused", device="cpu", fuse_seeds=True, show_progress=False)
    assert fused.ran == 2 and not fused.failed
    with pytest.raises(ConfigError, match=r"configuration dinosaur-mlp: --fuse-seeds: .*need a common train.data_seed"):
        run_sweep(dataclasses.replace(spec, data_seed=None), out=tmp_path / "unshared", fuse_seeds=True, device="cpu")
    assert not (tmp_path / "unshared").exists()
    for got, want in zip(fused.rows, separate.rows):
        for name, value in want["metrics"].items():
            assert got["metrics"][name] == pytest.approx(value, abs=1e-4), name
