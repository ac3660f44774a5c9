"""The readers of ``sparkml-prod ingest``: CSV, Parquet and JDBC, malformed records kept.

Each reader returns the source's records as one DataFrame: the configured columns, cast to
their declared types, followed by the bookkeeping columns of :data:`BOOKKEEPING` (the file
a record came from, the ``{date}`` of its path, the record as read, and why it did not
read, if it did not). Nothing is dropped here: :mod:`sparkml_prod.data.ingest` sorts the
records into events, quarantine and rows outside the ingested dates.

CSV is read in Spark's ``PERMISSIVE`` mode with a corrupt-record column: a line with the
wrong number of fields, or a value that does not parse as its column's type, keeps the
line there. Spark needs that column in the read schema (as a nullable string), and
refuses a query of raw CSV files that references nothing but it; the records are used
whole, and persisted once, so neither bites. The corrupt line is parsed again as strings
(``from_csv``) to tell which field failed. Parquet and JDBC columns are read with their
own types and cast with ``try_cast``: a non-null value that does not cast is malformed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

__all__ = [
    "SOURCE_FILE",
    "FILE_DATE",
    "RAW",
    "ERROR",
    "ERROR_KIND",
    "BOOKKEEPING",
    "SourceSpec",
    "read_files",
    "read_jdbc",
]

SOURCE_FILE = "__ingest_source_file"
FILE_DATE = "__ingest_file_date"
RAW = "__ingest_raw"
ERROR = "__ingest_error"
ERROR_KIND = "__ingest_error_kind"
BOOKKEEPING = (SOURCE_FILE, FILE_DATE, RAW, ERROR, ERROR_KIND)
_CORRUPT = "__ingest_corrupt_record"
_EXTRA = "__ingest_extra_fields"
# A quarantined record as JSON keeps its null fields: they are often why it is there.
_JSON = {"ignoreNullFields": "false"}


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A checked source: the columns and their types, and the reader settings.

    ``jdbc_options`` holds the connection settings with the password (never printed).
    """

    format: str
    columns: dict[str, T.DataType]
    time_column: str
    time_format: str | None = None
    csv_options: dict[str, str] = dataclasses.field(default_factory=dict)
    jdbc_options: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)
    jdbc_label: str = ""


def read_files(
    spark: SparkSession, spec: SourceSpec, paths: Sequence[str], file_date: dt.date | None
) -> DataFrame:
    """The records of CSV or Parquet files, ``file_date`` (the ``{date}`` of their paths,
    or None) on each."""
    if spec.format == "csv":
        frame = _read_csv(spark, spec, paths)
    else:
        raw = spark.read.parquet(*paths)
        frame = _cast(raw, spec, F.col("_metadata.file_path"))
    return frame.withColumn(FILE_DATE, F.lit(file_date).cast("date"))


def read_jdbc(
    spark: SparkSession, spec: SourceSpec, where: Column | None, partitioning: dict[str, str]
) -> DataFrame:
    """The records of the JDBC table or query with ``where`` pushed down to the database,
    read in partitions when ``partitioning`` gives Spark's ``partitionColumn``,
    ``lowerBound``, ``upperBound`` and ``numPartitions``."""
    raw = spark.read.format("jdbc").options(**spec.jdbc_options, **partitioning).load()
    if where is not None:
        raw = raw.where(where)
    return _cast(raw, spec, F.lit(spec.jdbc_label)).withColumn(FILE_DATE, F.lit(None).cast("date"))


def _read_csv(spark: SparkSession, spec: SourceSpec, paths: Sequence[str]) -> DataFrame:
    fields = [T.StructField(name, kind) for name, kind in spec.columns.items()]
    schema = T.StructType([*fields, T.StructField(_CORRUPT, T.StringType())])
    options = {
        **spec.csv_options,
        "mode": "PERMISSIVE",
        "columnNameOfCorruptRecord": _CORRUPT,
        # Text without an offset is a UTC wall clock, whatever the session or TZ says.
        "timeZone": "UTC",
    }
    if spec.time_format is not None:
        kind = spec.columns[spec.time_column]
        key = "timestampNTZFormat" if isinstance(kind, T.TimestampNTZType) else "timestampFormat"
        if isinstance(kind, T.DateType):
            key = "dateFormat"
        options[key] = spec.time_format
    read = spark.read.schema(schema).options(**options).csv(list(paths))
    corrupt = F.col(_CORRUPT)
    # The corrupt line again, every field a string, plus one column that catches a field
    # count other than the schema's.
    strings = ", ".join(f"f{i} STRING" for i in range(len(fields))) + f", {_EXTRA} STRING"
    reparse_options: dict[str, str] = {
        key: options[key] for key in ("sep", "quote", "escape") if key in options
    }
    tokens = F.from_csv(
        corrupt,
        strings,
        {**reparse_options, "mode": "PERMISSIVE", "columnNameOfCorruptRecord": _EXTRA},
    )
    unparsed = [
        F.when(
            tokens[f"f{i}"].isNotNull() & F.col(field.name).isNull(),
            F.concat(
                F.lit(f"{field.name}: '"),
                tokens[f"f{i}"],
                F.lit(f"' is not a {_type_text(field.dataType, spec, field.name)}"),
            ),
        )
        for i, field in enumerate(fields)
    ]
    wrong_count = tokens[_EXTRA].isNotNull()
    error = (
        F.when(corrupt.isNull(), F.lit(None))
        .when(wrong_count, F.lit(f"wrong number of fields: expected {len(fields)}"))
        .otherwise(F.coalesce(_joined(unparsed), F.lit("malformed CSV record")))
    )
    error_kind = (
        F.when(corrupt.isNull(), F.lit(None))
        .when(wrong_count, F.lit("wrong field count"))
        .otherwise(F.lit("unparsable value"))
    )
    return read.select(
        *[F.col(field.name) for field in fields],
        F.col("_metadata.file_path").alias(SOURCE_FILE),
        F.coalesce(corrupt, F.to_json(F.struct(*[f.name for f in fields]), _JSON)).alias(RAW),
        error.alias(ERROR),
        error_kind.alias(ERROR_KIND),
    )


def _cast(raw: DataFrame, spec: SourceSpec, source_file: Column) -> DataFrame:
    """The configured columns of a typed source cast to their declared types; a non-null
    value that does not cast is the record's error."""
    found = {field.name: field.dataType for field in raw.schema.fields}
    typed, failures = [], []
    for name, kind in spec.columns.items():
        column = F.col(name)
        cast = column if found[name] == kind else column.try_cast(kind)
        typed.append(cast.alias(name))
        if found[name] != kind:
            failures.append(
                F.when(
                    column.isNotNull() & cast.isNull(),
                    F.concat(
                        F.lit(f"{name}: '"),
                        column.cast("string"),
                        F.lit(f"' ({found[name].simpleString()}) is not a {kind.simpleString()}"),
                    ),
                )
            )
    error = _joined(failures) if failures else F.lit(None).cast("string")
    return raw.select(
        *typed,
        source_file.alias(SOURCE_FILE),
        F.to_json(F.struct(*spec.columns), _JSON).alias(RAW),
        error.alias(ERROR),
        F.when(error.isNotNull(), F.lit("unparsable value")).alias(ERROR_KIND),
    )


def _joined(messages: list[Column]) -> Column:
    """The non-null messages joined with '; ', or null when there is none."""
    return F.nullif(F.concat_ws("; ", *messages), F.lit(""))


def _type_text(kind: T.DataType, spec: SourceSpec, name: str) -> str:
    text = kind.simpleString()
    if name == spec.time_column and spec.time_format is not None:
        return f"{text} (format {spec.time_format})"
    return text
