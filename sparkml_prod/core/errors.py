"""Every exception the library raises on bad input, in one place.

Each message names what was wrong (file, key, table, column), what was expected,
what was found, and the fix where there is one.
"""

from __future__ import annotations

__all__ = [
    "SparkmlProdError",
    "ConfigError",
    "SchemaError",
    "TableNotFoundError",
    "SourceVersionError",
    "EmptyResultError",
    "LeakageError",
    "TrainingDataError",
    "ClusterCapacityError",
    "ModelNotFoundError",
    "PromotionRefusedError",
    "ModelIntegrityError",
]


class SparkmlProdError(Exception):
    """Base class of the library's errors."""


class ConfigError(SparkmlProdError, ValueError):
    """A job config file is missing, malformed, or has an unknown, missing or mistyped key;
    or a Spark setting the library cannot work with (a non-UTC session time zone)."""


class SchemaError(SparkmlProdError, ValueError):
    """A table lacks a required column, or a column has the wrong type."""


class TableNotFoundError(SparkmlProdError, ValueError):
    """A table named by path or by catalog name does not exist."""


class SourceVersionError(SparkmlProdError, ValueError):
    """A Delta table version that cannot be read exactly: not in the table's log (cleaned
    up, or newer than the current version), its files vacuumed, or a table without versions."""


class EmptyResultError(SparkmlProdError, ValueError):
    """A job would write an empty result over existing output."""


class LeakageError(SparkmlProdError, ValueError):
    """A train/validation/test split whose label windows reach into a later period."""


class TrainingDataError(SparkmlProdError, ValueError):
    """Training data that cannot give an honest model: one label class, no rows, labels
    not yet complete."""


class ClusterCapacityError(SparkmlProdError, RuntimeError):
    """A distributed step needs more task slots than the Spark application has."""


class ModelNotFoundError(SparkmlProdError, LookupError):
    """A model name, version or alias that the registry does not hold."""


class PromotionRefusedError(SparkmlProdError, RuntimeError):
    """A candidate model that did not beat the current one by the configured margin."""


class ModelIntegrityError(SparkmlProdError, RuntimeError):
    """A saved model whose files differ from those registered, or whose metadata names a
    class outside the allowlist or carries pickled code; it was not loaded."""
