"""The checks of an ingest config, all made before any data is read.

:func:`plan_ingest` turns an :class:`~sparkml_prod.core.config.IngestConfig` into an
:class:`IngestPlan`, or raises a :class:`~sparkml_prod.core.errors.ConfigError` naming the
key and what it must be: the source format and its keys, every schema type name, the event
time column and how to read it, the required and renamed columns, the JDBC password's
environment variable (a password in the YAML or the URL is refused), the partition column
and its bounds, and that every path (for each ingested date) matches a file. It then checks,
from metadata alone (file footers, the JDBC result's columns, Delta logs), that the source
has the configured columns and that existing events and quarantine tables have the columns
the run writes (:class:`~sparkml_prod.core.errors.SchemaError`). Finding JDBC partition
bounds is the one query it sends: ``SELECT MIN(c), MAX(c)`` over the ingested dates.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from typing import Any

from pyspark.errors import PySparkException
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkml_prod.core.config import IngestConfig
from sparkml_prod.core.errors import ConfigError
from sparkml_prod.core.tables import read_table, require_columns, table_exists
from sparkml_prod.core.time import timestamp_lit, to_micros
from sparkml_prod.data.ingest_sources import BOOKKEEPING, SourceSpec

__all__ = ["QUARANTINE_SCHEMA", "QUARANTINE_COLUMNS", "IngestPlan", "plan_ingest", "event_instant"]

QUARANTINE_SCHEMA = {
    "ingest_date": "date",
    "run_id": "string",
    "source_file": "string",
    "reason": "string",
    "raw_record": "string",
}
QUARANTINE_COLUMNS = tuple(QUARANTINE_SCHEMA)
FORMATS = ("csv", "parquet", "jdbc")
UNITS = {"seconds": 1_000_000, "milliseconds": 1_000, "microseconds": 1}
_FILE_KEYS = ("paths", "header", "delimiter", "quote", "escape")
_JDBC_KEYS = ("url", "table", "query", "user", "password_env", "driver", "partition_column")
_TIME_TYPES = (T.TimestampType, T.TimestampNTZType, T.DateType, T.StringType)
_NUMBERS = (T.IntegralType, T.FloatType, T.DoubleType, T.DecimalType)
_DAY = 86_400_000_000


@dataclasses.dataclass(frozen=True)
class IngestPlan:
    """A checked ingest: the source spec, the output columns and where the rows go.

    ``output_names`` maps each source column to its events-table column, in order;
    ``paths`` maps each ``{date}`` (None without a template) to its file patterns.
    """

    spec: SourceSpec
    required: tuple[str, ...]
    output_names: dict[str, str]
    events_table: str
    quarantine_table: str
    time_unit: str | None
    time_text: str
    templated: bool
    paths: dict[dt.date | None, list[str]]
    jdbc_where: Column | None
    jdbc_partitioning: dict[str, str]

    @property
    def output_time_column(self) -> str:
        return self.output_names[self.spec.time_column]


def event_instant(plan: IngestPlan) -> Column:
    """The UTC instant of the event time column, by its type (null when it does not read).

    ``timestamp`` is an instant; ``timestamp_ntz`` and ``date`` are cast in the session's
    zone, which the ingest requires to be UTC; text is parsed with the format (no offset:
    UTC); a number counts ``unit`` since the epoch.
    """
    spec = plan.spec
    column = F.col(spec.time_column)
    kind = spec.columns[spec.time_column]
    if isinstance(kind, T.TimestampType):
        return column
    if isinstance(kind, (T.TimestampNTZType, T.DateType)):
        return column.cast("timestamp")
    if isinstance(kind, T.StringType):
        if spec.time_format is None:
            return column.try_cast("timestamp")
        return F.try_to_timestamp(column, F.lit(spec.time_format))
    assert plan.time_unit is not None
    micros = (column.cast("decimal(38,6)") * F.lit(UNITS[plan.time_unit])).try_cast("bigint")
    return F.timestamp_micros(micros)


def plan_ingest(
    spark: SparkSession, config: IngestConfig, start: dt.date, end: dt.date, source: str
) -> IngestPlan:
    """Check ``config`` for the dates ``start`` .. ``end`` (module docstring); no data read."""
    if end < start:
        raise ConfigError(f"The ingested dates must run forward: --to {end} is before {start}.")
    src = config.source
    if src.format not in FORMATS:
        raise _error(source, "source.format", f"one of {', '.join(FORMATS)}", src.format)
    columns = _schema(src.schema, source)
    _check_keys(config, source)
    time_column, time_format, unit = config.event_time.column, config.event_time.format, None
    if time_column not in columns:
        raise _error(source, "event_time.column", _one_of(columns), time_column)
    time_kind = columns[time_column]
    if isinstance(time_kind, _NUMBERS):
        unit = config.event_time.unit
        if unit not in UNITS:
            raise _error(
                source,
                "event_time.unit",
                f"one of {', '.join(UNITS)} for the {time_kind.simpleString()} column "
                f"'{time_column}'",
                unit,
            )
    elif not isinstance(time_kind, _TIME_TYPES):
        raise _error(
            source,
            f"source.schema.{time_column}",
            "timestamp, timestamp_ntz, date, string or a number type for the event time",
            time_kind.simpleString(),
        )
    elif config.event_time.unit is not None:
        raise _error(
            source,
            "event_time.unit",
            f"absent for the {time_kind.simpleString()} column",
            config.event_time.unit,
        )
    if time_format is not None and not (isinstance(time_kind, T.StringType) or src.format == "csv"):
        raise _error(
            source,
            "event_time.format",
            f"absent: a {src.format} {time_kind.simpleString()} column is not text",
            time_format,
        )
    for i, name in enumerate(config.required):
        if name not in columns:
            raise _error(source, f"required[{i}]", _one_of(columns), name)
    output = _output_names(config, columns, source)
    spec = SourceSpec(
        format=src.format,
        columns=columns,
        time_column=time_column,
        time_format=time_format,
        csv_options={
            "header": str(src.header).lower(),
            "sep": src.delimiter,
            "quote": src.quote,
            "escape": src.escape,
        },
    )
    paths: dict[dt.date | None, list[str]] = {}
    templated = False
    where: Column | None = None
    partitioning: dict[str, str] = {}
    if src.format == "jdbc":
        spec = dataclasses.replace(spec, **_jdbc_connection(config, source))
        where, partitioning = _jdbc_reads(spark, config, spec, start, end, unit, source)
    else:
        templated, paths = _paths(spark, config, start, end, source)
        if src.format == "parquet":
            for patterns in paths.values():
                found = spark.read.parquet(*patterns)
                require_columns(found, {name: () for name in columns}, table=", ".join(patterns))
    written = {
        output[name]: "timestamp" if name == time_column else kind.simpleString()
        for name, kind in columns.items()
    }
    _check_table(spark, config.events_table, written)
    _check_table(spark, config.quarantine_table, QUARANTINE_SCHEMA)
    time_text = "a timestamp" if time_format is None else f"a timestamp (format {time_format})"
    return IngestPlan(
        spec=spec,
        required=tuple(config.required),
        output_names=output,
        events_table=config.events_table,
        quarantine_table=config.quarantine_table,
        time_unit=unit,
        time_text=time_text,
        templated=templated,
        paths=paths,
        jdbc_where=where,
        jdbc_partitioning=partitioning,
    )


def _error(source: str, key: str, expected: str, got: Any) -> ConfigError:
    return ConfigError(f"{source}: key '{key}' must be {expected}, got {got!r}.")


def _one_of(columns: dict[str, Any]) -> str:
    return f"a column of source.schema ({', '.join(columns)})"


def _schema(schema: dict[str, str], source: str) -> dict[str, T.DataType]:
    if not schema:
        raise _error(source, "source.schema", "a mapping of column: Spark SQL type", schema)
    columns: dict[str, T.DataType] = {}
    for name, text in schema.items():
        key = f"source.schema.{name}"
        if name.startswith("__ingest_") or name in BOOKKEEPING:
            raise _error(source, key, "a name not starting with '__ingest_' (reserved)", name)
        try:
            kind = T.DataType.fromDDL(text)
        except (PySparkException, ValueError):
            kind = None
        if kind is None or isinstance(kind, (T.StructType, T.ArrayType, T.MapType)):
            raise _error(
                source, key, "a Spark SQL type such as bigint, double, string or timestamp", text
            )
        columns[name] = kind
    return columns


def _check_keys(config: IngestConfig, source: str) -> None:
    """Keys of one source kind given for the other are refused, not ignored."""
    src = config.source
    defaults = {f.name: f.default for f in dataclasses.fields(src)}
    if src.format == "jdbc":
        wrong = [k for k in _FILE_KEYS if getattr(src, k) != _default(defaults[k], k)]
    else:
        wrong = [k for k in (*_JDBC_KEYS, "lower_bound", "upper_bound") if getattr(src, k)]
        wrong += [k for k in ("num_partitions", "fetch_size") if getattr(src, k) != defaults[k]]
    if wrong:
        raise _error(
            source,
            f"source.{wrong[0]}",
            f"absent for a {src.format} source",
            getattr(src, wrong[0]),
        )


def _default(value: Any, key: str) -> Any:
    return [] if key == "paths" else value


def _output_names(
    config: IngestConfig, columns: dict[str, T.DataType], source: str
) -> dict[str, str]:
    for name in config.rename:
        if name not in columns:
            raise _error(source, f"rename.{name}", f"a rename of {_one_of(columns)}", name)
    output = {name: config.rename.get(name, name) for name in columns}
    seen: dict[str, str] = {}
    for name, target in output.items():
        if target in seen:
            raise _error(
                source,
                f"rename.{name}" if name in config.rename else f"rename.{seen[target]}",
                "a column name not used by another column",
                target,
            )
        seen[target] = name
    return output


def _paths(
    spark: SparkSession, config: IngestConfig, start: dt.date, end: dt.date, source: str
) -> tuple[bool, dict[dt.date | None, list[str]]]:
    patterns = config.source.paths
    if not patterns:
        raise _error(source, "source.paths", "a non-empty list of paths or globs", patterns)
    templated = ["{date}" in p for p in patterns]
    if any(templated) and not all(templated):
        i = templated.index(False)
        raise _error(
            source, f"source.paths[{i}]", "a path with {date}, like the others", patterns[i]
        )
    dates: list[dt.date | None] = (
        [start + dt.timedelta(days=d) for d in range((end - start).days + 1)]
        if all(templated)
        else [None]
    )
    by_date: dict[dt.date | None, list[str]] = {}
    for day in dates:
        expanded = []
        for i, pattern in enumerate(patterns):
            path = pattern if day is None else pattern.replace("{date}", day.isoformat())
            path = path if "://" in path or path.startswith("file:") else os.path.abspath(path)
            if not _matches(spark, path):
                raise _error(
                    source,
                    f"source.paths[{i}]",
                    "a path or glob that matches at least one file",
                    path,
                )
            expanded.append(path)
        by_date[day] = expanded
    return all(templated), by_date


def _matches(spark: SparkSession, path: str) -> bool:
    jvm: Any = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    found = fs.globStatus(hadoop_path)
    return found is not None and len(found) > 0


def _jdbc_connection(config: IngestConfig, source: str) -> dict[str, Any]:
    src = config.source
    if not src.url or not src.url.startswith("jdbc:"):
        raise _error(source, "source.url", "a JDBC URL starting with 'jdbc:'", src.url)
    if "password" in src.url.lower():
        raise ConfigError(
            f"{source}: key 'source.url' must not hold a password: name the environment "
            "variable that holds it in source.password_env."
        )
    if (src.table is None) == (src.query is None):
        raise _error(source, "source.table", "given, or source.query, but not both", src.table)
    if not src.driver:
        raise _error(
            source,
            "source.driver",
            "the JDBC driver's class (e.g. org.postgresql.Driver), whose jar the session has",
            src.driver,
        )
    if not src.password_env:
        raise _error(
            source,
            "source.password_env",
            "the name of the environment variable holding the password",
            src.password_env,
        )
    password = os.environ.get(src.password_env)
    if not password:
        raise ConfigError(
            f"{source}: key 'source.password_env' names the environment variable "
            f"'{src.password_env}', which is not set (or empty): set it to the password."
        )
    if src.num_partitions < 1:
        raise _error(
            source, "source.num_partitions", "an integer of at least 1", src.num_partitions
        )
    if src.fetch_size < 1:
        raise _error(source, "source.fetch_size", "an integer of at least 1", src.fetch_size)
    table = src.table if src.table is not None else f"({src.query}) ingest_source"
    options = {
        "url": src.url,
        "dbtable": table,
        "password": password,
        "fetchsize": str(src.fetch_size),
        # A timestamp without time zone is a UTC wall clock, not one of the JVM's zone.
        "preferTimestampNTZ": "true",
    }
    options["driver"] = src.driver
    if src.user:
        options["user"] = src.user
    return {"jdbc_options": options, "jdbc_label": f"{src.url}#{src.table or 'query'}"}


def _from_clause(config: IngestConfig) -> str:
    src = config.source
    return src.table if src.table is not None else f"({src.query})"


def _jdbc_reads(
    spark: SparkSession,
    config: IngestConfig,
    spec: SourceSpec,
    start: dt.date,
    end: dt.date,
    unit: str | None,
    source: str,
) -> tuple[Column | None, dict[str, str]]:
    """The pushed-down date filter and the partitioning options of a JDBC read."""
    src = config.source
    found = spark.read.format("jdbc").options(**spec.jdbc_options).load()  # columns only
    table = spec.jdbc_label
    require_columns(found, {name: () for name in spec.columns}, table=table)
    kinds = {field.name: field.dataType for field in found.schema.fields}
    time_kind = kinds[spec.time_column]
    low, high = to_micros(start), to_micros(end) + _DAY
    where, condition = _time_filter(spec.time_column, time_kind, low, high, unit)
    if src.partition_column is None:
        if src.num_partitions != 1 or src.lower_bound is not None or src.upper_bound is not None:
            raise _error(source, "source.partition_column", "given for a partitioned read", None)
        return where, {}
    column = src.partition_column
    if column not in kinds:
        raise _error(
            source, "source.partition_column", f"a column of {table} ({', '.join(kinds)})", column
        )
    kind = kinds[column]
    if not isinstance(kind, (T.IntegralType, T.DateType, T.TimestampType)):
        raise _error(
            source,
            "source.partition_column",
            "a numeric, date or timestamp (with time zone) column, which Spark can split "
            f"in ranges; '{column}' is {kind.simpleString()}",
            column,
        )
    if (src.lower_bound is None) != (src.upper_bound is None):
        raise _error(
            source,
            "source.upper_bound",
            "given with source.lower_bound, or neither",
            src.upper_bound,
        )
    if src.lower_bound is not None:
        bounds = (_bound(src.lower_bound), _bound(src.upper_bound))
    else:
        found_bounds = _min_max(spark, spec, _from_clause(config), column, kind, condition)
        if found_bounds is None:
            return where, {}
        bounds = found_bounds
    partitioning = {
        "partitionColumn": column,
        "lowerBound": bounds[0],
        "upperBound": bounds[1],
        "numPartitions": str(src.num_partitions),
    }
    return where, partitioning


def _bound(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def _time_filter(
    column: str, kind: T.DataType, low: int, high: int, unit: str | None
) -> tuple[Column | None, str | None]:
    """``low <= time < high`` (microseconds) as a Spark condition on the raw column (which
    Spark pushes to the database) and as standard SQL for the bounds query."""
    col, quoted = F.col(column), f'"{column}"'
    if isinstance(kind, T.TimestampType):
        lo, hi = _utc_text(low), _utc_text(high)
        return (col >= timestamp_lit(low)) & (col < timestamp_lit(high)), (
            f"{quoted} >= TIMESTAMP WITH TIME ZONE '{lo}+00:00' AND "
            f"{quoted} < TIMESTAMP WITH TIME ZONE '{hi}+00:00'"
        )
    if isinstance(kind, T.TimestampNTZType):
        lo, hi = _utc_text(low), _utc_text(high)
        return (col >= F.expr(f"TIMESTAMP_NTZ'{lo}'")) & (col < F.expr(f"TIMESTAMP_NTZ'{hi}'")), (
            f"{quoted} >= TIMESTAMP '{lo}' AND {quoted} < TIMESTAMP '{hi}'"
        )
    if isinstance(kind, T.DateType):
        lo, hi = _utc_text(low)[:10], _utc_text(high)[:10]
        return (col >= F.expr(f"DATE'{lo}'")) & (col < F.expr(f"DATE'{hi}'")), (
            f"{quoted} >= DATE '{lo}' AND {quoted} < DATE '{hi}'"
        )
    if isinstance(kind, _NUMBERS) and unit is not None:
        per = UNITS[unit]
        lo_n, hi_n = low // per, high // per
        return (col >= F.lit(lo_n)) & (col < F.lit(hi_n)), (
            f"{quoted} >= {lo_n} AND {quoted} < {hi_n}"
        )
    return None, None  # text: parsed after reading, not pushed down


def _utc_text(value: int) -> str:
    moment = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=value)
    return moment.isoformat(sep=" ")


def _min_max(
    spark: SparkSession,
    spec: SourceSpec,
    from_clause: str,
    column: str,
    kind: T.DataType,
    condition: str | None,
) -> tuple[str, str] | None:
    """The partition column's MIN and MAX over the ingested dates: one query in the
    database (None when it has no row)."""
    where = f" WHERE {condition}" if condition else ""
    query = (
        f'(SELECT MIN("{column}") AS lo, MAX("{column}") AS hi '
        f"FROM {from_clause} bounds_source{where}) ingest_bounds"
    )
    options = {**spec.jdbc_options, "dbtable": query}
    frame = spark.read.format("jdbc").options(**options).load()
    if isinstance(kind, T.TimestampType):
        text = [F.date_format(c, "yyyy-MM-dd HH:mm:ss.SSSSSS") for c in ("lo", "hi")]
    else:
        text = [F.col(c).cast("string") for c in ("lo", "hi")]
    row = frame.select(*text).head()
    if row is None or row[0] is None:
        return None
    return str(row[0]), str(row[1])


def _check_table(spark: SparkSession, ref: str, columns: dict[str, str]) -> None:
    """An existing table must have the columns the run writes, with their types."""
    if table_exists(spark, ref):
        read_table(spark, ref, required=columns)
