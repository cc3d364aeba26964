"""Extraction: run a frozen VFM over a dataset's views once and write the store."""

from featcache.extraction.config import ExtractConfig
from featcache.extraction.run import ExtractSummary, extract

__all__ = ["ExtractConfig", "ExtractSummary", "extract"]
