"""Benchmark of model fitting and scoring: ``xgboost.spark`` against single-process XGBoost.

Run from the repository root after ``make demo`` (it reads the demo's training matrix)::

    .venv/bin/python bench/training.py

On the same training rows, with the same parameters and a fixed number of trees (no early
stopping, so both build exactly the same number), it times

1. ``SparkXGBClassifier.fit`` with ``num_workers=2`` on a dense vector column
   (``VectorAssembler(handleInvalid="keep")``, what the library uses);
2. the same with the feature columns passed as a list (``features_col=[...]``);
3. ``xgboost.train`` in this process with ``nthread=2`` on a NumPy matrix (the data is
   collected before the clock starts: the time is the fit alone);

and scoring of the whole matrix: the fitted Spark models' ``transform`` forced by an
aggregate over the score (``count()`` alone would not run the prediction), against
``Booster.inplace_predict`` on the collected matrix. Each is run ``--repeats`` times; the
best time counts. Ratios are against the single-process baseline of the same run.
Results go to ``bench-output/training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import xgboost  # noqa: E402
from pyspark.ml import Pipeline  # noqa: E402
from pyspark.ml.feature import VectorAssembler  # noqa: E402
from pyspark.ml.functions import vector_to_array  # noqa: E402
from pyspark.sql import DataFrame  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from timing import best_of  # noqa: E402
from xgboost.spark import SparkXGBClassifier  # noqa: E402

from sparkml_prod.core.session import get_spark  # noqa: E402

PARAMS = {"max_depth": 5, "learning_rate": 0.1, "subsample": 0.8, "min_child_weight": 5}


def force_scores(scored: DataFrame) -> float:
    row = scored.agg(F.sum(vector_to_array("probability")[1])).head()
    assert row is not None
    return float(row[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--matrix", default="demo-output/tables/training_matrix")
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "bench-output"))
    args = parser.parse_args(argv)

    spark = get_spark("bench-training", master="local[2]", ui=False)
    matrix = spark.read.format("delta").load(args.matrix)
    keys = {"user_id", "as_of", "label", "split"}
    numeric = ("int", "bigint", "double", "float", "smallint", "tinyint")
    features = [
        f.name
        for f in matrix.schema.fields
        if f.name not in keys and f.dataType.simpleString() in numeric
    ]
    train = matrix.where(F.col("split") == "train").cache()
    n_train, n_all = train.count(), matrix.count()
    print(
        f"matrix {args.matrix}: {n_train:,} training rows of {n_all:,}, {len(features)} "
        f"features; {args.trees} trees, {PARAMS}; {os.cpu_count()} cores",
        flush=True,
    )

    # Single process: the data collected first, outside the timed fit.
    pdf = train.select(*features, "label").toPandas()
    x, y = pdf[features].to_numpy(dtype=np.float32), pdf["label"].to_numpy()
    booster_params = {
        **PARAMS,
        "objective": "binary:logistic",
        "nthread": 2,
        "eta": PARAMS["learning_rate"],
    }
    booster_params.pop("learning_rate")

    def fit_local() -> xgboost.Booster:
        return xgboost.train(
            booster_params, xgboost.DMatrix(x, label=y, missing=np.nan), num_boost_round=args.trees
        )

    local_fit = best_of(args.repeats, fit_local)
    booster = fit_local()

    vector_pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=features, outputCol="features", handleInvalid="keep"),
            SparkXGBClassifier(
                features_col="features",
                label_col="label",
                num_workers=2,
                n_estimators=args.trees,
                verbose=False,
                **PARAMS,
            ),
        ]
    )
    list_estimator = SparkXGBClassifier(
        features_col=features,
        label_col="label",
        num_workers=2,
        n_estimators=args.trees,
        verbose=False,
        **PARAMS,
    )
    fitted: dict[str, Any] = {}

    def fit_vector() -> None:
        fitted["vector"] = vector_pipeline.fit(train)

    def fit_list() -> None:
        fitted["list"] = list_estimator.fit(train)

    spark_vector_fit = best_of(args.repeats, fit_vector)
    spark_list_fit = best_of(args.repeats, fit_list)

    everything = matrix.select(*features, "label").cache()
    everything.count()
    x_all = everything.select(*features).toPandas().to_numpy(dtype=np.float32)
    local_score = best_of(args.repeats, lambda: booster.inplace_predict(x_all, missing=np.nan))
    vector_score = best_of(
        args.repeats, lambda: force_scores(fitted["vector"].transform(everything))
    )
    list_score = best_of(args.repeats, lambda: force_scores(fitted["list"].transform(everything)))

    rows = [
        ("fit: xgboost.train, 1 process, nthread=2", local_fit, local_fit),
        ("fit: SparkXGBClassifier, vector input", spark_vector_fit, local_fit),
        ("fit: SparkXGBClassifier, column list", spark_list_fit, local_fit),
        ("score: Booster.inplace_predict", local_score, local_score),
        ("score: Spark transform, vector input", vector_score, local_score),
        ("score: Spark transform, column list", list_score, local_score),
    ]
    print(f"\n{'what':48s} {'best s':>8s} {'x baseline':>10s} {'rows/s':>12s}")
    for name, seconds, base in rows:
        n = n_train if name.startswith("fit") else n_all
        print(f"{name:48s} {seconds:8.2f} {seconds / base:10.2f} {n / seconds:12,.0f}")
    Path(args.output).mkdir(parents=True, exist_ok=True)
    out = {
        "matrix": args.matrix,
        "train_rows": n_train,
        "rows": n_all,
        "features": len(features),
        "trees": args.trees,
        "params": PARAMS,
        "xgboost": xgboost.__version__,
        "results": [
            {"what": n, "seconds": round(s, 3), "ratio": round(s / b, 2)} for n, s, b in rows
        ],
    }
    (Path(args.output) / "training.json").write_text(json.dumps(out, indent=2))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
