"""Benchmark of XGBoost training on Spark: the library's fit against xgboost.spark and
single-process ``xgboost.train``, on the same rows with the same parameters.

Run from the repository root (no demo needed)::

    .venv/bin/python bench/training.py                                 # 2M rows x 42 features
    .venv/bin/python bench/training.py --rows 100000 --repeats 1       # smoke run

Data (made once per size and reused, not timed): a seeded random matrix of ``--rows`` x
``--features`` doubles, about 5% missing (null in even features, NaN in odd ones), a label
drawn from a logistic signal of six features (with an interaction), an ``id`` column and
``split = 'train'``, written as a Delta table of 4 files under ``bench-output/training/``.

Timed, interleaved, each best of ``--repeats`` (wall, and CPU seconds: of this process with
its Spark JVM and Python workers for (a) and (b), of this process for (c)), all with
``--trees`` trees of depth ``--depth``, learning rate 0.1 and no early stopping, so every
contender builds the same number of trees:

a. the library's fit as training runs it: ``fit_candidate`` from the Delta table
   (cast, partition and persist the rows, one Spark job of ``--workers`` tasks of
   ``--task-cpus`` threads running ``xgboost.train`` on Arrow batches, the booster back
   as a ``BoosterScore``), ``num_workers=--workers``;
b. the previous path: ``VectorAssembler(handleInvalid="keep")`` -> ``SparkXGBClassifier``
   (``num_workers=--workers``) fitted on the same Delta table;
c. ``xgboost.train`` in this process, ``nthread = workers x task_cpus``, on the same rows
   collected to a float32 NumPy matrix (``DMatrix``) before the clock starts;
d. (only with ``--contenders ... xgboost_train_1``) the same with ``nthread=1``.

Before the timed runs the Spark contenders fit once on 1,000 rows (untimed) so that the
Python workers have started and imported XGBoost. Afterwards, untimed, each model's
predictions on the first 100k rows are compared with (c)'s and their training ROC AUC is
printed. The goal ``training_2m`` (a <= 1.5 x c, wall time) goes to
``bench/results/training.json`` through :mod:`results`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import xgboost  # noqa: E402
from pyspark.ml import Pipeline  # noqa: E402
from pyspark.ml.feature import VectorAssembler  # noqa: E402
from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from results import Goal, write_results  # noqa: E402
from timing import best_of_with_cpu  # noqa: E402
from xgboost.spark import SparkXGBClassifier  # noqa: E402

from sparkml_prod.core.config import ModelConfig  # noqa: E402
from sparkml_prod.core.session import get_spark  # noqa: E402
from sparkml_prod.core.tables import table_exists, write_table  # noqa: E402
from sparkml_prod.modeling.training import fit_candidate, xgboost_training_rows  # noqa: E402

SEED = 23
MISSING_SHARE = 0.05
FILES = 4
CHECK_ROWS = 100_000


def generate(spark: SparkSession, data: Path, rows: int, features: list[str]) -> None:
    """The matrix as a Delta table (via Parquet written from NumPy, in ``FILES`` parts)."""
    rng = np.random.default_rng(SEED)
    staging = data / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    weights = np.array([1.0, -0.8, 0.6, 0.5, -0.4, 0.3])
    size = math.ceil(rows / FILES)
    for part, start in enumerate(range(0, rows, size)):
        n = min(size, rows - start)
        values = rng.normal(size=(n, len(features)))
        signal = values[:, :6] @ weights + 0.5 * values[:, 0] * values[:, 1]
        label = (rng.random(n) < 1 / (1 + np.exp(-signal))).astype(np.int32)
        values[rng.random(values.shape) < MISSING_SHARE] = np.nan
        columns = {"id": pa.array(np.arange(start, start + n, dtype=np.int64))}
        for j, name in enumerate(features):
            # from_pandas turns NaN into null: even features null, odd features NaN
            columns[name] = pa.array(values[:, j], from_pandas=j % 2 == 0)
        columns["label"] = pa.array(label)
        columns["split"] = pa.array(["train"] * n)
        pq.write_table(pa.table(columns), staging / f"part-{part}.parquet")
    write_table(spark.read.parquet(str(staging)), str(data / "matrix"), mode="overwrite")


def xgboost_spark_fit(
    rows: DataFrame, features: list[str], params: dict[str, Any], workers: int
) -> Any:
    """The previous training path: a vector column, then SparkXGBClassifier."""
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=features, outputCol="features", handleInvalid="keep"),
            SparkXGBClassifier(
                features_col="features",
                label_col="label",
                num_workers=workers,
                feature_names=features,
                missing=math.nan,
                verbose=False,
                **params,
            ),
        ]
    )
    return pipeline.fit(rows).stages[1].get_booster()


def auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by ranks (ties averaged)."""
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    positives = label.sum()
    negatives = len(label) - positives
    above = ranks[label == 1].sum() - positives * (positives + 1) / 2
    return float(above / (positives * negatives))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=42)
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--task-cpus", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--contenders", nargs="+", default=["ours", "xgboost_spark", "xgboost_train"]
    )
    parser.add_argument("--output", default=str(ROOT / "bench-output"))
    args = parser.parse_args(argv)
    threads = args.workers * args.task_cpus

    spark = get_spark(
        "bench-training",
        master="local[2]",
        ui=False,
        conf={"spark.driver.memory": "8g", "spark.task.cpus": str(args.task_cpus)},
    )
    features = [f"f{j:02d}" for j in range(args.features)]
    data = Path(args.output).resolve() / "training" / f"{args.rows}x{args.features}"
    matrix_ref = str(data / "matrix")
    if not table_exists(spark, matrix_ref):
        generate(spark, data, args.rows, features)
    table = spark.read.format("delta").load(matrix_ref)

    # The rows collected once (ordered by id), outside every clock: the baseline's input.
    frame = table.orderBy("id").toPandas()
    x = frame[features].to_numpy(dtype=np.float32)
    y = frame["label"].to_numpy()
    del frame
    print(
        f"{len(y):,} rows x {len(features)} features ({y.mean():.1%} positive); {args.trees} "
        f"trees of depth {args.depth}; {args.workers} worker(s) x {args.task_cpus} thread(s); "
        f"{os.cpu_count()} cores, local[2]",
        flush=True,
    )

    params = {"n_estimators": args.trees, "max_depth": args.depth, "learning_rate": 0.1}
    native = {
        "objective": "binary:logistic",
        "max_depth": args.depth,
        "eta": 0.1,
        "nthread": threads,
    }
    model = ModelConfig(
        num_workers=args.workers, task_cpus=args.task_cpus, early_stopping_rounds=None
    )
    boosters: dict[str, xgboost.Booster] = {}

    phases: dict[str, float] = {}

    def ours(rows: DataFrame) -> xgboost.Booster:
        # fit_candidate's steps, timed apart: prepare (read, cast, partition, persist,
        # count) and the fit job
        started = time.perf_counter()
        prepared = xgboost_training_rows(rows, model, features)
        phases["prepare_s"] = time.perf_counter() - started
        try:
            (stage,) = fit_candidate(rows, model, features, params, prepared=prepared).stages
        finally:
            prepared.release()
        phases["fit_job_s"] = time.perf_counter() - started - phases["prepare_s"]
        return stage.getBooster()

    def theirs(rows: DataFrame) -> xgboost.Booster:
        return xgboost_spark_fit(rows, features, params, args.workers)

    def single(nthread: int = threads) -> xgboost.Booster:
        dtrain = xgboost.DMatrix(x, label=y, missing=np.nan, feature_names=features)
        settings = {**native, "nthread": nthread}
        return xgboost.train(settings, dtrain, num_boost_round=args.trees)

    contenders: dict[str, tuple[str, Callable[[], xgboost.Booster]]] = {
        "ours": ("a. library fit_candidate (Delta -> BoosterScore)", lambda: ours(table)),
        "xgboost_spark": ("b. VectorAssembler -> SparkXGBClassifier", lambda: theirs(table)),
        "xgboost_train": (f"c. xgboost.train, 1 process, nthread={threads}", single),
        # not a default: one thread, the compute without OpenMP's waits on a busy machine
        "xgboost_train_1": ("d. xgboost.train, 1 process, nthread=1", lambda: single(1)),
    }
    warm = table.where("id < 1000")
    for name, warm_up in (("ours", ours), ("xgboost_spark", theirs)):
        if name in args.contenders:
            warm_up(warm)
    # Interleaved (a, b, c, a, b, c, ...): a change in the machine's load hits all alike.
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in args.contenders}
    ours_phases: list[dict[str, float]] = []
    loads = [os.getloadavg()[0]]
    for repeat in range(args.repeats):
        for name in args.contenders:
            what, run = contenders[name]

            def keep(run: Callable[[], xgboost.Booster] = run, name: str = name) -> None:
                boosters[name] = run()

            if name.startswith("xgboost_train"):
                # this process alone: a Spark worker that exits meanwhile would take its
                # CPU seconds out of the process tree's total
                cpu_started, started = time.process_time(), time.perf_counter()
                keep()
                wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            else:
                wall, cpu = best_of_with_cpu(1, keep)
            runs[name].append((wall, cpu))
            loads.append(os.getloadavg()[0])
            detail = ""
            if name == "ours":
                detail = ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
                ours_phases.append(dict(phases))
            print(f"{repeat + 1}: {what}: {wall:.2f} s wall, {cpu:.2f} s CPU {detail}", flush=True)
    measured = {
        name: (min(w for w, _ in times), min(c for _, c in times)) for name, times in runs.items()
    }

    rows: list[dict[str, Any]] = []
    reference = boosters.get("xgboost_train")
    check = x[:CHECK_ROWS]
    for name, (what, _) in contenders.items():
        if name not in measured:
            continue
        wall, cpu = measured[name]
        booster = boosters[name]
        booster.set_param({"nthread": 2})
        scores = booster.inplace_predict(check, missing=np.nan)
        row: dict[str, Any] = {
            "what": what,
            "seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2),
            "trees": booster.num_boosted_rounds(),
            "train_auc_first_100k": round(auc(y[:CHECK_ROWS], scores), 5),
        }
        if name == "ours":
            row["phases_s"] = [{k: round(v, 2) for k, v in p.items()} for p in ours_phases]
        if reference is not None:
            base = reference.inplace_predict(check, missing=np.nan)
            row["max_abs_diff_vs_c"] = float(np.abs(scores - base).max())
            if "xgboost_train" in measured:
                c_wall, c_cpu = measured["xgboost_train"]
                row["x_c_wall"] = round(wall / c_wall, 2)
                row["x_c_cpu"] = round(cpu / c_cpu, 2)
        rows.append(row)
        print(row, flush=True)
    print(f"highest 1-minute load average seen: {max(loads):.2f} (above 2: a shared machine)")

    sizes = {
        "rows": len(y),
        "features": len(features),
        "trees": args.trees,
        "max_depth": args.depth,
        "num_workers": args.workers,
        "task_cpus": args.task_cpus,
    }
    if "ours" in measured and "xgboost_train" in measured:
        (a_wall, a_cpu), (c_wall, c_cpu) = measured["ours"], measured["xgboost_train"]
        label = "2m" if args.rows == 2_000_000 else f"{args.rows}"
        note = (
            f"CPU: {a_cpu:.1f} s vs {c_cpu:.1f} s = {a_cpu / c_cpu:.2f}x; highest load "
            f"average {max(loads):.1f} on {os.cpu_count()} cores"
        )
        if "xgboost_spark" in measured:
            b_wall, b_cpu = measured["xgboost_spark"]
            note += (
                f"; xgboost.spark {b_wall:.1f} s wall ({b_wall / c_wall:.2f}x), "
                f"{b_cpu:.1f} s CPU ({b_cpu / c_cpu:.2f}x)"
            )
        goal = Goal(
            f"training_{label}",
            f"fit, {len(y):,} x {len(features)}, {args.trees} trees depth {args.depth}",
            a_wall,
            f"xgboost.train nthread={threads}",
            c_wall,
            1.5,
            sizes=sizes,
            note=note,
        )
        write_results("training", [goal], rows)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
