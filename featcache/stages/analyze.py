"""`featcache analyze codes`, `featcache analyze separability` and `featcache analyze slots`: diagnostics of cached
features, VQ codes and slot sets.

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


@dataclass(frozen=True)
class SlotsParams:
    store: str = param("", help="A store with a slot set (written by encode-slots).", role="input", required=True)
    slots: str = param("", help="Slot set name.", required=True)
    k: int = param(8, help="Number of slot clusters (faiss kMeans over every slot of the set).")
    k_range: str = param("2..16", help="LOW..HIGH: k values of the elbow/silhouette table ('' for none).")
    silhouette_samples: int = param(2000, help="Slots subsampled for each silhouette score.")
    niter: int = param(25, help="kMeans iterations.")
    nredo: int = param(3, help="kMeans restarts (the lowest objective is kept).")
    limit: int | None = param(None, help="Use at most this many samples.")
    grid_slots: int = param(8, help="Nearest slots drawn per cluster in slot_clusters.png (0: no picture).")
    seed: int = param(0, help="Seed of kMeans and the silhouette subsample.")
    out: str | None = param(None, help="Folder for slot_clusters.json, centroids and the PNG; default runs/analysis/<store>-slots-<name>.",
                            role="out")


class AnalyzeSlots(Operation):
    """kMeans over a slot set: k table, purity/NMI vs matched object classes, substitution error, PNG, centroids saved."""

    name = "analyze-slots"
    command = ("analyze", "slots")
    params_type = SlotsParams
    replace = "overwrite"

    def validate(self, params: SlotsParams) -> None:
        from featcache.errors import FeatcacheError

        super().validate(params)
        if params.k < 2:
            raise FeatcacheError(f"k is {params.k}; expected at least 2 clusters")

    def out_dir(self, params: SlotsParams) -> Path:
        return Path(params.out) if params.out else Path("runs") / "analysis" / f"{Path(params.store).stem}-slots-{params.slots}"

    def outputs(self, params: SlotsParams) -> dict[str, str]:
        out = self.out_dir(params)
        return {"out": str(out), "json": str(out / "slot_clusters.json"), "centroids": str(out / "centroids.safetensors")}

    def owned(self, params: SlotsParams) -> list[str]:
        return [str(self.out_dir(params))]

    def outputs_exist(self, params: SlotsParams) -> bool:
        return Path(self.outputs(params)["json"]).is_file()

    def run(self, params: SlotsParams, resume: bool = False, show_progress: bool = True) -> str:
        from featcache.analysis.slot_clusters import analyze_slot_set, print_slot_cluster_tables

        record = analyze_slot_set(params.store, params.slots, params.k, self.out_dir(params), k_range=params.k_range,
                                  silhouette_samples=params.silhouette_samples, seed=params.seed, niter=params.niter, nredo=params.nredo,
                                  limit=params.limit, grid_slots=params.grid_slots)
        print_slot_cluster_tables(record)
        note = f"k {params.k}: substitution error {record['substitution_error']:.3f}"
        if "purity" in record:
            note += f", purity {record['purity']:.3f}, NMI {record['nmi']:.3f}"
        return note + f"; wrote {self.out_dir(params)}"


ANALYZE_CODES = declare(AnalyzeCodes())
ANALYZE_SEPARABILITY = declare(AnalyzeSeparability())
ANALYZE_SLOTS = declare(AnalyzeSlots())
