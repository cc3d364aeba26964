"""Statistics of a VQ codebook and of the token indices it produced: usage, spread, quantization error.

Answers "is the codebook healthy?": how many codes are used (dead codes waste capacity), how evenly
(perplexity, coefficient of variation), how far apart the codes are (nearest-neighbour distances with
faiss), how well they fit the features (quantization error) and how many distinct codes an image uses.

MSF token sets (one index per codebook, see :mod:`featcache.store.tokens`) get these statistics per codebook
(``shared`` and ``specified``, level 0's) plus the joint usage of (shared, specified) pairs, the codes the
decoder actually sees; the quantization error is that of the fused code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from rich.console import Console
from rich.table import Table

from featcache.console import console as default_console
from featcache.console import error_console
from featcache.errors import FeatcacheError, StoreError
from featcache.plotting import save_figure
from featcache.store.reader import FeatureStore
from featcache.store.tokens import token_set_quantizer


@dataclass
class CodeStatistics:
    """Everything :func:`code_statistics` measures; arrays for plots, scalars for tables and JSON."""

    num_codes: int
    code_dim: int
    num_samples: int
    tokens_per_sample: int
    #: (K,) number of tokens assigned to each code.
    usage: np.ndarray
    used_codes: int
    dead_codes: int
    #: exp(entropy of the usage distribution): K for uniform usage, 1 when one code takes every token.
    perplexity: float
    #: std / mean of the per-code counts over all K codes (0 = perfectly even).
    usage_cv: float
    #: (K,) L2 distance from each code to its nearest other code (empty when K == 1).
    nn_distances: np.ndarray
    nn_distance_min: float
    nn_distance_median: float
    nn_distance_mean: float
    #: (N,) distinct codes per sample.
    codes_per_image: np.ndarray
    codes_per_image_mean: float
    codes_per_image_min: int
    codes_per_image_max: int
    #: (N * h * w,) L2 quantization error per token, or None when no errors were given.
    quantization_errors: np.ndarray | None = None
    quantization_error_mean: float | None = None
    quantization_error_median: float | None = None
    quantization_error_p90: float | None = None
    #: "cpu" or "gpu": where faiss searched the nearest neighbours.
    faiss_device: str = "cpu"
    #: MSF token sets: the statistics of every codebook by name (``shared``, ``specified``); the fields above
    #: are then the shared codebook's, with the fused code's quantization error.
    codebooks: dict[str, CodeStatistics] | None = None
    #: MSF: (shared, specified) pairs used and the perplexity of the pair distribution.
    joint_used_pairs: int | None = None
    joint_perplexity: float | None = None

    def to_dict(self, include_arrays: bool = False) -> dict[str, Any]:
        """JSON-able summary: scalars and the usage histogram; per-code distances and per-sample arrays on request."""
        summary: dict[str, Any] = {
            "num_codes": self.num_codes,
            "code_dim": self.code_dim,
            "num_samples": self.num_samples,
            "tokens_per_sample": self.tokens_per_sample,
            "used_codes": self.used_codes,
            "dead_codes": self.dead_codes,
            "perplexity": _json_float(self.perplexity),
            "usage_cv": _json_float(self.usage_cv),
            "nn_distance_min": _json_float(self.nn_distance_min),
            "nn_distance_median": _json_float(self.nn_distance_median),
            "nn_distance_mean": _json_float(self.nn_distance_mean),
            "codes_per_image_mean": _json_float(self.codes_per_image_mean),
            "codes_per_image_min": self.codes_per_image_min,
            "codes_per_image_max": self.codes_per_image_max,
            "quantization_error_mean": _json_float(self.quantization_error_mean),
            "quantization_error_median": _json_float(self.quantization_error_median),
            "quantization_error_p90": _json_float(self.quantization_error_p90),
            "faiss_device": self.faiss_device,
            "usage": [int(count) for count in self.usage],
        }
        if include_arrays:
            summary["nn_distances"] = [_json_float(value) for value in self.nn_distances]
            summary["codes_per_image"] = [int(value) for value in self.codes_per_image]
        if self.codebooks is not None:
            summary["quantizer"] = "msf"
            summary["codebooks"] = {name: stats.to_dict(include_arrays) for name, stats in self.codebooks.items()}
            summary["joint"] = {"used_pairs": self.joint_used_pairs, "perplexity": _json_float(self.joint_perplexity)}
        return summary


def _json_float(value: float | None) -> float | None:
    """nan/inf are not JSON: they become null."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _resolve_gpu(use_gpu: bool | None) -> bool:
    """None = use a GPU when this faiss build sees one; True without one is a one-line error."""
    available = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if use_gpu is None:
        return available
    if use_gpu and not available:
        raise FeatcacheError("use_gpu=True but faiss sees no GPU (faiss-cpu build or no CUDA device); expected use_gpu=None or False")
    return use_gpu


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1][:160] if text else ''}"


def _search_cpu(codebook: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances and ids (K, 2) of each code's two nearest codes, with a CPU flat index."""
    index = faiss.IndexFlatL2(codebook.shape[1])
    index.add(codebook)
    return index.search(codebook, 2)


def _search_gpu(codebook: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`_search_cpu` on GPU 0 (raises when this faiss build cannot run on the device)."""
    resources = faiss.StandardGpuResources()  # must outlive the GPU index
    index = faiss.index_cpu_to_gpu(resources, 0, faiss.IndexFlatL2(codebook.shape[1]))
    index.add(codebook)
    result = index.search(codebook, 2)
    del index, resources
    return result


def nearest_code_distances(codebook: np.ndarray, use_gpu: bool | None = None) -> tuple[np.ndarray, str]:
    """L2 distance (K,) from each code to its nearest *other* code, with the faiss device used.

    faiss returns squared distances; a code's own row is skipped by index, so duplicated codes give 0.
    """
    codebook = np.ascontiguousarray(codebook, dtype=np.float32)
    num_codes = codebook.shape[0]
    on_gpu = _resolve_gpu(use_gpu)
    device = "gpu" if on_gpu else "cpu"
    if num_codes < 2:
        return np.zeros(0, dtype=np.float64), device
    if on_gpu:
        try:
            squared, neighbours = _search_gpu(codebook)
        except Exception as error:  # e.g. a faiss build without kernels for this GPU: "no kernel image is available"
            if use_gpu:
                raise FeatcacheError(f"faiss GPU search failed ({_first_line(error)}); run with use_gpu=None or False for CPU faiss") from None
            error_console.print(f"[yellow]notice:[/] faiss GPU search failed ({_first_line(error)}); using CPU faiss")
            squared, neighbours = _search_cpu(codebook)
            device = "cpu"
    else:
        squared, neighbours = _search_cpu(codebook)
    own_row = np.arange(num_codes)
    # Take the first column whose neighbour is not the code itself (ties may list the duplicate first).
    column = np.where(neighbours[:, 0] != own_row, 0, 1)
    nearest_squared = squared[own_row, column].astype(np.float64)
    return np.sqrt(np.maximum(nearest_squared, 0.0)), device


def _check_inputs(
    indices: np.ndarray, codebook: np.ndarray, squared_errors: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    indices = np.asarray(indices)
    codebook = np.asarray(codebook)
    if codebook.ndim != 2 or codebook.shape[0] == 0:
        raise FeatcacheError(f"codebook has shape {codebook.shape}; expected (K, D) with K >= 1")
    if not np.issubdtype(codebook.dtype, np.floating) or not np.isfinite(codebook).all():
        raise FeatcacheError(f"codebook has dtype {codebook.dtype} or non-finite values; expected finite floats")
    if indices.ndim < 2 or indices.shape[0] == 0:
        raise FeatcacheError(f"token indices have shape {indices.shape}; expected (N, h, w) with N >= 1")
    if not np.issubdtype(indices.dtype, np.integer):
        raise FeatcacheError(f"token indices have dtype {indices.dtype}; expected integers")
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= codebook.shape[0]):
        raise FeatcacheError(
            f"token indices span {int(indices.min())}..{int(indices.max())}; "
            f"expected 0..{codebook.shape[0] - 1} for a codebook of {codebook.shape[0]} codes"
        )
    if squared_errors is not None:
        squared_errors = np.asarray(squared_errors, dtype=np.float64)
        if squared_errors.shape != indices.shape:
            raise FeatcacheError(f"squared_errors have shape {squared_errors.shape}; expected the token shape {indices.shape}")
        if not np.isfinite(squared_errors).all():
            raise FeatcacheError("squared_errors hold nan or inf; expected finite squared distances")
    return indices, codebook, squared_errors


def code_statistics(
    indices: np.ndarray,
    codebook: np.ndarray,
    squared_errors: np.ndarray | None = None,
    use_gpu: bool | None = None,
) -> CodeStatistics:
    """Usage, spread and fit statistics of ``codebook`` (K, D) given token ``indices`` (N, h, w).

    ``squared_errors`` (N, h, w): squared L2 distance of each patch's encoding to its code, when known.
    ``use_gpu``: None = faiss GPU index when a GPU is visible, else CPU.
    """
    indices, codebook, squared_errors = _check_inputs(indices, codebook, squared_errors)
    num_codes, code_dim = codebook.shape
    tokens = indices.reshape(indices.shape[0], -1).astype(np.int64)  # (N, h*w)

    usage = np.bincount(tokens.reshape(-1), minlength=num_codes)
    total = usage.sum()
    probabilities = usage[usage > 0] / total
    entropy = float(-(probabilities * np.log(probabilities)).sum())
    mean_count = usage.mean()
    usage_cv = float(usage.std() / mean_count) if mean_count > 0 else float("nan")
    used = int((usage > 0).sum())

    nn_distances, device = nearest_code_distances(codebook, use_gpu)
    has_neighbours = nn_distances.size > 0

    # Distinct codes per sample: sort each row and count value changes.
    sorted_tokens = np.sort(tokens, axis=1)
    codes_per_image = (np.diff(sorted_tokens, axis=1) != 0).sum(axis=1) + 1

    errors = None
    if squared_errors is not None:
        errors = np.sqrt(np.maximum(squared_errors.reshape(-1), 0.0))  # float rounding can give tiny negatives

    return CodeStatistics(
        num_codes=int(num_codes),
        code_dim=int(code_dim),
        num_samples=int(tokens.shape[0]),
        tokens_per_sample=int(tokens.shape[1]),
        usage=usage,
        used_codes=used,
        dead_codes=int(num_codes - used),
        perplexity=float(np.exp(entropy)),
        usage_cv=usage_cv,
        nn_distances=nn_distances,
        nn_distance_min=float(nn_distances.min()) if has_neighbours else float("nan"),
        nn_distance_median=float(np.median(nn_distances)) if has_neighbours else float("nan"),
        nn_distance_mean=float(nn_distances.mean()) if has_neighbours else float("nan"),
        codes_per_image=codes_per_image,
        codes_per_image_mean=float(codes_per_image.mean()),
        codes_per_image_min=int(codes_per_image.min()),
        codes_per_image_max=int(codes_per_image.max()),
        quantization_errors=errors,
        quantization_error_mean=float(errors.mean()) if errors is not None else None,
        quantization_error_median=float(np.median(errors)) if errors is not None else None,
        quantization_error_p90=float(np.percentile(errors, 90)) if errors is not None else None,
        faiss_device=device,
    )


def multi_codebook_statistics(
    indices: np.ndarray,
    codebooks: dict[str, np.ndarray],
    squared_errors: np.ndarray | None = None,
    use_gpu: bool | None = None,
) -> CodeStatistics:
    """MSF: statistics of each codebook from ``indices`` (N, G, h, w) (channel g points into the g-th codebook).

    Returns the first codebook's statistics (with the fused ``squared_errors`` (N, h, w)), ``codebooks`` holding
    every codebook's, and the joint usage of the index tuples.
    """
    indices = np.asarray(indices)
    if indices.ndim != 4 or indices.shape[1] != len(codebooks):
        raise FeatcacheError(f"MSF token indices have shape {indices.shape}; expected (N, {len(codebooks)}, h, w)")
    per_codebook = {
        name: code_statistics(indices[:, g], codebook, use_gpu=use_gpu) for g, (name, codebook) in enumerate(codebooks.items())
    }
    first = next(iter(codebooks.values()))
    stats = code_statistics(indices[:, 0], first, squared_errors, use_gpu=use_gpu)
    sizes = [codebook.shape[0] for codebook in codebooks.values()]
    joint = np.ravel_multi_index(tuple(np.moveaxis(indices.astype(np.int64), 1, 0).reshape(len(sizes), -1)), sizes)  # (N*h*w,)
    _, counts = np.unique(joint, return_counts=True)
    probabilities = counts / counts.sum()
    stats.codebooks = per_codebook
    stats.joint_used_pairs = int(counts.size)
    stats.joint_perplexity = float(np.exp(-(probabilities * np.log(probabilities)).sum()))
    return stats


# ----------------------------------------------------------------------------- output
def write_code_plots(stats: CodeStatistics, out_dir: str | Path) -> list[Path]:
    """PNG plots of usage (sorted, log y), NN distances, codes per image and quantization error (if known)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def usage_plot(axes: Any) -> None:
        ranked = np.sort(stats.usage)[::-1]
        positive = ranked[ranked > 0]
        axes.plot(np.arange(1, positive.size + 1), positive, drawstyle="steps-post")
        axes.set_yscale("log")
        axes.set_xlim(1, max(stats.num_codes, 2))
        axes.set_xlabel("code rank")
        axes.set_ylabel("tokens")
        axes.set_title(
            f"code usage: {stats.used_codes}/{stats.num_codes} used, perplexity {stats.perplexity:.1f}"
        )

    written.append(save_figure(usage_plot, out_dir / "code_usage.png"))

    def nn_plot(axes: Any) -> None:
        axes.hist(stats.nn_distances, bins=50)
        axes.set_xlabel("L2 distance to nearest other code")
        axes.set_ylabel("codes")
        axes.set_title(f"nearest-neighbour distances (median {stats.nn_distance_median:.3g})")

    written.append(save_figure(nn_plot, out_dir / "code_nn_distances.png"))

    def per_image_plot(axes: Any) -> None:
        low, high = stats.codes_per_image_min, stats.codes_per_image_max
        axes.hist(stats.codes_per_image, bins=np.arange(low, high + 2) - 0.5 if high - low < 100 else 50)
        axes.set_xlabel(f"distinct codes per sample (of {stats.tokens_per_sample} tokens)")
        axes.set_ylabel("samples")
        axes.set_title(f"codes per image (mean {stats.codes_per_image_mean:.1f})")

    written.append(save_figure(per_image_plot, out_dir / "codes_per_image.png"))

    if stats.quantization_errors is not None:
        errors = stats.quantization_errors

        def error_plot(axes: Any) -> None:
            axes.hist(errors, bins=50)
            axes.axvline(stats.quantization_error_median, color="black", linestyle="--", label="median")
            axes.axvline(stats.quantization_error_p90, color="red", linestyle=":", label="p90")
            axes.set_xlabel("L2 quantization error per token")
            axes.set_ylabel("tokens")
            axes.set_title(f"quantization error (mean {stats.quantization_error_mean:.3g})")
            axes.legend()

        written.append(save_figure(error_plot, out_dir / "quantization_error.png"))
    return written


def _format(value: float | int | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return "nan" if not np.isfinite(value) else f"{value:.{digits}g}"


def _rows(stats: CodeStatistics) -> list[tuple[str, str]]:
    """(statistic, value) rows of one codebook."""
    dead_style = "red" if stats.dead_codes else "green"
    nn_distances = (stats.nn_distance_min, stats.nn_distance_median, stats.nn_distance_mean)
    per_image = f"{_format(stats.codes_per_image_mean)} / {stats.codes_per_image_min} / {stats.codes_per_image_max}"
    rows: list[tuple[str, str]] = [
        ("codes (K x D)", f"{stats.num_codes} x {stats.code_dim}"),
        ("samples x tokens", f"{stats.num_samples} x {stats.tokens_per_sample}"),
        ("used codes", f"{stats.used_codes} ({stats.used_codes / stats.num_codes:.1%})"),
        ("dead codes", f"[{dead_style}]{stats.dead_codes}[/]"),
        ("perplexity", _format(stats.perplexity)),
        ("usage CV (std/mean)", _format(stats.usage_cv)),
        ("NN distance min / median / mean", " / ".join(_format(value) for value in nn_distances)),
        ("codes per image mean / min / max", per_image),
    ]
    return rows


def print_code_table(stats: CodeStatistics, title: str = "codebook statistics", console: Console | None = None) -> None:
    """Print the scalar statistics as a rich table: two columns, or one column per codebook for MSF."""
    errors = (stats.quantization_error_mean, stats.quantization_error_median, stats.quantization_error_p90)
    error_row = ("quantization error mean / median / p90" + (" (fused)" if stats.codebooks else ""),
                 " / ".join(_format(value) for value in errors))
    if stats.codebooks is None:
        table = Table(title=title, show_header=False)
        table.add_column("statistic", style="bold")
        table.add_column("value", justify="right")
        for name, value in [*_rows(stats), *([error_row] if stats.quantization_errors is not None else []), ("faiss device", stats.faiss_device)]:
            table.add_row(name, value)
    else:
        table = Table(title=title)
        table.add_column("statistic", style="bold")
        columns = {name: dict(_rows(codebook)) for name, codebook in stats.codebooks.items()}
        for name in columns:
            table.add_column(name, justify="right")
        for statistic in columns[next(iter(columns))]:
            table.add_row(statistic, *(column[statistic] for column in columns.values()))
        table.add_row("(shared, specified) pairs used / perplexity", f"{stats.joint_used_pairs} / {_format(stats.joint_perplexity)}",
                      *[""] * (len(columns) - 1))
        if stats.quantization_errors is not None:
            table.add_row(*error_row, *[""] * (len(columns) - 1))
        table.add_row("faiss device", stats.faiss_device, *[""] * (len(columns) - 1))
    (console or default_console).print(table)


# ----------------------------------------------------------------------------- codes of a store
def analyze_codes(
    store_path: str | Path,
    token_name: str,
    out_dir: str | Path,
    view: str = "center",
    limit: int | None = None,
    use_gpu: bool | None = None,
    print_table: bool = False,
) -> CodeStatistics:
    """Code statistics of token set ``token_name`` over the written samples of ``view``.

    Writes ``code_statistics.json`` and the PNG plots into ``out_dir``.
    """
    store = FeatureStore(store_path)
    require_token_set(store, token_name)
    indices = selected_indices(store, limit)
    tokens = store.tokens(token_name, indices, view)  # (N, h, w); MSF (N, G, h, w)
    codebook = store.codebook(token_name)
    try:
        squared_errors = store.token_errors(token_name, indices, view)
    except StoreError:
        squared_errors = None  # token sets written without errors still get every other statistic
    if token_set_quantizer(store.token_attributes(token_name)) == "msf":
        arrays = store.token_arrays(token_name)
        codebooks = {"shared": codebook, **({"specified": arrays["codebook_specified"]} if "codebook_specified" in arrays else {})}
        stats = multi_codebook_statistics(tokens, codebooks, squared_errors, use_gpu=use_gpu)
    else:
        stats = code_statistics(tokens, codebook, squared_errors, use_gpu=use_gpu)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "store": str(store.path),
        "encoder": store.attributes["encoder"]["name"],
        "weights": store.attributes["weights"]["source"],
        "random_weights": store.weights_are_random,
        "token_set": token_name,
        "view": view,
        **stats.to_dict(),
    }
    (out_dir / "code_statistics.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_code_plots(stats, out_dir)
    if print_table:
        print_code_table(stats, title=f"codes {token_name!r} of {store.path}")
    return stats


def selected_indices(store: FeatureStore, limit: int | None) -> np.ndarray:
    indices = store.valid_indices()
    if limit is not None:
        if limit < 1:
            raise FeatcacheError(f"limit is {limit}; expected a positive number of images or None for all")
        indices = indices[:limit]
    if indices.size == 0:
        raise StoreError(f"store {store.path} has no written samples to analyse")
    return indices


def require_token_set(store: FeatureStore, token_name: str) -> None:
    """A half-tokenized set holds zeros for its pending units: refuse it instead of reporting them as code 0."""
    done, total = store.token_completeness(token_name)  # raises StoreError naming the known sets
    if done != total:
        raise StoreError(
            f"token set {token_name!r} of store {store.path} is incomplete ({done}/{total} units); finish `featcache tokenize` first"
        )
