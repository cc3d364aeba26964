"""`featcache report`: a sweep folder as ``report.md`` and a static ``report.html`` with PNG charts next to them.

The report holds the provenance (store, encoder, weights, with a loud warning for random weights), the
summary table (mean ± std over seeds), a bar chart per headline metric with std error bars, the training
loss curves (``loss_total``, mean over seeds per configuration) and each configuration's mask grid (the
first finished seed's ``masks.png``). Both documents are rendered from one list of blocks, so they
always say the same; the HTML has inline CSS and no external assets.
"""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featcache.errors import FeatcacheError
from featcache.plotting import save_figure
from featcache.sweeps.results import HEADLINE_METRICS, SUMMARY_JSON, metric_label, read_rows, table_rows
from featcache.sweeps.sweep import SWEEP_NAME
from featcache.training.metrics_log import MetricsLog

#: The training-loss column plotted from each run's metrics.jsonl.
LOSS_KEY = "loss_total"


@dataclass(frozen=True)
class Block:
    """One piece of the report: ``heading`` (level), ``text``, ``warning``, ``items``, ``table`` or ``image``."""

    kind: str
    text: str = ""
    level: int = 2
    items: tuple[str, ...] = ()
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    path: str = ""


def _load(sweep_dir: Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    for name in (SWEEP_NAME, SUMMARY_JSON, "results.jsonl"):
        if not (sweep_dir / name).is_file():
            raise FeatcacheError(f"{sweep_dir} has no {name}; expected a folder written by `featcache sweep`")
    sweep = json.loads((sweep_dir / SWEEP_NAME).read_text())
    summary = json.loads((sweep_dir / SUMMARY_JSON).read_text())
    return sweep, summary, read_rows(sweep_dir)


def bar_chart(configurations: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """Mean of ``metric`` per configuration with sample-std error bars, and the per-image kMeans baseline's mean as a red mark
    when evaluated (configurations without results are left out)."""
    shown = [c for c in configurations if c["metrics"].get(metric, {}).get("mean") is not None]

    def draw(axes: Any) -> None:
        positions = np.arange(len(shown))
        means = [c["metrics"][metric]["mean"] for c in shown]
        errors = [c["metrics"][metric]["std"] or 0.0 for c in shown]
        axes.bar(positions, means, yerr=errors, capsize=4, color="tab:blue", alpha=0.8, label="model")
        # The per-image kMeans baseline on the same features (when the sweep evaluated it): a marker per bar.
        baseline = [c["metrics"].get(f"kmeans_{metric}", {}).get("mean") for c in shown]
        if any(value is not None for value in baseline):
            marked = [(p, v) for p, v in zip(positions, baseline) if v is not None]
            axes.scatter([p for p, _ in marked], [v for _, v in marked], marker="_", s=900, color="tab:red", zorder=3, label="per-image kMeans")
            axes.legend(fontsize=8)
        axes.set_xticks(positions, [c["config_id"] for c in shown], rotation=30, ha="right", fontsize=8)
        axes.set_ylabel(metric_label(metric))
        axes.set_title(f"{metric_label(metric)} (mean ± std over seeds)")
        axes.grid(axis="y", alpha=0.3)

    return save_figure(draw, path, size=(max(6.0, 0.9 * len(shown) + 2.0), 4.5))


def mean_loss_curve(run_dirs: list[Path]) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, mean ``loss_total``) over the runs, at the steps every run logged; None without logs."""
    curves = []
    for run_dir in run_dirs:
        path = run_dir / "metrics.jsonl"
        if path.is_file():
            curves.append({row["step"]: row[LOSS_KEY] for row in MetricsLog.read(path) if LOSS_KEY in row})
    if not curves:
        return None
    steps = sorted(set.intersection(*(set(curve) for curve in curves)))
    if not steps:
        return None
    return np.array(steps), np.array([np.mean([curve[step] for curve in curves]) for step in steps])


def loss_chart(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    def draw(axes: Any) -> None:
        for config_id, (steps, losses) in curves.items():
            axes.plot(steps, losses, marker="." if len(steps) < 30 else None, label=config_id)
        if all((losses > 0).all() for _, losses in curves.values()):
            axes.set_yscale("log")
        axes.set_xlabel("step")
        axes.set_ylabel(f"{LOSS_KEY} (mean over seeds)")
        axes.set_title("training loss")
        axes.legend(fontsize=7)
        axes.grid(alpha=0.3)

    return save_figure(draw, path, size=(8.0, 4.5))


def _provenance(sweep: dict[str, Any]) -> list[Block]:
    store = sweep["store"]
    weights = store["weights"]
    blocks = []
    if store.get("random_weights"):
        blocks.append(Block("warning", text=(
            f"WARNING: the store's features come from RANDOMLY INITIALISED {store['encoder']} weights "
            f"({weights.get('location')}); these results say nothing about the pretrained model."
        )))
    items = [
        f"store: {store['path']} ({store['encoder']}, {store['resolution']} px, {store['layout'].get('num_samples')} samples, "
        f"dataset {store['dataset'].get('source')})",
        f"encoder weights: {weights.get('source')} {weights.get('location')} (sha256 {str(weights.get('sha256'))[:12]})",
    ]
    if sweep.get("val_store"):
        items.append(f"evaluated on: {sweep['val_store']['path']}")
    spec = sweep["spec"]
    items += [
        f"spec: {spec.get('spec_file') or '(inline)'}; base configs: {', '.join(spec.get('base') or []) or 'defaults'}",
        f"seeds: {', '.join(str(s) for s in sweep['seeds'])}; data seed: {spec.get('data_seed')}",
        f"evaluation: {spec['eval']['protocol']} protocol" + (f", first {spec['eval']['limit']} images" if spec['eval'].get('limit') else ""),
        "options: " + ", ".join(f"{k}={v}" for k, v in sweep["options"].items()),
        "versions: " + ", ".join(f"{k} {v}" for k, v in sweep["versions"].items()),
        f"created {sweep['created']}, finished {sweep.get('finished')}",
    ]
    return [*blocks, Block("heading", text="Provenance"), Block("items", items=tuple(items))]


def _feature_view(sweep: dict[str, Any], out: Path) -> list[Block]:
    """The `featcache show` picture of the sweep's store (4 samples: a read of a few chunks and a tiny PCA); nothing
    when the store is no longer there."""
    from featcache.stages.show import write_show

    store = Path(str(sweep["store"].get("path") or ""))
    if not store.is_dir():
        return []
    write_show(store, out / "features.png", samples=4, cell=96, device="cpu")
    return [Block("heading", text="Features"),
            Block("text", text="Rows: the store's first samples; panels: image, first three PCA components of the patch features as RGB "
                               "(fitted over these samples), ground truth (`featcache show`)."),
            Block("image", text="PCA of the patch features", path="features.png")]


def build_blocks(sweep_dir: Path, out: Path) -> list[Block]:
    """The report's content; writes the charts and copies the mask grids into ``out``."""
    sweep, summary, rows = _load(sweep_dir)
    configurations = summary["configurations"]
    header, table = table_rows(configurations)
    blocks = [Block("heading", text=f"Sweep {sweep['name']}", level=1), *_provenance(sweep)]
    counts = sweep.get("runs", {})
    blocks += [
        Block("heading", text="Results"),
        Block("text", text=f"{counts.get('total', len(rows))} runs ({counts.get('failed', 0)} failed); metrics: mean ± sample std over seeds."),
        Block("table", header=tuple(header), rows=tuple(tuple(r) for r in table)),
        Block("heading", text="Configurations"),
        Block("table", header=("configuration", "base configs", "overrides"), rows=tuple(
            (c["config_id"], ", ".join(Path(b).name for b in c["base"]) or "defaults",
             ", ".join(f"{k}={v}" for k, v in c["overrides"].items()) or "-")
            for c in sweep["configurations"]
        )),
    ]
    blocks += _feature_view(sweep, out)
    metrics = [m for m in HEADLINE_METRICS if m in summary["metrics"]]
    if metrics:
        blocks.append(Block("heading", text="Metrics"))
        for metric in metrics:
            bar_chart(configurations, metric, out / f"{metric}.png")
            blocks.append(Block("image", text=metric_label(metric), path=f"{metric}.png"))
    curves = {}
    for entry in configurations:
        runs = [sweep_dir / row["run_dir"] for row in rows if row["config_id"] == entry["config_id"] and row["status"] == "ok"]
        curve = mean_loss_curve(runs)
        if curve is not None:
            curves[entry["config_id"]] = curve
    if curves:
        loss_chart(curves, out / "loss_curves.png")
        blocks += [Block("heading", text="Training loss"), Block("image", text="training loss", path="loss_curves.png")]
    masks = []
    for entry in configurations:
        first = next((row for row in rows if row["config_id"] == entry["config_id"] and row["status"] == "ok" and row.get("eval_dir")), None)
        source = sweep_dir / first["run_dir"] / first["eval_dir"] / "masks.png" if first else None
        if source is not None and source.is_file():
            (out / "masks").mkdir(exist_ok=True)
            shutil.copyfile(source, out / "masks" / f"{entry['config_id']}.png")
            masks += [Block("heading", text=f"{entry['config_id']} (seed {first['seed']})", level=3),
                      Block("image", text=f"masks of {entry['config_id']}", path=f"masks/{entry['config_id']}.png")]
    if masks:
        blocks += [Block("heading", text="Masks"), Block("text", text="Rows: view images, slot masks, overlay."), *masks]
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        blocks += [Block("heading", text="Failed runs"),
                   Block("items", items=tuple(f"{row['config_id']} seed {row['seed']}: {row['error']} (see {row['run_dir']}/error.txt)" for row in failed))]
    return blocks


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if block.kind == "heading":
            parts.append(f"{'#' * block.level} {block.text}")
        elif block.kind == "text":
            parts.append(block.text)
        elif block.kind == "warning":
            parts.append(f"> **{block.text}**")
        elif block.kind == "items":
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif block.kind == "table":
            lines = ["| " + " | ".join(_markdown_cell(h) for h in block.header) + " |",
                     "|" + "|".join(" --- " for _ in block.header) + "|"]
            lines += ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in block.rows]
            parts.append("\n".join(lines))
        elif block.kind == "image":
            parts.append(f"![{block.text}]({block.path})")
    return "\n\n".join(parts) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}
.warning{background:#fee;border:2px solid #c00;color:#900;font-weight:bold;padding:0.8em;margin:1em 0}"""


def render_html(blocks: list[Block], title: str) -> str:
    escape = html.escape
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{escape(title)}</title><style>{_CSS}</style></head><body>"]
    for block in blocks:
        if block.kind == "heading":
            parts.append(f"<h{block.level}>{escape(block.text)}</h{block.level}>")
        elif block.kind == "text":
            parts.append(f"<p>{escape(block.text)}</p>")
        elif block.kind == "warning":
            parts.append(f"<div class=\"warning\">{escape(block.text)}</div>")
        elif block.kind == "items":
            parts.append("<ul>" + "".join(f"<li>{escape(item)}</li>" for item in block.items) + "</ul>")
        elif block.kind == "table":
            head = "".join(f"<th>{escape(h)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif block.kind == "image":
            parts.append(f"<p><img src=\"{escape(block.path)}\" alt=\"{escape(block.text)}\"></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(sweep_dir: Path, out: Path) -> Path:
    """Write ``report.md``, ``report.html`` and their PNG files into ``out``; returns the report.md path."""
    sweep_dir, out = Path(sweep_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    blocks = build_blocks(sweep_dir, out)
    title = blocks[0].text
    (out / "report.md").write_text(render_markdown(blocks))
    (out / "report.html").write_text(render_html(blocks, title))
    return out / "report.md"


__all__ = ["build_blocks", "render_html", "render_markdown", "write_report"]
