"""The zarr feature store: layout (schema), writing units (writer) and the typed read API (reader)."""

from featcache.store.reader import Completeness, FeatureStore, group_by_clip, read_attributes
from featcache.store.schema import SCHEMA_VERSION, StoreLayout
from featcache.store.writer import UnitArrays, create_store, finalize_store, mark_unit_done, write_unit

__all__ = [
    "SCHEMA_VERSION",
    "Completeness",
    "FeatureStore",
    "StoreLayout",
    "UnitArrays",
    "create_store",
    "finalize_store",
    "group_by_clip",
    "mark_unit_done",
    "read_attributes",
    "write_unit",
]
