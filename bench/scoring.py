"""Benchmark of batch scoring: rows/s of the scoring job, against Booster.inplace_predict.

Run from the repository root after ``make demo`` (it scores with the demo's registered
``purchase_30d@production``)::

    .venv/bin/python bench/scoring.py                 # 1M users, ~5 minutes

Data: the synthetic clickstream for ``--users`` users over the 90 days before the as-of
(0.1 events per user-day), written once to ``bench-output/scoring/`` and reused.
The model reads it through the scoring config's ``sources`` mapping, and the spine is
every user of the users table (``spine.users_table``), so every user gets a score.

Timed, each best of ``--repeats``:

1. ``run_scoring``: the whole job (spine, schema checks, features from the events,
   XGBoost, the Delta partition write), as ``jobs/score.py`` runs it;
2. the model stages alone (assembler, XGBoost, score) on the pre-computed feature matrix
   (Parquet), forced by writing the scores;
3. ``Booster.inplace_predict`` on the same pre-computed matrix as a NumPy array (collected
   before the clock starts), 2 threads: the single-process baseline.

Ratios are against (3) of the same run. Results go to ``bench-output/scoring.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pyspark.ml import PipelineModel  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from timing import best_of  # noqa: E402

from sparkml_prod.core.config import ScoreConfig, ScoringSpineConfig  # noqa: E402
from sparkml_prod.core.session import get_spark  # noqa: E402
from sparkml_prod.core.tables import table_exists, write_table  # noqa: E402
from sparkml_prod.data.synthetic import (  # noqa: E402
    SyntheticSpec,
    generate_events,
    generate_user_attributes,
    generate_users,
)
from sparkml_prod.registry import ModelRegistry  # noqa: E402
from sparkml_prod.runs.score import run_scoring  # noqa: E402

AS_OF = dt.date(2024, 7, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--registry", default="demo-output/models")
    parser.add_argument("--model", default="purchase_30d@production")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "bench-output"))
    args = parser.parse_args(argv)

    spark = get_spark(
        "bench-scoring", master="local[2]", ui=False, conf={"spark.driver.memory": "8g"}
    )
    data = Path(args.output).resolve() / "scoring" / f"users_{args.users}"
    tables = {n: str(data / n) for n in ("users", "events", "user_attributes")}
    spec = SyntheticSpec(
        n_users=args.users,
        start=AS_OF - dt.timedelta(days=90),
        end=AS_OF,
        seed=5,
        events_per_user_per_day=0.1,
    )
    if not all(table_exists(spark, t) for t in tables.values()):
        for name, build in (
            ("users", generate_users),
            ("events", generate_events),
            ("user_attributes", generate_user_attributes),
        ):
            write_table(build(spark, spec), tables[name], mode="overwrite")
    n_events = spark.read.format("delta").load(tables["events"]).count()

    registry = ModelRegistry(spark, args.registry)
    version = registry.get(args.model)
    trained = version.card.training_config["sources"]
    sources = {trained[name]: tables[name] for name in ("events", "user_attributes")}
    config = ScoreConfig(
        model=args.model,
        registry_root=args.registry,
        output_table=str(data / "scores"),
        sources=sources,
        spine=ScoringSpineConfig(users_table=tables["users"]),
    )
    print(
        f"{args.users:,} users, {n_events:,} events; model {version.name}/{version.version}",
        flush=True,
    )
    runs = []
    job_s = best_of(args.repeats, lambda: runs.append(run_scoring(spark, config, AS_OF)))
    rows = runs[-1].rows

    # The pre-computed matrix: the same feature stages on the same spine.
    from sparkml_prod.runs.score import load_model, scoring_spine

    loaded = load_model(registry, args.model, sources)
    n_features = len(version.card.feature_names)
    stages = loaded.pipeline.stages
    count = version.card.feature_stage_count
    feature_stages, model_stages = stages[:count], stages[count:]
    instant = dt.datetime(AS_OF.year, AS_OF.month, AS_OF.day)
    spine = scoring_spine(spark, loaded, config, instant, sources)
    matrix_path = str(data / "matrix")
    PipelineModel(stages=feature_stages).transform(spine).write.mode("overwrite").parquet(
        matrix_path
    )
    matrix = spark.read.parquet(matrix_path)
    names = version.card.feature_names

    def model_only() -> None:
        out = PipelineModel(stages=model_stages).transform(matrix)
        out.select("user_id", "score").write.mode("overwrite").parquet(str(data / "model_only"))

    model_s = best_of(args.repeats, model_only)
    x = matrix.select(*[F.col(c).cast("float") for c in names]).toPandas().to_numpy(np.float32)
    booster = model_stages[1].get_booster()
    booster.set_param({"nthread": 2})
    local_s = best_of(args.repeats, lambda: booster.inplace_predict(x, missing=np.nan))

    results = [
        ("scoring job end to end (run_scoring)", job_s),
        ("model stages on the pre-computed matrix (Spark)", model_s),
        ("Booster.inplace_predict on the same matrix", local_s),
    ]
    print(f"\n{'what':50s} {'best s':>8s} {'rows/s':>12s} {'x inplace':>10s}")
    for name, seconds in results:
        print(f"{name:50s} {seconds:8.1f} {rows / seconds:12,.0f} {seconds / local_s:10.1f}")
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "scoring.json").write_text(
        json.dumps(
            {
                "users": args.users,
                "events": n_events,
                "rows": rows,
                "features": n_features,
                "model": f"{version.name}/{version.version}",
                "results": [
                    {
                        "what": n,
                        "seconds": round(s, 2),
                        "rows_per_s": round(rows / s),
                        "ratio_to_inplace_predict": round(s / local_s, 1),
                    }
                    for n, s in results
                ],
            },
            indent=2,
        )
    )
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
