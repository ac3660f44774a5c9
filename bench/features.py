"""Benchmark of the feature build: ``WindowAggregates`` against two baselines.

Run from the repository root (see ``bench/README.md``)::

    .venv/bin/python bench/features.py --events 200000            # smoke run, ~2 min
    .venv/bin/python bench/features.py                            # 5M and 20M events

Workload: 3 windows (7d, 30d, 90d) x 15 aggregations (counts, filtered counts, a sum,
mean, min and max of purchase amounts, a stddev, three exact distinct counts and a
count per event type) = 45 features, for two spines:

* ``scoring``: every user, one as-of (the end of the data);
* ``training``: every user x 6 monthly as-of dates ending at the end of the data;
* ``snapshots_1``, ``snapshots_6``, ``snapshots_26``: the workload + a 365d window (60
  features), every user x 1, 6 or 26 weekly as-of dates ending there (run at sizes up to
  ``--snapshots-up-to``).

The goals measured are written with :mod:`results` to ``bench/results/features.json``.

Contenders, each timed end to end from the stored events to a Parquet result:

1. ``library``: ``WindowAggregates.transform(spine)`` over the Delta table;
2. ``naive``: Spark, one range join + ``groupBy`` with ``countDistinct`` per window over
   the Delta table, the three results left-joined back to the spine;
3. ``duckdb``: one DuckDB SQL statement (2 threads) over the same events as Parquet:
   range join to the longest window + ``FILTER``ed conditional aggregates.

Events come from :mod:`sparkml_prod.data.synthetic` (18 months, 0.3 events per user
per day, ``n_users`` chosen to reach the size), written once per size as Delta and as
Parquet, clustered by event time (as an append-only event table is), ~1M rows per file.
Generation is not timed and is reused by later runs (``--regenerate`` to redo it).

Before timing, the three contenders' results are compared on the smallest size (sorted,
floats with a relative tolerance of 1e-9). Each contender then runs once as a warm-up
(the checked run, on the smallest size) and ``--repeats`` times; the best time counts.
The table is printed and written to ``bench-output/features.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from sparkml_prod.core.session import get_spark  # noqa: E402
from sparkml_prod.data.synthetic import SyntheticSpec, generate_events  # noqa: E402
from sparkml_prod.features import WindowAggregates  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from results import Goal, write_results  # noqa: E402
from timing import best_of_with_cpu  # noqa: E402

# -- data -------------------------------------------------------------------------------

START, END = dt.date(2023, 1, 1), dt.date(2024, 7, 1)  # 18 months, events in [START, END)
RATE = 0.3  # events per user per day
SEED = 42
ROWS_PER_FILE = 1_000_000
TRAINING_SNAPSHOTS = 6

# -- workload ---------------------------------------------------------------------------

WINDOWS = {"7d": 7, "30d": 30, "90d": 90}  # name -> days
SNAPSHOT_WINDOWS = {**WINDOWS, "365d": 365}
FILTERS = {"purchase": "event_type = 'purchase'", "cart": "event_type = 'add_to_cart'"}
BY_VALUES = ["page_view", "search", "product_view", "remove_from_cart"]
AGGREGATIONS: list[dict[str, Any]] = [
    {"agg": "count"},
    {"agg": "count", "filter": "purchase"},
    {"agg": "count", "filter": "cart"},
    {"agg": "sum", "column": "amount", "filter": "purchase"},
    {"agg": "mean", "column": "amount", "filter": "purchase"},
    {"agg": "min", "column": "amount", "filter": "purchase"},
    {"agg": "max", "column": "amount", "filter": "purchase"},
    {"agg": "stddev", "column": "amount"},
    {"agg": "count_distinct", "column": "session_id"},
    {"agg": "count_distinct", "column": "product_category"},
    {"agg": "count_distinct", "column": "session_id", "filter": "purchase"},
    {"agg": "count", "by": "event_type", "values": BY_VALUES},
]


@dataclass(frozen=True)
class Feature:
    """One aggregation of the workload, written out independently of the library."""

    stem: str  # output name without the window suffix
    agg: str  # count, sum, mean, min, max, stddev, count_distinct
    column: str | None  # None: count rows
    condition: str | None  # SQL condition (valid in Spark SQL and DuckDB), None: all rows

    def name(self, window: str) -> str:
        return f"{self.stem}_{window}"

    @property
    def zero_when_empty(self) -> bool:
        return self.agg in ("count", "sum", "count_distinct")


PURCHASE, CART = FILTERS["purchase"], FILTERS["cart"]
FEATURES = [
    Feature("event_count", "count", None, None),
    Feature("purchase_count", "count", None, PURCHASE),
    Feature("cart_count", "count", None, CART),
    Feature("amount_sum_purchase", "sum", "amount", PURCHASE),
    Feature("amount_mean_purchase", "mean", "amount", PURCHASE),
    Feature("amount_min_purchase", "min", "amount", PURCHASE),
    Feature("amount_max_purchase", "max", "amount", PURCHASE),
    Feature("amount_stddev", "stddev", "amount", None),
    Feature("session_id_count_distinct", "count_distinct", "session_id", None),
    Feature("product_category_count_distinct", "count_distinct", "product_category", None),
    Feature("session_id_count_distinct_purchase", "count_distinct", "session_id", PURCHASE),
    *[Feature(f"event_type_{v}_count", "count", None, f"event_type = '{v}'") for v in BY_VALUES],
]
KEYS = ["user_id", "as_of"]


def outputs_of(windows: dict[str, int]) -> list[str]:
    """Library order: aggregation by aggregation (split values in turn), windows innermost."""
    return [f.name(w) for f in FEATURES for w in windows]


OUTPUTS = outputs_of(WINDOWS)


@dataclass(frozen=True)
class Scenario:
    """A spine (every user x ``dates`` as-of dates ending at the end of the data, a
    ``step`` apart) and the windows computed for it."""

    dates: int
    step: str  # "month" or "week"
    windows: dict[str, int]


SCENARIOS = {
    "scoring": Scenario(1, "month", WINDOWS),
    "training": Scenario(TRAINING_SNAPSHOTS, "month", WINDOWS),
    # the snapshots series: the workload + a 365d window, 1, 6 and 26 weekly as-of dates
    "snapshots_1": Scenario(1, "week", SNAPSHOT_WINDOWS),
    "snapshots_6": Scenario(6, "week", SNAPSHOT_WINDOWS),
    "snapshots_26": Scenario(26, "week", SNAPSHOT_WINDOWS),
}
CONTENDERS = ["library", "naive", "duckdb"]
# The naive plan's per-window range joins over 6 and 26 as-of dates would take longer than
# the rest of the run, and no goal needs them.
SNAPSHOTS_WITHOUT_NAIVE = ("snapshots_6=library,duckdb", "snapshots_26=library,duckdb")


# -- paths and data preparation ---------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    root: Path

    def events(self, n: int, fmt: str) -> Path:
        return self.root / "data" / f"events_{n}" / fmt

    def spine(self, n: int, scenario: str, fmt: str) -> Path:
        return self.root / "data" / f"spine_{n}_{scenario}" / fmt

    def result(self, n: int, scenario: str, contender: str) -> Path:
        return self.root / "results" / f"{n}_{scenario}_{contender}"


def fingerprint(module: str) -> str:
    """Short hash of a library source file: which version of it produced the numbers."""
    path = ROOT / "sparkml_prod" / module
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "missing"


def spec_for(n_users: int) -> SyntheticSpec:
    return SyntheticSpec(
        n_users=n_users, start=START, end=END, seed=SEED, events_per_user_per_day=RATE
    )


def users_for(spark: SparkSession, n_events: int, sample: int = 2000) -> int:
    """Number of users that gives about ``n_events``: the generator's events per user,
    measured on the first ``sample`` users (users are drawn independently of each other)."""
    per_user = generate_events(spark, spec_for(sample)).count() / sample
    return max(1, round(n_events / per_user))


def as_of_dates(scenario: str) -> list[dt.datetime]:
    """The as-of times of a scenario: month starts or weeks ending at the end of the data."""
    plan, out = SCENARIOS[scenario], []
    for k in range(plan.dates):
        if plan.step == "week":
            out.append(dt.datetime(END.year, END.month, END.day) - dt.timedelta(weeks=k))
        else:
            month = END.year * 12 + END.month - 1 - k
            out.append(dt.datetime(month // 12, month % 12 + 1, 1))
    return sorted(out)


def prepare(
    spark: SparkSession, paths: Paths, n_events: int, scenarios: list[str], regenerate: bool
) -> dict[str, Any]:
    """Write events (Delta + Parquet) and spines once per size; return what was written."""
    meta_path = paths.root / "data" / f"events_{n_events}" / "meta.json"
    wanted = {
        "events": n_events,
        "start": str(START),
        "end": str(END),
        "seed": SEED,
        "rate": RATE,
        "rows_per_file": ROWS_PER_FILE,
        "generator": fingerprint("data/synthetic.py"),
    }
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if regenerate or meta is None or meta.get("spec") != wanted:
        t0 = time.perf_counter()
        shutil.rmtree(meta_path.parent, ignore_errors=True)
        n_users = users_for(spark, n_events)
        files = max(2, math.ceil(n_events / ROWS_PER_FILE))
        # generate once (a raw copy), then cluster by time: range partitioning samples its
        # input, which would otherwise run the generator twice
        raw = str(meta_path.parent / "raw")
        generate_events(spark, spec_for(n_users)).write.parquet(raw)
        clustered = spark.read.parquet(raw).repartitionByRange(files, "event_time")
        clustered.write.format("delta").save(str(paths.events(n_events, "delta")))
        shutil.rmtree(raw)
        stored = spark.read.format("delta").load(str(paths.events(n_events, "delta")))
        stored.write.parquet(str(paths.events(n_events, "parquet")))
        rows = stored.count()
        meta = {
            "spec": wanted,
            "n_users": n_users,
            "rows": rows,
            "files": files,
            "generation_s": round(time.perf_counter() - t0, 1),
        }
        meta_path.write_text(json.dumps(meta, indent=2))
        print(
            f"  generated {rows:,} events for {n_users:,} users in "
            f"{meta['generation_s']:.0f}s ({files} files)",
            flush=True,
        )
    else:
        print(f"  reusing {meta['rows']:,} events for {meta['n_users']:,} users", flush=True)
    users = spark.range(meta["n_users"]).withColumnRenamed("id", "user_id")
    for scenario in scenarios:
        dates = spark.createDataFrame([(d,) for d in as_of_dates(scenario)], "as_of timestamp")
        spine = users.crossJoin(dates).coalesce(1)
        spine.write.format("delta").mode("overwrite").save(
            str(paths.spine(n_events, scenario, "delta"))
        )
        spine.write.mode("overwrite").parquet(str(paths.spine(n_events, scenario, "parquet")))
    return meta


# -- contenders -------------------------------------------------------------------------


def library_features(
    spark: SparkSession,
    events: str,
    spine_path: str,
    windows: dict[str, int],
) -> DataFrame:
    spine = spark.read.format("delta").load(spine_path)
    stage = WindowAggregates(
        sourceTable=events,
        windows=list(windows),
        filters=FILTERS,
        aggregations=AGGREGATIONS,
        entityCol="user_id",
        asOfCol="as_of",
        timestampCol="event_time",
    )
    if stage.outputColumns() != outputs_of(windows):
        raise AssertionError(
            f"library output names {stage.outputColumns()} != {outputs_of(windows)}"
        )
    return stage.transform(spine)


def naive_features(
    spark: SparkSession, events_path: str, spine_path: str, windows: dict[str, int]
) -> DataFrame:
    """The obvious hand-written version: per window, a range join and a groupBy."""
    events = spark.read.format("delta").load(events_path).alias("e")
    spine = spark.read.format("delta").load(spine_path)
    keys = spine.select(*KEYS).alias("s")

    def aggregate(f: Feature, w: str) -> Any:
        value = F.col(f"e.{f.column}") if f.column else F.lit(1)
        if f.condition:
            value = F.when(F.expr(f.condition), value)
        function = {
            "count": F.count,
            "sum": F.sum,
            "mean": F.avg,
            "min": F.min,
            "max": F.max,
            "stddev": F.stddev_samp,
            "count_distinct": F.countDistinct,
        }[f.agg]
        return function(value).alias(f.name(w))

    out = spine
    for w, days in windows.items():
        joined = keys.join(
            events,
            (F.col("e.user_id") == F.col("s.user_id"))
            & (F.col("e.event_time") >= F.col("s.as_of") - F.expr(f"INTERVAL {days} DAYS"))
            & (F.col("e.event_time") < F.col("s.as_of")),
        )
        per_window = joined.groupBy(
            F.col("s.user_id").alias("user_id"), F.col("s.as_of").alias("as_of")
        )
        out = out.join(per_window.agg(*[aggregate(f, w) for f in FEATURES]), KEYS, "left")
    zero = {f.name(w) for f in FEATURES for w in windows if f.zero_when_empty}
    return out.select(
        *spine.columns,
        *[
            F.coalesce(F.col(n), F.lit(0)).alias(n) if n in zero else F.col(n)
            for n in outputs_of(windows)
        ],
    )


def duckdb_sql(events_glob: str, spine_glob: str, out_path: str, windows: dict[str, int]) -> str:
    longest = max(windows.values())

    def aggregate(f: Feature, w: str, days: int) -> str:
        conditions = [f"e.event_time >= s.as_of - INTERVAL {days} DAY"]
        if f.condition:
            conditions.append(f.condition)
        where = " AND ".join(conditions)
        value = {
            "count": "count(*)" if f.column is None else f"count(e.{f.column})",
            "sum": f"sum(e.{f.column})",
            "mean": f"avg(e.{f.column})",
            "min": f"min(e.{f.column})",
            "max": f"max(e.{f.column})",
            "stddev": f"stddev_samp(e.{f.column})",
            "count_distinct": f"count(DISTINCT e.{f.column})",
        }[f.agg]
        return f"{value} FILTER (WHERE {where}) AS {f.name(w)}"

    aggregates = ",\n      ".join(aggregate(f, w, d) for f in FEATURES for w, d in windows.items())
    zero = {f.name(w) for f in FEATURES for w in windows if f.zero_when_empty}
    outputs = ",\n    ".join(
        f"coalesce(a.{n}, 0) AS {n}" if n in zero else f"a.{n}" for n in outputs_of(windows)
    )
    return f"""
COPY (
  WITH spine AS (SELECT user_id, as_of FROM read_parquet('{spine_glob}')),
  events AS (SELECT * FROM read_parquet('{events_glob}')),
  agg AS (
    SELECT s.user_id, s.as_of,
      {aggregates}
    FROM spine s JOIN events e
      ON e.user_id = s.user_id
     AND e.event_time >= s.as_of - INTERVAL {longest} DAY
     AND e.event_time < s.as_of
    GROUP BY s.user_id, s.as_of
  )
  SELECT s.user_id, s.as_of,
    {outputs}
  FROM spine s LEFT JOIN agg a ON a.user_id = s.user_id AND a.as_of = s.as_of
) TO '{out_path}' (FORMAT parquet)
"""


def run_duckdb(
    events_dir: Path, spine_dir: Path, out: Path, tmp: Path, windows: dict[str, int]
) -> None:
    if out.exists():
        out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        con.execute("SET threads = 2")
        con.execute("SET memory_limit = '8GB'")
        con.execute(f"SET temp_directory = '{tmp}'")
        con.execute("SET TimeZone = 'UTC'")
        con.execute(
            duckdb_sql(f"{events_dir}/*.parquet", f"{spine_dir}/*.parquet", str(out), windows)
        )
    finally:
        con.close()


# -- plans ------------------------------------------------------------------------------

_AGGREGATES = ("HashAggregate", "ObjectHashAggregate", "SortAggregate")


def plan_summary(df: DataFrame, events_marker: str) -> dict[str, Any]:
    """Count Exchange and Expand nodes; find the Exchanges that move event-level rows.

    Walking up from each scan of the events table, every Exchange met is one of event
    rows until an aggregate reduces them to one row per key; an aggregate over the output
    of an ``Expand`` (the partial aggregate of ``countDistinct``, keyed by the distinct
    values) does not, so the shuffle after it still counts.
    """
    tree = df._jdf.queryExecution().executedPlan().treeString()

    def depth_and_node(line: str) -> tuple[int, str]:
        node = line.lstrip(" :+-|")
        return len(line) - len(node), node

    nodes = [depth_and_node(ln) for ln in tree.splitlines() if ln.strip()]
    event_exchanges = set()
    for i, (depth, text) in enumerate(nodes):
        if not (text.startswith(("FileScan", "Scan ")) and events_marker in text):
            continue
        current, expanded = depth, False
        for j in range(i - 1, -1, -1):  # walk up through the ancestors
            d, t = nodes[j]
            if d >= current:
                continue
            current = d
            if t.startswith("Expand"):
                expanded = True
            elif t.startswith(_AGGREGATES):
                if not expanded:
                    break
                expanded = False
            elif t.startswith("Exchange"):
                event_exchanges.add(j)
    names = [t.split(" ")[0] for _, t in nodes]
    return {
        "exchanges": sum(n == "Exchange" for n in names),
        "event_exchanges": len(event_exchanges),
        "event_exchange_nodes": [nodes[j][1][:120] for j in sorted(event_exchanges)],
        "expands": sum(n == "Expand" for n in names),
        "windows": sum(n == "Window" for n in names),
        "plan": tree,
    }


# -- comparison -------------------------------------------------------------------------


def read_result(path: Path, outputs: list[str]) -> pd.DataFrame:
    pattern = f"{path}/*.parquet" if path.is_dir() else str(path)
    df = duckdb.sql(f"SELECT * FROM read_parquet('{pattern}')").df()
    as_of = pd.to_datetime(df["as_of"])
    if as_of.dt.tz is None:
        as_of = as_of.dt.tz_localize("UTC")
    df["as_of"] = as_of.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")
    return df[[*KEYS, *outputs]].sort_values(KEYS).reset_index(drop=True)


def compare(
    left: pd.DataFrame, right: pd.DataFrame, outputs: list[str], rtol: float = 1e-9
) -> list[str]:
    """Differences between two results: empty when they match."""
    problems = []
    if len(left) != len(right):
        return [f"row counts differ: {len(left)} != {len(right)}"]
    for key in KEYS:
        if not (left[key].to_numpy() == right[key].to_numpy()).all():
            return [f"key column {key} differs"]
    for name in outputs:
        a = left[name].to_numpy(dtype="float64", na_value=np.nan)
        b = right[name].to_numpy(dtype="float64", na_value=np.nan)
        bad = ~np.isclose(a, b, rtol=rtol, atol=1e-9, equal_nan=True)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            problems.append(
                f"{name}: {int(bad.sum())} row(s) differ, e.g. user_id={left.user_id[i]} "
                f"as_of={left.as_of[i]}: {a[i]!r} vs {b[i]!r}"
            )
    return problems


# -- driver -----------------------------------------------------------------------------


def run_contender(
    spark: SparkSession, paths: Paths, contender: str, n_events: int, scenario: str
) -> DataFrame | None:
    """One end-to-end run: stored events -> result as Parquet; the Spark result frame."""
    out = paths.result(n_events, scenario, contender)
    windows = SCENARIOS[scenario].windows
    if contender == "duckdb":
        run_duckdb(
            paths.events(n_events, "parquet"),
            paths.spine(n_events, scenario, "parquet"),
            out / "result.parquet",
            paths.root / "tmp",
            windows,
        )
        return None
    events = str(paths.events(n_events, "delta"))
    spine = str(paths.spine(n_events, scenario, "delta"))
    if contender == "library":
        df = library_features(spark, events, spine, windows)
    else:
        df = naive_features(spark, events, spine, windows)
    df.write.mode("overwrite").parquet(str(out))
    return df


def check(paths: Paths, n_events: int, scenario: str, contenders: list[str]) -> list[dict]:
    """Compare the last results of the contenders, the first one as the reference."""
    outputs = outputs_of(SCENARIOS[scenario].windows)
    frames = {c: read_result(paths.result(n_events, scenario, c), outputs) for c in contenders}
    base, out = contenders[0], []
    for other in contenders[1:]:
        problems = compare(frames[base], frames[other], outputs)
        out.append(
            {
                "events": n_events,
                "scenario": scenario,
                "contenders": [base, other],
                "match": not problems,
                "rows": len(frames[base]),
                "problems": problems,
            }
        )
        verdict = "MATCH" if not problems else "MISMATCH"
        print(
            f"  check {scenario}: {base} vs {other}: {verdict} "
            f"({len(frames[base]):,} rows x {len(outputs)} features)",
            flush=True,
        )
        for problem in problems[:20]:
            print(f"    {problem}", flush=True)
    return out


def load() -> float:
    return round(os.getloadavg()[0], 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events",
        type=int,
        nargs="+",
        default=[5_000_000, 20_000_000],
        help="event counts to benchmark (default: 5000000 20000000)",
    )
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument(
        "--snapshots-up-to",
        type=int,
        default=5_000_000,
        help="run the snapshots_* scenarios only at sizes up to this (default: 5000000)",
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        default=["library", "naive", "duckdb"],
        choices=CONTENDERS,
        help="library, naive, duckdb; the first is the reference of the result check",
    )
    parser.add_argument(
        "--only",
        nargs="*",
        default=list(SNAPSHOTS_WITHOUT_NAIVE),
        metavar="SCENARIO=CONTENDER,...",
        help="run only these contenders in a scenario, e.g. snapshots_26=library,naive "
        f"(default: {' '.join(SNAPSHOTS_WITHOUT_NAIVE)}; --only alone: every contender)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after the warm-up")
    parser.add_argument("--output", default=str(ROOT / "bench-output"))
    parser.add_argument("--regenerate", action="store_true", help="regenerate the events")
    parser.add_argument("--no-check", action="store_true", help="skip the result comparison")
    parser.add_argument(
        "--explain", action="store_true", help="print the physical plans of the Spark contenders"
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    paths = Paths(Path(args.output).resolve())
    (paths.root / "tmp").mkdir(parents=True, exist_ok=True)
    # driver memory only takes effect when the session (its JVM) starts: run this script
    # in a fresh process, not where a SparkSession already exists
    spark = get_spark(
        app_name="bench-features",
        master="local[2]",
        ui=False,
        conf={"spark.driver.memory": "8g", "spark.ui.showConsoleProgress": "false"},
    )
    print(
        f"Spark {spark.version}, DuckDB {duckdb.__version__}, {os.cpu_count()} cores, "
        f"load average {load()}; {len(OUTPUTS)} features "
        f"({len(FEATURES)} aggregations x {len(WINDOWS)} windows)",
        flush=True,
    )

    sizes = sorted(set(args.events))
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    plans: list[dict[str, Any]] = []
    for n_events in sizes:
        print(f"\n== {n_events:,} events ==", flush=True)
        scenarios = [
            s
            for s in args.scenarios
            if not s.startswith("snapshots") or n_events <= args.snapshots_up_to
        ]
        data = prepare(spark, paths, n_events, scenarios, args.regenerate)
        only = dict(item.split("=", 1) for item in args.only)
        for scenario in scenarios:
            contenders = [
                c for c in args.contenders if scenario not in only or c in only[scenario].split(",")
            ]
            times: dict[str, list[float]] = {c: [] for c in contenders}
            cpus: dict[str, list[float]] = {c: [] for c in contenders}
            loads: list[float] = []
            # warm-up; on the smallest size it is also the run whose result is checked
            for contender in contenders:
                t0 = time.perf_counter()
                df = run_contender(spark, paths, contender, n_events, scenario)
                print(
                    f"  {scenario:8s} {contender:8s} warm-up {time.perf_counter() - t0:7.1f}s"
                    f"  (load {load()})",
                    flush=True,
                )
                if df is not None:
                    summary = plan_summary(df, f"events_{n_events}/delta")
                    plans.append(
                        {
                            "events": n_events,
                            "scenario": scenario,
                            "contender": contender,
                            **{k: v for k, v in summary.items() if k != "plan"},
                        }
                    )
                    print(
                        f"    plan: {summary['exchanges']} Exchange "
                        f"({summary['event_exchanges']} of event rows), "
                        f"{summary['expands']} Expand, {summary['windows']} Window",
                        flush=True,
                    )
                    if args.explain:
                        print(summary["plan"], flush=True)
            if n_events == sizes[0] and not args.no_check and len(contenders) > 1:
                checks += check(paths, n_events, scenario, contenders)
            for repeat in range(args.repeats):
                for contender in contenders:
                    wall, cpu = best_of_with_cpu(
                        1, partial(run_contender, spark, paths, contender, n_events, scenario)
                    )
                    times[contender].append(wall)
                    cpus[contender].append(cpu)
                    loads.append(load())
                    print(
                        f"  {scenario:8s} {contender:8s} run {repeat + 1}  "
                        f"{wall:7.1f}s wall {cpu:7.1f}s CPU  (load {loads[-1]})",
                        flush=True,
                    )
            rows.append(result_row(data, n_events, scenario, times, cpus, loads))

    total = time.perf_counter() - started
    print_table(rows)
    print(f"\ntotal wall time {total / 60:.1f} min", flush=True)
    if checks:
        ok = all(c["match"] for c in checks)
        print("results " + ("MATCH" if ok else "DO NOT MATCH") + f" on {sizes[0]:,} events")
    report = {
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "spark": spark.version,
            "duckdb": duckdb.__version__,
            "spark_master": "local[2]",
            "driver_memory": "8g",
            "duckdb_threads": 2,
            "duckdb_memory_limit": "8GB",
        },
        "library": {
            "features/aggregates.py": fingerprint("features/aggregates.py"),
            "features/_common.py": fingerprint("features/_common.py"),
            "data/synthetic.py": fingerprint("data/synthetic.py"),
        },
        "workload": {
            "windows": {name: list(plan.windows) for name, plan in SCENARIOS.items()},
            "filters": FILTERS,
            "aggregations": AGGREGATIONS,
            "features": {name: outputs_of(plan.windows) for name, plan in SCENARIOS.items()},
            "data": {
                "start": str(START),
                "end": str(END),
                "rate": RATE,
                "seed": SEED,
                "rows_per_file": ROWS_PER_FILE,
            },
        },
        "results": rows,
        "checks": checks,
        "plans": plans,
        "total_wall_s": round(total, 1),
    }
    (paths.root / "features.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"written {paths.root / 'features.json'}")
    goals = goals_of(rows)
    if goals:
        print(f"written {write_results('features', goals, rows)}")
    spark.stop()
    return 0 if all(c["match"] for c in checks) else 1


def result_row(
    data: dict[str, Any],
    n_events: int,
    scenario: str,
    times: dict[str, list[float]],
    cpus: dict[str, list[float]],
    loads: list[float],
) -> dict[str, Any]:
    best = {c: min(t) for c, t in times.items() if t}
    row: dict[str, Any] = {
        "events": data["rows"],
        "events_arg": n_events,
        "n_users": data["n_users"],
        "scenario": scenario,
        "windows": list(SCENARIOS[scenario].windows),
        "as_of_dates": len(as_of_dates(scenario)),
        "spine_rows": data["n_users"] * len(as_of_dates(scenario)),
        **{f"{c}_s": round(best[c], 2) for c in best},
        **{f"{c}_cpu_s": round(min(v), 2) for c, v in cpus.items() if v},
        "runs_s": {c: [round(t, 2) for t in v] for c, v in times.items()},
        "runs_cpu_s": {c: [round(t, 2) for t in v] for c, v in cpus.items()},
        "max_load_average": max(loads, default=None),
    }
    if "library" in best and "naive" in best:
        row["naive_over_library"] = round(best["naive"] / best["library"], 2)
    if "library" in best and "duckdb" in best:
        row["library_over_duckdb"] = round(best["library"] / best["duckdb"], 2)
    return row


def goals_of(rows: list[dict[str, Any]]) -> list[Goal]:
    """The goals of the performance issue that this run measured (each from one size:
    the intended one, or else the largest measured, which the note then says)."""

    def find(scenario: str, wanted: int, *keys: str) -> dict[str, Any] | None:
        found = [r for r in rows if r["scenario"] == scenario and all(k in r for k in keys)]
        exact = [r for r in found if r["events_arg"] == wanted]
        ordered = exact or sorted(found, key=lambda r: r["events_arg"])
        return ordered[-1] if ordered else None

    def sizes(row: dict[str, Any]) -> dict[str, Any]:
        return {k: row[k] for k in ("events", "n_users", "spine_rows", "as_of_dates", "windows")}

    def note(row: dict[str, Any], wanted: int, *cpu: str) -> str:
        parts = ["CPU s: " + ", ".join(f"{c} {row[f'{c}_cpu_s']:.1f}" for c in cpu)]
        if row["events_arg"] != wanted:
            parts.append(f"measured at {row['events_arg']:,} events, not {wanted:,}")
        return "; ".join(parts)

    goals = []
    one, many = (
        find("snapshots_1", 5_000_000, "library_s"),
        find("snapshots_26", 5_000_000, "library_s"),
    )
    if one and many and one["events_arg"] == many["events_arg"]:
        goals.append(
            Goal(
                "features_snapshots_26w",
                "library, 26 weekly as-of dates vs 1 as-of (windows 7d/30d/90d/365d), wall s",
                many["library_s"],
                "library, 1 as-of",
                one["library_s"],
                2.0,
                sizes=sizes(many),
                note=f"{note(many, 5_000_000, 'library')}; 1 as-of CPU s "
                f"{one['library_cpu_s']:.1f}; CPU ratio "
                f"{many['library_cpu_s'] / one['library_cpu_s']:.2f}x (wall moves with the "
                f"load: max load average {many['max_load_average']} vs "
                f"{one['max_load_average']})",
            )
        )
    for gid, scenario, wanted, measure in [
        ("features_one_asof_5m", "snapshots_1", 5_000_000, "1 as-of, 4 windows"),
        ("features_one_asof_20m_3w", "scoring", 20_000_000, "1 as-of, 3 windows"),
        ("features_20m_6m_duckdb", "training", 20_000_000, "6 monthly as-of dates, 3 windows"),
    ]:
        row = find(scenario, wanted, "library_s", "duckdb_s")
        if row:
            goals.append(
                Goal(
                    gid,
                    f"library vs DuckDB (2 threads), {measure}, wall s",
                    row["library_s"],
                    "duckdb",
                    row["duckdb_s"],
                    0.7 if scenario == "training" else 1.5,
                    sizes=sizes(row),
                    note=note(row, wanted, "library", "duckdb"),
                )
            )
    row = find("training", 20_000_000, "library_s", "naive_s")
    if row:
        goals.append(
            Goal(
                "features_20m_6m_naive",
                "naive Spark over library (value = naive, baseline = library: the speed-up), "
                "6 monthly as-of dates, 3 windows, wall s",
                row["naive_s"],
                "library",
                row["library_s"],
                3.0,
                direction=">=",
                sizes=sizes(row),
                note=note(row, 20_000_000, "library", "naive"),
            )
        )
    return goals


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'events':>11} {'users':>8} {'scenario':>12} {'spine':>8} {'library s':>10} "
        f"{'lib CPU s':>10} {'naive s':>9} {'duckdb s':>9} {'naive/lib':>10} "
        f"{'lib/duckdb':>11} {'load':>5}"
    )
    print("\n" + header + "\n" + "-" * len(header))

    def cell(row: dict[str, Any], key: str, width: int, suffix: str = "") -> str:
        value = row.get(key)
        if value is None:
            return " " * (width - 1) + "-"
        return f"{value:>{width - len(suffix)}.2f}{suffix}"

    for row in rows:
        print(
            f"{row['events']:>11,} {row['n_users']:>8,} {row['scenario']:>12} "
            f"{row['spine_rows']:>8,} {cell(row, 'library_s', 10)} "
            f"{cell(row, 'library_cpu_s', 10)} {cell(row, 'naive_s', 9)} "
            f"{cell(row, 'duckdb_s', 9)} {cell(row, 'naive_over_library', 10, 'x')} "
            f"{cell(row, 'library_over_duckdb', 11, 'x')} {cell(row, 'max_load_average', 5)}"
        )


if __name__ == "__main__":
    sys.exit(main())
