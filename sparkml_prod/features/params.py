"""Params and source handling shared by the feature stages.

Every stage reads its events from a *source*: a table reference (see
:mod:`sparkml_prod.core.tables`) kept as a plain string Param, so it saves with the model and a
scoring job can point it at the production table with ``setSourceTable``. ``sourceVersion``
pins the Delta version it reads (time travel), so a training matrix can be rebuilt exactly;
unset (or -1) it reads the latest version.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.errors import SchemaError
from sparkml_prod.core.tables import read_table, require_columns
from sparkml_prod.core.time import TIMESTAMP_TYPES, micros, require_utc_session

log = logging.getLogger("sparkml_prod.features")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def to_identifier(value: str, owner: str, param: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"The '{param}' parameter of {owner} must be a name of letters, digits and "
            f"underscores. Got {value!r} instead."
        )
    return value


def to_filters(value: Any) -> dict[str, str]:
    """Type converter of ``filters``: a mapping of filter name to a SQL condition."""
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and _NAME.match(k) and isinstance(v, str) and v.strip()
        for k, v in value.items()
    ):
        raise TypeError(
            "The 'filters' parameter must be a mapping of names (letters, digits, "
            "underscores) to SQL conditions, e.g. {'purchase': \"event_type = 'purchase'\"}. "
            f"Got {value!r} instead."
        )
    return dict(value)


def to_source_version(value: Any, owner: str = "the stage") -> int:
    """Type converter of ``sourceVersion``: a Delta version >= 0, or -1 for the latest."""
    try:
        version: int | None = TypeConverters.toInt(value)
    except TypeError:  # not an integer (a bool, a string, 1.5)
        version = None
    if version is None or version < -1:
        raise ValueError(
            f"The 'sourceVersion' parameter of {owner} must be a Delta table version >= 0 "
            f"(or -1 for the latest version). Got {value!r} instead."
        )
    return version


class HasSpineKeys(Params):
    """The spine's entity and as-of columns."""

    entityCol: Param[str] = Param(
        Params._dummy(), "entityCol", "entity id column of the spine", TypeConverters.toString
    )
    asOfCol: Param[str] = Param(
        Params._dummy(),
        "asOfCol",
        "as-of column of the spine (timestamp or date); events at exactly as-of are not seen",
        TypeConverters.toString,
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(entityCol="user_id", asOfCol="as_of")

    def getEntityCol(self) -> str:
        return self.getOrDefault(self.entityCol)

    def setEntityCol(self, value: str) -> Any:
        return self._set(entityCol=value)

    def getAsOfCol(self) -> str:
        return self.getOrDefault(self.asOfCol)

    def setAsOfCol(self, value: str) -> Any:
        return self._set(asOfCol=value)


class HasSource(Params):
    """A source table of events, its entity column and its time column."""

    sourceTable: Param[str] = Param(
        Params._dummy(),
        "sourceTable",
        "table reference of the source: a path, delta.`path`, a catalog table or a view",
        TypeConverters.toString,
    )
    sourceEntityCol: Param[str] = Param(
        Params._dummy(),
        "sourceEntityCol",
        "entity id column of the source (default: the spine's entityCol)",
        TypeConverters.toString,
    )
    timestampCol: Param[str] = Param(
        Params._dummy(), "timestampCol", "event time column of the source", TypeConverters.toString
    )
    sourceVersion: Param[int] = Param(
        Params._dummy(),
        "sourceVersion",
        "Delta version of the source to read (time travel); unset or -1: the latest version",
        to_source_version,
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(timestampCol="event_time")
        # This instance's own copy of the Param: its converter names the stage it is of.
        self.sourceVersion.typeConverter = partial(to_source_version, owner=type(self).__name__)

    def getSourceTable(self) -> str:
        return self.getOrDefault(self.sourceTable)

    def setSourceTable(self, value: str) -> Any:
        return self._set(sourceTable=value)

    def getSourceEntityCol(self) -> str:
        if self.isDefined(self.sourceEntityCol):
            return self.getOrDefault(self.sourceEntityCol)
        return self.getOrDefault("entityCol")

    def setSourceEntityCol(self, value: str) -> Any:
        return self._set(sourceEntityCol=value)

    def getTimestampCol(self) -> str:
        return self.getOrDefault(self.timestampCol)

    def setTimestampCol(self, value: str) -> Any:
        return self._set(timestampCol=value)

    def getSourceVersion(self) -> int | None:
        """The pinned Delta version of the source, or None to read the latest version."""
        if not self.isDefined(self.sourceVersion):
            return None
        version = self.getOrDefault(self.sourceVersion)
        return None if version == -1 else version

    def setSourceVersion(self, value: int | None) -> Any:
        """Pin the source to a Delta version; None (or -1) reads the latest version again."""
        if value is None:
            self.clear(self.sourceVersion)
            return self
        return self._set(sourceVersion=value)


class HasFilters(Params):
    """Named SQL conditions on the source, e.g. ``{"purchase": "event_type = 'purchase'"}``."""

    filters: Param[dict[str, str]] = Param(
        Params._dummy(), "filters", "named SQL conditions on the source", to_filters
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(filters={})

    def getFilters(self) -> dict[str, str]:
        return self.getOrDefault(self.filters)

    def setFilters(self, value: dict[str, str]) -> Any:
        return self._set(filters=value)


class HasOutputPrefix(Params):
    """A prefix prepended to every output column of a stage."""

    outputPrefix: Param[str] = Param(
        Params._dummy(), "outputPrefix", "prefix of every output column", TypeConverters.toString
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(outputPrefix="")

    def getOutputPrefix(self) -> str:
        return self.getOrDefault(self.outputPrefix)


def require_source_param(stage: Params) -> str:
    if not stage.isDefined("sourceTable"):
        raise ValueError(
            f"The 'sourceTable' parameter of {type(stage).__name__} must be set to a table "
            "reference (a path, delta.`path`, a catalog table or a view). It is not set."
        )
    return stage.getOrDefault("sourceTable")


def check_spine(spine: DataFrame, entity: str, as_of: str, owner: str) -> None:
    """The spine must have the entity column and a timestamp or date as-of column, and
    its session a UTC time zone (a date as-of is midnight UTC)."""
    require_utc_session(spine.sparkSession, owner)
    require_columns(spine, {as_of: TIMESTAMP_TYPES}, table=f"spine of {owner}")
    if entity not in spine.columns:
        require_columns(spine, {entity: ()}, table=f"spine of {owner}")


def check_outputs_are_new(spine: DataFrame, outputs: Sequence[str], owner: str) -> None:
    clashes = [name for name in outputs if name in spine.columns]
    if clashes:
        raise SchemaError(
            f"{owner} would add column(s) {', '.join(clashes)} that the spine already has; "
            "drop them from the spine or set outputPrefix."
        )


def read_source(
    spark: SparkSession,
    ref: str,
    entity: str,
    timestamp: str,
    other: Mapping[str, Any],
    owner: str,
    version: int | None = None,
) -> DataFrame:
    """The source (at ``version``, if given) with its columns checked: entity present,
    timestamp a time type, others. Only the schema and the Delta log are read."""
    required: dict[str, Any] = {timestamp: TIMESTAMP_TYPES, **other}
    source = read_table(spark, ref, required=required, version=version)
    if entity not in source.columns:
        require_columns(source, {entity: ()}, table=ref)
    return source


def exclude_null_keys(
    source: DataFrame, entity: str, timestamp: str, ref: str, owner: str
) -> DataFrame:
    """Drop source rows with a null entity or time, logging how many were dropped.

    The count is a separate, cheap job: Delta's per-file null counts let it skip every
    file that has no null key.
    """
    is_null_key = F.col(entity).isNull() | F.col(timestamp).isNull()
    excluded = source.filter(is_null_key).count()
    if excluded:
        log.warning(
            "%s: excluded %d row(s) of source '%s' with a null %s or %s",
            owner,
            excluded,
            ref,
            entity,
            timestamp,
        )
    return source.filter(~is_null_key)


def check_filters(source: DataFrame, filters: Mapping[str, str], ref: str, owner: str) -> None:
    """Each named filter must be a valid condition on the source (checked without a job)."""
    for name, condition in filters.items():
        try:
            _ = source.select(F.expr(condition).cast("boolean")).schema
        except Exception as exc:  # analysis errors: an unknown column, bad SQL
            raise ValueError(
                f"Filter '{name}' ({condition}) of {owner} is not a valid condition on "
                f"source '{ref}' (columns: {', '.join(source.columns)}): "
                f"{str(exc).strip().splitlines()[0]}"
            ) from None


def spine_keys(spine: DataFrame, entity: str, as_of: str, time_name: str = "__a") -> DataFrame:
    """Distinct non-null ``(__e, <time_name>)`` keys of a spine, as-of in microseconds."""
    return (
        spine.select(F.col(entity).alias("__e"), micros(as_of).alias(time_name))
        .where(F.col("__e").isNotNull() & F.col(time_name).isNotNull())
        .distinct()
    )


def join_to_spine(
    spine: DataFrame, entity: str, as_of: str, found: DataFrame, outputs: Sequence[Column]
) -> DataFrame:
    """Every spine row, unchanged and once, with ``outputs`` of ``found`` (keyed by
    ``__e``, ``__a``) attached; null where a row has no match."""
    keyed = spine.withColumn("__e", F.col(entity)).withColumn("__a", micros(as_of))
    joined = keyed.join(found, on=["__e", "__a"], how="left")
    return joined.select(*[keyed[c] for c in spine.columns], *outputs)
