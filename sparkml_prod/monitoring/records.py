"""One monitoring measurement: what every monitoring module returns and the history stores.

A :class:`MetricRecord` is one row of the monitoring history table: a metric (``psi``,
``missing_rate``, ``row_count``, ``roc_auc``, ...) of one feature (or of the score, or of
nothing) for one scored ``as_of`` date, model version and variant, with the thresholds it
was judged by and its status.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

__all__ = ["STATUSES", "MetricRecord", "status_of"]

STATUSES = ("ok", "warn", "alert", "pending")


@dataclass(frozen=True)
class MetricRecord:
    """One measurement of a monitoring run.

    ``feature`` is the feature name, ``"score"`` for the model's score, or None for a
    metric of the whole run (row count, AUC). ``value`` is None while ``status`` is
    ``pending`` (labels not complete yet); ``detail`` says why, or holds a small JSON
    payload such as an interval (``{"low": ..., "high": ...}``) or the date a pending
    metric becomes evaluable.
    """

    as_of: dt.date
    model_name: str
    model_version: int
    variant: str
    metric: str
    feature: str | None
    value: float | None
    warn: float | None
    alert: float | None
    status: str
    detail: str | None = None

    def __post_init__(self) -> None:
        # numpy and pandas numbers become plain floats, so every record writes to Spark
        for name in ("value", "warn", "alert"):
            number = getattr(self, name)
            if number is not None:
                object.__setattr__(self, name, float(number))
        object.__setattr__(self, "model_version", int(self.model_version))
        if self.status not in STATUSES:
            raise ValueError(
                f"MetricRecord.status must be one of {', '.join(STATUSES)}; got {self.status!r}."
            )


def status_of(value: float, warn: float | None, alert: float | None) -> str:
    """``alert`` at or above ``alert``, ``warn`` at or above ``warn``, else ``ok``.

    Examples
    --------
    >>> status_of(0.12, 0.1, 0.25), status_of(0.3, 0.1, 0.25), status_of(0.05, 0.1, 0.25)
    ('warn', 'alert', 'ok')
    """
    if alert is not None and value >= alert:
        return "alert"
    if warn is not None and value >= warn:
        return "warn"
    return "ok"
