"""Declarative pipelines: a YAML list of stages run in order, skipping what is done (``featcache run``)."""

from featcache.pipelines.kinds import ALL_OPERATIONS, STAGE_KINDS
from featcache.pipelines.runner import PipelineResult, plan_pipeline, print_pipeline_result, run_pipeline, run_quickstart
from featcache.pipelines.spec import Pipeline, StageSpec, load_pipeline, shipped_pipeline

__all__ = [
    "ALL_OPERATIONS",
    "STAGE_KINDS",
    "Pipeline",
    "PipelineResult",
    "StageSpec",
    "load_pipeline",
    "plan_pipeline",
    "print_pipeline_result",
    "run_pipeline",
    "run_quickstart",
    "shipped_pipeline",
]
