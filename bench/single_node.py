"""The single-node contender of ``bench/scoring.py``: the demo's features in DuckDB SQL,
``Booster.inplace_predict`` with the registered model's booster, a Parquet write.

Run as its own process, timed from outside like the job::

    python bench/single_node.py --data DIR --model DIR --as-of 2024-07-01 --out scores.parquet

The SQL is written from the point-in-time rules of the feature stages' documentation, not
from their code: the features of ``conf/features.yaml`` for every user with an event in
the 90 days before as-of (the model's training population), each over the events with
``as_of - window <= event_time < as_of``:

* 3 windows x 10 aggregations (counts, filtered counts, sum / mean / max of purchase
  amounts, distinct sessions, categories and purchase sessions); counts and sums are 0
  without events, mean and max null;
* recency over 365 days: days (fractional) since the last and first event, purchase and
  add-to-cart, null without one;
* the user's plan and country from the attribute row with the latest ``valid_from``
  before as-of (ties: the greatest values), coded with the categories the model's
  ``StringIndexer`` learnt (an unseen or null category: the number of categories);
* four ratios, null for a zero denominator.

Prints the phase timings as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xgboost

WINDOWS = {"7d": 7, "30d": 30, "90d": 90}
SPINE_DAYS, RECENCY_DAYS = 90, 365
PURCHASE, CART = "event_type = 'purchase'", "event_type = 'add_to_cart'"
# (output stem, SQL aggregate over the window's events, zero when there are none)
AGGREGATES = [
    ("event_count", "count(*)", True),
    ("purchase_count", f"count(*) FILTER (WHERE {PURCHASE} AND {{w}})", True),
    ("cart_count", f"count(*) FILTER (WHERE {CART} AND {{w}})", True),
    ("product_view_count", "count(*) FILTER (WHERE event_type = 'product_view' AND {w})", True),
    ("amount_sum_purchase", f"sum(amount) FILTER (WHERE {PURCHASE} AND {{w}})", True),
    ("amount_mean_purchase", f"avg(amount) FILTER (WHERE {PURCHASE} AND {{w}})", False),
    ("amount_max_purchase", f"max(amount) FILTER (WHERE {PURCHASE} AND {{w}})", False),
    ("session_id_count_distinct", "count(DISTINCT session_id) FILTER (WHERE {w})", True),
    (
        "product_category_count_distinct",
        "count(DISTINCT product_category) FILTER (WHERE {w})",
        True,
    ),
    (
        "session_id_count_distinct_purchase",
        f"count(DISTINCT session_id) FILTER (WHERE {PURCHASE} AND {{w}})",
        True,
    ),
]
RECENCY = {"event": "TRUE", "purchase": PURCHASE, "cart": CART}
RATIOS = {
    "purchase_per_session_30d": ("purchase_count_30d", "session_id_count_distinct_30d"),
    "cart_to_purchase_90d": ("purchase_count_90d", "cart_count_90d"),
    "activity_trend_7d_30d": ("event_count_7d", "event_count_30d"),
    "activity_trend_30d_90d": ("event_count_30d", "event_count_90d"),
}


def features_sql(events: str, attributes: str, as_of: str, codes: dict[str, Any]) -> str:
    """One statement: a row per active user with every feature of the model."""
    a = f"TIMESTAMP '{as_of}'"
    aggregates, outputs = [], []
    for stem, template, zero in AGGREGATES:
        for window, days in WINDOWS.items():
            name = f"{stem}_{window}"
            in_window = f"event_time >= {a} - INTERVAL {days} DAY"
            expression = template.format(w=in_window)
            if template == "count(*)":
                expression = f"count(*) FILTER (WHERE {in_window})"
            aggregates.append(f"{expression} AS {name}")
            outputs.append(f"coalesce(g.{name}, 0) AS {name}" if zero else f"g.{name}")
    day_us = 86_400_000_000.0
    for subject, condition in RECENCY.items():
        for which, pick in (("last", "max"), ("first", "min")):
            name = f"days_since_{which}_{subject}"
            aggregates.append(f"{pick}(event_time) FILTER (WHERE {condition}) AS {name}_t")
            outputs.append(f"(epoch_us({a}) - epoch_us(g.{name}_t)) / {day_us} AS {name}")
    for output, code in codes.items():
        whens = " ".join(f"WHEN '{label}' THEN {i}" for i, label in enumerate(code["labels"]))
        outputs.append(
            f"CAST(CASE t.{code['input']} {whens} ELSE {len(code['labels'])} END AS DOUBLE) "
            f"AS {output}"
        )
    ratios = [
        f"CASE WHEN {d} = 0 THEN NULL ELSE CAST({n} AS DOUBLE) / {d} END AS {name}"
        for name, (n, d) in RATIOS.items()
    ]
    sep = ",\n      "
    return f"""
WITH ev AS (
  SELECT user_id, event_time, event_type, session_id, amount, product_category
  FROM read_parquet('{events}/*.parquet')
  WHERE user_id IS NOT NULL
    AND event_time >= {a} - INTERVAL {RECENCY_DAYS} DAY AND event_time < {a}
),
g AS (
  SELECT user_id,
      {sep.join(aggregates)}
  FROM ev GROUP BY user_id
  HAVING max(event_time) >= {a} - INTERVAL {SPINE_DAYS} DAY
),
t AS (
  SELECT user_id, plan, country FROM (
    SELECT user_id, plan, country, row_number() OVER (
      PARTITION BY user_id
      ORDER BY valid_from DESC, plan DESC NULLS LAST, country DESC NULLS LAST) AS rn
    FROM read_parquet('{attributes}/*.parquet')
    WHERE user_id IS NOT NULL AND valid_from < {a}
  ) WHERE rn = 1
),
f AS (
  SELECT g.user_id,
      {sep.join(outputs)}
  FROM g LEFT JOIN t ON t.user_id = g.user_id
)
SELECT *,
      {sep.join(ratios)}
FROM f
"""


def score(data: Path, model: Path, as_of: str, out: Path, threads: int = 2) -> dict[str, float]:
    """Features, scores, Parquet; the seconds of each phase."""
    meta = json.loads((model / "model.json").read_text())
    names = meta["feature_names"]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET memory_limit = '4GB'")
    con.execute("SET TimeZone = 'UTC'")
    sql = features_sql(
        str(data / "events"), str(data / "user_attributes"), as_of, meta["category_codes"]
    )
    table = con.sql(sql).to_arrow_table()
    con.close()
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise RuntimeError(f"the SQL lacks the model's features {missing}")
    timings["features_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    x = np.column_stack(
        [table.column(n).to_numpy(zero_copy_only=False).astype(np.float32) for n in names]
    )
    booster = xgboost.Booster()
    booster.load_model(str(model / "booster.ubj"))
    booster.set_param({"nthread": threads})
    scores = booster.inplace_predict(x, iteration_range=(0, meta["num_trees"]), missing=np.nan)
    timings["predict_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = pa.table(
        {"user_id": table.column("user_id"), "score": pa.array(scores.astype(np.float64))}
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(result, out)
    timings["write_s"] = time.perf_counter() - t0
    timings["rows"] = float(len(result))
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="directory of the Parquet tables")
    parser.add_argument("--model", required=True, help="directory of booster.ubj, model.json")
    parser.add_argument("--as-of", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    timings = score(Path(args.data), Path(args.model), args.as_of, Path(args.out), args.threads)
    print(json.dumps({k: round(v, 3) for k, v in timings.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
