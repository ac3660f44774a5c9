"""Feature stages: boundaries written out by hand, persistence, the plan, bad input."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from statistics import stdev

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import DataFrame, SparkSession
from spark_jobs import no_job_runs

from sparkml_prod.core.errors import ConfigError, SchemaError, TableNotFoundError
from sparkml_prod.core.tables import write_table
from sparkml_prod.features import (
    PointInTimeLookup,
    Recency,
    WindowAggregates,
    build_feature_stages,
    categorical_indexer,
)

T = dt.datetime
AS_OF = T(2024, 3, 10)
EVENTS_SCHEMA = (
    "user_id long, event_time timestamp, event_type string, session_id string, amount double"
)
EVENTS = [
    # user 1: one event on each side of every boundary of the 1d and 7d windows
    (1, T(2024, 3, 10), "purchase", "s9", 99.0),  # exactly at as-of: never seen
    (1, T(2024, 3, 9, 23, 59, 59), "page_view", "s8", None),  # last second inside 1d
    (1, T(2024, 3, 9), "purchase", "s7", 10.0),  # exactly as_of - 1d: inside 1d
    (1, T(2024, 3, 8, 23, 59, 59), "purchase", "s7", 20.0),  # just outside 1d
    (1, T(2024, 3, 3), "page_view", "s6", None),  # exactly as_of - 7d: inside 7d
    (1, T(2024, 3, 2, 23, 59, 59), "purchase", "s5", 30.0),  # just outside 7d
    (1, T(2024, 3, 2, 23, 59, 59), "purchase", "s5", 30.0),  # a duplicate event counts twice
    (None, T(2024, 3, 9), "purchase", "s0", 5.0),  # null entity: excluded
    (1, None, "purchase", "s0", 5.0),  # null time: excluded
    # user 2: only outside every window
    (2, T(2023, 1, 1), "page_view", "t1", None),
]
SPINE_SCHEMA = "user_id long, as_of timestamp, label int"
SPINE = [(1, AS_OF, 1), (2, AS_OF, 0), (3, AS_OF, 0), (1, T(2024, 3, 3), 0)]


@pytest.fixture()
def events(spark: SparkSession) -> str:
    spark.createDataFrame(EVENTS, EVENTS_SCHEMA).createOrReplaceTempView("boundary_events")
    return "boundary_events"


@pytest.fixture()
def spine(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(SPINE, SPINE_SCHEMA)


def aggregates(source: str) -> WindowAggregates:
    return WindowAggregates(
        sourceTable=source,
        windows=["1d", "7d"],
        filters={"purchase": "event_type = 'purchase'"},
        aggregations=[
            {"agg": "count"},
            {"agg": "sum", "column": "amount", "filter": "purchase"},
            {"agg": "max", "column": "amount"},
            {"agg": "count_distinct", "column": "session_id"},
        ],
    )


def test_window_boundaries_by_hand(spark: SparkSession, events: str, spine: DataFrame) -> None:
    out = aggregates(events).transform(spine)
    expected = spark.createDataFrame(
        [
            # 1d: 23:59:59 view + 00:00 purchase; 7d adds 8th 23:59:59 purchase and 3rd view
            (1, AS_OF, 1, 2, 4, 10.0, 30.0, 10.0, 20.0, 2, 3),
            (2, AS_OF, 0, 0, 0, 0.0, 0.0, None, None, 0, 0),
            (3, AS_OF, 0, 0, 0, 0.0, 0.0, None, None, 0, 0),
            # as of the 3rd: the 3rd itself is not seen; the two duplicates a second before are
            (1, T(2024, 3, 3), 0, 2, 2, 60.0, 60.0, 30.0, 30.0, 1, 1),
        ],
        SPINE_SCHEMA + ", event_count_1d long, event_count_7d long, amount_sum_purchase_1d double,"
        " amount_sum_purchase_7d double, amount_max_1d double, amount_max_7d double,"
        " session_id_count_distinct_1d long, session_id_count_distinct_7d long",
    )
    assert_df_equality(out, expected, ignore_row_order=True, ignore_nullable=True)


def test_integer_and_decimal_columns_keep_sparks_result_types(spark: SparkSession) -> None:
    # Exact types are part of the output contract: sums of a decimal stay decimal, means of
    # a decimal gain 4 digits of scale, min and max keep the input type.
    spark.createDataFrame(
        [
            (1, T(2024, 3, 9), 2, Decimal("1.10")),  # inside 7d
            (1, T(2024, 3, 5), 3, Decimal("2.20")),  # inside 7d
            (1, T(2024, 2, 20), 7, Decimal("3.35")),  # inside 30d only
            (1, T(2024, 1, 1), 100, Decimal("99.99")),  # outside both
        ],
        "user_id long, event_time timestamp, quantity int, price decimal(10,2)",
    ).createOrReplaceTempView("typed_events")
    stage = WindowAggregates(
        sourceTable="typed_events",
        windows=["7d", "30d"],
        aggregations=[
            {"agg": agg, "column": column}
            for column in ("quantity", "price")
            for agg in ("sum", "mean", "min", "max", "stddev")
        ],
    )
    spine = spark.createDataFrame([(1, AS_OF), (2, AS_OF)], "user_id long, as_of timestamp")
    out = stage.transform(spine)
    # (column, type, user 1, user 2 with no events)
    columns = [
        ("quantity_sum_7d", "long", 5, 0),
        ("quantity_sum_30d", "long", 12, 0),
        ("quantity_mean_7d", "double", 2.5, None),
        ("quantity_mean_30d", "double", 4.0, None),
        ("quantity_min_7d", "int", 2, None),
        ("quantity_min_30d", "int", 2, None),
        ("quantity_max_7d", "int", 3, None),
        ("quantity_max_30d", "int", 7, None),
        ("quantity_stddev_7d", "double", stdev([2, 3]), None),
        ("quantity_stddev_30d", "double", stdev([2, 3, 7]), None),
        ("price_sum_7d", "decimal(20,2)", Decimal("3.30"), Decimal("0.00")),
        ("price_sum_30d", "decimal(20,2)", Decimal("6.65"), Decimal("0.00")),
        ("price_mean_7d", "decimal(14,6)", Decimal("1.650000"), None),
        ("price_mean_30d", "decimal(14,6)", Decimal("2.216667"), None),
        ("price_min_7d", "decimal(10,2)", Decimal("1.10"), None),
        ("price_min_30d", "decimal(10,2)", Decimal("1.10"), None),
        ("price_max_7d", "decimal(10,2)", Decimal("2.20"), None),
        ("price_max_30d", "decimal(10,2)", Decimal("3.35"), None),
        ("price_stddev_7d", "double", stdev([1.10, 2.20]), None),
        ("price_stddev_30d", "double", stdev([1.10, 2.20, 3.35]), None),
    ]
    expected = spark.createDataFrame(
        [
            (1, AS_OF, *[user_1 for _, _, user_1, _ in columns]),
            (2, AS_OF, *[user_2 for _, _, _, user_2 in columns]),
        ],
        ", ".join(["user_id long", "as_of timestamp", *[f"{n} {t}" for n, t, _, _ in columns]]),
    )
    assert_approx_df_equality(
        out, expected, precision=1e-12, ignore_row_order=True, ignore_nullable=True
    )


def test_recency_boundaries_by_hand(spark: SparkSession, events: str, spine: DataFrame) -> None:
    out = Recency(sourceTable=events, filters={"purchase": "event_type = 'purchase'"}).transform(
        spine
    )
    second = 1 / 86400
    expected = spark.createDataFrame(
        [
            (1, AS_OF, 1, second, 7 + second, 1.0, 7 + second),
            (2, AS_OF, 0, 434.0, 434.0, None, None),
            (3, AS_OF, 0, None, None, None, None),
            (1, T(2024, 3, 3), 0, second, second, second, second),
        ],
        SPINE_SCHEMA + ", days_since_last_event double, days_since_first_event double,"
        " days_since_last_purchase double, days_since_first_purchase double",
    )
    assert_df_equality(
        out, expected, ignore_row_order=True, ignore_nullable=True, allow_nan_equality=True
    )
    windowed = Recency(sourceTable=events, lookback="7d").transform(spine)
    expected = spark.createDataFrame(
        [
            (1, AS_OF, 1, second, 7.0),
            (2, AS_OF, 0, None, None),
            (3, AS_OF, 0, None, None),
            (1, T(2024, 3, 3), 0, second, second),
        ],
        SPINE_SCHEMA + ", days_since_last_event double, days_since_first_event double",
    )
    assert_df_equality(windowed, expected, ignore_row_order=True, ignore_nullable=True)


def test_lookup_takes_latest_row_strictly_before_as_of(
    spark: SparkSession, spine: DataFrame
) -> None:
    spark.createDataFrame(
        [
            (1, T(2024, 1, 1), "free", "US"),
            (1, T(2024, 3, 3), "plus", "US"),  # valid from exactly the second as-of: not seen then
            (1, T(2024, 3, 9), "premium", "GB"),
            (2, T(2024, 3, 11), "plus", "DE"),  # after every as-of
            (3, T(2024, 2, 1), "free", "FR"),  # a tie: the greater attributes win
            (3, T(2024, 2, 1), "plus", "FR"),
            (None, T(2024, 1, 1), "free", "US"),
        ],
        "user_id long, valid_from timestamp, plan string, country string",
    ).createOrReplaceTempView("boundary_attributes")
    stage = PointInTimeLookup(sourceTable="boundary_attributes", attributeCols=["plan", "country"])
    expected = spark.createDataFrame(
        [
            (1, AS_OF, 1, "premium", "GB"),
            (2, AS_OF, 0, None, None),
            (3, AS_OF, 0, "plus", "FR"),
            (1, T(2024, 3, 3), 0, "free", "US"),
        ],
        SPINE_SCHEMA + ", plan string, country string",
    )
    assert_df_equality(
        stage.transform(spine), expected, ignore_row_order=True, ignore_nullable=True
    )


def test_date_as_of_and_duplicate_spine_rows(spark: SparkSession, events: str) -> None:
    spine = spark.createDataFrame(
        [
            (1, dt.date(2024, 3, 10), "a"),
            (1, dt.date(2024, 3, 10), "b"),
            (None, dt.date(2024, 3, 10), "c"),
        ],
        "user_id long, as_of date, tag string",
    )
    stage = WindowAggregates(sourceTable=events, windows=["1d"], aggregations=[{"agg": "count"}])
    expected = spark.createDataFrame(
        [
            (1, dt.date(2024, 3, 10), "a", 2),
            (1, dt.date(2024, 3, 10), "b", 2),
            (None, dt.date(2024, 3, 10), "c", None),
        ],
        "user_id long, as_of date, tag string, event_count_1d long",
    )
    assert_df_equality(
        stage.transform(spine), expected, ignore_row_order=True, ignore_nullable=True
    )


def test_output_names_are_documented_and_stable() -> None:
    stage = WindowAggregates(
        sourceTable="events",
        windows=["7d", "30d"],
        filters={"purchase": "event_type = 'purchase'"},
        aggregations=[
            {"agg": "count", "filter": "purchase"},
            {"agg": "sum", "column": "amount", "filter": "purchase"},
            {"agg": "count", "by": "event_type", "values": ["add_to_cart", "Page View"]},
            {"agg": "count_distinct", "column": "session_id"},
        ],
        outputPrefix="ev_",
    )
    assert stage.outputColumns() == [
        "ev_purchase_count_7d",
        "ev_purchase_count_30d",
        "ev_amount_sum_purchase_7d",
        "ev_amount_sum_purchase_30d",
        "ev_event_type_add_to_cart_count_7d",
        "ev_event_type_add_to_cart_count_30d",
        "ev_event_type_page_view_count_7d",
        "ev_event_type_page_view_count_30d",
        "ev_session_id_count_distinct_7d",
        "ev_session_id_count_distinct_30d",
    ]


def test_one_scan_of_the_source_and_no_expand(
    spark: SparkSession, tmp_path: Path, spine: DataFrame
) -> None:
    source = str(tmp_path / "events")
    write_table(
        spark.createDataFrame(EVENTS[:7], EVENTS_SCHEMA).withColumnRenamed("amount", "amount"),
        source,
    )
    stage = WindowAggregates(
        sourceTable=source,
        windows=["1d", "7d", "30d"],
        filters={"purchase": "event_type = 'purchase'", "view": "event_type = 'page_view'"},
        aggregations=[
            {"agg": "count"},
            {"agg": "count", "filter": "purchase"},
            {"agg": "count", "filter": "view"},
            {"agg": "sum", "column": "amount"},
            {"agg": "mean", "column": "amount"},
            {"agg": "min", "column": "amount"},
            {"agg": "max", "column": "amount"},
            {"agg": "stddev", "column": "amount"},
            {"agg": "count", "column": "amount"},
            {"agg": "count_distinct", "column": "session_id"},
            {"agg": "count_distinct", "column": "session_id", "filter": "purchase"},
            {"agg": "count_distinct", "column": "event_type"},
        ],
    )
    out = stage.transform(spine)
    plan = out._jdf.queryExecution().executedPlan().toString()
    assert plan.count("FileScan parquet") == 1, plan
    assert "Expand" not in plan, plan
    # The events are shuffled once, by entity; the aggregation reuses that partitioning.
    assert plan.count("REPARTITION_BY_COL") == 1, plan


def round_trip(stages: list, spine: DataFrame, tmp_path: Path) -> tuple[DataFrame, DataFrame, str]:
    model = Pipeline(stages=stages).fit(spine)
    path = str(tmp_path / "model")
    model.write().overwrite().save(path)
    return model.transform(spine), PipelineModel.load(path).transform(spine), path


@pytest.mark.slow
def test_every_stage_round_trips_inside_a_pipeline_model(
    spark: SparkSession, tmp_path: Path, spine: DataFrame
) -> None:
    source = str(tmp_path / "events")
    write_table(spark.createDataFrame(EVENTS, EVENTS_SCHEMA), source)
    attributes = str(tmp_path / "attributes")
    write_table(
        spark.createDataFrame(
            [(1, T(2024, 1, 1), "free"), (2, T(2024, 1, 1), "plus")],
            "user_id long, valid_from timestamp, plan string",
        ),
        attributes,
    )
    stages = [
        aggregates(source),
        Recency(
            sourceTable=source, filters={"purchase": "event_type = 'purchase'"}, lookback="30d"
        ),
        PointInTimeLookup(sourceTable=attributes, attributeCols=["plan"]),
        *build_feature_stages(
            {
                "stages": [
                    {
                        "type": "ratios",
                        "ratios": {"count_ratio": ["event_count_1d", "event_count_7d"]},
                    },
                ]
            }
        ),
        categorical_indexer(["plan"]),
    ]
    in_memory, loaded, _ = round_trip(stages, spine, tmp_path)
    assert_df_equality(in_memory, loaded, ignore_row_order=True, allow_nan_equality=True)
    # Loading in another process (nothing may depend on __main__): every stage type is in
    # the model that tests/test_end_to_end.py scores with spark-submit from elsewhere.


def test_ratios_give_null_for_a_zero_denominator(spark: SparkSession) -> None:
    (stage,) = build_feature_stages(
        {
            "stages": [
                {"type": "ratios", "ratios": {"share": ["a", "b"]}},
            ]
        }
    )
    df = spark.createDataFrame([(1, 2), (3, 0), (0, 0)], "a long, b long")
    expected = spark.createDataFrame(
        [(1, 2, 0.5), (3, 0, None), (0, 0, None)], "a long, b long, share double"
    )
    assert_df_equality(stage.transform(df), expected, ignore_row_order=True, ignore_nullable=True)


def test_categorical_index_survives_unseen_categories(spark: SparkSession) -> None:
    train = spark.createDataFrame(
        [("US",), ("US",), ("GB",), ("DE",), ("DE",), ("DE",)], "country string"
    )
    model = categorical_indexer(["country"]).fit(train)
    scoring = spark.createDataFrame([("DE",), ("US",), ("GB",), ("BR",), (None,)], "country string")
    expected = spark.createDataFrame(
        [("DE", 0.0), ("US", 1.0), ("GB", 2.0), ("BR", 3.0), (None, 3.0)],
        "country string, country_index double",
    )
    assert_df_equality(
        model.transform(scoring),
        expected,
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_metadata=True,
    )


def test_feature_spec_yaml_builds_the_stages(spark: SparkSession) -> None:
    from sparkml_prod.features import load_feature_spec

    conf = Path(__file__).parent.parent / "conf" / "features.yaml"
    stages = load_feature_spec(
        conf, sources={"events": "/data/events", "user_attributes": "/data/attrs"}
    )
    kinds = [type(s).__name__ for s in stages]
    assert kinds == [
        "WindowAggregates",
        "Recency",
        "PointInTimeLookup",
        "DerivedColumns",
        "StringIndexer",
    ]
    assert stages[0].getSourceTable() == "/data/events"
    assert stages[2].getSourceTable() == "/data/attrs"
    assert "purchase_count_30d" in stages[0].outputColumns()


def test_bad_input_is_named_before_any_job(
    spark: SparkSession, events: str, spine: DataFrame
) -> None:
    err = no_job_runs(spark, lambda: aggregates("missing_events").transform(spine))
    assert isinstance(err, TableNotFoundError)
    assert str(err) == (
        "Table 'missing_events' not found: no table 'missing_events'. "
        "Check the reference in the config, or create the table first."
    )
    stage = WindowAggregates(sourceTable=events, aggregations=[{"agg": "sum", "column": "revenue"}])
    err = no_job_runs(spark, lambda: stage.transform(spine))
    assert isinstance(err, SchemaError)
    assert str(err) == (
        "Table 'boundary_events' is missing required column(s) revenue. Columns present: "
        "user_id bigint, event_time timestamp, event_type string, session_id string, amount double."
    )
    stage = WindowAggregates(
        sourceTable=events, aggregations=[{"agg": "mean", "column": "event_type"}]
    )
    err = no_job_runs(spark, lambda: stage.transform(spine))
    assert str(err) == (
        "Table 'boundary_events' column 'event_type' has type string; expected "
        "tinyint or smallint or int or bigint or float or double or decimal. Columns present: "
        "user_id bigint, event_time timestamp, event_type string, session_id string, amount double."
    )
    stage = WindowAggregates(sourceTable=events, timestampCol="session_id")
    err = no_job_runs(spark, lambda: stage.transform(spine))
    assert (
        "column 'session_id' has type string; expected timestamp or timestamp_ntz or date"
        in str(err)
    )
    stage = WindowAggregates(
        sourceTable=events,
        filters={"buy": "kind = 'purchase'"},
        aggregations=[{"agg": "count", "filter": "buy"}],
    )
    err = no_job_runs(spark, lambda: stage.transform(spine))
    assert str(err).startswith(
        "Filter 'buy' (kind = 'purchase') of WindowAggregates is not a valid condition on source "
        "'boundary_events' (columns: user_id, event_time, event_type, session_id, amount): "
    )
    assert "kind" in str(err)
    err = no_job_runs(spark, lambda: aggregates(events).transform(spine.drop("as_of")))
    assert str(err) == (
        "Table 'spine of WindowAggregates' is missing required column(s) as_of. "
        "Columns present: user_id bigint, label int."
    )


def test_malformed_params_fail_when_set() -> None:
    with pytest.raises(ValueError) as err:
        WindowAggregates(windows=["7d", "30days"])
    assert str(err.value) == (
        "The 'windows' parameter of WindowAggregates must be a list of windows such as "
        "'7d', '12h' or '2w' (a positive integer and one of s, m, h, d, w). Got '30days' instead."
    )
    with pytest.raises(ValueError) as err:
        WindowAggregates(aggregations=[{"agg": "median", "column": "amount"}])
    assert str(err.value) == (
        "The 'aggregations' parameter of WindowAggregates must be a list of mappings with keys "
        "agg, column, filter, by, values: 'agg' one of count, sum, mean, min, max, stddev, "
        "count_distinct. Got {'agg': 'median', 'column': 'amount'} instead."
    )
    with pytest.raises(ValueError, match="'column' for agg sum"):
        WindowAggregates(aggregations=[{"agg": "sum"}])
    with pytest.raises(
        ValueError, match="names filter 'purchase', which is not in 'filters' \\(none defined\\)"
    ):
        WindowAggregates(aggregations=[{"agg": "count", "filter": "purchase"}]).outputColumns()
    with pytest.raises(ValueError, match="The 'lookback' parameter of Recency must be"):
        Recency(lookback="a month")
    with pytest.raises(ConfigError) as err:
        build_feature_stages({"stages": [{"type": "window_aggregates", "window": ["7d"]}]})
    assert str(err.value) == (
        "<feature spec>: stages[0]: unknown key 'window' for type window_aggregates; expected "
        "one of: aggregations, filters, output_prefix, source, source_entity_col, timestamp_col, "
        "windows."
    )
    with pytest.raises(ConfigError) as err:
        build_feature_stages({"stages": [{"type": "window_aggregates", "windows": ["1x"]}]})
    assert str(err.value).startswith("<feature spec>: stages[0] (window_aggregates): The 'windows'")
