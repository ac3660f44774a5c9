"""``sparkml-prod ingest``: events from CSV, Parquet or JDBC into the Delta events table.

One run ingests the UTC dates ``start`` to ``end``, both included. Every record the source
gives for them ends in exactly one of three places, and the run reports each count:

* **events**: well-formed records whose event time lies in ``[start, end + 1 day)`` UTC
  (with ``{date}`` in the source paths: in the day of the file's date) go to
  ``events_table``, whose columns are the source's (renamed by ``rename``) with the event
  time as a UTC ``timestamp``;
* **quarantine**: malformed records (CSV: a wrong number of fields, a value that does not
  parse as its type; any source: a value that does not cast, an event time that does not
  parse, a null in a ``required`` column or in the event time) go to
  ``quarantine_table`` as ``(ingest_date, run_id, source_file, reason, raw_record)``;
  ``raw_record`` is the CSV line as read, or the record as JSON; ``ingest_date`` is the
  file's ``{date}``, else the event's date, else (no event time) the run's first date;
* **outside**: records whose event time lies outside the ingested dates are not written
  (they are ingested with their own date). A JDBC source is asked only for the ingested
  dates (the filter is pushed down; not for a text event time), so it has none, and a
  row with a null event time, which belongs to no date, is not read.

Idempotent by date: the events table's rows in ``[start, end + 1 day)`` and the
quarantine table's rows of those ingest dates are each replaced in one Delta commit
(``replaceWhere``), so a rerun leaves exactly one copy and other dates are untouched. The
two tables are two commits: a run that fails between them is repaired by its rerun.

Before any data is read, the whole config is checked (:mod:`sparkml_prod.data.ingest_plan`).
The time rule is the library's: every instant is UTC; text and ``timestamp_ntz`` values
without an offset are read as UTC, whatever the driver's ``TZ``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.config import IngestConfig
from sparkml_prod.core.errors import EmptyResultError
from sparkml_prod.core.tables import sql_literal, table_exists, write_table
from sparkml_prod.core.time import require_utc_session, timestamp_lit, to_micros, utc_now
from sparkml_prod.data.ingest_plan import (
    QUARANTINE_COLUMNS,
    IngestPlan,
    event_instant,
    plan_ingest,
)
from sparkml_prod.data.ingest_sources import (
    ERROR,
    ERROR_KIND,
    FILE_DATE,
    RAW,
    SOURCE_FILE,
    read_files,
    read_jdbc,
)

__all__ = ["IngestRun", "run_ingest", "ingest_dates"]

_INSTANT = "__ingest_instant"
_STATUS = "__ingest_status"
_DAY = 86_400_000_000


@dataclasses.dataclass(frozen=True)
class IngestRun:
    """What one ingest run did.

    ``read``: records the source gave; ``written``: rows now in the events table for the
    dates; ``quarantined``: malformed records written to the quarantine table, by kind
    in ``reasons``; ``outside``: records of other dates, not written. For JDBC,
    ``partitions`` is the number of partitions read and ``bounds`` the partition column's
    ``(lower, upper)`` used (None when read in one partition).
    """

    run_id: str
    start: dt.date
    end: dt.date
    read: int
    written: int
    quarantined: int
    outside: int
    reasons: dict[str, int]
    events_table: str
    quarantine_table: str
    partitions: int | None
    bounds: tuple[str, str] | None
    seconds: float


def ingest_dates(start: dt.date, end: dt.date) -> list[dt.date]:
    """The UTC dates from ``start`` to ``end``, both included."""
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def run_ingest(
    spark: SparkSession,
    config: IngestConfig,
    start: dt.date,
    end: dt.date | None = None,
    run_id: str | None = None,
    source: str = "<config>",
) -> IngestRun:
    """Ingest the UTC dates ``start`` .. ``end`` (both included; default: ``start`` only).

    ``source`` names the config in error messages. See the module docstring for where
    each record goes and the guarantees.

    Raises
    ------
    ConfigError
        A config value that cannot work, before any data is read.
    SchemaError
        A source or an existing table without a configured column, or with another type.
    EmptyResultError
        The source gave no record for the dates (nothing is replaced).

    Examples
    --------
    >>> config = load_config("conf/ingest.yaml", IngestConfig)  # doctest: +SKIP
    >>> run_ingest(spark, config, dt.date(2024, 3, 10)).written  # doctest: +SKIP
    1234
    """
    started = time.perf_counter()
    end = start if end is None else end
    require_utc_session(spark, "run_ingest")
    plan = plan_ingest(spark, config, start, end, source)
    run_id = run_id or f"ingest-{utc_now():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    records, partitions, bounds = _read(spark, plan, start, end)
    classified = _classify(records, plan, start, end).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = {
            (row[_STATUS], row[ERROR_KIND]): row["n"]
            for row in classified.groupBy(_STATUS, ERROR_KIND)
            .agg(F.count("*").alias("n"))
            .collect()
        }
        total = sum(counts.values())
        if total == 0 and not config.allow_empty:
            raise EmptyResultError(
                f"Ingest of {start} .. {end} into '{config.events_table}': the source gave no "
                "record for these dates; nothing was replaced. Check the source paths or "
                "query, or set allow_empty: true to empty these dates."
            )
        _replace_events(classified, plan, start, end)
        _replace_quarantine(classified, plan, start, end, run_id)
    finally:
        classified.unpersist()
    reasons = {kind: n for (status, kind), n in sorted(counts.items()) if status == "quarantine"}
    return IngestRun(
        run_id=run_id,
        start=start,
        end=end,
        read=total,
        written=counts.get(("event", None), 0),
        quarantined=sum(reasons.values()),
        outside=sum(n for (status, _), n in counts.items() if status == "outside"),
        reasons=reasons,
        events_table=config.events_table,
        quarantine_table=config.quarantine_table,
        partitions=partitions,
        bounds=bounds,
        seconds=time.perf_counter() - started,
    )


def _read(
    spark: SparkSession, plan: IngestPlan, start: dt.date, end: dt.date
) -> tuple[DataFrame, int | None, tuple[str, str] | None]:
    if plan.spec.format == "jdbc":
        frame = read_jdbc(spark, plan.spec, plan.jdbc_where, plan.jdbc_partitioning)
        bounds = None
        if plan.jdbc_partitioning:
            bounds = (plan.jdbc_partitioning["lowerBound"], plan.jdbc_partitioning["upperBound"])
        return frame, frame.rdd.getNumPartitions(), bounds
    frames = [
        read_files(spark, plan.spec, paths, file_date) for file_date, paths in plan.paths.items()
    ]
    frame = frames[0]
    for more in frames[1:]:
        frame = frame.unionByName(more)
    return frame, None, None


def _classify(records: DataFrame, plan: IngestPlan, start: dt.date, end: dt.date) -> DataFrame:
    """Each record with its UTC instant and its status: event, quarantine or outside."""
    time_column = plan.spec.time_column
    instant = event_instant(plan)
    missing_time = F.col(time_column).isNull()
    time_error = F.when(
        ~missing_time & instant.isNull(),
        F.concat(
            F.lit(f"{time_column}: '"),
            F.col(time_column).cast("string"),
            F.lit(f"' is not {plan.time_text}"),
        ),
    )
    nulls = [F.when(F.col(name).isNull(), F.lit(name)) for name in [time_column, *plan.required]]
    null_error = F.nullif(F.concat_ws(", ", *nulls), F.lit(""))
    error = F.coalesce(
        F.col(ERROR), time_error, F.concat(F.lit("null in required column(s) "), null_error)
    )
    kind = F.coalesce(
        F.col(ERROR_KIND),
        F.when(time_error.isNotNull(), F.lit("unparsable event time")),
        F.when(null_error.isNotNull(), F.lit("null in a required column")),
    )
    if plan.templated:
        # A file's records belong to its date: a rerun of that date reads the same file.
        low = F.unix_micros(F.col(FILE_DATE).cast("timestamp"))
        inside = (F.unix_micros(instant) >= low) & (F.unix_micros(instant) < low + F.lit(_DAY))
    else:
        inside = (instant >= timestamp_lit(start)) & (
            instant < timestamp_lit(to_micros(end) + _DAY)
        )
    status = (
        F.when(instant.isNotNull() & ~inside, F.lit("outside"))
        .when(error.isNotNull(), F.lit("quarantine"))
        .otherwise(F.lit("event"))
    )
    return records.withColumns({_INSTANT: instant, ERROR: error, ERROR_KIND: kind, _STATUS: status})


def _date_range(column: str, start: dt.date, end: dt.date) -> str:
    return (
        f"`{column}` >= {sql_literal(dt.datetime(start.year, start.month, start.day))} AND "
        f"`{column}` < {sql_literal(dt.datetime(end.year, end.month, end.day) + dt.timedelta(1))}"
    )


def _replace_events(classified: DataFrame, plan: IngestPlan, start: dt.date, end: dt.date) -> None:
    events = classified.where(F.col(_STATUS) == "event").select(
        *[
            # No source metadata (a JDBC column's) is carried into the events table.
            (F.col(_INSTANT) if name == plan.spec.time_column else F.col(name)).alias(
                output, metadata={}
            )
            for name, output in plan.output_names.items()
        ]
    )
    _replace(events, plan.events_table, _date_range(plan.output_time_column, start, end), ())


def _replace_quarantine(
    classified: DataFrame, plan: IngestPlan, start: dt.date, end: dt.date, run_id: str
) -> None:
    ingest_date = F.coalesce(F.col(FILE_DATE), F.to_date(F.col(_INSTANT)), F.lit(start))
    quarantine = classified.where(F.col(_STATUS) == "quarantine").select(
        ingest_date.alias("ingest_date"),
        F.lit(run_id).alias("run_id"),
        F.col(SOURCE_FILE).alias("source_file"),
        F.col(ERROR).alias("reason"),
        F.col(RAW).alias("raw_record"),
    )
    assert list(quarantine.columns) == list(QUARANTINE_COLUMNS)
    predicate = f"`ingest_date` >= {sql_literal(start)} AND `ingest_date` <= {sql_literal(end)}"
    _replace(quarantine, plan.quarantine_table, predicate, ("ingest_date",))


def _replace(frame: DataFrame, ref: str, predicate: str, partition_by: tuple[str, ...]) -> None:
    """Replace the rows matching ``predicate`` with ``frame`` in one Delta commit (Delta
    refuses a row of ``frame`` outside it), creating the table on the first run."""
    if table_exists(frame.sparkSession, ref):
        write_table(frame, ref, mode="overwrite", options={"replaceWhere": predicate})
    else:
        write_table(frame, ref, mode="errorifexists", partition_by=partition_by)
