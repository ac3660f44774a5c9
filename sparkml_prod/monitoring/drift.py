"""Drift of a scoring run against the model's reference profile: PSI, missing rates, rows.

After every scoring run, :func:`measure_drift` puts each scored row of every feature and
of the score into the reference profile's frozen bins
(:class:`~sparkml_prod.monitoring.profile.ColumnProfile`) and counts the rows per
(column, bin) in ONE Spark job over the scored rows, whatever the number of columns.
From those counts it returns :class:`~sparkml_prod.monitoring.records.MetricRecord`\\ s:

* ``psi`` per feature and for the score (``feature="score"``): the population stability
  index over all bins, the missing bin included (see :func:`psi`);
* ``missing_rate_change`` per feature and for the score: ``|actual - reference|`` of the
  missing rate, in rate points (0.05 is five points), ``detail`` holding both rates;
* ``row_count`` (``feature=None``), ``detail`` holding the reference's row count.

Statuses come from :class:`DriftThresholds` through
:func:`~sparkml_prod.monitoring.records.status_of`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparkml_prod.core.errors import EmptyResultError
from sparkml_prod.core.tables import NUMERIC, require_columns
from sparkml_prod.monitoring.profile import (
    CATEGORICAL_TYPES,
    ColumnProfile,
    ReferenceProfile,
    column_of,
    single_pass_aggregates,
)
from sparkml_prod.monitoring.records import MetricRecord, status_of

__all__ = ["DEFAULT_EPSILON", "DriftResult", "DriftThresholds", "measure_drift", "psi"]

DEFAULT_EPSILON = 1e-4


@dataclass(frozen=True)
class DriftThresholds:
    """Warn and alert levels of PSI and of the missing-rate change (at or above: status).

    Examples
    --------
    >>> DriftThresholds(psi_alert=0.3).psi_warn
    0.1
    """

    psi_warn: float = 0.1
    psi_alert: float = 0.25
    missing_rate_warn: float = 0.05
    missing_rate_alert: float = 0.2

    def __post_init__(self) -> None:
        for name in ("psi_warn", "psi_alert", "missing_rate_warn", "missing_rate_alert"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(
                    f"The '{name}' parameter of DriftThresholds must be a finite number >= 0. "
                    f"Got {value!r} instead."
                )
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"The '{name}' parameter of DriftThresholds must be a finite number >= 0. "
                    f"Got {value!r} instead."
                )
        for metric in ("psi", "missing_rate"):
            warn, alert = getattr(self, f"{metric}_warn"), getattr(self, f"{metric}_alert")
            if warn > alert:
                raise ValueError(
                    f"The '{metric}_warn' parameter of DriftThresholds must not exceed "
                    f"'{metric}_alert'. Got {warn!r} > {alert!r} instead."
                )


@dataclass(frozen=True)
class DriftResult:
    """The records of one drift measurement and the actual share of every bin.

    ``shares[name]`` (features) and ``score_shares`` line up with the profile's
    ``ColumnProfile.labels`` and ``expected``: the dashboard plots them per date.
    """

    records: list[MetricRecord]
    row_count: int
    shares: dict[str, tuple[float, ...]] = field(default_factory=dict)
    score_shares: tuple[float, ...] | None = None


def psi(
    actual: Sequence[float], expected: Sequence[float], epsilon: float = DEFAULT_EPSILON
) -> float:
    """Population stability index of actual against expected shares of the same bins.

    ``PSI = sum_b (a_b - e_b) * ln(a_b / e_b)`` over every bin ``b`` (missing, ``__other__``
    and ``__unseen__`` bins included), where a share that is exactly 0, on either side, is
    replaced by ``epsilon`` in both the difference and the logarithm (and only then; the
    other shares are not renormalised). A bin empty on both sides adds 0. The sum is
    :func:`math.fsum` of the terms in bin order.

    Examples
    --------
    >>> round(psi([0.5, 0.5, 0.0], [0.5, 0.4, 0.1]), 6)
    0.712399
    """
    if len(actual) != len(expected):
        raise ValueError(
            f"psi needs shares of the same bins; got {len(actual)} and {len(expected)}."
        )
    terms = []
    for a, e in zip(actual, expected, strict=True):
        a, e = a or epsilon, e or epsilon
        terms.append((a - e) * math.log(a / e))
    return math.fsum(terms)


def measure_drift(
    scored: DataFrame,
    profile: ReferenceProfile,
    *,
    as_of: dt.date,
    model_name: str,
    model_version: int,
    variant: str,
    thresholds: DriftThresholds = DriftThresholds(),  # noqa: B008 (frozen, immutable)
    epsilon: float = DEFAULT_EPSILON,
    table: str = "scored rows",
) -> DriftResult:
    """PSI, missing-rate change and row count of a scoring run, from one Spark job.

    Parameters
    ----------
    scored : DataFrame
        The run's scored rows: every feature of ``profile`` and its score column.
    profile : ReferenceProfile
        The model card's reference profile (its bins are used as they are).
    as_of, model_name, model_version, variant
        Copied into every record.
    thresholds : DriftThresholds
        PSI warn 0.1 / alert 0.25, missing-rate change warn 0.05 / alert 0.2 by default.
    epsilon : float
        Stands in for a zero share in :func:`psi`.
    table : str
        The name of ``scored`` in error messages.

    Returns
    -------
    DriftResult
        ``records``: ``row_count``, then ``psi`` and ``missing_rate_change`` per feature in
        profile order, then the score's; the actual shares per bin.

    Raises
    ------
    SchemaError
        A profiled column missing from ``scored`` or of the wrong type (before any job).
    EmptyResultError
        ``scored`` has no rows.

    Examples
    --------
    >>> result = measure_drift(scored, card_profile, as_of=dt.date(2024, 3, 1),
    ...                        model_name="churn", model_version=3, variant="champion")
    >>> [(r.metric, r.feature, r.status) for r in result.records][:2]
    [('row_count', None, 'ok'), ('psi', 'purchases_30d', 'ok')]
    """
    if not isinstance(thresholds, DriftThresholds):
        raise ValueError(
            "The 'thresholds' parameter of measure_drift must be a DriftThresholds. "
            f"Got {thresholds!r} instead."
        )
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < 1:
        raise ValueError(
            f"The 'epsilon' parameter of measure_drift must be a number in (0, 1). "
            f"Got {epsilon!r} instead."
        )
    columns = [*profile.features, *([profile.score] if profile.score is not None else [])]
    require_columns(scored, {c.name: _accepted(c) for c in columns}, table=table)

    frame = scored.select(
        *(c.bin_of(column_of(c.name)).alias(f"b{j}") for j, c in enumerate(columns))
    )
    aggregates = [F.count(F.lit(1)).alias("n")]
    for j, column in enumerate(columns):
        bin_ = F.col(f"b{j}")
        aggregates += [
            F.count_if(bin_ == k).alias(f"b{j}_{k}") for k in range(len(column.expected))
        ]
    counts = single_pass_aggregates(frame, aggregates)
    rows = int(counts["n"])
    if rows == 0:
        raise EmptyResultError(
            f"Table '{table}' has no rows: there is no drift to measure for {model_name} "
            f"version {model_version} ({variant}) at {as_of}. Check that the scoring run for "
            "that date wrote its partition before monitoring it."
        )

    def record(
        metric: str,
        feature: str | None,
        value: float,
        warn: float | None,
        alert: float | None,
        detail: str | None = None,
    ) -> MetricRecord:
        return MetricRecord(
            as_of=as_of,
            model_name=model_name,
            model_version=model_version,
            variant=variant,
            metric=metric,
            feature=feature,
            value=value,
            warn=warn,
            alert=alert,
            status=status_of(value, warn, alert),
            detail=detail,
        )

    records = [
        record(
            "row_count", None, float(rows), None, None, json.dumps({"reference": profile.row_count})
        )
    ]
    shares: dict[str, tuple[float, ...]] = {}
    score_shares = None
    for j, column in enumerate(columns):
        actual = tuple(counts[f"b{j}_{k}"] / rows for k in range(len(column.expected)))
        is_score = profile.score is not None and j == len(columns) - 1
        label = "score" if is_score else column.name
        if is_score:
            score_shares = actual
        else:
            shares[column.name] = actual
        change = abs(actual[-1] - column.missing_rate)
        records += [
            record(
                "psi",
                label,
                psi(actual, column.expected, epsilon),
                thresholds.psi_warn,
                thresholds.psi_alert,
            ),
            record(
                "missing_rate_change",
                label,
                change,
                thresholds.missing_rate_warn,
                thresholds.missing_rate_alert,
                json.dumps({"actual": actual[-1], "reference": column.missing_rate}),
            ),
        ]
    return DriftResult(records, rows, shares, score_shares)


def _accepted(column: ColumnProfile) -> tuple[str, ...]:
    """Column types ``scored`` may have for a profiled column."""
    if column.kind == "numeric":
        return NUMERIC
    if not (*column.categories, *column.other_categories):
        return CATEGORICAL_TYPES
    return ("string",) if column.string_categories else CATEGORICAL_TYPES[:-1]
