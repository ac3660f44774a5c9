"""The model registry on any Hadoop file system: storage, versions and aliases, gates, and
verified loading."""

from sparkml_prod.registry.loading import (
    ALLOWED_CLASS_PREFIXES,
    check_stage_classes,
    load_verified_pipeline,
    pipeline_file_hashes,
    verify_pipeline_files,
)
from sparkml_prod.registry.registry import Gate, ModelRegistry, ModelVersion, format_versions

__all__ = [
    "ALLOWED_CLASS_PREFIXES",
    "Gate",
    "ModelRegistry",
    "ModelVersion",
    "check_stage_classes",
    "format_versions",
    "load_verified_pipeline",
    "pipeline_file_hashes",
    "verify_pipeline_files",
]
