"""The feature stages against an independent reference implementation in pandas / numpy.

A seeded random event set (skewed users, users without events, events exactly at as-of
instants and at ``as_of - window`` boundaries and one second either side, duplicate rows,
nulls in values and in keys) is fed to ``WindowAggregates``, ``Recency`` and
``PointInTimeLookup``; every output column of every spine row must equal what a
straightforward loop over the spine computes from the module docstrings' semantics:

* a window ``w`` at as-of ``a`` covers ``a - w <= event_time < a``;
* counts, distinct counts (nulls not counted) and sums are 0 on an empty window; mean,
  min, max and the sample standard deviation (ddof=1, null below two values) are null;
* recency is ``(a - t) / 1 day`` for the latest / earliest event with ``t < a`` (and
  ``a - lookback <= t`` with a lookback), null when there is none;
* a lookup takes the latest attribute row with ``valid_from < a``, null when there is none;
* rows with a null entity or a null time are ignored.

Nothing here calls the library to compute an expected value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, cast

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.features import PointInTimeLookup, Recency, WindowAggregates

SEED = 20240917
DAY = 86_400  # seconds
START = 1_704_067_200  # 2024-01-01T00:00:00Z: events span [START, START + 125 days)
EVENT_SPAN = 125 * DAY
AS_OF = [
    START + 40 * DAY,
    START + 70 * DAY,
    START + 85 * DAY + 13 * 3600 + 37 * 60 + 21,  # a non-midnight as-of
    START + 100 * DAY,
    START + 120 * DAY,
]
WINDOWS = {"12h": 12 * 3600, "1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY, "90d": 90 * DAY}
LOOKBACK = ("30d", 30 * DAY)
EVENT_TYPES = {
    "page_view": "page_view",
    "add_to_cart": "add_to_cart",
    "purchase": "purchase",
    "Wish-List": "wish_list",
}  # value -> name slug
CATEGORIES = ["Books", "Home-Garden", "toys", "Electronics"]
CATEGORY_SPLIT = {"Books": "books", "Home-Garden": "home_garden", "Not-Sold": "not_sold"}
SUM_SPLIT = {"Books": "books", "toys": "toys"}
FILTERS = {"purchase": "event_type = 'purchase'", "cart": "event_type = 'add_to_cart'"}
EVENT_USERS = range(1, 59)  # 59, 60 and the spine-only 61..63 have no events
SPINE_USERS = range(1, 64)
HEAVY_USERS = {1: 450, 2: 300, 3: 200}
LATE_USER, EARLY_USER = 57, 58  # only events at/after the last as-of; only in the first days

EVENTS_VIEW = "features_reference_events"
ATTRIBUTES_VIEW = "features_reference_user_attributes"
SPINE_KEYS = ["user_id", "as_of", "row_tag"]
RTOL = ATOL = 1e-9

INT, FLOAT, STRING = "bigint", "double", "string"


# -- random data --------------------------------------------------------------------------


def make_events(rng: np.random.RandomState) -> pd.DataFrame:
    """Events as a pandas frame, ``t`` in epoch seconds (object columns keep ``None``)."""
    rows: list[tuple] = []
    type_values = list(EVENT_TYPES)

    def add(user: int | None, t: int | None, event_type: str | None = None) -> None:
        if event_type is None:
            event_type = type_values[rng.choice(4, p=[0.5, 0.2, 0.2, 0.1])]
        amount = round(float(rng.gamma(2.0, 40.0)) + 0.01, 2) if event_type == "purchase" else None
        session = None if rng.rand() < 0.03 else f"s{rng.randint(0, 40)}"  # shared across users
        category = None if rng.rand() < 0.15 else CATEGORIES[rng.randint(len(CATEGORIES))]
        rows.append((user, t, event_type, session, amount, category))

    for user in EVENT_USERS:
        times: np.ndarray
        if user == LATE_USER:
            times = np.array([AS_OF[-1], *(AS_OF[-1] + rng.randint(1, 5 * DAY, size=8))])
        elif user == EARLY_USER:
            times = START + rng.randint(0, 5 * DAY, size=12)
        else:
            n = HEAVY_USERS.get(user, rng.poisson(30))
            times = START + rng.randint(0, EVENT_SPAN, size=n)
        for t in times:
            add(user, int(t))

    boundary_start = len(rows)
    ordinary_users = np.array([u for u in EVENT_USERS if u not in (LATE_USER, EARLY_USER)])
    for a in AS_OF:
        for edge in [a, *(a - w for w in WINDOWS.values())]:
            for delta in (-1, 0, 1):
                first, second = rng.choice(ordinary_users, size=2, replace=False)
                add(int(first), edge + delta, "purchase")
                add(int(second), edge + delta)
    boundary_end = len(rows)

    # Identical duplicates: some random rows and some boundary rows.
    picks = [
        *rng.choice(boundary_start, size=50, replace=False),
        *rng.choice(np.arange(boundary_start, boundary_end), size=15, replace=False),
    ]
    rows += [rows[i] for i in picks]

    # Rows with a null key: never seen by any stage.
    for a in AS_OF[:3]:
        add(None, a - 1, "purchase")
        add(None, a - 3600)
    for user in (1, 5, 59):
        add(user, None, "purchase")
    add(None, None, "add_to_cart")

    events = pd.DataFrame(
        rows, columns=["user_id", "t", "event_type", "session_id", "amount", "product_category"]
    )
    events = events.iloc[rng.permutation(len(events))].reset_index(drop=True)
    events["user_id"] = events["user_id"].astype("Int64")
    events["t"] = events["t"].astype("Int64")
    events["amount"] = events["amount"].astype("float64")
    return events


def make_attributes(rng: np.random.RandomState) -> pd.DataFrame:
    """Slowly changing ``plan`` / ``country``; no two rows of a user share a valid_from."""
    plans = ["free", "plus", "pro", None]
    countries = ["FR", "DE", "US", "BR", None]
    rows: list[tuple] = []
    for user in range(1, 59):
        times: set[int] = set()
        n = rng.randint(1, 7)
        while len(times) < n:
            times.add(START - 60 * DAY + int(rng.randint(0, 190 * DAY)))
        if rng.rand() < 0.4:  # valid from exactly an as-of (not seen), maybe 1 s either side
            a = AS_OF[rng.randint(len(AS_OF))]
            times.add(a)
            if rng.rand() < 0.5:
                times.add(a + int(rng.choice([-1, 1])))
        for t in sorted(times):
            rows.append(
                (
                    user,
                    t,
                    plans[rng.choice(4, p=[0.35, 0.3, 0.25, 0.1])],
                    countries[rng.randint(len(countries))],
                )
            )
    rows += [(None, AS_OF[0] - 1, "pro", "FR"), (5, None, "pro", "FR")]
    attributes = pd.DataFrame(rows, columns=["user_id", "t", "plan", "country"])
    attributes = attributes.iloc[rng.permutation(len(attributes))].reset_index(drop=True)
    attributes["user_id"] = attributes["user_id"].astype("Int64")
    attributes["t"] = attributes["t"].astype("Int64")
    return attributes


def make_spine(rng: np.random.RandomState) -> pd.DataFrame:
    """Every user x every as-of, an extra pass-through column, one duplicated row."""
    rows = [
        (u, a, f"u{u}-a{i}", int(rng.randint(0, 1000)))
        for u in SPINE_USERS
        for i, a in enumerate(AS_OF)
    ]
    rows.append(rows[2])  # heavy user 1 at the non-midnight as-of, twice
    spine = pd.DataFrame(rows, columns=["user_id", "as_of_s", "row_tag", "label"])
    spine = spine.iloc[rng.permutation(len(spine))].reset_index(drop=True)
    return spine.astype({"user_id": "int64", "as_of_s": "int64", "label": "int64"})


def to_spark(
    spark: SparkSession, frame: pd.DataFrame, schema: str, seconds: str, name: str
) -> DataFrame:
    """``frame`` as a Spark frame, the epoch-seconds column ``seconds`` as timestamp ``name``."""
    records = [
        tuple(None if pd.isna(v) else v for v in row)
        for row in frame.astype(object).itertuples(index=False)
    ]
    df = spark.createDataFrame(records, schema)
    return df.select(
        *[F.timestamp_seconds(c).alias(name) if c == seconds else F.col(c) for c in df.columns]
    )


@dataclass
class Data:
    events: pd.DataFrame
    attributes: pd.DataFrame
    spine: pd.DataFrame
    spark_spine: DataFrame


@pytest.fixture(scope="module")
def data(spark: SparkSession) -> Iterator[Data]:
    rng = np.random.RandomState(SEED)
    events, attributes, spine = make_events(rng), make_attributes(rng), make_spine(rng)
    to_spark(
        spark,
        events,
        "user_id bigint, t bigint, event_type string, session_id string, amount double, "
        "product_category string",
        "t",
        "event_time",
    ).createOrReplaceTempView(EVENTS_VIEW)
    to_spark(
        spark,
        attributes,
        "user_id bigint, t bigint, plan string, country string",
        "t",
        "valid_from",
    ).createOrReplaceTempView(ATTRIBUTES_VIEW)
    spark_spine = to_spark(
        spark,
        spine,
        "user_id bigint, as_of_s bigint, row_tag string, label bigint",
        "as_of_s",
        "as_of",
    )
    yield Data(events, attributes, spine, spark_spine)
    spark.catalog.dropTempView(EVENTS_VIEW)
    spark.catalog.dropTempView(ATTRIBUTES_VIEW)


def valid_rows(frame: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Rows with a non-null entity and time, by entity."""
    kept = frame[frame["user_id"].notna() & frame["t"].notna()].copy()
    kept["user_id"] = kept["user_id"].astype("int64")
    kept["t"] = kept["t"].astype("int64")
    return {int(u): g for u, g in kept.groupby("user_id")}


def spine_output(spine: pd.DataFrame) -> pd.DataFrame:
    """The spine as the stages should pass it through."""
    out = spine.rename(columns={"as_of_s": "as_of"})
    out["as_of"] = pd.to_datetime(out["as_of"], unit="s").astype("datetime64[ns]")
    return out[["user_id", "as_of", "row_tag", "label"]]


# -- the reference ------------------------------------------------------------------------


@dataclass(frozen=True)
class Events:
    """Some events' columns as numpy arrays: ``None`` for a null string, NaN for a null amount.

    (numpy rather than a pandas frame per window: ~1,600 windows x 30 aggregations of
    pandas indexing would take half a minute.)
    """

    t: np.ndarray
    event_type: np.ndarray
    session_id: np.ndarray
    amount: np.ndarray
    product_category: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame) -> Events:
        return cls(
            t=frame["t"].to_numpy("int64"),
            event_type=frame["event_type"].to_numpy(object),
            session_id=frame["session_id"].to_numpy(object),
            amount=frame["amount"].to_numpy("float64", na_value=np.nan),
            product_category=frame["product_category"].to_numpy(object),
        )

    def __len__(self) -> int:
        return len(self.t)

    def __getitem__(self, mask: np.ndarray) -> Events:
        return Events(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    def where(self, column: str, value: str) -> Events:
        return self[getattr(self, column) == value]

    def purchases(self) -> Events:
        return self.where("event_type", "purchase")

    def carts(self) -> Events:
        return self.where("event_type", "add_to_cart")


NO_EVENTS = Events.of(
    pd.DataFrame(
        {
            "t": pd.Series([], dtype="int64"),
            "amount": pd.Series([], dtype="float64"),
            **{
                c: pd.Series([], dtype=object)
                for c in ("event_type", "session_id", "product_category")
            },
        }
    )
)


def _distinct(values: np.ndarray) -> int:
    return len({v for v in values if v is not None})


def _non_null(values: np.ndarray) -> int:
    return sum(v is not None for v in values)


def _amounts(events: Events) -> np.ndarray:
    return events.amount[~np.isnan(events.amount)]


def _sum(events: Events) -> float:
    return float(_amounts(events).sum())  # 0.0 when empty


def _mean(events: Events) -> float:
    values = _amounts(events)
    return float(values.mean()) if len(values) else math.nan


def _min(events: Events) -> float:
    values = _amounts(events)
    return float(values.min()) if len(values) else math.nan


def _max(events: Events) -> float:
    values = _amounts(events)
    return float(values.max()) if len(values) else math.nan


def _stddev(events: Events) -> float:
    values = _amounts(events)
    return float(values.std(ddof=1)) if len(values) >= 2 else math.nan


STATS = {"sum": _sum, "mean": _mean, "min": _min, "max": _max, "stddev": _stddev}

Reference = Callable[[Events], object]  # a function of one window's events
Output = tuple[str, str, Reference]  # (output name without window, Spark type, reference)
Spec = dict[str, Any]


def on_purchases(fn: Reference) -> Reference:
    return lambda events: fn(events.purchases())


def on_carts(fn: Reference) -> Reference:
    return lambda events: fn(events.carts())


def split(column: str, value: str, fn: Reference) -> Reference:
    return lambda events: fn(events.where(column, value))


def distinct(column: str) -> Reference:
    return lambda events: _distinct(getattr(events, column))


def non_null(column: str) -> Reference:
    if column == "amount":
        return lambda events: len(_amounts(events))
    return lambda events: _non_null(getattr(events, column))


def amount_stats(flt: str | None) -> list[tuple[Spec, list[Output]]]:
    suffix = f"_{flt}" if flt else ""
    return [
        (
            {"agg": agg, "column": "amount", **({"filter": flt} if flt else {})},
            [(f"amount_{agg}{suffix}", FLOAT, on_purchases(fn) if flt else fn)],
        )
        for agg, fn in STATS.items()
    ]


# Each aggregation spec given to the stage, with its expected outputs (names per the docs).
AGGREGATIONS: list[tuple[Spec, list[Output]]] = [
    ({"agg": "count"}, [("event_count", INT, len)]),
    ({"agg": "count", "filter": "purchase"}, [("purchase_count", INT, on_purchases(len))]),
    ({"agg": "count", "filter": "cart"}, [("cart_count", INT, on_carts(len))]),
    (
        {"agg": "count", "by": "event_type", "values": list(EVENT_TYPES)},
        [
            (f"event_type_{slug}_count", INT, split("event_type", v, len))
            for v, slug in EVENT_TYPES.items()
        ],
    ),
    (
        {"agg": "count", "column": "product_category"},
        [("product_category_count", INT, non_null("product_category"))],
    ),
    (
        {"agg": "count", "column": "amount", "filter": "purchase"},
        [("amount_count_purchase", INT, on_purchases(non_null("amount")))],
    ),
    *amount_stats(None),
    *amount_stats("purchase"),
    (
        {"agg": "count_distinct", "column": "session_id"},
        [("session_id_count_distinct", INT, distinct("session_id"))],
    ),
    (
        {"agg": "count_distinct", "column": "product_category"},
        [("product_category_count_distinct", INT, distinct("product_category"))],
    ),
    (
        {"agg": "count_distinct", "column": "session_id", "filter": "purchase"},
        [("session_id_count_distinct_purchase", INT, on_purchases(distinct("session_id")))],
    ),
    (
        {"agg": "count_distinct", "column": "product_category", "filter": "cart"},
        [("product_category_count_distinct_cart", INT, on_carts(distinct("product_category")))],
    ),
    (
        {
            "agg": "count_distinct",
            "column": "session_id",
            "by": "event_type",
            "values": list(EVENT_TYPES),
        },
        [
            (
                f"session_id_event_type_{slug}_count_distinct",
                INT,
                split("event_type", v, distinct("session_id")),
            )
            for v, slug in EVENT_TYPES.items()
        ],
    ),
    (
        {
            "agg": "count",
            "by": "product_category",
            "values": list(CATEGORY_SPLIT),
            "filter": "purchase",
        },
        [
            (
                f"product_category_{slug}_purchase_count",
                INT,
                on_purchases(split("product_category", v, len)),
            )
            for v, slug in CATEGORY_SPLIT.items()
        ],
    ),
    (
        {"agg": "sum", "column": "amount", "by": "product_category", "values": list(SUM_SPLIT)},
        [
            (f"amount_product_category_{slug}_sum", FLOAT, split("product_category", v, _sum))
            for v, slug in SUM_SPLIT.items()
        ],
    ),
]

# (output name, type, function, window name)
AGGREGATE_OUTPUTS = [
    (f"{name}_{window}", kind, fn, window)
    for _, outputs in AGGREGATIONS
    for name, kind, fn in outputs
    for window in WINDOWS
]


def events_by_user(events: pd.DataFrame) -> dict[int, Events]:
    return {user: Events.of(frame) for user, frame in valid_rows(events).items()}


def reference_aggregates(events: pd.DataFrame, spine: pd.DataFrame) -> pd.DataFrame:
    by_user = events_by_user(events)
    records = []
    for row in spine.itertuples(index=False):
        mine = by_user.get(row.user_id, NO_EVENTS)
        windows = {
            window: mine[(mine.t >= row.as_of_s - seconds) & (mine.t < row.as_of_s)]
            for window, seconds in WINDOWS.items()
        }
        records.append([fn(windows[window]) for _, _, fn, window in AGGREGATE_OUTPUTS])
    features = pd.DataFrame.from_records(records, columns=[o[0] for o in AGGREGATE_OUTPUTS])
    features = features.astype(
        {name: "int64" if kind == INT else "float64" for name, kind, _, _ in AGGREGATE_OUTPUTS}
    )
    return pd.concat([spine_output(spine), features], axis=1)


def recency_outputs() -> list[str]:
    return [
        f"days_since_{which}_{subject}"
        for subject in ["event", *FILTERS]
        for which in ("last", "first")
    ]


def reference_recency(
    events: pd.DataFrame, spine: pd.DataFrame, lookback_seconds: int | None
) -> pd.DataFrame:
    by_user = events_by_user(events)
    subjects: dict[str, Callable[[Events], Events]] = {
        "event": lambda e: e,
        "purchase": Events.purchases,
        "cart": Events.carts,
    }
    assert list(subjects) == ["event", *FILTERS]
    records = []
    for row in spine.itertuples(index=False):
        a, mine = row.as_of_s, by_user.get(row.user_id, NO_EVENTS)
        seen = mine[mine.t < a]
        if lookback_seconds is not None:
            seen = seen[seen.t >= a - lookback_seconds]
        record = []
        for select in subjects.values():
            times = select(seen).t
            record += [
                (a - int(times.max())) / DAY if len(times) else math.nan,  # last
                (a - int(times.min())) / DAY if len(times) else math.nan,
            ]  # first
        records.append(record)
    features = pd.DataFrame.from_records(records, columns=recency_outputs()).astype("float64")
    return pd.concat([spine_output(spine), features], axis=1)


def reference_lookup(attributes: pd.DataFrame, spine: pd.DataFrame, prefix: str) -> pd.DataFrame:
    by_user = valid_rows(attributes)
    records = []
    for row in spine.itertuples(index=False):
        mine = by_user.get(row.user_id, attributes.iloc[:0])
        before = mine[mine["t"] < row.as_of_s]
        if len(before):
            assert before["t"].is_unique, "the random attributes must not tie on valid_from"
            latest = before.loc[before["t"].idxmax()]
            records.append({f"{prefix}plan": latest["plan"], f"{prefix}country": latest["country"]})
        else:
            records.append({f"{prefix}plan": None, f"{prefix}country": None})
    features = pd.DataFrame.from_records(records, columns=[f"{prefix}plan", f"{prefix}country"])
    features = features.astype(object).where(features.notna(), None)
    return pd.concat([spine_output(spine), features], axis=1)


# -- comparison ---------------------------------------------------------------------------


def _mismatches(actual: pd.Series, expected: pd.Series) -> np.ndarray:
    both_null = (actual.isna() & expected.isna()).to_numpy()
    if pd.api.types.is_float_dtype(expected) and pd.api.types.is_float_dtype(actual):
        a, e = actual.to_numpy(float), expected.to_numpy(float)
        with np.errstate(invalid="ignore"):
            close = np.isclose(a, e, rtol=RTOL, atol=ATOL)
        return ~(close | both_null)
    equal = np.array(
        [
            x == y if not (pd.isna(x) or pd.isna(y)) else False
            for x, y in zip(actual, expected, strict=True)
        ],
        dtype=bool,
    )
    return ~(equal | both_null)


def _show(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    return repr(value.item() if isinstance(value, np.generic) else value)


def describe_differences(
    actual: pd.DataFrame,
    expected: pd.DataFrame,
    keys: Sequence[str],
    rows: int = 15,
    columns: int = 6,
) -> str:
    """The differing rows (by key), each with its differing columns: actual vs expected."""
    if list(actual.columns) != list(expected.columns) or len(actual) != len(expected):
        return ""
    per_column = {c: _mismatches(actual[c], expected[c]) for c in expected.columns}
    per_column = {c: bad for c, bad in per_column.items() if bad.any()}
    if not per_column:
        return ""
    bad_rows = np.flatnonzero(np.logical_or.reduce(list(per_column.values())))
    counts = [f"{c} ({int(bad.sum())})" for c, bad in per_column.items()]
    lines = [
        f"{len(bad_rows)} of {len(expected)} row(s) differ in {len(counts)} column(s): "
        + ", ".join(counts[:20])
        + (", ..." if len(counts) > 20 else "")
    ]
    for i in bad_rows[:rows]:
        key = ", ".join(f"{k}={expected[k].iloc[i]}" for k in keys)
        diffs = [
            f"{c}: got {_show(actual[c].iloc[i])}, expected {_show(expected[c].iloc[i])}"
            for c, bad in per_column.items()
            if bad[i]
        ]
        more = f"; +{len(diffs) - columns} more column(s)" if len(diffs) > columns else ""
        lines.append(f"  [{key}] " + "; ".join(diffs[:columns]) + more)
    if len(bad_rows) > rows:
        lines.append(f"  ... and {len(bad_rows) - rows} more row(s)")
    return "\n".join(lines)


def assert_matches_reference(
    result: DataFrame, expected: pd.DataFrame, types: dict[str, str]
) -> None:
    """``result`` (Spark) equals ``expected`` (pandas): columns, types, all rows, all values."""
    assert result.columns == list(expected.columns)
    spark_types = dict(result.dtypes)
    wrong_types = {c: (spark_types[c], t) for c, t in types.items() if spark_types[c] != t}
    assert not wrong_types, f"column types (actual, expected): {wrong_types}"

    actual = cast(pd.DataFrame, result.toPandas())
    actual["as_of"] = pd.to_datetime(actual["as_of"]).astype("datetime64[ns]")
    actual = actual.sort_values(SPINE_KEYS, kind="mergesort").reset_index(drop=True)
    expected = expected.sort_values(SPINE_KEYS, kind="mergesort").reset_index(drop=True)
    try:
        pdt.assert_frame_equal(actual, expected, check_exact=False, rtol=RTOL, atol=ATOL)
    except AssertionError as error:
        differences = describe_differences(actual, expected, SPINE_KEYS)
        if not differences:
            raise
        first_line = str(error).strip().splitlines()[0]
        raise AssertionError(f"{first_line}\n{differences}") from None


# -- tests --------------------------------------------------------------------------------


def test_random_data_has_the_edge_cases(data: Data) -> None:
    """Guard the generator: the cases the comparisons are meant to exercise are present."""
    events, spine = data.events, data.spine
    times = set(events["t"].dropna().astype("int64"))
    for a in AS_OF:
        for edge in [a, *(a - w for w in WINDOWS.values())]:
            assert {edge - 1, edge, edge + 1} <= times
    assert 2_500 <= len(events) <= 4_000
    assert events.duplicated().sum() >= 50
    assert events["user_id"].isna().sum() >= 5 and events["t"].isna().sum() >= 3
    assert events["product_category"].isna().any() and events["session_id"].isna().any()
    assert events.loc[events["event_type"] != "purchase", "amount"].isna().all()
    assert events.loc[events["event_type"] == "purchase", "amount"].notna().all()
    counts = events["user_id"].value_counts()
    assert counts.max() >= 10 * counts.median()  # skew
    with_events = set(valid_rows(events))  # user 59 has only a row with a null time
    assert set(spine["user_id"]) - with_events == {59, 60, 61, 62, 63}
    assert spine.duplicated().sum() == 1
    assert len(spine) == len(SPINE_USERS) * len(AS_OF) + 1
    assert set(data.attributes["t"].dropna()) & set(AS_OF)


def test_window_aggregates_match_reference(data: Data) -> None:
    stage = WindowAggregates(
        sourceTable=EVENTS_VIEW,
        windows=list(WINDOWS),
        filters=FILTERS,
        aggregations=[spec for spec, _ in AGGREGATIONS],
    )
    result = stage.transform(data.spark_spine)
    expected = reference_aggregates(data.events, data.spine)
    assert stage.outputColumns() == [name for name, _, _, _ in AGGREGATE_OUTPUTS]
    assert_matches_reference(
        result, expected, {name: kind for name, kind, _, _ in AGGREGATE_OUTPUTS}
    )


@pytest.mark.parametrize("lookback", [None, LOOKBACK], ids=["all-history", "lookback-30d"])
def test_recency_matches_reference(data: Data, lookback: tuple[str, int] | None) -> None:
    stage = Recency(
        sourceTable=EVENTS_VIEW, filters=FILTERS, lookback=lookback[0] if lookback else ""
    )
    result = stage.transform(data.spark_spine)
    expected = reference_recency(data.events, data.spine, lookback[1] if lookback else None)
    assert stage.outputColumns() == recency_outputs()
    assert_matches_reference(result, expected, {name: FLOAT for name in recency_outputs()})


def test_point_in_time_lookup_matches_reference(data: Data) -> None:
    stage = PointInTimeLookup(
        sourceTable=ATTRIBUTES_VIEW, attributeCols=["plan", "country"], outputPrefix="attr_"
    )
    result = stage.transform(data.spark_spine)
    expected = reference_lookup(data.attributes, data.spine, "attr_")
    assert_matches_reference(result, expected, {"attr_plan": STRING, "attr_country": STRING})
