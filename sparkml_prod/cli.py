"""The ``sparkml-prod`` command line: thin wrappers over library functions."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from sparkml_prod.core.config import (
    FeaturesConfig,
    GenerateConfig,
    IngestConfig,
    MonitorConfig,
    ScoreConfig,
    TrainConfig,
    load_config,
)
from sparkml_prod.core.errors import ConfigError, SparkmlProdError

__all__ = ["main", "generate_tables"]

log = logging.getLogger("sparkml_prod")


def generate_tables(config: GenerateConfig) -> dict[str, int]:
    """Generate the synthetic users, attributes and events tables; return row counts.

    Each table is replaced in one Delta commit, so a failed run leaves the previous
    version readable.
    """
    from sparkml_prod.core.session import get_spark
    from sparkml_prod.core.tables import read_table, write_table
    from sparkml_prod.data.synthetic import (
        SyntheticSpec,
        generate_events,
        generate_user_attributes,
        generate_users,
    )

    spark = get_spark("sparkml-prod-generate")
    spec = SyntheticSpec(
        n_users=config.n_users,
        start=config.start,
        end=config.end,
        seed=config.seed,
        events_per_user_per_day=config.events_per_user_per_day,
        drift_from=config.drift_from,
        drift_amount_factor=config.drift_amount_factor,
    )
    counts = {}
    for ref, build in (
        (config.users_table, generate_users),
        (config.user_attributes_table, generate_user_attributes),
        (config.events_table, generate_events),
    ):
        write_table(build(spark, spec), ref, mode="overwrite", options={"overwriteSchema": "true"})
        counts[ref] = read_table(spark, ref).count()
    return counts


def _generate(args: argparse.Namespace) -> int:
    config = load_config(args.config, GenerateConfig)
    if args.n_users is not None:
        config = GenerateConfig(**{**config.__dict__, "n_users": args.n_users})
    started = time.perf_counter()
    counts = generate_tables(config)
    for ref, rows in counts.items():
        print(f"wrote {rows:>12,} rows to Delta table {ref}")
    print(f"generated in {time.perf_counter() - started:.1f}s")
    return 0


def _features(args: argparse.Namespace) -> int:
    from sparkml_prod.core.session import get_spark
    from sparkml_prod.data.matrix import build_feature_matrix

    config = load_config(args.config, FeaturesConfig)
    started = time.perf_counter()
    rows, columns = build_feature_matrix(get_spark("sparkml-prod-features"), config)
    print(
        f"feature matrix: {rows:,} rows x {columns} columns "
        f"({len(config.spine.as_of_dates)} as-of dates) in Delta table {config.output_table}, "
        f"built in {time.perf_counter() - started:.1f}s"
    )
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from sparkml_prod.core.session import get_spark
    from sparkml_prod.data.ingest import run_ingest

    if (args.date is None) == (args.start is None and args.end is None):
        raise ConfigError("ingest needs --date D, or --from D1 --to D2 (both included).")
    if args.date is None and (args.start is None or args.end is None):
        raise ConfigError("ingest needs both --from and --to (both dates included).")
    start, end = (args.date, args.date) if args.date else (args.start, args.end)
    config = load_config(args.config, IngestConfig)
    spark = get_spark("sparkml-prod-ingest")
    run = run_ingest(spark, config, start, end, source=str(args.config))
    print(f"ingest run {run.run_id}: {run.start} .. {run.end} (UTC, both included)")
    print(
        f"read {run.read:,} records: {run.written:,} rows into {run.events_table}, "
        f"{run.quarantined:,} quarantined into {run.quarantine_table}, "
        f"{run.outside:,} outside the dates (not written)"
    )
    if run.reasons:
        print("quarantined: " + ", ".join(f"{k} {n:,}" for k, n in run.reasons.items()))
    if run.partitions is not None:
        where = f" between {run.bounds[0]} and {run.bounds[1]}" if run.bounds else ""
        print(f"read in {run.partitions} JDBC partition(s){where}")
    print(f"ingested in {run.seconds:.1f}s")
    return 0


def _train(args: argparse.Namespace) -> int:
    from sparkml_prod.core.session import get_spark
    from sparkml_prod.runs.train import run_training

    config = load_config(args.config, TrainConfig)
    # Threads per XGBoost worker; under spark-submit the submitted value is kept and checked.
    spark = get_spark("sparkml-prod-train", conf={"spark.task.cpus": str(config.model.task_cpus)})
    _print_training(run_training(spark, config))
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from sparkml_prod.core.session import get_spark
    from sparkml_prod.runs.retrain import retrain_config, run_retraining

    config = load_config(args.config, TrainConfig)
    run_date = args.as_of or dt.datetime.now(dt.timezone.utc).date()
    retrain_config(config, run_date)  # the config's retrain section, before Spark starts
    spark = get_spark("sparkml-prod-retrain", conf={"spark.task.cpus": str(config.model.task_cpus)})
    run = run_retraining(spark, config, run_date)
    dates = run.as_of_dates
    print(
        f"run date {run_date}: train {dates['train'][0]} .. {dates['train'][-1]} "
        f"({len(dates['train'])} snapshots), validation "
        f"{', '.join(dates['validation']) or 'held-out entities'}, test {', '.join(dates['test'])}"
    )
    _print_training(run)
    return 0


def _print_training(run: Any) -> None:
    m = run.metrics
    print(f"registered {run.model_name} version {run.version} at {run.model_path}")
    print(f"report: {run.report_path}")
    print(
        f"test: n={m['n']:,} base rate={m['base_rate']:.4f} ROC AUC={m['roc_auc']:.4f} "
        f"PR AUC={m['pr_auc']:.4f} log loss={m['log_loss']:.4f} Brier={m['brier']:.4f}"
    )
    if "business" in m:
        b = m["business"]
        print(
            f"business: best depth {b['best_depth']:.1%} of users, expected profit "
            f"{b['best_expected_profit']:,.0f} "
            f"(contacting everyone: {b['profit_contact_everyone']:,.0f})"
        )
    if run.deployed.fit == "refit":
        print(
            f"deployed: refit on {len(run.deployed.snapshots)} snapshots "
            f"({run.deployed.rows:,} rows, {run.deployed.num_trees} trees); the test metrics "
            "above are its time-gapped fit's"
        )
    if run.promotion_note:
        print(f"promotion: {run.promotion_note}")
    print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in run.timings.items()))


def _as_of(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--as-of must be a date YYYY-MM-DD, got {value!r}"
        ) from None


def _date(option: str) -> Any:
    def parse(value: str) -> dt.date:
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{option} must be a date YYYY-MM-DD, got {value!r}"
            ) from None

    return parse


def _score(args: argparse.Namespace) -> int:
    from sparkml_prod.core.session import get_spark
    from sparkml_prod.core.tables import read_table
    from sparkml_prod.runs.score import run_scoring

    config = load_config(args.config, ScoreConfig)
    as_of = args.as_of or dt.datetime.now(dt.timezone.utc).date()
    spark = get_spark("sparkml-prod-score")
    run = run_scoring(spark, config, as_of)
    print(
        f"scored {run.rows:,} users as of {run.as_of} ({run.by_variant}) into "
        f"{run.output_table} in {run.seconds:.1f}s (run {run.run_id})"
    )
    if args.show:
        written = read_table(spark, config.output_table).where(f"as_of = DATE'{as_of}'")
        written.orderBy("user_id").show(args.show, truncate=False)
    return 0


def _monitor(args: argparse.Namespace) -> int:
    from sparkml_prod.core.session import get_spark

    config = load_config(args.config, MonitorConfig)
    spark = get_spark("sparkml-prod-monitor")
    if args.action == "report":
        from sparkml_prod.monitoring.dashboard import write_dashboard
        from sparkml_prod.registry import ModelRegistry

        if not config.dashboard_dir:
            raise ConfigError(f"{args.config}: 'monitor report' needs dashboard_dir.")
        registry = ModelRegistry(spark, config.registry_root, config.allowed_stage_classes)
        path = write_dashboard(
            spark,
            config.history_table,
            config.model_name,
            config.dashboard_dir,
            reference_score=_reference_score(registry, config.model_name),
        )
        print(f"dashboard: {path}")
        return 0
    from sparkml_prod.monitoring.history import format_outcomes, format_summary
    from sparkml_prod.runs.monitor import run_monitoring

    as_of = args.as_of or dt.datetime.now(dt.timezone.utc).date()
    run = run_monitoring(spark, config, as_of)  # fail_on_alert: MonitoringAlertError, 7
    print(f"monitoring run {run.run_id}: {len(run.records)} measurements in {run.seconds:.1f}s")
    print(format_summary(run.records))
    print(format_outcomes(run.records))
    return 0


def _reference_score(registry: Any, model_name: str) -> Any:
    """The latest version's reference score bins (edges, shares), for the dashboard."""
    from sparkml_prod.monitoring.profile import ReferenceProfile

    card = registry.versions(model_name)[-1].card
    score = ReferenceProfile.from_dict(card.reference_profile).score
    if score is None:
        return None
    return [-math.inf, *score.edges, math.inf], list(score.shares)


def _models(args: argparse.Namespace) -> int:
    from sparkml_prod.core.session import get_spark
    from sparkml_prod.registry import ModelRegistry, format_versions

    spark = get_spark("sparkml-prod-models")
    registry = ModelRegistry(spark, args.registry, args.allow_class or ())
    if args.action == "list":
        names = [args.name] if args.name else registry.names()
        for name in names:
            print(f"== {name}")
            print(format_versions(registry.versions(name), registry.aliases(name)))
        return 0
    if args.name is None:
        raise ConfigError(f"models {args.action} needs a model: NAME, NAME/VERSION or NAME@ALIAS.")
    if args.action == "show":
        version = registry.get(args.name)
        print(json.dumps({"path": version.path, **dataclasses.asdict(version.card)}, indent=2))
        return 0
    if args.action == "rebuild":
        from sparkml_prod.runs.rebuild import rebuild_matrix

        result = rebuild_matrix(spark, registry, args.name, output_table=args.output_table)
        where = f" into {result.output_table}" if result.output_table else ""
        print(
            f"rebuilt the training matrix of {result.model}{where}: {result.rows:,} rows, "
            f"content hash {result.content_hash[:16]}, equal to the recorded one "
            f"({result.seconds:.1f}s)"
        )
        return 0
    if args.version is None:
        raise ConfigError("models promote needs --version N.")
    gate = None
    if args.config:
        from sparkml_prod.runs.promotion import comparison_gate, labelled_test_snapshot
        from sparkml_prod.runs.train import absolute_tables

        config = absolute_tables(load_config(args.config, TrainConfig))
        labelled = labelled_test_snapshot(registry, config)
        gate = comparison_gate(registry, labelled, None, config.search.metric, args.margin)
    promoted = registry.promote(args.name, args.version, args.alias, gate=gate)
    print(f"{args.alias} -> {promoted.name}/{promoted.version}")
    from sparkml_prod.registry.mlflow_registry import follow_promotion

    if follow_promotion(promoted, args.alias):
        assert promoted.card.mlflow is not None
        print(f"MLflow: {args.alias} -> {promoted.name}/{promoted.card.mlflow.model_version}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparkml-prod", description=__doc__)
    # Every command takes --debug: a library error then shows its traceback.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="show the traceback of an error, not only its message"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=help)

    generate = command("generate", help="write the synthetic clickstream tables")
    generate.add_argument("--config", required=True, help="YAML file (see conf/generate.yaml)")
    generate.add_argument("--n-users", type=int, default=None, help="override n_users")
    generate.set_defaults(run=_generate)
    features = command("features", help="build and write a feature matrix")
    features.add_argument("--config", required=True, help="YAML file (see conf/features_job.yaml)")
    features.set_defaults(run=_features)
    ingest = command("ingest", help="load CSV, Parquet or JDBC events into the Delta events table")
    ingest.add_argument("--config", required=True, help="YAML file (see conf/ingest.yaml)")
    ingest.add_argument("--date", type=_date("--date"), help="one UTC date YYYY-MM-DD")
    ingest.add_argument(
        "--from", dest="start", type=_date("--from"), help="first UTC date (included)"
    )
    ingest.add_argument("--to", dest="end", type=_date("--to"), help="last UTC date (included)")
    ingest.set_defaults(run=_ingest)
    train = command("train", help="build the training matrix, train, evaluate, report, register")
    train.add_argument("--config", required=True, help="YAML file (see conf/train.yaml)")
    train.set_defaults(run=_train)
    retrain = command(
        "retrain", help="train on the split of a run date and promote only through the gate"
    )
    retrain.add_argument("--config", required=True, help="YAML file with a retrain section")
    retrain.add_argument(
        "--as-of", type=_as_of, default=None, help="the run date YYYY-MM-DD (default: today, UTC)"
    )
    retrain.set_defaults(run=_retrain)
    score = command("score", help="score every user at an as-of date into Delta")
    score.add_argument("--config", required=True, help="YAML file (see conf/score.yaml)")
    score.add_argument(
        "--as-of", type=_as_of, default=None, help="YYYY-MM-DD (default: today, UTC)"
    )
    score.add_argument("--show", type=int, default=0, help="print this many output rows")
    score.set_defaults(run=_score)
    monitor = command("monitor", help="drift, realised performance and impact into the history")
    monitor.add_argument(
        "action",
        nargs="?",
        choices=["run", "report"],
        default="run",
        help="run (default): monitor the scores of --as-of; report: write the dashboard",
    )
    monitor.add_argument("--config", required=True, help="YAML file (see conf/monitor.yaml)")
    monitor.add_argument(
        "--as-of", type=_as_of, default=None, help="the scored date (default: today, UTC)"
    )
    monitor.set_defaults(run=_monitor)
    models = command("models", help="list, show, promote or rebuild registered models")
    models.add_argument("action", choices=["list", "show", "promote", "rebuild"])
    models.add_argument("name", nargs="?", help="model: name, name/3 or name@alias")
    models.add_argument("--registry", required=True, help="registry root (registry_root)")
    models.add_argument("--version", type=int, help="promote: the version to promote")
    models.add_argument("--alias", default="production", help="promote: alias to move")
    models.add_argument(
        "--config",
        help="promote: a train config whose test snapshot the candidate must win on",
    )
    models.add_argument("--margin", type=float, default=0.0, help="promote: required margin")
    models.add_argument(
        "--output-table", help="rebuild: also write the rebuilt matrix to this table"
    )
    models.add_argument(
        "--allow-class",
        action="append",
        help="a stage class (or package prefix ending in '.') that may load; repeatable",
    )
    models.set_defaults(run=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; an error of the library prints one line and exits with its code.

    Exit codes: 0 done, 2 a config or usage error, 3 input data (schema, leakage, labels,
    an empty result, a rebuild that differs), 4 cluster capacity, 5 a refused promotion,
    6 the model registry (unknown model, a bad card, a tampered model), 7 a monitoring
    alert with ``fail_on_alert``, 8 a Delta write that lost to concurrent writers of the
    same table on each of its attempts (nothing of it was committed; rerun the command),
    1 any other library error. ``--debug`` shows the traceback instead.
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # xgboost.spark (models trained before BoosterClassifier) logs its parameters at INFO
    logging.getLogger("XGBoost-PySpark").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except SparkmlProdError as error:
        if args.debug:
            raise
        print(f"sparkml-prod {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
