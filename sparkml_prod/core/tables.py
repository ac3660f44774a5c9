"""Read and write Delta tables addressed by path or by catalog name.

A *table reference* is one string, so it fits in a YAML config or a model Param:

- a path (``/data/events``, ``demo-output/events``, ``s3a://bucket/events``,
  ``hdfs:///warehouse/events``), or ``delta.`<path>``` as Spark SQL writes it;
- anything else is a catalog name (``events``, ``analytics.events``) or a temp view.

:func:`table_expression` turns a reference into what :meth:`SparkSession.table`
resolves, :func:`overwrite_partition` replaces exactly one partition in one Delta
commit (re-running a job for the same date leaves no duplicates and never a
half-written table), and :func:`require_columns` checks columns and types before a long
job starts.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping, Sequence

from pyspark.sql import DataFrame, SparkSession

from sparkml_prod.core.errors import SchemaError, TableNotFoundError
from sparkml_prod.core.time import to_utc

__all__ = [
    "is_path",
    "table_path",
    "table_expression",
    "table_exists",
    "read_table",
    "write_table",
    "overwrite_partition",
    "require_columns",
    "schema_of",
    "delta_version",
    "NUMERIC",
    "sql_literal",
]

# Accepted type names for a column that only has to be numeric.
NUMERIC: tuple[str, ...] = ("tinyint", "smallint", "int", "bigint", "float", "double", "decimal")


def is_path(ref: str) -> bool:
    """True when ``ref`` addresses a table by path rather than by catalog name."""
    return ref.startswith("delta.`") or "/" in ref or "://" in ref or ref.startswith(".")


def table_path(ref: str) -> str:
    """The storage path of a path reference (``delta.`/p``` or ``/p``), local ones absolute."""
    if ref.startswith("delta.`") and ref.endswith("`"):
        ref = ref[len("delta.`") : -1]
    if "://" in ref or ref.startswith("file:"):
        return ref
    return os.path.abspath(ref)


def table_expression(ref: str) -> str:
    """What :meth:`SparkSession.table` resolves: ``delta.`/abs/path``` or the catalog name."""
    return f"delta.`{table_path(ref)}`" if is_path(ref) else ref


def table_exists(spark: SparkSession, ref: str) -> bool:
    """Whether the Delta table (by path) or catalog table / view (by name) exists."""
    if is_path(ref):
        from delta.tables import DeltaTable

        return bool(DeltaTable.isDeltaTable(spark, table_path(ref)))
    return bool(spark.catalog.tableExists(ref))


def read_table(
    spark: SparkSession,
    ref: str,
    required: Mapping[str, str | Sequence[str]] | None = None,
) -> DataFrame:
    """Read a table by reference, checking it exists and has the ``required`` columns.

    Examples
    --------
    >>> events = read_table(spark, "demo-output/tables/events",  # doctest: +SKIP
    ...                     required={"user_id": "bigint", "event_time": "timestamp"})
    """
    if not table_exists(spark, ref):
        kind = "Delta table at path" if is_path(ref) else "table"
        raise TableNotFoundError(
            f"Table '{ref}' not found: no {kind} '{table_path(ref) if is_path(ref) else ref}'. "
            "Check the reference in the config, or create the table first."
        )
    df = spark.table(table_expression(ref))
    if required:
        require_columns(df, required, table=ref)
    return df


def schema_of(df: DataFrame) -> dict[str, str]:
    """Column name -> Spark SQL type name (``bigint``, ``decimal(10,2)``), in order."""
    return {field.name: field.dataType.simpleString() for field in df.schema.fields}


def require_columns(
    df: DataFrame, required: Mapping[str, str | Sequence[str]], table: str
) -> DataFrame:
    """Check that ``df`` has each required column with an accepted type.

    ``required`` maps a column name to a Spark SQL type name (``"bigint"``,
    ``"timestamp"``, ``"string"``), or to a sequence of accepted names (``NUMERIC``);
    ``decimal`` accepts any precision, and an empty sequence any type. Only the schema
    is read: no Spark job runs.

    Raises
    ------
    SchemaError
        Naming the table, the missing or mistyped column, and the columns present.
    """
    present = schema_of(df)
    listing = ", ".join(f"{name} {kind}" for name, kind in present.items())
    missing = [name for name in required if name not in present]
    if missing:
        raise SchemaError(
            f"Table '{table}' is missing required column(s) {', '.join(missing)}. "
            f"Columns present: {listing}."
        )
    for name, accepted in required.items():
        options = (accepted,) if isinstance(accepted, str) else tuple(accepted)
        found = present[name]
        if options and not any(found == o or found.startswith(f"{o}(") for o in options):
            raise SchemaError(
                f"Table '{table}' column '{name}' has type {found}; expected "
                f"{' or '.join(options)}. Columns present: {listing}."
            )
    return df


def write_table(
    df: DataFrame,
    ref: str,
    mode: str = "errorifexists",
    partition_by: Iterable[str] = (),
    options: Mapping[str, str] | None = None,
) -> None:
    """Write ``df`` as a Delta table at a path or under a catalog name."""
    writer = df.write.format("delta").mode(mode).options(**(options or {}))
    partition_columns = list(partition_by)
    if partition_columns:
        writer = writer.partitionBy(*partition_columns)
    if is_path(ref):
        writer.save(table_path(ref))
    else:
        writer.saveAsTable(ref)


def sql_literal(value: object) -> str:
    """A Spark SQL literal for a partition value (strings quoted, dates typed).

    A datetime is written as its UTC instant with an explicit ``+00:00`` (a naive one is
    read as UTC), so neither ``TZ`` nor the session time zone can move it; a date is a
    ``DATE`` literal, which has no zone.

    Examples
    --------
    >>> sql_literal(dt.datetime(2024, 6, 1))
    "TIMESTAMP'2024-06-01 00:00:00+00:00'"
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return f"TIMESTAMP'{to_utc(value).isoformat(sep=' ')}'"
    if isinstance(value, dt.date):
        return f"DATE'{value.isoformat()}'"
    if isinstance(value, (int, float)):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def overwrite_partition(df: DataFrame, ref: str, partition: Mapping[str, object]) -> None:
    """Replace exactly the rows of one partition, atomically, in one Delta commit.

    ``partition`` maps the partition columns to their values, e.g. ``{"as_of":
    date(2024, 6, 1)}``. Rows of other partitions are untouched; a rerun with the same
    values leaves only the new rows. If the table does not exist yet it is created,
    partitioned by those columns. Delta refuses the write (and leaves the table as it
    was) if ``df`` holds a row outside the partition.
    """
    predicate = " AND ".join(f"`{col}` = {sql_literal(v)}" for col, v in partition.items())
    if table_exists(df.sparkSession, ref):
        write_table(df, ref, mode="overwrite", options={"replaceWhere": predicate})
    else:
        write_table(df, ref, mode="overwrite", partition_by=list(partition))


def delta_version(spark: SparkSession, ref: str) -> int:
    """The current version of a Delta table, for exact rebuilds by time travel."""
    from delta.tables import DeltaTable

    table = (
        DeltaTable.forPath(spark, table_path(ref))
        if is_path(ref)
        else DeltaTable.forName(spark, ref)
    )
    latest = table.history(1).select("version").head()
    assert latest is not None, f"Delta table '{ref}' has no history"
    return int(latest[0])
