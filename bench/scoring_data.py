"""The inputs of the scoring benchmarks, prepared once and reused (never timed).

* a model: the demo's features (``conf/features.yaml``) and XGBoost, trained with the
  library's own :func:`~sparkml_prod.runs.train.run_training` on a small synthetic
  training set and registered (``production``) in a registry under the output directory;
  its booster, number of trees and category codes are also saved for the single-node
  contender (``single_node/``);
* per size, a synthetic clickstream for scoring: ``n_users`` users over the 90 days
  before the as-of (0.1 events per user per day), as Delta tables (what the job reads)
  and as Parquet (what DuckDB reads).

Each part is rebuilt only when what it is made from changed (the spec, the training
config, the feature spec, the generator's source), or with ``--regenerate``. Run in its
own process (``python bench/scoring_data.py --output DIR --users N [N ...]``) so that its
Spark driver does not sit beside the timed jobs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

AS_OF = dt.date(2024, 7, 1)
SCORING_DAYS, SCORING_RATE, SCORING_SEED = 90, 0.1, 5
TRAIN_USERS, TRAIN_RATE, TRAIN_SEED = 5000, 0.3, 42
TRAIN_START = dt.date(2023, 1, 1)
MODEL = "purchase_30d"
FEATURE_SPEC = ROOT / "conf" / "features.yaml"

# The demo's conf/train.yaml, smaller: fewer snapshots, no search, no backtest.
TRAIN_YAML = """\
model_name: {model}
registry_root: {registry}
feature_spec: {feature_spec}
sources:
  events: {tables}/events
  user_attributes: {tables}/user_attributes
spine: {{source: events, lookback: 90d}}
label: {{source: events, filter: "event_type = 'purchase'", horizon: 30d}}
split:
  train: {{start: 2023-10-01, end: 2024-02-25, every: 28d}}
  validation: [2024-03-31]
  test: [2024-06-01]
matrix_table: {tables}/training_matrix
report_dir: {root}/report
model:
  type: xgboost
  num_workers: 2
  task_cpus: 1
  early_stopping_rounds: 20
  params: {{n_estimators: 200, max_depth: 5, learning_rate: 0.1, min_child_weight: 5}}
promote_to: production
"""


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
    return h.hexdigest()[:16]


def generator_fingerprint() -> str:
    return digest((ROOT / "sparkml_prod" / "data" / "synthetic.py").read_bytes())


def model_dir(output: Path) -> Path:
    return output / "model"


def data_dir(output: Path, n_users: int) -> Path:
    return output / f"users_{n_users}"


def scoring_spec_dict(n_users: int) -> dict[str, Any]:
    return {
        "n_users": n_users,
        "start": str(AS_OF - dt.timedelta(days=SCORING_DAYS)),
        "end": str(AS_OF),
        "seed": SCORING_SEED,
        "events_per_user_per_day": SCORING_RATE,
        "generator": generator_fingerprint(),
    }


def _unchanged(meta_path: Path, wanted: dict[str, Any]) -> dict[str, Any] | None:
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    return meta if meta.get("inputs") == wanted else None


def model_inputs(output: Path) -> tuple[str, dict[str, Any]]:
    """The training config's text and everything the model is made from."""
    root = model_dir(output)
    config_text = TRAIN_YAML.format(
        model=MODEL,
        registry=root / "registry",
        feature_spec=FEATURE_SPEC,
        tables=root / "train_tables",
        root=root,
    )
    wanted = {
        "train_users": TRAIN_USERS,
        "rate": TRAIN_RATE,
        "seed": TRAIN_SEED,
        "start": str(TRAIN_START),
        "end": str(AS_OF),
        "config": digest(config_text),
        "feature_spec": digest(FEATURE_SPEC.read_bytes()),
        "generator": generator_fingerprint(),
    }
    return config_text, wanted


def prepare_model(spark: Any, output: Path, regenerate: bool) -> dict[str, Any]:
    """Train and register the bench model once; save what the single-node scorer needs."""
    from sparkml_prod.core.config import TrainConfig, load_config
    from sparkml_prod.core.tables import write_table
    from sparkml_prod.data.synthetic import (
        SyntheticSpec,
        generate_events,
        generate_user_attributes,
        generate_users,
    )
    from sparkml_prod.runs.train import run_training

    root = model_dir(output)
    tables = root / "train_tables"
    config_text, wanted = model_inputs(output)
    meta_path = root / "meta.json"
    meta = None if regenerate else _unchanged(meta_path, wanted)
    if meta is not None:
        print(f"  reusing model {meta['model']} ({meta['features']} features)", flush=True)
        return meta
    t0 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    spec = SyntheticSpec(
        n_users=TRAIN_USERS, start=TRAIN_START, end=AS_OF, seed=TRAIN_SEED,
        events_per_user_per_day=TRAIN_RATE,
    )  # fmt: skip
    for name, build in (
        ("users", generate_users),
        ("events", generate_events),
        ("user_attributes", generate_user_attributes),
    ):
        write_table(build(spark, spec), str(tables / name), mode="overwrite")
    (root / "train.yaml").write_text(config_text)
    run = run_training(spark, load_config(root / "train.yaml", TrainConfig))
    print(f"  trained {run.model_name}/{run.version}: test ROC AUC {run.metrics['roc_auc']:.3f}")
    meta = {
        "inputs": wanted,
        "model": f"{run.model_name}/{run.version}",
        "registry": str(root / "registry"),
        "trained_sources": {
            "events": str(tables / "events"),
            "user_attributes": str(tables / "user_attributes"),
        },
        "test_roc_auc": round(float(run.metrics["roc_auc"]), 4),
        **export_for_single_node(spark, root),
        "preparation_s": round(time.perf_counter() - t0, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def export_for_single_node(spark: Any, root: Path) -> dict[str, Any]:
    """The registered model's booster (``BoosterScore.getBooster()`` of its last stage),
    its number of trees, feature order and the fitted category codes, for DuckDB."""
    from pyspark.ml.feature import StringIndexerModel

    from sparkml_prod.modeling.booster_score import BoosterScore
    from sparkml_prod.registry import ModelRegistry

    registry = ModelRegistry(spark, str(root / "registry"))
    version = registry.get(f"{MODEL}@production")
    pipeline = registry.load_version(version)
    last = pipeline.stages[-1]
    if not isinstance(last, BoosterScore):
        raise RuntimeError(f"the model's last stage is {type(last).__name__}, not BoosterScore")
    target = root / "single_node"
    target.mkdir(parents=True, exist_ok=True)
    last.getBooster().save_model(str(target / "booster.ubj"))
    codes: dict[str, dict[str, Any]] = {}
    for stage in pipeline.stages:
        if isinstance(stage, StringIndexerModel):
            for source, output, labels in zip(
                stage.getInputCols(), stage.getOutputCols(), stage.labelsArray, strict=True
            ):
                codes[output] = {"input": source, "labels": list(labels)}
    model = {
        "feature_names": list(last.getFeatureCols()),
        "num_trees": last.getNumTrees(),
        "category_codes": codes,
    }
    (target / "model.json").write_text(json.dumps(model, indent=2))
    return {"features": len(model["feature_names"]), "num_trees": model["num_trees"]}


def prepare_scoring_data(
    spark: Any, output: Path, n_users: int, regenerate: bool
) -> dict[str, Any]:
    """The scoring clickstream for ``n_users`` users, as Delta and as Parquet."""
    from sparkml_prod.core.tables import write_table
    from sparkml_prod.data.synthetic import (
        SyntheticSpec,
        generate_events,
        generate_user_attributes,
        generate_users,
    )

    root = data_dir(output, n_users)
    wanted = scoring_spec_dict(n_users)
    meta_path = root / "meta.json"
    meta = None if regenerate else _unchanged(meta_path, wanted)
    if meta is not None:
        print(f"  reusing {meta['events']:,} events of {n_users:,} users", flush=True)
        return meta
    t0 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    spec = SyntheticSpec(
        n_users=n_users,
        start=AS_OF - dt.timedelta(days=SCORING_DAYS),
        end=AS_OF,
        seed=SCORING_SEED,
        events_per_user_per_day=SCORING_RATE,
    )
    counts = {}
    for name, build in (
        ("users", generate_users),
        ("events", generate_events),
        ("user_attributes", generate_user_attributes),
    ):
        write_table(build(spark, spec), str(root / "delta" / name), mode="overwrite")
        stored = spark.read.format("delta").load(str(root / "delta" / name))
        stored.write.mode("overwrite").parquet(str(root / "parquet" / name))
        counts[name] = stored.count()
    meta = {
        "inputs": wanted,
        "users": n_users,
        "events": counts["events"],
        "user_attribute_rows": counts["user_attributes"],
        "preparation_s": round(time.perf_counter() - t0, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    print(
        f"  generated {counts['events']:,} events of {n_users:,} users in "
        f"{meta['preparation_s']:.0f}s",
        flush=True,
    )
    return meta


def all_reusable(output: Path, users: list[int]) -> bool:
    """Whether every part is there and made from the same inputs (no Spark needed)."""
    if _unchanged(model_dir(output) / "meta.json", model_inputs(output)[1]) is None:
        return False
    return all(
        _unchanged(data_dir(output, n) / "meta.json", scoring_spec_dict(n)) is not None
        for n in users
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--users", type=int, nargs="*", default=[])
    parser.add_argument("--regenerate", action="store_true")
    args = parser.parse_args(argv)
    output = Path(args.output).resolve()
    if not args.regenerate and all_reusable(output, args.users):
        print("  reusing the model and every data set (no Spark needed)", flush=True)
        return 0
    from sparkml_prod.core.session import get_spark

    spark = get_spark(
        "bench-scoring-prepare",
        master="local[2]",
        ui=False,
        conf={"spark.driver.memory": "4g", "spark.ui.showConsoleProgress": "false"},
    )
    prepare_model(spark, output, args.regenerate)
    for n in args.users:
        prepare_scoring_data(spark, output, n, args.regenerate)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
