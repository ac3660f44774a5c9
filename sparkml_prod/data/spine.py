"""Spines: the ``(entity, as_of)`` rows that features and labels are computed for.

A training spine has one row per active entity and snapshot date; a scoring spine one
row per active entity at a single as-of. "Active" means at least one source event in
``[as_of - lookback, as_of)``: the same point-in-time rule as the features, so a spine
never depends on what happens at or after its as-of.

As-of instants follow the library's UTC rule (:mod:`sparkml_prod.core.time`): a date is
midnight UTC at its start, a naive datetime is UTC, and the instants returned are naive
UTC datetimes. They reach Spark as epoch microseconds, so ``TZ`` cannot move them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.tables import read_table
from sparkml_prod.core.time import (
    TIMESTAMP_TYPES,
    micros,
    naive_utc,
    parse_window,
    prune_to,
    require_utc_session,
    to_micros,
)

__all__ = ["active_entity_spine", "as_of_schedule", "as_of_timestamps"]


def as_of_timestamps(dates: Sequence[dt.date | dt.datetime]) -> list[dt.datetime]:
    """Sorted, distinct as-of instants as naive UTC datetimes.

    A date means midnight UTC at its start, a naive datetime is UTC, an aware one is
    converted to UTC (so naive and aware values of the same instant are one as-of).
    """
    return sorted({naive_utc(value) for value in dates})


def as_of_schedule(start: dt.date, end: dt.date, every: str) -> list[dt.datetime]:
    """As-of instants ``start, start + every, ...`` up to and including ``end``.

    Each is a naive UTC datetime; ``start`` and ``end`` are dates (midnight UTC) or
    instants read by the UTC rule. Steps are exact durations: no daylight-saving shifts.

    Examples
    --------
    >>> [d.day for d in as_of_schedule(dt.date(2024, 1, 1), dt.date(2024, 1, 29), "14d")]
    [1, 15, 29]
    """
    step = dt.timedelta(microseconds=parse_window(every, owner="as_of_schedule", param="every"))
    first, last = naive_utc(start), naive_utc(end)
    if last < first:
        raise ValueError(f"as_of_schedule: end {end} is before start {start}.")
    out = []
    while first <= last:
        out.append(first)
        first += step
    return out


def active_entity_spine(
    spark: SparkSession,
    source: str,
    as_of_dates: Sequence[dt.date | dt.datetime],
    lookback: str = "90d",
    entity_col: str = "user_id",
    timestamp_col: str = "event_time",
    as_of_col: str = "as_of",
    source_version: int | None = None,
) -> DataFrame:
    """Every entity with an event in ``[as_of - lookback, as_of)``, for each as-of.

    Returns columns ``(entity_col, as_of_col TIMESTAMP)``, one row per active pair. Each
    as-of is the exact UTC instant of ``as_of_dates`` (a date: midnight UTC), whatever the
    driver's ``TZ``; a session time zone other than UTC is refused (``ConfigError``).
    With ``source_version`` the source is read at that Delta version (time travel).

    Examples
    --------
    >>> spine = active_entity_spine(spark, "demo-output/tables/events",  # doctest: +SKIP
    ...                             [dt.date(2024, 5, 1), dt.date(2024, 6, 1)], lookback="90d")
    """
    require_utc_session(spark, "active_entity_spine")
    instants = [to_micros(t) for t in as_of_timestamps(as_of_dates)]
    if not instants:
        raise ValueError("active_entity_spine needs at least one as-of date.")
    window = parse_window(lookback, owner="active_entity_spine", param="lookback")
    events = read_table(spark, source, {timestamp_col: TIMESTAMP_TYPES}, source_version)
    read_table(spark, source, {entity_col: ()}, source_version)
    events = prune_to(events, timestamp_col, instants[0] - window, instants[-1]).where(
        F.col(entity_col).isNotNull()
    )
    # Epoch microseconds, not Python datetimes: pyspark would read those in the OS zone.
    dates = spark.createDataFrame([(t,) for t in instants], "__m long").select(
        F.timestamp_micros("__m").alias(as_of_col)
    )
    t = micros(timestamp_col)
    a = micros(F.col(as_of_col))
    return (
        events.select(entity_col, t.alias("__t"))
        .join(F.broadcast(dates), (F.col("__t") < a) & (F.col("__t") >= a - F.lit(window)))
        .select(entity_col, as_of_col)
        .distinct()
    )
