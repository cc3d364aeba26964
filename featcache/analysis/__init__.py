"""Analyses of cached features and VQ codes: codebook statistics (faiss) and object separability."""

from featcache.analysis.clustering import PCAProjection, fit_pca, kmeans_baseline, kmeans_segmentation, objects_per_image
from featcache.analysis.codes import CodeStatistics, analyze_codes, code_statistics, nearest_code_distances, print_code_table, write_code_plots
from featcache.analysis.separability import (
    analyze_separability,
    feature_distances,
    patch_labels,
    per_image_distances,
    print_separability_table,
    quantized_features,
    write_separability_csv,
    write_separability_json,
)

__all__ = [
    "CodeStatistics",
    "PCAProjection",
    "analyze_codes",
    "analyze_separability",
    "code_statistics",
    "feature_distances",
    "fit_pca",
    "kmeans_baseline",
    "kmeans_segmentation",
    "nearest_code_distances",
    "objects_per_image",
    "patch_labels",
    "per_image_distances",
    "print_code_table",
    "print_separability_table",
    "quantized_features",
    "write_code_plots",
    "write_separability_csv",
    "write_separability_json",
]
