"""Labels at the horizon boundaries (rows written by hand) and the leakage guard."""

from __future__ import annotations

import datetime as dt

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession

from sparkml_prod.core.errors import LeakageError, TrainingDataError
from sparkml_prod.data.labels import add_labels, check_labels_complete, labels_complete_until
from sparkml_prod.data.spine import as_of_schedule
from sparkml_prod.data.split import TimeSplit, check_time_split

T = dt.datetime
AS_OF = T(2024, 3, 1)
EVENTS_SCHEMA = "user_id long, event_time timestamp, event_type string, amount double"
EVENTS = [
    # user 1: a purchase exactly at as-of belongs to the label window
    (1, T(2024, 3, 1), "purchase", 10.0),
    (1, T(2024, 3, 30, 23, 59, 59), "purchase", 5.0),  # last second inside 30d
    (1, T(2024, 3, 31), "purchase", 99.0),  # exactly as_of + 30d: outside
    (1, T(2024, 2, 29, 23, 59, 59), "purchase", 99.0),  # just before as-of: outside
    # user 2: only page views inside the horizon, a purchase just outside
    (2, T(2024, 3, 5), "page_view", None),
    (2, T(2024, 3, 31), "purchase", 50.0),
    # user 3: two purchases, one of them a duplicate row (counted twice)
    (3, T(2024, 3, 2), "purchase", 7.0),
    (3, T(2024, 3, 2), "purchase", 7.0),
    (None, T(2024, 3, 2), "purchase", 1.0),  # null entity: excluded
]
SPINE_SCHEMA = "user_id long, as_of timestamp"
# user 1 twice: at 2024-03-01 and at 2024-03-31 (where only the 03-31 purchase counts)
SPINE = [(1, AS_OF), (2, AS_OF), (3, AS_OF), (4, AS_OF), (1, T(2024, 3, 31)), (None, AS_OF)]


def frame(spark: SparkSession, rows: list[tuple], schema: str) -> DataFrame:
    """The rows as a DataFrame, naive datetimes read as UTC (pyspark would read them in TZ)."""

    def utc(value: object) -> object:
        return value.replace(tzinfo=dt.timezone.utc) if isinstance(value, dt.datetime) else value

    return spark.createDataFrame([tuple(map(utc, row)) for row in rows], schema)


@pytest.fixture()
def events(spark: SparkSession) -> str:
    frame(spark, EVENTS, EVENTS_SCHEMA).createOrReplaceTempView("label_events")
    return "label_events"


def test_binary_label_at_the_horizon_boundaries(spark: SparkSession, events: str) -> None:
    spine = frame(spark, SPINE, SPINE_SCHEMA)
    out = add_labels(spine, events, horizon="30d", event_filter="event_type = 'purchase'")
    expected = frame(
        spark,
        [
            (1, AS_OF, 1.0),
            (2, AS_OF, 0.0),
            (3, AS_OF, 1.0),
            (4, AS_OF, 0.0),
            (1, T(2024, 3, 31), 1.0),
            (None, AS_OF, None),
        ],
        "user_id long, as_of timestamp, label double",
    )
    assert_df_equality(out, expected, ignore_row_order=True, ignore_nullable=True)


def test_count_and_sum_labels(spark: SparkSession, events: str) -> None:
    spine = frame(spark, SPINE[:4], SPINE_SCHEMA)
    purchases = "event_type = 'purchase'"
    counted = add_labels(spine, events, horizon="30d", event_filter=purchases, kind="count")
    summed = add_labels(
        spine, events, horizon="30d", event_filter=purchases, kind="sum", value_col="amount"
    ).withColumnRenamed("label", "spent")
    out = counted.join(summed, ["user_id", "as_of"])
    expected = frame(
        spark,
        [(1, AS_OF, 2.0, 15.0), (2, AS_OF, 0.0, 0.0), (3, AS_OF, 2.0, 14.0), (4, AS_OF, 0.0, 0.0)],
        "user_id long, as_of timestamp, label double, spent double",
    )
    assert_df_equality(out, expected, ignore_row_order=True, ignore_nullable=True)


def test_labels_complete_until_is_midnight_after_the_last_event(
    spark: SparkSession, events: str
) -> None:
    assert labels_complete_until(spark, events, "event_time") == T(2024, 4, 1)
    check_labels_complete([T(2024, 3, 2)], "30d", T(2024, 4, 1), events)
    with pytest.raises(TrainingDataError) as error:
        check_labels_complete([T(2024, 3, 2), T(2024, 3, 5)], "30d", T(2024, 4, 1), events)
    assert str(error.value) == (
        "Labels of as-of 2024-03-05 are not complete yet: horizon 30d needs events until "
        "2024-04-04, but source 'label_events' is complete only until 2024-04-01. Use as-of "
        "dates no later than 2024-03-02."
    )


def split(train: list[T], validation: list[T], test: list[T]) -> TimeSplit:
    return TimeSplit(tuple(train), tuple(validation), tuple(test))


def test_a_valid_split_passes() -> None:
    # label windows end exactly where the next period starts: allowed
    check_time_split(
        split([T(2024, 1, 1), T(2024, 1, 15)], [T(2024, 2, 14)], [T(2024, 3, 15)]), "30d"
    )


def test_training_labels_reaching_the_test_period_are_refused() -> None:
    with pytest.raises(LeakageError) as error:
        check_time_split(split([T(2024, 1, 1), T(2024, 2, 20)], [], [T(2024, 3, 1)]), "30d")
    assert str(error.value) == (
        "The time split leaks: the label window of training as-of 2024-02-20 (horizon 30d) "
        "runs to 2024-03-21, past the test as-of 2024-03-01. Move the test date to "
        "2024-03-21 or later, or drop the training date."
    )


def test_training_labels_reaching_validation_and_validation_reaching_test() -> None:
    with pytest.raises(LeakageError, match="training as-of 2024-02-01 .* past the validation"):
        check_time_split(split([T(2024, 2, 1)], [T(2024, 2, 15)], [T(2024, 6, 1)]), "30d")
    with pytest.raises(LeakageError) as error:
        check_time_split(split([T(2024, 1, 1)], [T(2024, 2, 15)], [T(2024, 3, 1)]), "30d")
    assert "validation as-of 2024-02-15 (horizon 30d) runs to 2024-03-16, past the test" in str(
        error.value
    )


def test_a_split_without_training_or_test_dates_is_refused() -> None:
    with pytest.raises(LeakageError, match="no training as-of"):
        check_time_split(split([], [], [T(2024, 3, 1)]), "30d")
    with pytest.raises(LeakageError, match="no test as-of"):
        check_time_split(split([T(2024, 3, 1)], [], []), "30d")


def test_as_of_schedule() -> None:
    assert as_of_schedule(dt.date(2024, 1, 1), dt.date(2024, 2, 1), "14d") == [
        T(2024, 1, 1),
        T(2024, 1, 15),
        T(2024, 1, 29),
    ]
