"""Spines: the ``(entity, as_of)`` rows that features and labels are computed for.

A training spine has one row per active entity and snapshot date; a scoring spine one
row per active entity at a single as-of. "Active" means at least one source event in
``[as_of - lookback, as_of)``: the same point-in-time rule as the features, so a spine
never depends on what happens at or after its as-of.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.tables import read_table
from sparkml_prod.core.time import TIMESTAMP_TYPES, micros, parse_window, prune_to

__all__ = ["active_entity_spine", "as_of_schedule", "as_of_timestamps"]


def as_of_timestamps(dates: Sequence[dt.date | dt.datetime]) -> list[dt.datetime]:
    """As-of instants: a date means midnight UTC at its start."""
    out = []
    for value in dates:
        if isinstance(value, dt.datetime):
            out.append(value)
        else:
            out.append(dt.datetime(value.year, value.month, value.day))
    return sorted(set(out))


def as_of_schedule(start: dt.date, end: dt.date, every: str) -> list[dt.datetime]:
    """As-of instants ``start, start + every, ...`` up to and including ``end`` (UTC).

    Examples
    --------
    >>> [d.day for d in as_of_schedule(dt.date(2024, 1, 1), dt.date(2024, 1, 29), "14d")]
    [1, 15, 29]
    """
    step = dt.timedelta(microseconds=parse_window(every, owner="as_of_schedule", param="every"))
    first = dt.datetime(start.year, start.month, start.day)
    last = dt.datetime(end.year, end.month, end.day)
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

    Returns columns ``(entity_col, as_of_col TIMESTAMP)``, one row per active pair.
    With ``source_version`` the source is read at that Delta version (time travel).

    Examples
    --------
    >>> spine = active_entity_spine(spark, "demo-output/tables/events",  # doctest: +SKIP
    ...                             [dt.date(2024, 5, 1), dt.date(2024, 6, 1)], lookback="90d")
    """
    instants = as_of_timestamps(as_of_dates)
    if not instants:
        raise ValueError("active_entity_spine needs at least one as-of date.")
    window = parse_window(lookback, owner="active_entity_spine", param="lookback")
    events = read_table(spark, source, {timestamp_col: TIMESTAMP_TYPES}, source_version)
    read_table(spark, source, {entity_col: ()}, source_version)
    first = int(instants[0].replace(tzinfo=dt.timezone.utc).timestamp() * 1_000_000)
    last = int(instants[-1].replace(tzinfo=dt.timezone.utc).timestamp() * 1_000_000)
    events = prune_to(events, timestamp_col, first - window, last).where(
        F.col(entity_col).isNotNull()
    )
    dates = spark.createDataFrame([(t,) for t in instants], f"{as_of_col} timestamp")
    t = micros(timestamp_col)
    a = micros(F.col(as_of_col))
    return (
        events.select(entity_col, t.alias("__t"))
        .join(F.broadcast(dates), (F.col("__t") < a) & (F.col("__t") >= a - F.lit(window)))
        .select(entity_col, as_of_col)
        .distinct()
    )
