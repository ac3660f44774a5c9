"""The UTC rule: no instant moves with the driver's OS time zone or the session time zone.

The time-sensitive paths (spine at a date, window features and labels at their
boundaries, the date of a scores partition) run in a subprocess per ``TZ`` through
``tests/time_zone_probe.py``; each zone's output is compared with rows written by hand.
Inputs are built from aware UTC datetimes (pyspark converts naive ones through ``TZ``),
and outputs are rendered in this session (UTC), never in an OS zone.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cards import make_card
from chispa import assert_df_equality
from pyspark.ml import Pipeline
from pyspark.ml.feature import SQLTransformer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.config import (
    FeaturesConfig,
    ScoreConfig,
    SpineConfig,
    TrainConfig,
    from_mapping,
)
from sparkml_prod.core.errors import ConfigError
from sparkml_prod.core.tables import sql_literal, write_table
from sparkml_prod.core.time import (
    from_micros,
    instant_in,
    naive_utc,
    require_utc_session,
    timestamp_lit,
    to_micros,
    to_utc,
)
from sparkml_prod.data.labels import add_labels, check_labels_complete
from sparkml_prod.data.matrix import build_feature_matrix
from sparkml_prod.data.spine import active_entity_spine, as_of_timestamps
from sparkml_prod.data.split import TimeSplit
from sparkml_prod.features import WindowAggregates
from sparkml_prod.registry import ModelRegistry
from sparkml_prod.runs.score import run_scoring
from sparkml_prod.runs.train import run_training

ROOT = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "time_zone_probe.py"
UTC = dt.timezone.utc
TOKYO = dt.timezone(dt.timedelta(hours=9))


def U(*parts: int) -> dt.datetime:
    """An aware UTC datetime: pyspark stores it as this instant whatever TZ is."""
    return dt.datetime(*parts, tzinfo=UTC)


# As-of A = 2024-03-10 and B = 2024-03-17, midnight UTC; spine lookback 7d, windows 1d and
# 7d, a 7d purchase-count label.
EVENTS = [
    (1, U(2024, 3, 3), "page_view"),  # exactly A - 7d: in A's 7d window, 1 active at A
    (1, U(2024, 3, 10), "purchase"),  # exactly A: not a feature at A, in A's label; B - 7d
    (1, U(2024, 3, 17), "purchase"),  # exactly A + 7d = B: not in A's label, in B's
    (2, U(2024, 3, 9), "page_view"),  # exactly A - 1d: in A's 1d window
    (2, U(2024, 3, 8, 23, 59, 59), "page_view"),  # just outside A's 1d window
    (3, U(2024, 3, 9, 23, 59, 59), "page_view"),  # last second before A
    (3, U(2024, 3, 16, 23, 59, 59), "purchase"),  # last second of A's label, before B
    (4, U(2024, 3, 2, 23, 59, 59), "page_view"),  # just before A - 7d: not active at A
    (4, U(2024, 3, 24, 23, 30), "page_view"),  # the last event: complete until 03-25
    (5, U(2024, 3, 17), "page_view"),  # exactly at B: not active at B
]
EVENTS_SCHEMA = "user_id long, event_time timestamp, event_type string"
# Ingested for A = 2024-03-10: text without an offset is UTC, never the OS zone's wall clock.
INGEST_CSV = """user_id,event_time
1,2024-03-10 00:00:00
2,2024-03-09 23:59:59
3,2024-03-10 23:59:59.999999
4,2024-03-11 00:00:00
5,2024-03-10 02:30:00
6,2024-03-10T09:00:00+09:00
"""
SCORE_SQL = "SELECT *, 1.0D / (1.0D + event_count_7d) AS score FROM __THIS__"
ZONES = {"Asia/Tokyo": 9.0, "America/New_York": -4.0}  # offsets on 2024-03-17
REFUSED = (
    "{owner} needs a UTC session time zone, but spark.sql.session.timeZone is "
    "'America/New_York': timestamp_ntz and date columns, and the date of a scores "
    "partition, would be read in 'America/New_York'. Set --conf "
    "spark.sql.session.timeZone=UTC, or leave it unset (get_spark() sets it)."
)


@pytest.fixture(scope="module")
def inputs(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The events and users tables and a registered model, written once for every zone."""
    root = tmp_path_factory.mktemp("time-zones")
    refs = {name: str(root / name) for name in ("events", "users", "models")}
    write_table(spark.createDataFrame(EVENTS, EVENTS_SCHEMA), refs["events"])
    write_table(
        spark.createDataFrame([(u,) for u in (1, 2, 3, 4, 9)], "user_id long"), refs["users"]
    )
    stages = [
        WindowAggregates(
            sourceTable=refs["events"], windows=["7d"], aggregations=[{"agg": "count"}]
        ),
        SQLTransformer(statement=SCORE_SQL),
    ]
    spine = spark.createDataFrame([(1, U(2024, 3, 1))], "user_id long, as_of timestamp")
    card = make_card(
        events=refs["events"],
        lookback="7d",
        source_schema={"user_id": "bigint", "event_time": "timestamp", "event_type": "string"},
    )
    registry = ModelRegistry(spark, refs["models"])
    registry.register("m", Pipeline(stages=stages).fit(spine), card)
    registry.set_alias("m", "production", 1)
    ingest_csv = root / "ingest.csv"
    ingest_csv.write_text(INGEST_CSV)
    spec = root / "inputs.json"
    spec.write_text(json.dumps({**refs, "registry": refs["models"], "ingest_csv": str(ingest_csv)}))
    return {**refs, "spec": str(spec), "root": str(root)}


def rendered(df: DataFrame, *columns: str) -> DataFrame:
    """``columns`` (timestamps) as UTC strings to the microsecond, formatted by this
    session (UTC), so the comparison never goes through an OS zone."""
    return df.select(
        *[
            F.date_format(c, "yyyy-MM-dd HH:mm:ss.SSSSSS").alias(c) if c in columns else c
            for c in df.columns
        ]
    )


@pytest.fixture(scope="module")
def probed(inputs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The probe's results for every zone, from one process started in the first zone
    (New York: west of UTC, and its clocks move between the two as-of dates); the
    others are set in it with ``time.tzset()``."""
    out = tmp_path_factory.mktemp("time-zone-probe")
    zones = sorted(ZONES, key=lambda zone: ZONES[zone])
    env = {**os.environ, "TZ": zones[0], "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(PROBE), inputs["spec"], str(out), *zones],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("zone", list(ZONES))
def test_the_same_rows_under_every_os_time_zone(
    spark: SparkSession, probed: Path, zone: str
) -> None:
    tmp_path = probed / zone.replace("/", "-")
    values = json.loads((tmp_path / "python.json").read_text())
    assert values["offset_hours"] == ZONES[zone], "the subprocess did not run in its TZ"

    a, b = "2024-03-10 00:00:00.000000", "2024-03-17 00:00:00.000000"
    matrix = spark.read.format("delta").load(str(tmp_path / "matrix"))
    expected = spark.createDataFrame(
        [
            # (user, as_of exactly midnight UTC, events in 1d, in 7d, purchases in next 7d)
            (1, a, 0, 1, 1.0),  # 03-03 in 7d; 03-10 purchase not a feature, a label
            (2, a, 1, 2, 0.0),  # 03-09 00:00 in 1d; 03-08 23:59:59 only in 7d
            (3, a, 1, 1, 1.0),  # 03-09 23:59:59 in both; label: the 03-16 23:59:59 purchase
            (1, b, 0, 1, 1.0),  # 03-10 in 7d; the 03-17 purchase a label, not a feature
            (3, b, 1, 1, 0.0),
        ],
        "user_id long, as_of string, event_count_1d long, event_count_7d long, label double",
    )
    assert_df_equality(
        rendered(matrix, "as_of"), expected, ignore_row_order=True, ignore_nullable=True
    )

    columns = ["user_id", "as_of", "score", "model_name", "model_version", "variant"]
    schema = "user_id long, as_of date, score double, model_name string, model_version int, "
    schema += "variant string"
    day_a, day_b = dt.date(2024, 3, 10), dt.date(2024, 3, 17)  # dates have no zone
    scores = {
        "scores": [(1, day_a, 1 / 2), (2, day_a, 1 / 3), (3, day_a, 1 / 2)],
        "scores_users": [
            (u, day_b, s) for u, s in ((1, 0.5), (2, 1.0), (3, 0.5), (4, 1.0), (9, 1.0))
        ],
    }
    for table, rows in scores.items():
        written = spark.read.format("delta").load(str(tmp_path / table))
        assert_df_equality(
            written.select(*columns),
            spark.createDataFrame([(*r, "m", 1, "champion") for r in rows], schema),
            ignore_row_order=True,
            ignore_nullable=True,
        )
        # scored_at is the instant of the run, not the run's UTC wall clock read in TZ
        bounds = written.agg(F.min(F.unix_micros("scored_at")), F.max(F.unix_micros("scored_at")))
        low, high = bounds.head()
        assert values["scoring_started_us"] <= low <= high <= values["scoring_finished_us"]

    assert values["schedule"] == [
        "2024-03-03T00:00:00",
        "2024-03-10T00:00:00",
        "2024-03-17T00:00:00",
    ]
    assert values["complete_until"] == "2024-03-25T00:00:00"

    # [read, written, quarantined, outside]: 2 and 4 are the days around A, in any zone
    assert values["ingest_counts"] == [6, 4, 0, 2]
    ingested = spark.read.format("delta").load(str(tmp_path / "ingested"))
    assert_df_equality(
        rendered(ingested, "event_time"),
        spark.createDataFrame(
            [
                (1, "2024-03-10 00:00:00.000000"),
                (3, "2024-03-10 23:59:59.999999"),
                (5, "2024-03-10 02:30:00.000000"),  # no such wall clock in New York
                (6, "2024-03-10 00:00:00.000000"),  # 09:00 at +09:00
            ],
            "user_id long, event_time string",
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )


@pytest.fixture(params=["Asia/Tokyo", "America/New_York"])
def os_zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process's OS zone set to ``TZ`` for one test (pyspark reads naive datetimes
    in it); the JVM keeps UTC."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    try:
        yield request.param
    finally:
        monkeypatch.undo()
        time.tzset()


def test_instants_from_dates_naive_and_aware_datetimes(os_zone: str) -> None:
    midnight = U(2024, 6, 1)
    for value in (
        dt.date(2024, 6, 1),
        dt.datetime(2024, 6, 1),
        dt.datetime(2024, 6, 1, 9, tzinfo=TOKYO),
    ):
        assert to_utc(value) == midnight and to_utc(value).tzinfo is UTC
        assert naive_utc(value) == dt.datetime(2024, 6, 1)
        assert to_micros(value) == 1_717_200_000_000_000
    assert to_micros(dt.datetime(1969, 12, 31, 23, 59, 59, 999_999)) == -1
    assert from_micros(1_717_200_000_000_001) == dt.datetime(2024, 6, 1, 0, 0, 0, 1)
    # the same instant given naive, aware and as a date is one as-of
    assert as_of_timestamps([dt.date(2024, 6, 1), midnight, dt.datetime(2024, 6, 1)]) == [
        dt.datetime(2024, 6, 1)
    ]
    split = TimeSplit((dt.date(2024, 1, 1),), (U(2024, 2, 1),), (dt.datetime(2024, 3, 1),))
    assert split.all() == [
        dt.datetime(2024, 1, 1),
        dt.datetime(2024, 2, 1),
        dt.datetime(2024, 3, 1),
    ]
    # an aware as-of and a date bound compare: 09:00 Tokyo on 03-02 is midnight UTC
    check_labels_complete(
        [dt.datetime(2024, 3, 2, 9, tzinfo=TOKYO)], "30d", dt.date(2024, 4, 1), "s"
    )
    with pytest.raises(TypeError, match="must be a date or a datetime"):
        to_utc("2024-06-01")  # type: ignore[arg-type]


def test_spark_literals_of_instants(spark: SparkSession, os_zone: str) -> None:
    frame = spark.createDataFrame([(1, U(2024, 6, 1)), (2, U(2024, 6, 2))], "id int, t timestamp")
    row = frame.select(
        F.unix_micros(timestamp_lit(dt.date(2024, 6, 1))).alias("from_date"),
        F.unix_micros(timestamp_lit(dt.datetime(2024, 6, 1))).alias("from_naive"),
        F.unix_micros(timestamp_lit(1_717_200_000_000_000)).alias("from_micros"),
        F.unix_micros(F.expr(sql_literal(dt.datetime(2024, 6, 1)))).alias("sql"),
    ).head()
    assert tuple(row) == (1_717_200_000_000_000,) * 4
    picked = frame.where(instant_in("t", [dt.date(2024, 6, 2), dt.datetime(2024, 6, 3)]))
    assert [r.id for r in picked.collect()] == [2]
    assert (
        sql_literal(dt.datetime(2024, 6, 1, 9, tzinfo=TOKYO))
        == "TIMESTAMP'2024-06-01 00:00:00+00:00'"
    )


def test_a_timestamp_sql_literal_is_the_same_instant_in_any_session_zone(
    spark: SparkSession,
) -> None:
    literal = sql_literal(dt.datetime(2024, 6, 1))
    try:
        spark.conf.set("spark.sql.session.timeZone", "Asia/Tokyo")
        micros = spark.sql(f"SELECT unix_micros({literal}) AS m").head()
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
    assert micros is not None and micros.m == 1_717_200_000_000_000


@pytest.mark.parametrize("zone", ["UTC", "Etc/UTC", "GMT", "Z", "+00:00"])
def test_utc_session_zone_ids_are_accepted(spark: SparkSession, zone: str) -> None:
    try:
        spark.conf.set("spark.sql.session.timeZone", zone)
        require_utc_session(spark, "this check")
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")


def test_a_session_zone_other_than_utc_is_refused_where_instants_are_built(
    spark: SparkSession, tmp_path: Path
) -> None:
    events = spark.createDataFrame(EVENTS, EVENTS_SCHEMA)
    events.createOrReplaceTempView("time_zone_events")
    spine = spark.createDataFrame([(1, U(2024, 3, 10))], "user_id long, as_of timestamp")
    features = WindowAggregates(sourceTable="time_zone_events", windows=["7d"])
    refusals = {
        "active_entity_spine": lambda: active_entity_spine(
            spark, "time_zone_events", [dt.date(2024, 3, 10)]
        ),
        "add_labels": lambda: add_labels(spine, "time_zone_events", horizon="7d"),
        "WindowAggregates": lambda: features.transform(spine),
        "build_feature_matrix": lambda: build_feature_matrix(spark, features_config(tmp_path)),
        "run_training": lambda: run_training(spark, train_config(tmp_path)),
        "run_scoring": lambda: run_scoring(spark, score_config(tmp_path), dt.date(2024, 3, 10)),
    }
    try:
        spark.conf.set("spark.sql.session.timeZone", "America/New_York")
        for owner, call in refusals.items():
            with pytest.raises(ConfigError) as refused:
                call()
            assert str(refused.value) == REFUSED.format(owner=owner)
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
    assert not any(tmp_path.iterdir()), "a refused run wrote something"


def features_config(root: Path) -> FeaturesConfig:
    spine = SpineConfig(source="time_zone_events", as_of_dates=[dt.date(2024, 3, 10)])
    return FeaturesConfig(
        feature_spec=str(ROOT / "conf" / "features.yaml"),
        sources={},
        spine=spine,
        output_table=str(root / "matrix"),
    )


def score_config(root: Path) -> ScoreConfig:
    return ScoreConfig(
        model="m@production", registry_root=str(root / "models"), output_table=str(root / "s")
    )


def train_config(root: Path) -> TrainConfig:
    settings: dict[str, Any] = {
        "model_name": "m",
        "registry_root": str(root / "models"),
        "feature_spec": str(ROOT / "conf" / "features.yaml"),
        "sources": {"events": "time_zone_events"},
        "spine": {"source": "events"},
        "label": {"source": "events", "horizon": "7d"},
        "split": {
            "train": [dt.date(2024, 3, 1)],
            "validation": [dt.date(2024, 3, 10)],
            "test": [dt.date(2024, 3, 17)],
        },
        "matrix_table": str(root / "matrix"),
        "report_dir": str(root / "report"),
    }
    return from_mapping(settings, TrainConfig, source="test config")
