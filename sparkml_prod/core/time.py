"""Time in the library: every instant is a UTC instant, held as microseconds since the epoch.

Point-in-time rules (see the feature and label modules) compare microseconds, never
wall-clock values, so neither the driver's OS time zone (``TZ``) nor Spark's session time
zone can move a window bound.
"""

from __future__ import annotations

import re

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

__all__ = [
    "TIMESTAMP_TYPES",
    "parse_window",
    "micros",
    "prune_to",
    "spine_time_range",
]

TIMESTAMP_TYPES = ("timestamp", "timestamp_ntz", "date")
_WINDOW = re.compile(r"^([1-9][0-9]*)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_window(window: str, owner: str = "WindowAggregates", param: str = "windows") -> int:
    """Length of a window string such as ``"7d"`` in microseconds.

    Units: ``s`` seconds, ``m`` minutes, ``h`` hours, ``d`` days, ``w`` weeks.
    """
    match = _WINDOW.match(window) if isinstance(window, str) else None
    if match is None:
        raise ValueError(
            f"The '{param}' parameter of {owner} must be a list of windows such as "
            f"'7d', '12h' or '2w' (a positive integer and one of s, m, h, d, w). "
            f"Got {window!r} instead."
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)] * 1_000_000


def micros(col: str | Column) -> Column:
    """Microseconds since the epoch of a timestamp, timestamp_ntz or date column."""
    column = F.col(col) if isinstance(col, str) else col
    return F.unix_micros(column.cast("timestamp"))


def spine_time_range(spine: DataFrame, as_of: str) -> tuple[int | None, int | None]:
    """Smallest and largest as-of of the spine, in microseconds (None for an empty spine)."""
    row = spine.agg(F.min(micros(as_of)), F.max(micros(as_of))).head()
    return (row[0], row[1]) if row is not None else (None, None)


def prune_to(source: DataFrame, timestamp: str, start: int | None, end: int) -> DataFrame:
    """Keep rows with ``start <= time < end`` (microseconds; ``start`` None: no lower bound).

    Bounds on a timestamp column are also given as literals on the raw column, so they
    reach Delta's data skipping and partition filters.
    """
    exact = micros(timestamp) < F.lit(end)
    if start is not None:
        exact = exact & (micros(timestamp) >= F.lit(start))
    if dict(source.dtypes)[timestamp] != "timestamp":
        return source.where(exact)
    bounds = F.col(timestamp) < F.timestamp_micros(F.lit(end))
    if start is not None:
        bounds = bounds & (F.col(timestamp) >= F.timestamp_micros(F.lit(start)))
    return source.where(bounds & exact)
