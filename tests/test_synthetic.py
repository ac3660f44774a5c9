"""The synthetic clickstream: determinism, schemas and plausible content."""

from __future__ import annotations

import datetime

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.data.synthetic import (
    EVENTS_SCHEMA,
    USER_ATTRIBUTES_SCHEMA,
    USERS_SCHEMA,
    SyntheticSpec,
    generate_events,
    generate_user_attributes,
    generate_users,
)

START, END = datetime.date(2024, 1, 1), datetime.date(2024, 3, 1)
SPEC = SyntheticSpec(n_users=200, start=START, end=END, seed=7)


def _snapshot(spark: SparkSession, df: DataFrame) -> DataFrame:
    """The rows of ``df`` as a local DataFrame: a later generation cannot reuse its cache."""
    return spark.createDataFrame(df.collect(), df.schema)


@pytest.fixture(scope="module")
def users(spark: SparkSession) -> DataFrame:
    return _snapshot(spark, generate_users(spark, SPEC))


@pytest.fixture(scope="module")
def events(spark: SparkSession) -> DataFrame:
    return _snapshot(spark, generate_events(spark, SPEC))


@pytest.fixture(scope="module")
def attributes(spark: SparkSession) -> DataFrame:
    return _snapshot(spark, generate_user_attributes(spark, SPEC))


def test_same_seed_gives_identical_rows(
    spark: SparkSession, users: DataFrame, events: DataFrame, attributes: DataFrame
) -> None:
    assert_df_equality(generate_users(spark, SPEC), users, ignore_row_order=True)
    assert_df_equality(generate_events(spark, SPEC), events, ignore_row_order=True)
    assert_df_equality(generate_user_attributes(spark, SPEC), attributes, ignore_row_order=True)


def test_rows_do_not_depend_on_partitions_or_time_zone(
    spark: SparkSession, events: DataFrame
) -> None:
    previous = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/Los_Angeles")
    try:
        elsewhere = generate_events(spark, SPEC, num_partitions=7)
        # the fixture was generated in UTC on spark.default.parallelism (2) partitions
        assert (elsewhere.rdd.getNumPartitions(), spark.sparkContext.defaultParallelism) == (7, 2)
        assert_df_equality(elsewhere, events, ignore_row_order=True)
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)


def test_different_seed_gives_different_rows(
    spark: SparkSession, users: DataFrame, events: DataFrame
) -> None:
    other = SyntheticSpec(n_users=200, start=START, end=END, seed=8)
    assert users.exceptAll(generate_users(spark, other)).count() > 100
    assert events.exceptAll(generate_events(spark, other)).count() > 0.9 * events.count()


def test_schemas_are_the_documented_ones(
    users: DataFrame, events: DataFrame, attributes: DataFrame
) -> None:
    assert users.schema == USERS_SCHEMA  # the snapshots keep the generated schemas
    assert events.schema == EVENTS_SCHEMA
    assert attributes.schema == USER_ATTRIBUTES_SCHEMA
    assert [(f.name, f.dataType.simpleString()) for f in USERS_SCHEMA] == [
        ("user_id", "bigint"),
        ("signup_time", "timestamp"),
        ("country", "string"),
        ("platform", "string"),
        ("acquisition_channel", "string"),
    ]
    assert [(f.name, f.dataType.simpleString()) for f in USER_ATTRIBUTES_SCHEMA] == [
        ("user_id", "bigint"),
        ("valid_from", "timestamp"),
        ("plan", "string"),
        ("country", "string"),
    ]
    assert [(f.name, f.dataType.simpleString()) for f in EVENTS_SCHEMA] == [
        ("user_id", "bigint"),
        ("event_time", "timestamp"),
        ("event_type", "string"),
        ("session_id", "string"),
        ("amount", "double"),
        ("product_category", "string"),
    ]


def test_events_are_plausible(events: DataFrame) -> None:
    is_purchase = F.col("event_type") == "purchase"
    no_category = F.col("event_type").isin("page_view", "search")
    stats = events.agg(
        F.count("*").alias("events"),
        F.sum(is_purchase.cast("int")).alias("purchases"),
        F.sum((F.col("amount").isNotNull() != is_purchase).cast("int")).alias("bad_amount_nulls"),
        F.sum((is_purchase & (F.col("amount") <= 0)).cast("int")).alias("bad_amounts"),
        F.sum((F.col("product_category").isNull() != no_category).cast("int")).alias("bad_cats"),
        F.count_distinct("event_type").alias("event_types"),
        F.count_distinct("session_id").alias("sessions"),
        F.count_distinct("product_category").alias("categories"),
    ).first()
    assert stats is not None
    expected_events = SPEC.n_users * SPEC.days * SPEC.events_per_user_per_day
    assert 0.5 * expected_events < stats.events < 1.5 * expected_events
    assert 0.005 < stats.purchases / stats.events < 0.10
    assert (stats.bad_amount_nulls, stats.bad_amounts, stats.bad_cats) == (0, 0, 0)
    assert stats.event_types == 6
    assert stats.events / stats.sessions > 2
    assert stats.categories >= 10

    spans = events.groupBy("session_id").agg(
        (F.max("event_time").cast("long") - F.min("event_time").cast("long")).alias("span")
    )
    assert spans.agg(F.max("span")).first()[0] < 30 * 60


def test_events_belong_to_users_and_lie_in_the_period(users: DataFrame, events: DataFrame) -> None:
    assert events.join(users, "user_id", "left_anti").count() == 0
    start, end = (datetime.datetime(d.year, d.month, d.day) for d in (START, END))
    outside = events.join(users, "user_id").where(
        (F.col("event_time") < F.lit(start))
        | (F.col("event_time") >= F.lit(end))
        | (F.col("event_time") < F.col("signup_time"))
    )
    assert outside.count() == 0


def test_users_have_skewed_countries(users: DataFrame) -> None:
    assert users.count() == 200
    assert users.select("user_id").distinct().count() == 200
    countries = users.groupBy("country").count().orderBy(F.desc("count")).collect()
    assert len(countries) >= 3
    assert countries[0]["count"] / 200 < 0.6
    assert users.where(F.col("signup_time") < F.lit(datetime.datetime(2024, 1, 1))).count() > 0
    assert users.where(F.col("signup_time") >= F.lit(datetime.datetime(2024, 1, 1))).count() > 0


def test_user_attributes_start_at_signup(users: DataFrame, attributes: DataFrame) -> None:
    per_user = (
        attributes.groupBy("user_id")
        .agg(
            F.min("valid_from").alias("first"),
            F.max("valid_from").alias("latest"),
            F.count("*").alias("rows"),
        )
        .join(users, "user_id", "full")
    )
    bad = per_user.where(
        F.col("first").isNull()
        | (F.col("first") != F.col("signup_time"))
        | (F.col("latest") < F.col("signup_time"))
        | (F.col("latest") >= F.lit(datetime.datetime(2024, 3, 1)))
    )
    assert bad.count() == 0
    assert per_user.where("rows > 1").count() > 0
    plans = {r.plan for r in attributes.select("plan").distinct().collect()}
    assert plans <= {"free", "plus", "premium"}
    assert len(plans) >= 2
    at_signup = attributes.join(users, "user_id").where(F.col("valid_from") == F.col("signup_time"))
    assert at_signup.where(users["country"] != attributes["country"]).count() == 0


def test_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError) as error:
        SyntheticSpec(n_users=0)
    assert str(error.value) == (
        "The 'n_users' field of SyntheticSpec must be an int >= 1. Got 0 instead."
    )
    with pytest.raises(ValueError) as error:
        SyntheticSpec(start=datetime.date(2024, 1, 1), end=datetime.date(2024, 1, 1))
    assert str(error.value) == (
        "The 'end' field of SyntheticSpec must be a date after start (2024-01-01). "
        "Got datetime.date(2024, 1, 1) instead."
    )
    with pytest.raises(ValueError) as error:
        SyntheticSpec(events_per_user_per_day=0)
    assert str(error.value) == (
        "The 'events_per_user_per_day' field of SyntheticSpec must be a number > 0. Got 0 instead."
    )
