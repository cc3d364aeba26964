"""`featcache analyze codes` and `featcache analyze separability`: diagnostics of cached features and VQ codes.

The analyses live in :mod:`featcache.analysis` (faiss code statistics, per-image kMeans, distances).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featcache.operations import Operation, declare, param


@dataclass(frozen=True)
class CodesParams:
    store: str = param("", help="A store with a token set.", role="input", required=True)
    tokens: str = param("", help="Token set name.", required=True)
    view: str = param("center", help="View to analyse.")
    limit: int | None = param(None, help="Use at most this many images.")
    out: str | None = param(None, help="Folder for code_statistics.json and PNG plots; default runs/analysis/<store>-<tokens>.", role="out")


class AnalyzeCodes(Operation):
    """Code usage, dead codes, perplexity, nearest-neighbour distances (faiss), quantization error, codes per image."""

    name = "analyze-codes"
    command = ("analyze", "codes")
    params_type = CodesParams
    replace = "overwrite"

    def out_dir(self, params: CodesParams) -> Path:
        return Path(params.out) if params.out else Path("runs") / "analysis" / f"{Path(params.store).stem}-{params.tokens}"

    def outputs(self, params: CodesParams) -> dict[str, str]:
        return {"out": str(self.out_dir(params)), "json": str(self.out_dir(params) / "code_statistics.json")}

    def owned(self, params: CodesParams) -> list[str]:
        return [str(self.out_dir(params))]

    def outputs_exist(self, params: CodesParams) -> bool:
        return Path(self.outputs(params)["json"]).is_file()

    def run(self, params: CodesParams, resume: bool = False, show_progress: bool = True) -> str:
        from featcache.analysis.codes import analyze_codes, print_code_table

        statistics = analyze_codes(params.store, params.tokens, self.out_dir(params), view=params.view, limit=params.limit)
        print_code_table(statistics, title=f"codes {params.tokens!r} of {params.store}")
        if statistics.codebooks:  # MSF: one figure per codebook
            used = ", ".join(f"{name} {s.used_codes}/{s.num_codes} (perplexity {s.perplexity:.1f})" for name, s in statistics.codebooks.items())
            return f"codes used: {used}; wrote {self.out_dir(params)}"
        return f"{statistics.used_codes}/{statistics.num_codes} codes used, perplexity {statistics.perplexity:.1f}; wrote {self.out_dir(params)}"


@dataclass(frozen=True)
class SeparabilityParams:
    stores: list[str] = param(help="One or more stores with masks (repeat --store to compare).", role="input", required=True, flag="--store",
                              default_factory=list)
    view: str = param("center", help="View to analyse.")
    limit: int | None = param(None, help="Use at most this many images per store.")
    tokens: str | None = param(None, help="Also analyse the quantized codes of this token set.")
    pca_dims: int = param(32, help="PCA dimensions for the distance statistics.")
    seed: int = param(0, help="Seed of PCA subsampling and kMeans.")
    out: str | None = param(None, help="Folder for separability.json and separability.csv.", role="out")
    json: str | None = param(None, help="Also write the rows as JSON to this file.", role="runtime")
    csv: str | None = param(None, help="Also write the rows as CSV to this file.", role="runtime")


class AnalyzeSeparability(Operation):
    """Do the features separate objects? Intra/inter-object distances and per-image kMeans ARI / FG-ARI."""

    name = "analyze-separability"
    command = ("analyze", "separability")
    params_type = SeparabilityParams
    replace = "overwrite"

    def outputs(self, params: SeparabilityParams) -> dict[str, str]:
        out = Path(str(params.out))
        return {"out": str(params.out), "json": str(out / "separability.json"), "csv": str(out / "separability.csv")}

    def outputs_exist(self, params: SeparabilityParams) -> bool:
        outputs = self.outputs(params)
        return Path(outputs["json"]).is_file() and Path(outputs["csv"]).is_file()

    def run(self, params: SeparabilityParams, resume: bool = False, show_progress: bool = True) -> str:
        from featcache.analysis.separability import analyze_separability, print_separability_table, write_separability_csv, write_separability_json

        rows = analyze_separability(params.stores, view=params.view, limit=params.limit, token_name=params.tokens, pca_dims=params.pca_dims,
                                    seed=params.seed, show_progress=show_progress)
        print_separability_table(rows)
        outputs = self.outputs(params) if params.out else {}
        for path in (params.json, outputs.get("json")):
            if path:
                write_separability_json(rows, path)
        for path in (params.csv, outputs.get("csv")):
            if path:
                write_separability_csv(rows, path)
        return ", ".join(f"{Path(row['store']).name} {row['kind']}: kMeans fg_ari {row['kmeans_fg_ari']:.3f}" for row in rows)


ANALYZE_CODES = declare(AnalyzeCodes())
ANALYZE_SEPARABILITY = declare(AnalyzeSeparability())
