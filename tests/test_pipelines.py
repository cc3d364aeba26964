"""Declarative pipelines: load-time validation, skip-if-done by fingerprint, re-runs of changed stages and their
downstream only, resume after an interruption, refusal of foreign outputs, every shipped pipeline, the quickstart."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from featcache.cli import main
from featcache.config import load_config, repo_root
from featcache.errors import ConfigError, FeatcacheError
from featcache.pipelines import STAGE_KINDS, load_pipeline, plan_pipeline, run_pipeline, run_quickstart
from featcache.pipelines.runner import fingerprints
from featcache.store import FeatureStore
from featcache.training.config import VQTrainConfig
from featcache.training.vq import train_vq

#: A CPU-tiny VQ (the OCL tests' sizes): 16 codes, 32 px pixel decoder.
TINY_VQ = {
    "quantizer": {"codebook_size": 16, "code_dim": 8, "template_dim": 8, "encoder_layers": 1, "encoder_channels": 16},
    "decoder": {"target": "pixels", "channels": 8, "image_size": 32},
    "train": {"steps": 10, "batch_size": 8, "log_every": 5, "checkpoint_every": 5, "loader": "memory"},
}
#: Extraction as the OCL tests do it: 56 px -> 4 x 4 patches, 32 px images and masks.
TINY_EXTRACT = {"weights": "random", "resolution": 56, "image_size": 32, "mask_size": 32, "samples_per_chunk": 4, "batch_size": 8}
#: The OCL tiny preset cut to a few steps.
TINY_OCL = {"train.steps": 4, "train.batch_size": 4, "validate_every": 0, "train.log_every": 2, "train.checkpoint_every": 4, "train.loader": "memory"}


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def chain(vq_config: Path) -> dict[str, Any]:
    """synth -> extract -> train-vq -> tokenize -> train-ocl -> eval, every stage tiny."""
    return {
        "name": "chain",
        "stages": [
            {"name": "synth", "kind": "synth", "params": {"images": 8, "size": 64}},
            {"name": "extract", "kind": "extract", "params": {"data": "${stages.synth.data}", "set": TINY_EXTRACT, "device": "cpu"}},
            {"name": "vq", "kind": "train-vq", "params": {"store": "${stages.extract.store}", "config": str(vq_config), "device": "cpu"}},
            {"name": "tokens", "kind": "tokenize",
             "params": {"store": "${stages.extract.store}", "vq": "${stages.vq.run}", "name": "vvo-c256", "device": "cpu"}},
            {"name": "ocl", "kind": "train-ocl", "params": {
                "store": "${stages.tokens.store}", "config": ["configs/ocl/vvo-tfd.yaml", "configs/ocl/tiny.yaml"],
                "set": {**TINY_OCL, "tokens": "${stages.tokens.tokens}"}, "device": "cpu"}},
            {"name": "eval", "kind": "eval", "params": {"run": "${stages.ocl.run}", "limit": 4, "device": "cpu"}},
        ],
    }


@pytest.fixture()
def vq_config(tmp_path: Path) -> Path:
    return write_yaml(tmp_path / "vq.yaml", TINY_VQ)


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``featcache ARGS`` through the console entry point: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["featcache", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def statuses(result: Any) -> dict[str, str]:
    return {row.name: row.status for row in result.rows}


# ----------------------------------------------------------------------------- validation at load time
def _base() -> dict[str, Any]:
    return {"name": "p", "stages": [
        {"name": "synth", "kind": "synth", "params": {"images": 4}},
        {"name": "extract", "kind": "extract", "params": {"data": "${stages.synth.data}", "set": {"weights": "random"}}},
    ]}


def _with(change: Any) -> dict[str, Any]:
    data = _base()
    change(data)
    return data


BAD_PIPELINES = [
    ("unknown-kind", lambda d: d["stages"][0].update(kind="sinth"),
     r"stage 'synth': unknown stage kind 'sinth'; known: analyze-codes, analyze-separability, analyze-slots, encode-slots, eval, extract, import-vvo, probe-set-prediction, "
     r"report, show, sweep, synth, tokenize, train-ocl, train-vq, verify"),
    ("unknown-param", lambda d: d["stages"][0]["params"].update(imagez=3),
     r"stage 'synth' \(synth\): unknown config key 'imagez'; valid keys: frames, images, max_objects, min_objects, out, seed, size, video"),
    ("unknown-config-key", lambda d: d["stages"][1]["params"]["set"].update(resolutoin=3),
     r"stage 'extract' \(extract\): unknown config key 'resolutoin'; valid keys: batch_size, compression_level, crops, image_size"),
    ("wrong-type", lambda d: d["stages"][0]["params"].update(images="many"),
     r"stage 'synth' \(synth\): config key 'images': expected an integer, got 'many'"),
    ("unknown-vfm", lambda d: d["stages"][1]["params"]["set"].update(vfm="dino9"), r"stage 'extract' \(extract\): unknown VFM 'dino9'; known: dino2-b14"),
    ("unknown-needs", lambda d: d["stages"][1].update(needs=["synthh"]), r"stage 'extract': needs unknown stage 'synthh'; stages: synth, extract"),
    ("unknown-reference", lambda d: d["stages"][1]["params"].update(data="${stages.synth.store}"),
     r"\$\{stages.synth.store\}: stage 'synth' has no output 'store'; outputs: data"),
    ("unknown-variable", lambda d: d["stages"][1]["params"].update(data="${data_root}/x"),
     r"unknown variable \$\{data_root\}; valid: \$\{stages.NAME.OUTPUT\}, \$\{workdir\}"),
    ("cycle", lambda d: d["stages"][0].update(needs=["extract"]), r"stages form a cycle: synth -> extract -> synth"),
    ("duplicate-name", lambda d: d["stages"][1].update(name="synth"), r"stage 'synth': the name is used by two stages"),
    ("same-output", lambda d: d["stages"].append({"name": "again", "kind": "synth", "params": {"out": "synth"}}),
     r"stage 'again' \(synth\): writes .*/synth, which stage 'synth' writes too"),
    ("missing-param", lambda d: d["stages"][1]["params"].pop("data"), r"stage 'extract' \(extract\): param 'data' is required"),
    ("unknown-top-key", lambda d: d.update(stagez=[]), r"unknown key 'stagez'; valid keys: name, description, workdir, stages"),
]


@pytest.mark.parametrize("change, message", [case[1:] for case in BAD_PIPELINES], ids=[case[0] for case in BAD_PIPELINES])
def test_bad_pipelines_fail_at_load_naming_file_stage_and_valid_choices(change: Any, message: str, tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", _with(change))
    with pytest.raises(ConfigError, match=message) as raised:
        load_pipeline(path, workdir=tmp_path / "work")
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "work").exists()


def test_set_overrides_reach_nested_params_and_unknown_stages_fail(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "p.yaml", _base())
    pipeline = load_pipeline(path, ["synth.images=9", "extract.set.resolution=28", "extract.set.crops=1"], workdir=tmp_path)
    assert pipeline.stage("synth").params.images == 9
    assert pipeline.stage("extract").params.set == {"weights": "random", "resolution": 28, "crops": 1}
    with pytest.raises(ConfigError, match=r"pipeline 'p' has no stage 'synthh'; stages: synth, extract"):
        load_pipeline(path, ["synthh.images=9"], workdir=tmp_path)


def test_paths_outputs_under_workdir_inputs_from_cwd_configs_also_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = {"name": "p", "stages": [
        {"name": "vq", "kind": "train-vq", "params": {"store": "cache/s.zarr", "config": "configs/vq/tiny.yaml", "out": "vq-run"}},
    ]}
    stage = load_pipeline(write_yaml(tmp_path / "p.yaml", data)).stage("vq")
    assert stage.params.store == str(tmp_path / "cache" / "s.zarr")
    assert stage.params.config == [str(repo_root() / "configs" / "vq" / "tiny.yaml")]  # not in the cwd: the shipped one
    assert stage.outputs["run"] == str(tmp_path / "runs" / "pipelines" / "p" / "vq-run")
    (tmp_path / "configs" / "vq").mkdir(parents=True)
    write_yaml(tmp_path / "configs" / "vq" / "tiny.yaml", {"train": {"steps": 3}})
    assert load_pipeline(tmp_path / "p.yaml").stage("vq").params.config == [str(tmp_path / "configs" / "vq" / "tiny.yaml")]


# ----------------------------------------------------------------------------- running
def test_second_run_skips_everything_and_a_change_reruns_its_stage_and_downstream_only(
    tmp_path: Path, vq_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_yaml(tmp_path / "chain.yaml", chain(vq_config))
    work = tmp_path / "work"
    first = run_pipeline(load_pipeline(path, workdir=work), show_progress=False)
    assert first.error is None and set(statuses(first).values()) == {"ran"}
    records = {name: json.loads((work / ".stages" / f"{name}.json").read_text()) for name in statuses(first)}
    assert records["vq"]["status"] == "done" and records["vq"]["input_files"][str(vq_config)]  # config file hash recorded
    assert records["tokens"]["upstream_runs"] == {"extract": records["extract"]["run_id"], "vq": records["vq"]["run_id"]}
    assert json.loads((work / "eval" / "eval.json").read_text())["metrics"]["ari"] is not None
    # The pipeline's VQ run is the library's run with the same config.
    direct = tmp_path / "direct-vq"
    train_vq(work / "extract.zarr", load_config(VQTrainConfig, vq_config), direct, device="cpu", show_progress=False)
    assert_same_weights(work / "vq", direct)

    again = run_pipeline(load_pipeline(path, workdir=work), show_progress=False)
    assert set(statuses(again).values()) == {"done"} and again.ran == []

    # Runtime-only params (device, batch sizes) do not count as a change.
    assert {p.decision for p in plan_pipeline(load_pipeline(path, ["tokens.batch_size=3", "extract.device=auto"], workdir=work))} == {"done"}

    # A changed config file: its stage and everything downstream re-run; upstream stays done, untouched.
    store_identity = FeatureStore(work / "extract.zarr", warn_random=False).attributes["identity"]
    write_yaml(vq_config, {**TINY_VQ, "train": {**TINY_VQ["train"], "steps": 5}})  # type: ignore[dict-item]
    changed = run_pipeline(load_pipeline(path, workdir=work), show_progress=False)
    assert statuses(changed) == {"synth": "done", "extract": "done", "vq": "ran", "tokens": "ran", "ocl": "ran", "eval": "ran"}
    assert next(row for row in changed.rows if row.name == "vq").reason == "changed: params.config.train.steps"
    assert FeatureStore(work / "extract.zarr", warn_random=False).attributes["identity"] == store_identity
    stale_runs = list(work.glob("vq.replaced-*"))
    assert len(stale_runs) == 1 and (stale_runs[0] / "model.safetensors").is_file()  # set aside, not deleted
    assert any(name.startswith("vvo-c256.replaced-") for name in FeatureStore(work / "extract.zarr", warn_random=False).token_names())
    assert load_config(VQTrainConfig, work / "vq" / "config.yaml").train.steps == 5

    assert len(list(work.glob("ocl.replaced-*"))) == 1 and not list(work.glob("extract.zarr.replaced-*"))

    # A param changed with --set re-runs from that stage; --force plans a done stage and its downstream.
    tweaked = run_pipeline(load_pipeline(path, ["eval.limit=3"], workdir=work), show_progress=False)
    assert [name for name, status in statuses(tweaked).items() if status == "ran"] == ["eval"]
    forced = plan_pipeline(load_pipeline(path, ["eval.limit=3"], workdir=work), force=["tokens"])
    assert {plan.stage.name: plan.decision for plan in forced} == {
        "synth": "done", "extract": "done", "vq": "done", "tokens": "run", "ocl": "run", "eval": "run"}
    assert [plan.stage.name for plan in forced if plan.stale] == ["tokens", "ocl"]  # eval rewrites its files in place
    with pytest.raises(FeatcacheError, match=r"pipeline 'chain' has no stage 'tokenz'; stages: synth, extract, vq, tokens, ocl, eval"):
        plan_pipeline(load_pipeline(path, workdir=work), force=["tokenz"])


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    first, second = load_file(str(run_a / "model.safetensors")), load_file(str(run_b / "model.safetensors"))
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0, msg=key)


def test_interrupted_training_stage_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, vq_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = chain(vq_config)
    data["stages"] = data["stages"][:3]
    path = write_yaml(tmp_path / "p.yaml", data)
    import featcache.training.vq as train_vq_module

    real = train_vq_module.train_vq

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        real(*args, **{**kwargs, "stop_after": 5})
        raise KeyboardInterrupt

    monkeypatch.setattr(train_vq_module, "train_vq", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(load_pipeline(path, workdir=tmp_path / "work"), show_progress=False)
    monkeypatch.setattr(train_vq_module, "train_vq", real)
    plans = {plan.stage.name: plan for plan in plan_pipeline(load_pipeline(path, workdir=tmp_path / "work"))}
    assert plans["vq"].decision == "resume" and plans["extract"].decision == "done"
    resumed = run_pipeline(load_pipeline(path, workdir=tmp_path / "work"), show_progress=False)
    assert statuses(resumed) == {"synth": "done", "extract": "done", "vq": "ran"}
    assert json.loads((tmp_path / "work" / "vq" / "run.json").read_text())["step"] == 10
    reference = tmp_path / "reference"
    train_vq(tmp_path / "work" / "extract.zarr", load_config(VQTrainConfig, vq_config), reference, device="cpu", show_progress=False)
    assert_same_weights(tmp_path / "work" / "vq", reference)

    # A changed extraction replaces the store explicitly: the old one is set aside whole, never appended to.
    changed = run_pipeline(load_pipeline(path, ["extract.set.view_seed=1"], workdir=tmp_path / "work"), show_progress=False)
    assert statuses(changed) == {"synth": "done", "extract": "ran", "vq": "ran"}
    stale = list((tmp_path / "work").glob("extract.zarr.replaced-*"))
    assert len(stale) == 1 and FeatureStore(stale[0], warn_random=False).attributes["config"]["view_seed"] == 0
    assert FeatureStore(tmp_path / "work" / "extract.zarr", warn_random=False).attributes["config"]["view_seed"] == 1


def test_a_failing_stage_stops_the_run_and_outputs_not_written_by_the_pipeline_are_refused(
    tmp_path: Path, vq_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    data = chain(vq_config)
    data["stages"][1]["params"]["data"] = str(tmp_path / "missing")
    data["stages"][1]["needs"] = ["synth"]
    path = write_yaml(tmp_path / "p.yaml", data)
    result = run_pipeline(load_pipeline(path, workdir=tmp_path / "work"), show_progress=False)
    assert statuses(result) == {"synth": "ran", "extract": "failed", "vq": "skipped", "tokens": "skipped", "ocl": "skipped", "eval": "skipped"}
    assert result.error == f"stage 'extract' (extract) failed: dataset path {tmp_path / 'missing'} does not exist"
    assert json.loads((tmp_path / "work" / "pipeline.json").read_text())["error"] == result.error
    assert json.loads((tmp_path / "work" / ".stages" / "extract.json").read_text())["status"] == "failed"
    assert {plan.stage.name: plan.reason for plan in plan_pipeline(load_pipeline(path, workdir=tmp_path / "work"))}["extract"] == "failed: resumes"

    code, out, err = run_cli(monkeypatch, capsys, "run", str(path), "--workdir", str(tmp_path / "work"))
    assert code == 2 and "failed" in out and "skipped" in out and err.strip().endswith("does not exist")

    foreign = tmp_path / "work2" / "vq"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    data["stages"][1]["params"]["data"] = "${stages.synth.data}"
    with pytest.raises(FeatcacheError, match=r"stage 'vq' \(train-vq\) would write .*work2/vq, which exists and was not written by this pipeline"):
        run_pipeline(load_pipeline(write_yaml(path, data), workdir=tmp_path / "work2"), show_progress=False)
    assert (foreign / "notes.txt").read_text() == "mine" and not (tmp_path / "work2" / "synth").exists()


def test_dry_run_writes_nothing(tmp_path: Path, vq_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_yaml(tmp_path / "p.yaml", chain(vq_config))
    code, out, _ = run_cli(monkeypatch, capsys, "run", str(path), "--workdir", str(tmp_path / "work"), "--dry-run", "--set", "synth.images=3")
    assert code == 0 and "dry run" in out and out.count("would run") == 6 and not (tmp_path / "work").exists()


# ----------------------------------------------------------------------------- shipped pipelines and the quickstart
SHIPPED = sorted((repo_root() / "pipelines").glob("*.yaml"))


def test_the_shipped_pipelines_are_yaml_only() -> None:
    assert {path.name for path in (repo_root() / "pipelines").iterdir()} == {path.name for path in SHIPPED}
    assert {"quickstart.yaml", "vvo-table1.yaml", "vvo-table6.yaml", "vvo-table7.yaml", "vvo-sam2.yaml"} <= {p.name for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_every_shipped_pipeline_validates_from_any_directory(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pipeline = load_pipeline(Path("pipelines") / path.name, workdir=tmp_path / "work")
    plans = plan_pipeline(pipeline)
    assert {plan.decision for plan in plans} == {"run"}
    assert all(stage.kind in STAGE_KINDS for stage in pipeline.stages)
    result = run_pipeline(pipeline, dry_run=True)
    assert len(result.rows) == len(pipeline.stages) and not (tmp_path / "work").exists()


def test_the_coco_pipelines_share_their_common_stages_in_one_workdir(tmp_path: Path) -> None:
    """vvo-table1/6/7 name their stores, vq-c256 and its token sets alike: same fingerprints, so they are made once."""
    pipelines = [load_pipeline(f"pipelines/vvo-table{n}.yaml") for n in (1, 6, 7)]
    assert len({pipeline.workdir for pipeline in pipelines}) == 1
    found: dict[str, set[str]] = {}
    for pipeline in pipelines:
        for name, fingerprint in fingerprints(pipeline).items():
            found.setdefault(name, set()).add(fingerprint)
    shared = {"extract-train", "extract-val", "vq-c256", "tokens-c256-train", "tokens-c256-val"}
    assert all(len(found[name]) == 1 for name in shared)
    assert all(len(values) == 1 for values in found.values())  # a name never means two different stages


#: The quickstart at test size: 8 images, 4 x 4 patches, a few steps everywhere.
QUICK_TINY = [
    "synth.images=8", "synth.size=64",
    *[f"extract.set.{key}={value}" for key, value in TINY_EXTRACT.items()], "extract.device=cpu",
    *[f"train-vq.set.train.{key}={value}" for key, value in TINY_VQ["train"].items()],  # type: ignore[attr-defined]
    *[f"train-vq.set.quantizer.{key}={value}" for key, value in TINY_VQ["quantizer"].items()],  # type: ignore[attr-defined]
    *[f"train-vq.set.decoder.{key}={value}" for key, value in TINY_VQ["decoder"].items()],  # type: ignore[attr-defined]
    "train-vq.device=cpu", "tokenize.device=cpu",
    *[f"sweep.set.set.{key}={value}" for key, value in TINY_OCL.items()], "sweep.set.eval.limit=4", "sweep.device=cpu",
]


def test_quickstart_runs_end_to_end_at_tiny_size_and_a_second_call_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_cli import table_statuses

    monkeypatch.chdir(tmp_path)
    result = run_quickstart(tmp_path / "quick", QUICK_TINY, show_progress=False)
    assert result.error is None and set(statuses(result).values()) == {"ran"}
    report = Path(result.output("report", "report"))
    assert report == tmp_path / "quick" / "report" / "report.md" and report.is_file() and report.with_suffix(".html").is_file()
    summary = json.loads((tmp_path / "quick" / "sweep" / "summary.json").read_text())
    assert sorted(entry["config_id"] for entry in summary["configurations"]) == ["dinosaur-mlp", "vvo-tfd"]
    assert all(entry["n_ok"] == 1 and np.isfinite(entry["metrics"]["ari"]["mean"]) for entry in summary["configurations"])
    # The second call through the CLI (`featcache quickstart --out --set`): every stage done, the report's path last.
    arguments = [argument for setting in QUICK_TINY for argument in ("--set", setting)]
    code, out, err = run_cli(monkeypatch, capsys, "quickstart", "--out", str(tmp_path / "quick"), *arguments)
    assert code == 0, err
    assert table_statuses(out, set(statuses(result))) == {name: "done" for name in statuses(result)}
    assert f"report: {report}" in " ".join(out.split())


@pytest.mark.slow
def test_full_size_quickstart_from_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(monkeypatch, capsys, "quickstart", "--out", str(tmp_path / "quick"))
    assert code == 0 and f"report: {tmp_path / 'quick' / 'report' / 'report.md'}" in " ".join(out.split())
    shutil.rmtree(tmp_path / "quick")


def test_records_written_before_the_train_section_stay_done(tmp_path: Path, vq_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A workdir of the previous featcache (training keys flat in the saved config) re-runs nothing after an upgrade:
    the record's config is read as a saved config is read (moved keys into train:), its downstream follows; a
    real change in that old config still re-runs."""
    from featcache import records

    monkeypatch.chdir(tmp_path)
    data = chain(vq_config)
    data["stages"] = data["stages"][:4]
    path = write_yaml(tmp_path / "p.yaml", data)
    work = tmp_path / "work"
    assert run_pipeline(load_pipeline(path, workdir=work), show_progress=False).error is None

    vq_path, tokens_path = work / ".stages" / "vq.json", work / ".stages" / "tokens.json"
    written = {path: path.read_text() for path in (vq_path, tokens_path)}

    def rewrite_as_before(train_steps: int) -> None:
        vq, tokens = json.loads(written[vq_path]), json.loads(written[tokens_path])
        config = vq["fingerprinted"]["params"]["config"]
        config.update({**config.pop("train"), "steps": train_steps})  # the flat layout of the old code
        config.pop("data_seed")  # VQ configs had no data_seed then
        vq["fingerprint"] = records.fingerprint(vq["fingerprinted"])
        tokens["fingerprinted"]["upstream"]["vq"] = vq["fingerprint"]
        tokens["fingerprint"] = records.fingerprint(tokens["fingerprinted"])
        records.write_record(vq_path, vq)
        records.write_record(tokens_path, tokens)

    rewrite_as_before(train_steps=TINY_VQ["train"]["steps"])
    plans = {plan.stage.name: plan for plan in plan_pipeline(load_pipeline(path, workdir=work))}
    assert {name: plan.decision for name, plan in plans.items()} == {"synth": "done", "extract": "done", "vq": "done", "tokens": "done"}
    rewrite_as_before(train_steps=TINY_VQ["train"]["steps"] + 1)
    plans = {plan.stage.name: plan for plan in plan_pipeline(load_pipeline(path, workdir=work))}
    assert (plans["vq"].decision, plans["tokens"].decision) == ("run", "run") and plans["extract"].decision == "done"
