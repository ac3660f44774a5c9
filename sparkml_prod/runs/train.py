"""One training run, end to end: checks, matrix, search, evaluation, report, registration.

:func:`run_training` is everything ``sparkml-prod train`` (and ``jobs/train.py``) does.
The cheap checks come first, before any long Spark job: the time split (no leakage),
label completeness, the cluster's task slots for XGBoost, the feature spec; then the
split's row and class counts, before the features are computed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod._version import __version__
from sparkml_prod.core.config import Schedule, SplitConfig, TrainConfig
from sparkml_prod.core.errors import ConfigError
from sparkml_prod.core.time import (
    instant_in,
    naive_utc,
    parse_window,
    require_utc_session,
    timestamp_lit,
)
from sparkml_prod.data.labels import (
    TimeSplit,
    check_labels_complete,
    check_time_split,
    labels_complete_until,
)
from sparkml_prod.data.matrix import SPLIT_COL, TrainingMatrix, build_training_matrix
from sparkml_prod.data.spine import as_of_schedule, as_of_timestamps
from sparkml_prod.features import load_feature_spec
from sparkml_prod.modeling.training import (
    METRICS_HIGHER_IS_BETTER,
    check_model_resources,
    feature_importance,
    fit_candidate,
    model_description,
    random_search,
)

__all__ = ["TrainingRun", "run_training", "resolve_split", "comparison_gate"]

log = logging.getLogger("sparkml_prod.runs.train")


@dataclass
class TrainingRun:
    """What a training run produced."""

    model_name: str
    version: int
    model_path: str
    report_path: str
    metrics: dict[str, Any]
    timings: dict[str, float]
    promoted_to: str | None
    promotion_note: str | None


def resolve_split(split: SplitConfig) -> TimeSplit:
    """The split's as-of instants (a training schedule expanded)."""
    train = (
        as_of_schedule(split.train.start, split.train.end, split.train.every)
        if isinstance(split.train, Schedule)
        else as_of_timestamps(split.train)
    )
    return TimeSplit(
        train=tuple(train),
        validation=tuple(as_of_timestamps(split.validation)),
        test=tuple(as_of_timestamps(split.test)),
    )


def _dates_by_split(split: TimeSplit, backtest: Sequence[dt.date]) -> dict[str, list[dt.datetime]]:
    out = {
        "train": list(split.train),
        "validation": list(split.validation),
        "test": list(split.test),
    }
    present = set(split.all())
    extra = [d for d in as_of_timestamps(backtest) if d not in present]
    if extra:
        out["backtest"] = extra
    return out


def _check_config(config: TrainConfig) -> None:
    if config.label.kind != "binary":
        raise ConfigError(
            f"label.kind is '{config.label.kind}', but the model is a classifier: use "
            "label.kind: binary (count and sum labels are for regression features and analysis)."
        )
    business = (config.evaluation.value_per_true_positive, config.evaluation.cost_per_action)
    if (business[0] is None) != (business[1] is None):
        raise ConfigError(
            "evaluation.value_per_true_positive and evaluation.cost_per_action go together: "
            "set both or neither."
        )
    if not config.split.validation:
        raise ConfigError(
            "split.validation needs at least one as-of date (early stopping, search)."
        )


def _longest_window(stages: Sequence[Any]) -> str | None:
    """The longest look-back of the feature stages (for scoring spines)."""
    longest: tuple[int, str] | None = None
    for stage in stages:
        for param in ("windows", "lookback"):
            if stage.hasParam(param) and stage.isDefined(stage.getParam(param)):
                value = stage.getOrDefault(stage.getParam(param))
                for window in value if isinstance(value, list) else [value]:
                    micros = parse_window(window)
                    if longest is None or micros > longest[0]:
                        longest = (micros, window)
    return longest[1] if longest else None


def run_backtest(
    matrix: DataFrame,
    config: TrainConfig,
    dates: Sequence[dt.datetime],
    params: Mapping[str, Any],
    features: Sequence[str],
) -> dict[str, Any]:
    """Rolling evaluation: for each backtest date, train on the snapshots whose label
    windows end before it (the latest of them validates), test on that date."""
    from sparkml_prod.modeling.evaluation import evaluate

    horizon = dt.timedelta(microseconds=parse_window(config.label.horizon))
    folds = []
    for test_date in as_of_timestamps(config.backtest.test):
        usable = [d for d in dates if d + horizon <= test_date]
        validation = usable[-1] if usable else None
        train = [d for d in usable if validation and d + horizon <= validation]
        if validation is None or not train:
            raise ConfigError(
                f"backtest.test {test_date:%Y-%m-%d}: needs at least two earlier snapshots "
                f"whose {config.label.horizon} label windows end before it (one trains, the "
                "latest validates); add earlier training dates or drop this fold."
            )
        role = (
            F.when(F.col("as_of") == timestamp_lit(test_date), "test")
            .when(F.col("as_of") == timestamp_lit(validation), "validation")
            .otherwise("train")
        )
        fold = matrix.where(instant_in("as_of", [*train, validation, test_date])).withColumn(
            SPLIT_COL, role
        )
        fitted = fit_candidate(fold, config.model, features, params)
        metrics = evaluate(fitted.transform(fold.where(F.col(SPLIT_COL) == "test")))
        folds.append(
            {
                "test_as_of": f"{test_date:%Y-%m-%d}",
                "validation_as_of": f"{validation:%Y-%m-%d}",
                "train_snapshots": len(train),
                "n": metrics["n"],
                "base_rate": metrics["base_rate"],
                "roc_auc": metrics["roc_auc"],
                "pr_auc": metrics["pr_auc"],
                "log_loss": metrics["log_loss"],
            }
        )
    summary = {}
    for key in ("roc_auc", "pr_auc", "log_loss"):
        values = [f[key] for f in folds]
        summary[key] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        }
    return {"folds": folds, "summary": summary}


def comparison_gate(
    spark: SparkSession,
    labelled_test: DataFrame,
    candidate_metric: float | None,
    metric: str,
    margin: float,
) -> Callable[[Any, Any], tuple[bool, str]]:
    """A promotion gate: the candidate must beat the alias's current model by ``margin``
    of ``metric`` on the same test snapshot (``labelled_test``: entity, as_of, label).

    Both models score the raw test spine through their own full pipelines, so models
    with different feature stages are compared fairly.
    """
    from sparkml_prod.modeling.evaluation import evaluate

    higher = METRICS_HIGHER_IS_BETTER[metric]

    def score(model_path: str) -> float:
        model = PipelineModel.load(model_path)
        return float(evaluate(model.transform(labelled_test))[metric])

    def gate(candidate: Any, current: Any) -> tuple[bool, str]:
        if current is None:
            return True, "no current model holds the alias"
        ours = candidate_metric if candidate_metric is not None else score(candidate.model_path)
        theirs = score(current.model_path)
        better = ours - theirs if higher else theirs - ours
        verdict = (
            f"test {metric}: candidate {candidate.name}/{candidate.version} {ours:.4f}, "
            f"current {current.name}/{current.version} {theirs:.4f}, required margin {margin}"
        )
        return better >= margin, verdict

    return gate


def _versions() -> dict[str, str]:
    out = {"sparkml_prod": __version__}
    for package in ("pyspark", "xgboost-cpu", "xgboost", "delta-spark", "pandas"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_training(spark: SparkSession, config: TrainConfig) -> TrainingRun:
    """Train, evaluate, report and register one model version (see the module docs)."""
    from sparkml_prod.modeling.evaluation import BusinessValue, evaluate, score_histogram
    from sparkml_prod.modeling.report import write_report
    from sparkml_prod.registry import ModelRegistry

    timings: dict[str, float] = {}
    started = time.perf_counter()
    _check_config(config)
    require_utc_session(spark, "run_training")
    split = resolve_split(config.split)
    check_time_split(split, config.label.horizon)
    dates = _dates_by_split(split, config.backtest.test)
    label_source = config.sources.get(config.label.source, config.label.source)
    complete_until = (
        naive_utc(config.label.complete_until)
        if config.label.complete_until
        else labels_complete_until(spark, label_source, config.label.timestamp_col)
    )
    all_dates = sorted({d for ds in dates.values() for d in ds})
    check_labels_complete(all_dates, config.label.horizon, complete_until, label_source)
    check_model_resources(spark, config.model)
    stages = load_feature_spec(config.feature_spec, sources=config.sources)
    timings["checks_s"] = time.perf_counter() - started

    t0 = time.perf_counter()
    built: TrainingMatrix = build_training_matrix(spark, config, dates, stages)
    timings["matrix_s"] = time.perf_counter() - t0
    log.info(
        "training matrix %s (Delta version %d): %s; %d features",
        built.table,
        built.version,
        built.counts,
        len(built.feature_columns),
    )
    matrix = built.read(spark).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        t0 = time.perf_counter()
        search = random_search(matrix, config.model, config.search, built.feature_columns)
        timings["search_s"] = time.perf_counter() - t0
        best = search.best

        t0 = time.perf_counter()
        business = (
            BusinessValue(
                config.evaluation.value_per_true_positive, config.evaluation.cost_per_action
            )
            if config.evaluation.value_per_true_positive is not None
            and config.evaluation.cost_per_action is not None
            else None
        )
        test_rows = matrix.where(F.col(SPLIT_COL) == "test")
        metrics = evaluate(
            best.model.transform(test_rows),
            bins=config.evaluation.bins,
            calibration_bins=config.evaluation.calibration_bins,
            business=business,
        )
        train_histogram = score_histogram(
            best.model.transform(matrix.where(F.col(SPLIT_COL) == "train"))
        )
        importance = feature_importance(best.model, built.feature_columns)
        backtest = (
            run_backtest(matrix, config, all_dates, best.params, built.feature_columns)
            if config.backtest.test
            else None
        )
        timings["evaluation_s"] = time.perf_counter() - t0
    finally:
        matrix.unpersist()

    final = PipelineModel(stages=[*built.feature_model.stages, *best.model.stages])
    description = model_description(config.model, best.params)
    show = lambda ds: [f"{d:%Y-%m-%d}" for d in ds]  # noqa: E731
    data_section = {
        "as_of": {name: show(ds) for name, ds in dates.items()},
        "horizon": config.label.horizon,
        "label_filter": config.label.filter,
        "rows_and_positives": built.counts,
        "matrix_table": built.table,
        "matrix_delta_version": built.version,
        "source_delta_versions": built.source_versions,
    }
    extra: dict[str, object] = {"Data": data_section, "Search log": search.log}
    if backtest:
        extra["Backtest"] = backtest
    report_path = write_report(
        config.report_dir,
        metrics,
        title=f"{config.model_name}: test snapshot {', '.join(show(split.test))}",
        model_description=description,
        train_histogram=train_histogram,
        feature_importance=importance,
        extra_sections=extra,
    )
    metadata = _jsonable(
        {
            "model_type": config.model.type,
            "model_description": description,
            "params": best.params,
            "best_iteration": best.best_iteration,
            "versions": _versions(),
            "config": dataclasses.asdict(config),
            "as_of_dates": data_section["as_of"],
            "horizon": config.label.horizon,
            "label": dataclasses.asdict(config.label),
            "input_schema": {"spine": built.spine_schema, "sources": built.source_schemas},
            "spine": {
                **dataclasses.asdict(config.spine),
                "longest_window": _longest_window(stages),
            },
            "feature_names": built.feature_columns,
            "categorical_features": built.categorical_columns,
            "matrix": {
                "table": built.table,
                "delta_version": built.version,
                "source_delta_versions": built.source_versions,
            },
            "rows_and_positives": built.counts,
            "metrics": {
                k: metrics[k] for k in ("n", "base_rate", "roc_auc", "pr_auc", "log_loss", "brier")
            },
            "search": {"metric": search.metric, "log": search.log},
            "backtest": backtest,
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
        }
    )
    registry = ModelRegistry(spark, config.registry_root)
    version = registry.register(config.model_name, final, metadata, report_dir=config.report_dir)
    promoted, note = None, None
    if config.promote_to:
        labelled_test = (
            built.read(spark)
            .where(F.col(SPLIT_COL) == "test")
            .select(config.spine.entity_col, "as_of", "label")
        )
        gate = comparison_gate(
            spark,
            labelled_test,
            float(metrics[search.metric]),
            search.metric,
            config.promotion_margin,
        )
        from sparkml_prod.core.errors import PromotionRefusedError

        try:
            registry.promote(config.model_name, version.version, config.promote_to, gate=gate)
            promoted, note = config.promote_to, f"promoted to {config.promote_to}"
        except PromotionRefusedError as exc:
            note = str(exc)
            log.warning("%s", exc)
    timings["total_s"] = time.perf_counter() - started
    return TrainingRun(
        model_name=config.model_name,
        version=version.version,
        model_path=version.model_path,
        report_path=report_path,
        metrics=metrics,
        timings=timings,
        promoted_to=promoted,
        promotion_note=note,
    )
