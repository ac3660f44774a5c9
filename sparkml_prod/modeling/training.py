"""Model training on the data matrix: the model stage, random search, early stopping.

The features are computed ONCE, into the training matrix (:mod:`sparkml_prod.data.matrix`).
Every candidate of the search trains on the matrix's training rows and is scored on its
validation snapshot; the best one is kept as fitted (no refit: with early stopping, the
validation snapshot chose its number of trees). The final artefact is one
``PipelineModel``: the fitted feature stages followed by the model stages, so
``model.transform(spine)`` on a raw ``(user_id, as_of)`` spine computes the features and
the score with no second copy of the feature logic.

Model stages:

* ``xgboost`` (default): ``VectorAssembler(handleInvalid="keep")`` -> ``SparkXGBClassifier``
  with the feature names set on the booster (importance by name) and missing values left
  missing (NaN), ``num_workers`` workers, early stopping on the validation snapshot via
  ``validation_indicator_col``.
* any pyspark.ml classifier by class path (``LogisticRegression``,
  ``RandomForestClassifier``, ...): ``Imputer`` (training median; these models cannot take
  NaN) -> ``VectorAssembler`` -> optional ``StandardScaler`` -> the classifier.

Both end with :class:`~sparkml_prod.modeling.stages.ProbabilityScore`, which writes ``score``.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyspark.ml import Estimator, Pipeline, PipelineModel
from pyspark.ml.feature import Imputer, StandardScaler, VectorAssembler
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.config import ModelConfig, SearchConfig
from sparkml_prod.core.errors import ClusterCapacityError, ConfigError
from sparkml_prod.data.matrix import SPLIT_COL, VALIDATION_FLAG
from sparkml_prod.modeling.stages import ProbabilityScore

__all__ = [
    "Candidate",
    "SearchResult",
    "check_model_resources",
    "task_slots",
    "model_stages",
    "fit_candidate",
    "random_search",
    "sample_params",
    "search_candidates",
    "check_model_config",
    "feature_importance",
    "model_description",
]

log = logging.getLogger("sparkml_prod.modeling.training")

METRICS_HIGHER_IS_BETTER = {"roc_auc": True, "pr_auc": True, "log_loss": False}
# XGBoost's number of trees when model.params set no n_estimators.
DEFAULT_TREES = 200
FEATURES_VECTOR = "features"


def task_slots(spark: SparkSession) -> int:
    """Tasks the application can run at once: executor cores / ``spark.task.cpus``."""
    jsc = spark.sparkContext._jsc.sc()
    profile = jsc.resourceProfileManager().resourceProfileFromId(0)
    return int(jsc.maxNumConcurrentTasks(profile))


def check_model_resources(spark: SparkSession, model: ModelConfig) -> None:
    """Fail fast when XGBoost's barrier stage cannot get ``num_workers`` slots.

    Spark's barrier scheduling waits (minutes) before failing when the workers do not
    fit; this check answers in milliseconds, before any data is read.
    """
    if model.type != "xgboost":
        return
    if model.num_workers < 1:
        raise ConfigError(f"model.num_workers must be at least 1, got {model.num_workers}.")
    task_cpus = int(spark.conf.get("spark.task.cpus", "1") or 1)
    if task_cpus != model.task_cpus:
        raise ConfigError(
            f"model.task_cpus is {model.task_cpus} but this Spark application runs with "
            f"spark.task.cpus={task_cpus}. Start it with --conf spark.task.cpus="
            f"{model.task_cpus} (the jobs do this in local mode), or change model.task_cpus."
        )
    slots = task_slots(spark)
    if model.num_workers > slots:
        master = spark.sparkContext.master
        raise ClusterCapacityError(
            f"model.num_workers is {model.num_workers} but the Spark application "
            f"(master {master}) has only {slots} task slot(s) with spark.task.cpus="
            f"{task_cpus}: XGBoost's barrier stage would wait and then fail. Set "
            f"model.num_workers to at most {slots}, or give the application more "
            "executor cores."
        )


def _model_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(
            f"model.type '{path}' is neither 'xgboost' nor an importable class path such as "
            "pyspark.ml.classification.LogisticRegression."
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        raise ConfigError(f"model.type '{path}' is not a pyspark.ml Estimator.")
    return cls


def _xgboost_classifier() -> type:
    try:
        from xgboost.spark import SparkXGBClassifier
    except ImportError as error:
        raise ConfigError(
            f"model.type is 'xgboost' but xgboost.spark cannot be imported ({error}). Install "
            "sparkml-prod[cpu] (xgboost-cpu) or sparkml-prod[gpu] (xgboost) in the driver's "
            "and the executors' Python."
        ) from None
    return SparkXGBClassifier


def search_candidates(model: ModelConfig, search: SearchConfig) -> list[dict[str, Any]]:
    """The params of every search candidate, in trial order (seeded, so a rerun draws the
    same): candidate 0 is ``model.params`` as given, then ``trials - 1`` draws from
    ``search.space`` on top of them."""
    rng = random.Random(search.seed)
    candidates = [dict(model.params)]
    for _ in range(max(search.trials - 1, 0)):
        candidates.append({**model.params, **sample_params(search.space, rng)})
    return candidates


def check_model_config(model: ModelConfig, search: SearchConfig) -> list[dict[str, Any]]:
    """Check the model, its params, the search space and the metric without any data; return
    the candidates' params.

    The model type must import and be an Estimator; every candidate's params must build
    it (each key a Param of the model: xgboost.spark would silently pass an unknown key
    to the booster); ``search.metric`` must be known.
    """
    if search.metric not in METRICS_HIGHER_IS_BETTER:
        raise ConfigError(
            f"search.metric must be one of {', '.join(METRICS_HIGHER_IS_BETTER)}; "
            f"got '{search.metric}'."
        )
    if search.trials < 0:
        raise ConfigError(f"search.trials must be 0 or more, got {search.trials}.")
    if search.space and search.trials < 2:
        log.warning("search.space is set but search.trials is %d: no draw is made", search.trials)
    candidates = search_candidates(model, search)
    for index, params in enumerate(candidates):
        where = "model.params" if index == 0 else f"search candidate {index} (model.params + space)"
        estimator = model_stages(model, ["__feature"], params)[-2]  # the classifier
        unknown = sorted(k for k in params if not estimator.hasParam(k))
        if unknown:
            known = [p.name for p in estimator.params]
            hint = difflib.get_close_matches(unknown[0], known, n=1)
            raise ConfigError(
                f"{where}: '{unknown[0]}' is not a parameter of {type(estimator).__name__}"
                + (f" (did you mean {', '.join(hint)}?)" if hint else "")
                + ". Use the model's own parameter names, e.g. learning_rate, max_depth."
            )
    return candidates


def model_stages(
    model: ModelConfig,
    feature_columns: Sequence[str],
    params: Mapping[str, Any],
    label_col: str = "label",
) -> list[Any]:
    """The unfitted model stages of the pipeline (after the feature stages)."""
    features = list(feature_columns)
    score = ProbabilityScore(inputCol="probability", outputCol="score")
    if model.type == "xgboost":
        SparkXGBClassifier = _xgboost_classifier()  # noqa: N806 (a class)
        # verbose: no per-iteration evaluation log on the executors' stdout
        settings = {"n_estimators": DEFAULT_TREES, "verbose": False, **params}
        if model.early_stopping_rounds:
            # the validation rows (flagged) stop the boosting; without early stopping
            # there is no validation set (an empty one fails inside XGBoost)
            settings["early_stopping_rounds"] = model.early_stopping_rounds
            settings["validation_indicator_col"] = VALIDATION_FLAG
        classifier = SparkXGBClassifier(
            features_col=FEATURES_VECTOR,
            label_col=label_col,
            num_workers=model.num_workers,
            feature_names=features,
            missing=math.nan,
            **settings,
        )
        assembler = VectorAssembler(
            inputCols=features, outputCol=FEATURES_VECTOR, handleInvalid="keep"
        )
        return [assembler, classifier, score]
    cls = _model_class(model.type)
    imputed = [f"{c}__imputed" for c in features]
    stages: list[Any] = [
        Imputer(inputCols=features, outputCols=imputed, strategy="median"),
    ]
    if model.standardize:
        stages += [
            VectorAssembler(inputCols=imputed, outputCol="__raw_features"),
            StandardScaler(inputCol="__raw_features", outputCol=FEATURES_VECTOR, withMean=True),
        ]
    else:
        stages.append(VectorAssembler(inputCols=imputed, outputCol=FEATURES_VECTOR))
    try:
        classifier = cls(featuresCol=FEATURES_VECTOR, labelCol=label_col, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.params do not fit {model.type}: {exc}") from None
    return [*stages, classifier, score]


def fit_candidate(
    matrix: DataFrame,
    model: ModelConfig,
    feature_columns: Sequence[str],
    params: Mapping[str, Any],
    label_col: str = "label",
) -> PipelineModel:
    """Fit the model stages on the training rows (XGBoost: + validation for early stopping)."""
    stages = model_stages(model, feature_columns, params, label_col)
    split = F.col(SPLIT_COL)
    if model.type == "xgboost":
        rows = matrix.where(split.isin("train", "validation")).withColumn(
            VALIDATION_FLAG, split == "validation"
        )
        if not model.early_stopping_rounds:
            rows = rows.where(split == "train")
    else:
        rows = matrix.where(split == "train")
    return Pipeline(stages=stages).fit(rows)


def sample_params(space: Mapping[str, Mapping[str, Sequence[Any]]], rng: random.Random) -> dict:
    """One candidate from a search space (see :class:`~sparkml_prod.core.config.SearchConfig`)."""
    out: dict[str, Any] = {}
    for name, spec in space.items():
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise ConfigError(
                f"search.space.{name} must be one of {{int: [low, high]}}, {{uniform: [low, "
                f"high]}}, {{log_uniform: [low, high]}}, {{choice: [...]}}; got {spec!r}."
            )
        ((kind, values),) = spec.items()
        values = list(values)
        if kind == "choice" and values:
            out[name] = rng.choice(values)
            continue
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values):
            raise ConfigError(f"search.space.{name}.{kind} must be [low, high]; got {values!r}.")
        low, high = values
        if kind == "int":
            out[name] = rng.randint(int(low), int(high))
        elif kind == "uniform":
            out[name] = rng.uniform(low, high)
        elif kind == "log_uniform" and low > 0 and high > 0:
            out[name] = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            raise ConfigError(
                f"search.space.{name}: unknown kind '{kind}' (or a non-positive log_uniform "
                "bound); use int, uniform, log_uniform or choice."
            )
    return out


@dataclass
class Candidate:
    """One fitted candidate of the search and its validation metrics."""

    trial: int
    params: dict[str, Any]
    model: PipelineModel
    metrics: dict[str, float]
    best_iteration: int | None
    fit_seconds: float

    def log_entry(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "params": self.params,
            "validation": self.metrics,
            "best_iteration": self.best_iteration,
            "fit_seconds": round(self.fit_seconds, 2),
        }


@dataclass
class SearchResult:
    best: Candidate
    log: list[dict[str, Any]] = field(default_factory=list)
    metric: str = "roc_auc"


def best_iteration(model: PipelineModel) -> int | None:
    """The early-stopping iteration of an XGBoost model stage (None for other models)."""
    for stage in model.stages:
        if hasattr(stage, "get_booster"):
            booster = stage.get_booster()
            try:
                return int(booster.best_iteration)
            except AttributeError:
                return None
    return None


def validation_metrics(predictions: DataFrame, label_col: str = "label") -> dict[str, float]:
    """ROC AUC, PR AUC and log loss of a scored snapshot (computed in Spark)."""
    from sparkml_prod.modeling.evaluation import evaluate

    metrics = evaluate(predictions, label_col=label_col, score_col="score")
    return {k: float(metrics[k]) for k in ("roc_auc", "pr_auc", "log_loss")}


def random_search(
    matrix: DataFrame,
    model: ModelConfig,
    metric: str,
    candidates: Sequence[Mapping[str, Any]],
    feature_columns: Sequence[str],
    label_col: str = "label",
) -> SearchResult:
    """Fit each candidate (from :func:`check_model_config`) and keep the best on the
    validation snapshot by ``metric``; candidate 0 is the configured params, so a search
    can only improve on them."""
    validation = matrix.where(F.col(SPLIT_COL) == "validation")
    higher = METRICS_HIGHER_IS_BETTER[metric]
    best: Candidate | None = None
    entries = []
    for trial, params in enumerate(candidates):
        started = time.perf_counter()
        fitted = fit_candidate(matrix, model, feature_columns, params, label_col)
        seconds = time.perf_counter() - started
        metrics = validation_metrics(fitted.transform(validation), label_col)
        candidate = Candidate(trial, dict(params), fitted, metrics, best_iteration(fitted), seconds)
        entries.append(candidate.log_entry())
        log.info(
            "trial %d: validation %s %.4f (best iteration %s, %.1fs) %s",
            trial,
            metric,
            metrics[metric],
            candidate.best_iteration,
            seconds,
            params,
        )
        value, current = metrics[metric], best.metrics[metric] if best else None
        if current is None or (value > current if higher else value < current):
            best = candidate
    assert best is not None, "check_model_config gives at least one candidate"
    return SearchResult(best=best, log=entries, metric=metric)


def feature_importance(model: PipelineModel, feature_columns: Sequence[str]) -> dict[str, float]:
    """Importance per feature: XGBoost total gain, tree ensembles' importances, or the
    absolute coefficients of a linear model (on standardised features when configured)."""
    for stage in model.stages:
        if hasattr(stage, "get_booster"):
            scores = stage.get_booster().get_score(importance_type="total_gain")
            return {name: float(scores.get(name, 0.0)) for name in feature_columns}
        if hasattr(stage, "featureImportances"):
            values = stage.featureImportances.toArray()
            return {name: float(v) for name, v in zip(feature_columns, values, strict=True)}
        if hasattr(stage, "coefficients"):
            values = stage.coefficients.toArray()
            return {name: abs(float(v)) for name, v in zip(feature_columns, values, strict=True)}
    return {}


def model_description(model: ModelConfig, params: Mapping[str, Any]) -> str:
    """One line for the report and the metadata: which model, with which settings."""
    if model.type == "xgboost":
        import xgboost

        kind = (
            f"XGBoost {xgboost.__version__} (trained by xgboost.spark.SparkXGBClassifier, "
            "scored by sparkml_prod BoosterScore)"
        )
        extra = (
            f", num_workers={model.num_workers}, early_stopping_rounds="
            f"{model.early_stopping_rounds}"
        )
    else:
        kind = model.type + (" on standardised features" if model.standardize else "")
        extra = ""
    shown = ", ".join(f"{k}={_short(v)}" for k, v in sorted(params.items()))
    return f"{kind}: {shown or 'default parameters'}{extra}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
