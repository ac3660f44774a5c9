"""The model registry on any Hadoop file system: storage, versions and aliases, gates."""

from sparkml_prod.registry.registry import Gate, ModelRegistry, ModelVersion, format_versions

__all__ = ["Gate", "ModelRegistry", "ModelVersion", "format_versions"]
