"""The command line: thin wrappers with one-line errors and info output (the quickstart pipeline: test_pipelines.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from featcache.cli import main


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["featcache", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.filterwarnings("always::featcache.console.RandomWeightsWarning")
def test_extract_then_info(tmp_path: Path, shapes_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "cli.zarr"
    code, out, err = run_cli(
        monkeypatch, capsys, "extract", "--data", str(shapes_dir), "--out", str(store), "--weights", "random",
        "--resolution", "28", "--samples-per-chunk", "6", "--mask-size", "32", "--set", "image_size=32", "--device", "cpu",
    )
    assert code == 0, err
    assert "12 samples" in out and "store complete" in " ".join(out.split()) and "RANDOMLY INITIALISED" in err
    code, out, err = run_cli(monkeypatch, capsys, "info", str(store), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["completeness"] == {
        "units_done": 2, "units_total": 2, "samples_written": 12, "samples_bad": 0, "samples_total": 12, "complete": True
    }
    assert summary["random_weights"] is True and summary["bytes_on_disk"]["total"] > summary["bytes_on_disk"]["features"] > 0
    assert "RANDOMLY INITIALISED" in err  # every command reading the store warns
    code, out, err = run_cli(monkeypatch, capsys, "info", str(store))
    assert code == 0 and "2/2 units" in out and "RANDOM" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["extract", "--data", "MISSING", "--out", "OUT"], "MISSING"),
        (["extract", "--data", "DATA", "--out", "OUT", "--vfm", "vit-huge", "--weights", "random"], "unknown VFM 'vit-huge'; known: dino2-b14"),
        (["extract", "--data", "DATA", "--out", "OUT", "--set", "crop=2"], "unknown config key 'crop'"),
        (["info", "MISSING"], "store MISSING does not exist"),
    ],
)
def test_bad_input_is_one_red_line(
    arguments: list[str], message: str, tmp_path: Path, shapes_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    replacements = {"MISSING": str(tmp_path / "missing"), "DATA": str(shapes_dir), "OUT": str(tmp_path / "o.zarr")}
    arguments = [replacements.get(a, a) for a in arguments]
    message = message.replace("MISSING", str(tmp_path / "missing"))
    code, _, err = run_cli(monkeypatch, capsys, *arguments)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and message in " ".join(err.split()), err
    assert "Traceback" not in err


def test_encoders_lists_the_registry(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "encoders")
    assert code == 0
    for name in ("dino2-s14", "dino2-b14", "dino2-s14-reg4", "sam2-t16"):
        assert name in out


def test_vq_commands_from_the_cli(tmp_path: Path, shapes_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.zarr"
    assert run_cli(
        monkeypatch, capsys, "extract", "--data", str(shapes_dir), "--out", str(store), "--weights", "random",
        "--resolution", "56", "--samples-per-chunk", "6", "--mask-size", "32", "--set", "image_size=32", "--device", "cpu",
    )[0] == 0
    config = Path(__file__).parent.parent / "configs" / "vq" / "tiny.yaml"
    run = tmp_path / "vq"
    code, _, err = run_cli(
        monkeypatch, capsys, "train-vq", "--store", str(store), "--config", str(config), "--out", str(run), "--device", "cpu",
        "--set", "train.steps=12", "--set", "decoder.image_size=32", "--set", "quantizer.codebok_size=8",
    )
    assert code == 2 and "unknown config key 'quantizer.codebok_size'" in err
    code, _, err = run_cli(  # a training key at its old top-level place: the error names where it went
        monkeypatch, capsys, "train-vq", "--store", str(store), "--config", str(config), "--out", str(run), "--device", "cpu",
        "--set", "steps=12",
    )
    assert code == 2 and "unknown config key 'steps' (moved: train.steps); valid keys:" in err and not run.exists()
    code, _, err = run_cli(
        monkeypatch, capsys, "train-vq", "--store", str(store), "--config", str(config), "--out", str(run), "--device", "cpu",
        "--set", "train.steps=12", "--set", "decoder.image_size=32", "--set", "train.log_every=4",
    )
    assert code == 0, err
    assert (run / "reconstructions.png").is_file() and (run / "metrics.csv").is_file()
    code, out, err = run_cli(monkeypatch, capsys, "tokenize", "--store", str(store), "--vq", str(run), "--name", "t", "--device", "cpu")
    assert code == 0 and "token set 't'" in out, err
    code, _, err = run_cli(monkeypatch, capsys, "tokenize", "--store", str(store), "--vq", str(run), "--name", "t")
    assert code == 2 and "--overwrite" in err
    code, out, _ = run_cli(monkeypatch, capsys, "analyze", "codes", "--store", str(store), "--tokens", "t", "--out", str(tmp_path / "codes"))
    assert code == 0 and "used codes" in out and (tmp_path / "codes" / "code_statistics.json").is_file()
    csv_path = tmp_path / "sep.csv"
    json_path = tmp_path / "sep.json"
    code, out, _ = run_cli(
        monkeypatch, capsys, "analyze", "separability", "--store", str(store), "--tokens", "t", "--csv", str(csv_path),
        "--json", str(json_path), "--limit", "10", "--pca-dims", "8",
    )
    assert code == 0 and "kMeans" in out
    assert len(csv_path.read_text().strip().splitlines()) == 4  # header + last_block, final_norm, tokens
    rows = json.loads(json_path.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert len(rows) == 3 and all(row["images"] == 10 for row in rows), rows


# ----------------------------------------------------------------------------- every operation through the CLI
# What the other tests run through the CLI already: extract and info (above), encoders, train-vq, tokenize, analyze
# codes/separability (test_vq_commands_from_the_cli), eval --masks decoder (test_ocl_stage.py), import-vvo + tokenize +
# eval --store/--limit (test_import_vvo.py), sweep (test_sweep.py), report (test_report.py), run --dry-run and a
# failing run (test_pipelines.py), quickstart (test_pipelines.py), bench known-answer (test_known_answer.py).
# Added here: data synth, train-ocl (with --resume and --val-store), eval's --protocol/--baseline/--out/--masks, and
# a successful run. Every one on the shared session store (tests/conftest.py ocl_store) or a few tiny images.
OCL_CONFIGS = Path(__file__).parent.parent / "configs" / "ocl"
#: The tiny preset cut to 4 steps, checkpoints every 2 (so a run stopped after 2 can resume).
TINY_OCL_SET = ["train.steps=4", "train.batch_size=4", "train.log_every=2", "train.checkpoint_every=2", "validate_every=2", "validation_images=4",
                "train.loader=memory"]


def test_data_synth_writes_the_library_scenes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from featcache.datasets import open_dataset, write_synthetic

    out = tmp_path / "cli"
    code, stdout, err = run_cli(monkeypatch, capsys, "data", "synth", "--out", str(out), "--images", "3", "--seed", "4", "--size", "32")
    assert code == 0, err
    assert f"wrote 3 images to {out}" in " ".join(stdout.split())
    library = write_synthetic(tmp_path / "lib", images=3, seed=4, size=32)
    for folder in ("images", "masks"):
        files = sorted(p.name for p in (out / folder).iterdir())
        assert len(files) == 3 and files == sorted(p.name for p in (library / folder).iterdir())
        assert all((out / folder / name).read_bytes() == (library / folder / name).read_bytes() for name in files)
    assert len(open_dataset(str(out))) == 3
    code, stdout, err = run_cli(
        monkeypatch, capsys, "data", "synth", "--out", str(tmp_path / "clips"), "--images", "2", "--size", "32", "--video", "--frames", "3"
    )
    assert code == 0 and "wrote 2 clips" in stdout, err
    clips = sorted(p for p in (tmp_path / "clips").iterdir() if p.is_dir())
    assert len(clips) == 2 and all(len(list((clip / "images").iterdir())) == 3 for clip in clips)
    code, _, err = run_cli(monkeypatch, capsys, "data", "synth", "--out", str(tmp_path / "bad"), "--images", "0")
    assert code == 2 and len([line for line in err.splitlines() if line.startswith("error")]) == 1, err


def test_train_ocl_resume_and_eval_from_the_cli(
    ocl_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    import featcache.training.ocl as train_ocl_module

    def train(out: Path, *extra: str) -> tuple[int, str, str]:
        sets = [argument for setting in TINY_OCL_SET for argument in ("--set", setting)]
        return run_cli(
            monkeypatch, capsys, "train-ocl", "--store", str(ocl_store), "--out", str(out), "--device", "cpu", "--val-store", str(ocl_store),
            "--config", str(OCL_CONFIGS / "vvo-tfd.yaml"), "--config", str(OCL_CONFIGS / "tiny.yaml"), *sets, *extra,
        )

    whole = tmp_path / "whole"
    code, _, err = train(whole)
    assert code == 0, err
    assert f"{whole}: 4 steps" in " ".join(err.split())
    assert {p.name for p in whole.iterdir()} >= {"model.safetensors", "config.yaml", "run.json", "metrics.jsonl"}
    info = json.loads((whole / "run.json").read_text())
    assert info["stage"] == "ocl" and info["tokens"] is not None and info["store"]["grid"] == [4, 4]
    log = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss_total" in row][-1] == 4 and any(key.startswith("val_") for row in log for key in row)
    code, _, err = train(whole)
    assert code == 2 and "already holds a run; pass --resume" in " ".join(err.split()), err

    # A run stopped after 2 steps (as by Ctrl-C), then `--resume` with no --config: the saved config, the same weights.
    real = train_ocl_module.train_ocl

    def stopped(*args: Any, **kwargs: Any) -> Any:
        real(*args, **{**kwargs, "stop_after": 2})
        raise KeyboardInterrupt

    monkeypatch.setattr(train_ocl_module, "train_ocl", stopped)
    resumed = tmp_path / "resumed"
    assert train(resumed)[0] != 0  # interrupted (typer exits 130)
    monkeypatch.setattr(train_ocl_module, "train_ocl", real)
    assert json.loads((resumed / "run.json").read_text())["step"] == 2
    code, _, err = run_cli(monkeypatch, capsys, "train-ocl", "--store", str(ocl_store), "--out", str(resumed), "--resume", "--device", "cpu",
                           "--val-store", str(ocl_store))
    assert code == 0, err
    first, second = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)

    code, _, err = train(tmp_path / "typo", "--set", "model.aggregator.num_slotz=3")
    assert code == 2 and "unknown config key 'model.aggregator.num_slotz'" in err and "Traceback" not in err

    # eval: another protocol with the kMeans baseline into --out, then --masks (the run's own kind, named explicitly).
    out = tmp_path / "eval"
    code, stdout, err = run_cli(monkeypatch, capsys, "eval", str(whole), "--protocol", "dinosaur", "--baseline", "--out", str(out),
                                "--limit", "8", "--device", "cpu")
    assert code == 0, err
    result = json.loads((out / "eval.json").read_text())
    assert result["protocol"]["name"] == "dinosaur" and result["protocol"]["mask_source"] == "attention"
    assert set(result["metrics"]) >= {"ari", "fg_ari", "mbo", "miou"} and set(result["kmeans_baseline"]) >= {"ari", "fg_ari", "mbo", "miou"}
    assert (out / "masks.png").is_file() and "kMeans" in stdout and "dinosaur protocol" in " ".join(stdout.split())
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(whole), "--masks", "attention", "--store", str(ocl_store), "--device", "cpu")
    assert code == 0, err
    assert json.loads((whole / f"eval-{ocl_store.stem}-vvo" / "eval.json").read_text())["protocol"]["mask_source"] == "attention"
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(whole), "--masks", "alpha", "--device", "cpu")
    assert code == 2 and "mask source (eval --masks) must be 'attention' or 'decoder', got 'alpha'" in " ".join(err.split())


def table_statuses(stdout: str, stages: set[str]) -> dict[str, str]:
    """Stage -> status from the stage table `featcache run` prints (the rows that name one of ``stages``)."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in stdout.splitlines() if line.startswith("│")]
    return {row[0]: row[2] for row in rows if len(row) > 2 and row[0] in stages}


def test_run_a_pipeline_from_the_cli_then_nothing_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    monkeypatch.chdir(tmp_path)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "p", "stages": [
        {"name": "synth", "kind": "synth", "params": {"images": 4, "size": 32}},
        {"name": "extract", "kind": "extract", "params": {"data": "${stages.synth.data}", "device": "cpu", "set": {
            "weights": "random", "resolution": 28, "image_size": 32, "mask_size": 32, "samples_per_chunk": 4}}},
    ]}, sort_keys=False))
    work = tmp_path / "work"
    arguments = ["run", str(pipeline), "--workdir", str(work), "--set", "synth.seed=3"]
    code, stdout, err = run_cli(monkeypatch, capsys, *arguments)
    assert code == 0 and table_statuses(stdout, {"synth", "extract"}) == {"synth": "ran", "extract": "ran"}, stdout + err
    assert json.loads((work / "synth" / "synthetic.json").read_text())["generator"]["seed"] == 3
    code, out, _ = run_cli(monkeypatch, capsys, "info", str(work / "extract.zarr"), "--json")
    completeness = json.loads(out)["completeness"]
    assert code == 0 and completeness["complete"] is True and completeness["samples_written"] == 4
    code, stdout, _ = run_cli(monkeypatch, capsys, *arguments)
    assert code == 0 and table_statuses(stdout, {"synth", "extract"}) == {"synth": "done", "extract": "done"}, stdout
    code, stdout, _ = run_cli(monkeypatch, capsys, *arguments, "--force", "extract")
    assert code == 0 and table_statuses(stdout, {"synth", "extract"}) == {"synth": "done", "extract": "ran"}, stdout


def test_import_vvo_flags_and_a_bad_set_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """import-vvo's flags as the CLI spells them (its round trip with tokenize and eval: test_import_vvo.py)."""
    checkpoint = Path(__file__).parent / "fixtures" / "parity" / "vvo_tfd_dino2s14_4x4.pth"
    common = ["import-vvo", str(checkpoint), "--vfm", "dino2-s14", "--grid", "4", "--tokens", "imp"]
    code, _, err = run_cli(monkeypatch, capsys, *common, "--out", str(tmp_path / "bad"), "--set", "model.decoder.tfd.heads=3")
    assert code == 2 and len([line for line in err.splitlines() if line.startswith("error")]) == 1 and "decoder.tfd.heads" in err, err
    assert not (tmp_path / "bad").exists()
    code, out, err = run_cli(monkeypatch, capsys, *common, "--out", str(tmp_path / "ok"), "--set", "model.aggregator.iterations=2")
    assert code == 0, err
    assert "tfd checkpoint" in out and f"featcache tokenize --store STORE --vq {tmp_path / 'ok' / 'vq'} --name imp" in " ".join(out.split())
    import yaml

    config = yaml.safe_load((tmp_path / "ok" / "ocl" / "config.yaml").read_text())
    assert config["tokens"] == "imp" and config["model"]["aggregator"]["iterations"] == 2
    assert (tmp_path / "ok" / "vq" / "model.safetensors").is_file() and (tmp_path / "ok" / "ocl" / "model.safetensors").is_file()
