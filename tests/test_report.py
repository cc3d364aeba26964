"""`featcache report`: Markdown + static HTML with the summary values, charts, loss curves, masks and provenance."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image
from test_cli import run_cli  # the CLI test helper: main() with its one-line errors and exit codes
from test_sweep import OCL, tiny_spec

from featcache.errors import FeatcacheError
from featcache.sweeps import run_sweep, write_report
from featcache.sweeps.report import mean_loss_curve
from featcache.sweeps.results import format_mean_std

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny runs


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory, ocl_store: Path) -> Path:
    """Two seeds of a working configuration and of one that fails when its model is built."""
    root = tmp_path_factory.mktemp("report")
    spec = tiny_spec(root, ocl_store, seeds=2, cases=[
        {"name": "good", "base": [str(OCL / "dinosaur-mlp.yaml")]},
        {"name": "broken", "base": [str(OCL / "vvo-dfz.yaml")], "set": {"model.mask_source": "decoder"}},
    ])
    run_sweep(spec, out=root / "sweep", device="cpu", show_progress=False)
    return root / "sweep"


def test_report_holds_the_summary_values_charts_and_masks(sweep_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    path = write_report(sweep_dir, out)
    markdown, page = path.read_text(), (out / "report.html").read_text()
    summary = json.loads((sweep_dir / "summary.json").read_text())
    good = summary["configurations"][0]
    assert good["config_id"] == "good" and good["n_ok"] == 2 and good["metrics"]["fg_ari"]["std"] is not None
    for metric in ("fg_ari", "ari", "mbo", "miou"):
        value = format_mean_std(good["metrics"][metric])
        assert f"{good['metrics'][metric]['mean']:.4f} ± {good['metrics'][metric]['std']:.4f}" == value
        assert value in markdown and value in page
        assert Image.open(out / f"{metric}.png").size[0] > 100 and f"({metric}.png)" in markdown and f'src="{metric}.png"' in page
    assert "| good |" in markdown and "| 2/0 |" in markdown and "| 0/2 |" in markdown
    assert "RANDOMLY INITIALISED dino2-s14" in markdown and 'class="warning"' in page
    assert "broken seed 0: ConfigError: mask_source 'decoder' needs a decoder with masks" in markdown
    rows = [json.loads(line) for line in (sweep_dir / "results.jsonl").read_text().splitlines()]
    first = sweep_dir / rows[0]["run_dir"] / rows[0]["eval_dir"] / "masks.png"
    assert (out / "masks" / "good.png").read_bytes() == first.read_bytes() and not (out / "masks" / "broken.png").exists()
    assert Image.open(out / "loss_curves.png").size[0] > 100
    # The store's `featcache show` picture: 4 samples x (image, PCA, ground truth) panels of 96 px.
    assert Image.open(out / "features.png").size == (3 * 96, 14 + 4 * 96) and 'src="features.png"' in page
    assert "http" not in page.replace("http-equiv", "") and "<script" not in page and "<link" not in page  # no external assets


def test_loss_curve_is_the_mean_over_seeds_of_loss_total(sweep_dir: Path) -> None:
    runs = [sweep_dir / "runs" / "good" / f"seed{seed}" for seed in (0, 1)]
    logs: list[list[dict[str, Any]]] = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in runs]
    curve = mean_loss_curve(runs)
    assert curve is not None
    steps, losses = curve
    assert steps.tolist() == [row["step"] for row in logs[0]] == [1, 2, 4]
    np.testing.assert_allclose(losses, [(a["loss_total"] + b["loss_total"]) / 2 for a, b in zip(*logs)])


def test_report_cli_and_a_folder_that_is_not_a_sweep(
    sweep_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, _ = run_cli(monkeypatch, capsys, "report", str(sweep_dir), "--out", str(tmp_path / "r"))
    assert code == 0 and (tmp_path / "r" / "report.html").is_file() and "report.md" in stdout
    with pytest.raises(FeatcacheError, match=r"has no sweep.json; expected a folder written by `featcache sweep`"):
        write_report(tmp_path, tmp_path / "r2")


class _References(HTMLParser):
    """Every URL-bearing attribute of a page (src, href, srcset, data, poster, action) and inline CSS ``url(...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.others: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if tag == "img" and name == "src":
                self.images.append(value)
            elif name in ("src", "href", "srcset", "data", "poster", "action"):
                self.others.append(value)
            if name == "style" and "url(" in value:
                self.others.append(value)

    def handle_data(self, data: str) -> None:
        if "url(" in data or "@import" in data:
            self.others.append(data)


def test_report_html_is_self_contained(sweep_dir: Path, tmp_path: Path) -> None:
    """What a browser would load: every <img> a PNG inside the report folder, nothing else fetched (no headless
    browser is part of the test environment; benchmarks/check_report_browser.py renders it where Chromium exists)."""
    out = tmp_path / "report"
    write_report(sweep_dir, out)
    parser = _References()
    parser.feed((out / "report.html").read_text())
    assert len(parser.images) >= 6  # 4 metric charts, loss curves, features, masks
    for source in parser.images:
        assert not urlparse(source).scheme and not source.startswith(("/", "\\")), source
        resolved = (out / source).resolve()
        assert resolved.is_relative_to(out.resolve()) and resolved.is_file(), source
        with Image.open(resolved) as image:
            image.verify()  # decodes as an image: a browser would show it
    assert parser.others == [], parser.others


def test_report_renders_in_headless_chromium(sweep_dir: Path, tmp_path: Path) -> None:
    """The same in a real browser where one is installed (Debian's chromium package): every image loads, nothing
    outside the folder is fetched. Skipped, saying so, where there is no Chromium (the parser test above still runs)."""
    import importlib.util
    import shutil

    if not any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no Chromium on PATH (apt-get install chromium)")
    script = Path(__file__).parents[1] / "benchmarks" / "check_report_browser.py"
    spec = importlib.util.spec_from_file_location("check_report_browser", script)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    out = tmp_path / "report"
    write_report(sweep_dir, out)
    problems, findings = module.check_report(out, module.find_chromium(None))
    assert problems == []
    assert len(findings["images"]) >= 6 and all(image["width"] > 0 for image in findings["images"])
    broken = (out / "report.html").read_text().replace('src="features.png"', 'src="http://example.com/features.png"')
    (out / "report.html").write_text(broken)
    problems, _ = module.check_report(out, module.find_chromium(None))
    assert any("did not load" in problem and "example.com" in problem for problem in problems)
