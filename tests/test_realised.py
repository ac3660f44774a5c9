"""Realised performance of a past scoring date: metrics against scikit-learn, DeLong's
interval against an independent numpy reference, pending dates, labels from the rule."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import (
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)
from scipy.stats import norm, rankdata
from sklearn.metrics import log_loss, roc_auc_score

from sparkml_prod.core.time import timestamp_lit
from sparkml_prod.monitoring.realised import (
    REALISED_METRICS,
    auc_difference,
    realised_labels,
    realised_performance,
)
from sparkml_prod.monitoring.records import MetricRecord
from sparkml_prod.registry.card import LabelRule

AS_OF = dt.date(2024, 6, 1)
OTHER_DAY = dt.date(2024, 5, 1)
SCORES = StructType(
    [
        StructField("user_id", LongType()),
        StructField("as_of", DateType()),
        StructField("score", DoubleType()),
        StructField("model_name", StringType()),
        StructField("model_version", IntegerType()),
        StructField("variant", StringType()),
    ]
)
LABELS = StructType(
    [
        StructField("user_id", LongType()),
        StructField("as_of", DateType()),
        StructField("label", DoubleType()),
    ]
)


def _variant(rng: np.random.Generator, n: int, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores rounded to 3 decimals (few distinct values: binning is exact)."""
    signal = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(strength * signal - 1.0)))).astype(float)
    noisy = signal + rng.normal(scale=1.0, size=n)
    scores = np.clip(np.round(1 / (1 + np.exp(-(noisy - 1.0))), 3), 0.001, 0.999)
    return labels, scores


def _delong(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """DeLong's AUC and variance from raw scores, by midranks (Sun & Xu 2014)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    m, k = len(pos), len(neg)
    ranks = rankdata(np.concatenate([pos, neg]))
    v10 = (ranks[:m] - rankdata(pos)) / k  # share of negatives below each positive
    v01 = 1.0 - (ranks[m:] - rankdata(neg)) / m  # share of positives above each negative
    auc = v10.mean()
    return auc, v10.var(ddof=1) / m + v01.var(ddof=1) / k


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    return {"champion": _variant(rng, 1500, 1.2), "challenger": _variant(rng, 1000, 1.8)}


@pytest.fixture(scope="module")
def frames(spark: SparkSession, data: dict) -> tuple[DataFrame, DataFrame]:
    scores, labels, user = [], [], 0
    for variant, (y, s) in data.items():
        version = 3 if variant == "champion" else 4
        for label, score in zip(y.tolist(), s.tolist(), strict=True):
            user += 1
            scores.append((user, AS_OF, score, "churn", version, variant))
            labels.append((user, AS_OF, label))
            # Another date's rows, which must be ignored: wrong scores, flipped labels.
            scores.append((user, OTHER_DAY, 0.5, "churn", 1, variant))
            labels.append((user, OTHER_DAY, 1.0 - label))
    # A scored user without a label row: left out, counted in the coverage.
    scores.append((user + 1, AS_OF, 0.9, "churn", 3, "champion"))
    return spark.createDataFrame(scores, SCORES), spark.createDataFrame(labels, LABELS)


@pytest.fixture(scope="module")
def records(frames: tuple[DataFrame, DataFrame]) -> dict[tuple[str, str], MetricRecord]:
    scores, labels = frames
    out = realised_performance(
        scores,
        labels,
        as_of=AS_OF,
        horizon="30d",
        complete_until=dt.datetime(2024, 7, 1),
        model_name="churn",
    )
    assert [(r.variant, r.metric) for r in out] == [
        *[("challenger", m) for m in REALISED_METRICS],
        *[("champion", m) for m in REALISED_METRICS],
        ("challenger", "auc_difference"),
    ]
    assert {(r.as_of, r.model_name, r.feature, r.status) for r in out} == {
        (AS_OF, "churn", None, "ok")
    }
    return {(r.variant, r.metric): r for r in out}


def test_metrics_match_sklearn(records: dict, data: dict) -> None:
    for variant, version in (("champion", 3), ("challenger", 4)):
        y, s = data[variant]
        assert records[variant, "roc_auc"].model_version == version
        assert records[variant, "roc_auc"].value == pytest.approx(roc_auc_score(y, s), abs=1e-3)
        assert records[variant, "log_loss"].value == pytest.approx(log_loss(y, s), abs=1e-9)
        assert records[variant, "n"].value == len(y)
        assert records[variant, "base_rate"].value == y.mean()


def test_coverage_counts_unlabelled_users(records: dict) -> None:
    assert json.loads(records["champion", "n"].detail) == {"scored": 1501, "labelled": 1500}
    assert json.loads(records["challenger", "n"].detail) == {"scored": 1000, "labelled": 1000}


def _deciles(y: np.ndarray, s: np.ndarray) -> list[tuple[float, float, float]]:
    """Rows, positives and score sum of each decile of users by descending score; the
    users of a tied score straddling a boundary are split in proportion (the rule)."""
    values = np.unique(s)[::-1]
    sizes = np.array([np.sum(s == v) for v in values], dtype=float)
    pos = np.array([y[s == v].sum() for v in values])
    end = np.cumsum(sizes)
    out = []
    for d in range(10):
        low, high = d * len(y) / 10, (d + 1) * len(y) / 10
        share = np.clip(np.minimum(end, high) - np.maximum(end - sizes, low), 0, None) / sizes
        out.append((float(share @ sizes), float(share @ pos), float(share @ (sizes * values))))
    return out


def test_calibration_and_lift_by_decile(records: dict, data: dict) -> None:
    y, s = data["challenger"]
    expected = _deciles(y, s)
    n, positives, _ = expected[0]
    lift = positives / n / y.mean()
    assert records["challenger", "top_decile_lift"].value == pytest.approx(lift, abs=1e-9)
    deciles = json.loads(records["challenger", "calibration"].detail)["deciles"]
    assert [d["decile"] for d in deciles] == list(range(1, 11))
    ece = 0.0
    for got, (n, positives, score_sum) in zip(deciles, expected, strict=True):
        assert got["n"] == pytest.approx(100.0, abs=1e-9) and n == pytest.approx(100.0)
        assert got["mean_score"] == pytest.approx(score_sum / n, abs=1e-9)
        assert got["rate"] == pytest.approx(positives / n, abs=1e-9)
        ece += n / len(y) * abs(score_sum / n - positives / n)
    assert records["challenger", "calibration"].value == pytest.approx(ece, abs=1e-9)


def test_auc_difference_matches_numpy_delong(records: dict, data: dict) -> None:
    auc_1, var_1 = _delong(*data["challenger"])
    auc_0, var_0 = _delong(*data["champion"])
    assert auc_1 == pytest.approx(roc_auc_score(*data["challenger"]), abs=1e-12)
    diff, half = auc_1 - auc_0, norm.ppf(0.975) * np.sqrt(var_1 + var_0)
    record = records["challenger", "auc_difference"]
    assert record.model_version == 4
    assert record.value == pytest.approx(diff, abs=1e-9)
    detail = json.loads(record.detail)
    assert detail == {
        "low": pytest.approx(diff - half, abs=1e-9),
        "high": pytest.approx(diff + half, abs=1e-9),
        "significant": bool(diff - half > 0 or diff + half < 0),
        "level": 0.95,
        "champion_version": 3,
    }
    half_1 = norm.ppf(0.975) * np.sqrt(var_1)
    assert json.loads(records["challenger", "roc_auc"].detail) == {
        "delong": pytest.approx(var_1, rel=1e-9),
        "low": pytest.approx(auc_1 - half_1, abs=1e-9),
        "high": pytest.approx(auc_1 + half_1, abs=1e-9),
        "level": 0.95,
    }


def test_auc_difference_level() -> None:
    got = auc_difference((0.80, 0.0004), (0.75, 0.0005), level=0.5)
    half = norm.ppf(0.75) * np.sqrt(0.0009)
    assert got == {
        "diff": pytest.approx(0.05, abs=1e-12),
        "low": pytest.approx(0.05 - half, abs=1e-12),
        "high": pytest.approx(0.05 + half, abs=1e-12),
        "significant": True,
        "level": 0.5,
    }
    assert auc_difference((0.80, 0.0004), (0.75, 0.0005))["significant"] is False


def test_bad_level_fails_before_spark(frames: tuple[DataFrame, DataFrame]) -> None:
    with pytest.raises(ValueError, match=r"The 'level' of a confidence interval must be a float"):
        realised_performance(
            *frames,
            as_of=AS_OF,
            horizon="30d",
            complete_until=dt.datetime(2024, 7, 1),
            model_name="churn",
            level=95,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize(
    ("horizon", "complete_until", "evaluable_on", "needed"),
    [
        ("30d", dt.datetime(2024, 6, 30, 23, 59), "2024-07-01", "2024-07-01 00:00:00"),
        ("36h", dt.datetime(2024, 6, 2), "2024-06-03", "2024-06-02 12:00:00"),
    ],
)
def test_incomplete_labels_are_pending(
    frames: tuple[DataFrame, DataFrame],
    horizon: str,
    complete_until: dt.datetime,
    evaluable_on: str,
    needed: str,
) -> None:
    scores, labels = frames
    out = realised_performance(
        scores,
        labels,
        as_of=AS_OF,
        horizon=horizon,
        complete_until=complete_until,
        model_name="churn",
    )
    detail = json.dumps(
        {
            "complete_until": complete_until.isoformat(sep=" "),
            "evaluable_on": evaluable_on,
            "labels_needed_until": needed,
        },
        sort_keys=True,
    )
    assert out == [
        MetricRecord(
            AS_OF, "churn", version, variant, metric, None, None, None, None, "pending", detail
        )  # fmt: skip
        for variant, version in (("challenger", 4), ("champion", 3))
        for metric in REALISED_METRICS
    ]


def test_one_class_variant_warns(spark: SparkSession) -> None:
    scores = spark.createDataFrame(
        [(1, AS_OF, 0.2, "m", 1, "champion"), (2, AS_OF, 0.7, "m", 1, "champion")], SCORES
    )
    labels = spark.createDataFrame([(1, AS_OF, 0.0), (2, AS_OF, 0.0)], LABELS)
    out = realised_performance(
        scores,
        labels,
        as_of=AS_OF,
        horizon="1d",
        complete_until=dt.datetime(2024, 6, 2),
        model_name="m",
    )
    assert [(r.metric, r.value, r.status) for r in out] == [
        ("n", 2.0, "ok"),
        ("base_rate", 0.0, "ok"),
        *[(m, None, "warn") for m in REALISED_METRICS[2:]],
    ]


def test_labels_from_the_rule(spark: SparkSession) -> None:
    day = timestamp_lit(AS_OF)
    rows = [
        # (customer, micros after as-of, type)
        (1, 0, "purchase"),  # at as-of: in the window
        (2, 3 * 86_400_000_000, "visit"),  # filtered out
        (3, 7 * 86_400_000_000, "purchase"),  # at as-of + horizon: outside
        (3, -1, "purchase"),  # before as-of: outside
        (4, 86_400_000_000, "purchase"),  # not scored at as-of
    ]
    frame = spark.createDataFrame(rows, "customer bigint, offset bigint, type string")
    frame.withColumn("ts", day).selectExpr(
        "customer", "timestamp_micros(unix_micros(ts) + offset) AS ts", "type"
    ).createOrReplaceTempView("realised_events")
    scores = spark.createDataFrame(
        [
            (1, AS_OF, 0.4, "m", 1, "champion"),
            (2, AS_OF, 0.4, "m", 1, "challenger"),
            (3, AS_OF, 0.4, "m", 1, "champion"),
            (4, OTHER_DAY, 0.4, "m", 1, "champion"),
        ],
        SCORES,
    )
    rule = LabelRule(
        source="elsewhere",
        filter="type = 'purchase'",
        horizon="7d",
        kind="binary",
        value_col=None,
        entity_col="customer",
        timestamp_col="ts",
        complete_until="2024-07-01T00:00:00",
    )
    labels = realised_labels(scores, rule, as_of=AS_OF, source="realised_events")
    got = sorted(
        (r["user_id"], r["micros"], r["label"])
        for r in labels.selectExpr("user_id", "unix_micros(as_of) AS micros", "label").collect()
    )
    midnight = 1_717_200_000_000_000
    assert got == [(1, midnight, 1.0), (2, midnight, 0.0), (3, midnight, 0.0)]
    assert labels.columns == ["user_id", "as_of", "label"]
