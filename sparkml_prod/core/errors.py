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
    "ModelCardError",
    "RebuildMismatchError",
    "MonitoringAlertError",
    "ConcurrentWriteError",
    "SinkError",
]


class SparkmlProdError(Exception):
    """Base class of the library's errors.

    ``exit_code`` is what the command line (and so a ``spark-submit`` job) exits with
    when the error stops it: 2 config, 3 input data, 4 cluster capacity, 5 refused
    promotion, 6 model registry, 7 a monitoring alert the job was told to fail on, 8 a
    write that lost to concurrent writers every time it was tried (rerun it), 9 an
    external sink (a database) that refused or lost the write; 1 for any other error of
    the library.
    """

    exit_code = 1


class ConfigError(SparkmlProdError, ValueError):
    """A job config file is missing, malformed, or has an unknown, missing or mistyped key;
    or a Spark setting the library cannot work with (a non-UTC session time zone)."""

    exit_code = 2


class SchemaError(SparkmlProdError, ValueError):
    """A table lacks a required column, or a column has the wrong type."""

    exit_code = 3


class TableNotFoundError(SparkmlProdError, ValueError):
    """A table named by path or by catalog name does not exist."""

    exit_code = 3


class SourceVersionError(SparkmlProdError, ValueError):
    """A Delta table version that cannot be read exactly: not in the table's log (cleaned
    up, or newer than the current version), its files vacuumed, or a table without versions."""

    exit_code = 3


class EmptyResultError(SparkmlProdError, ValueError):
    """A job would write an empty result over existing output."""

    exit_code = 3


class LeakageError(SparkmlProdError, ValueError):
    """A train/validation/test split whose label windows reach into a later period."""

    exit_code = 3


class TrainingDataError(SparkmlProdError, ValueError):
    """Training data that cannot give an honest model: one label class, no rows, labels
    not yet complete."""

    exit_code = 3


class ClusterCapacityError(SparkmlProdError, RuntimeError):
    """A distributed step needs more task slots than the Spark application has."""

    exit_code = 4


class ModelNotFoundError(SparkmlProdError, LookupError):
    """A model name, version or alias that the registry does not hold."""

    exit_code = 6


class PromotionRefusedError(SparkmlProdError, RuntimeError):
    """A candidate model that did not beat the current one by the configured margin."""

    exit_code = 5


class ModelIntegrityError(SparkmlProdError, RuntimeError):
    """A saved model whose files differ from those registered, or whose metadata names a
    class outside the allowlist or carries pickled code; it was not loaded."""

    exit_code = 6


class ModelCardError(SparkmlProdError, ValueError):
    """A model card that is missing, malformed, of an unknown schema version, or lacks a
    field."""

    exit_code = 6


class RebuildMismatchError(SparkmlProdError, RuntimeError):
    """A rebuilt training matrix that differs from the one its model card records."""

    exit_code = 3


class MonitoringAlertError(SparkmlProdError, RuntimeError):
    """A monitoring run measured at least one metric at or past its alert threshold, and the
    job was configured with ``fail_on_alert``; the message lists each alert."""

    exit_code = 7


class ConcurrentWriteError(SparkmlProdError, RuntimeError):
    """A Delta write that conflicted with concurrent writers to the same table on every one
    of its bounded attempts. Nothing of it was committed; the job can be rerun as it is."""

    exit_code = 8


class SinkError(SparkmlProdError, RuntimeError):
    """Writing results into an external system (a JDBC database) failed: the driver is
    missing, the database refused the connection or the statements, or the connection was
    lost. The target keeps its previous rows; rerunning the date retries the write."""

    exit_code = 9
