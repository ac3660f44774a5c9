"""YAML job configs loaded into frozen dataclasses.

:func:`load_config` checks a YAML file against a dataclass declared with type hints:
an unknown key, a missing required key or a value of the wrong type is a
:class:`~sparkml_prod.core.errors.ConfigError` naming the file, the dotted key and what was
expected. Fields with defaults are optional; fields without are required.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from sparkml_prod.core.errors import ConfigError

__all__ = [
    "load_config",
    "read_yaml",
    "from_mapping",
    "GenerateConfig",
    "SpineConfig",
    "FeaturesConfig",
    "Schedule",
    "TrainingSpineConfig",
    "LabelConfig",
    "HeldOutEntities",
    "SplitConfig",
    "RelativeSchedule",
    "RetrainConfig",
    "ModelConfig",
    "SearchConfig",
    "EvaluationConfig",
    "BacktestConfig",
    "MlflowTrainConfig",
    "TrainConfig",
    "ChallengerConfig",
    "HoldoutConfig",
    "ScoringSpineConfig",
    "JdbcSinkConfig",
    "MlflowScoreConfig",
    "ScoreConfig",
    "DriftThresholdsConfig",
    "MonitorConfig",
    "EventTimeConfig",
    "IngestSourceConfig",
    "IngestConfig",
]

T = TypeVar("T")


def load_config(path: str | Path, schema: type[T]) -> T:
    """Read the YAML file at ``path`` into the frozen dataclass ``schema``.

    Examples
    --------
    >>> from sparkml_prod.core.config import GenerateConfig, load_config
    >>> load_config("conf/generate.yaml", GenerateConfig).n_users  # doctest: +SKIP
    10000
    """
    data = read_yaml(path)
    return from_mapping(data if data is not None else {}, schema, source=str(path))


def read_yaml(path: str | Path, kind: str = "Config file") -> Any:
    """Parse a YAML file; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} {path} does not exist.")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{kind} {path} is not valid YAML: {exc}") from exc


def from_mapping(data: Any, schema: type[T], source: str = "<config>", prefix: str = "") -> T:
    """Build the dataclass ``schema`` from a parsed mapping, checking every key."""
    where = f"key '{prefix}'" if prefix else "the top level"
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: {where} must be a mapping of "
            f"{getattr(schema, '__name__', schema)} settings, "
            f"got {type(data).__name__} {data!r}."
        )
    fields = {f.name: f for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{_join(prefix, unknown[0])}'; "
            f"expected one of: {', '.join(sorted(fields))}."
        )
    hints = typing.get_type_hints(schema)
    values = {}
    for name, field in fields.items():
        key = _join(prefix, name)
        if name not in data:
            required = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            )
            if required:
                raise ConfigError(
                    f"{source}: missing required key '{key}' ({_describe(hints[name])})."
                )
            continue
        values[name] = _convert(data[name], hints[name], source, key)
    return schema(**values)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping to {_describe(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {getattr(tp, '__name__', tp)} settings"
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        dt.date: "a date (YYYY-MM-DD)",
        dt.datetime: "a timestamp",
        type(None): "null",
    }
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, source, key)
            except ConfigError:
                continue
        raise _type_error(value, tp, source, key)
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(value, tp, source, key)
    if dataclasses.is_dataclass(tp):
        return from_mapping(value, tp, source, key)  # type: ignore[arg-type]
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise _type_error(value, tp, source, key)
        (item,) = typing.get_args(tp)[:1]
        items = [_convert(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(value, tp, source, key)
        _, item = typing.get_args(tp)
        return {str(k): _convert(v, item, source, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is dt.date and isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if tp is dt.date and isinstance(value, str):
        # A quoted date in YAML, or a date in JSON (a model card's training config).
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise _type_error(value, tp, source, key) from None
    if tp is dt.datetime and isinstance(value, dt.date):
        if isinstance(value, dt.datetime):
            return value
        return dt.datetime(value.year, value.month, value.day)
    if tp in (str, int, bool, float) and type(value) is tp:
        return value
    raise _type_error(value, tp, source, key)


def _type_error(value: Any, tp: Any, source: str, key: str) -> ConfigError:
    return ConfigError(
        f"{source}: key '{key}' must be {_describe(tp)}, got {type(value).__name__} {value!r}."
    )


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """``sparkml-prod generate``: where to write the synthetic tables, and their size.

    ``users_table``, ``user_attributes_table`` and ``events_table`` are table references
    (a path, ``delta.`/path```, or a catalog name); see :mod:`sparkml_prod.core.tables`.
    """

    users_table: str
    user_attributes_table: str
    events_table: str
    n_users: int = 10_000
    start: dt.date = dt.date(2023, 1, 1)
    end: dt.date = dt.date(2024, 7, 1)
    seed: int = 42
    events_per_user_per_day: float = 0.3
    drift_from: dt.date | None = None
    drift_amount_factor: float = 1.0


@dataclasses.dataclass(frozen=True)
class SpineConfig:
    """Which ``(entity, as_of)`` rows to build: entities active in a lookback before each date."""

    source: str
    as_of_dates: list[dt.date]
    lookback: str = "90d"
    entity_col: str = "user_id"
    timestamp_col: str = "event_time"


@dataclasses.dataclass(frozen=True)
class FeaturesConfig:
    """``sparkml-prod features``: build the feature matrix of a spine and write it.

    ``sources`` maps the source names of the feature spec to table references;
    ``spine.source`` may be such a name too.
    """

    feature_spec: str
    sources: dict[str, str]
    spine: SpineConfig
    output_table: str


@dataclasses.dataclass(frozen=True)
class Schedule:
    """As-of dates ``start, start + every, ...`` up to and including ``end``."""

    start: dt.date
    end: dt.date
    every: str = "30d"


@dataclasses.dataclass(frozen=True)
class TrainingSpineConfig:
    """Who is in a training snapshot: entities with an event in the lookback before it."""

    source: str
    lookback: str = "90d"
    entity_col: str = "user_id"
    timestamp_col: str = "event_time"


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """What the model predicts: events matching ``filter`` in ``[as_of, as_of + horizon)``.

    ``kind`` is binary (did it happen), count or sum (of ``value_col``); only binary
    labels train the classifier. ``complete_until`` overrides the end of complete data
    (default: midnight after the source's last event).
    """

    source: str
    horizon: str = "30d"
    filter: str | None = None
    kind: str = "binary"
    value_col: str | None = None
    entity_col: str = "user_id"
    timestamp_col: str = "event_time"
    complete_until: dt.date | None = None


@dataclasses.dataclass(frozen=True)
class HeldOutEntities:
    """Validation on the training snapshots' rows of an ``entity_share`` of the entities
    (chosen by a hash of ``salt`` and the id, so an entity is on one side in every
    snapshot) instead of a later date: the newest training snapshot can then sit one label
    horizon before the test date, not two."""

    entity_share: float
    salt: str = "validation"


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Training, validation and test as-of dates: a list each, or a schedule for training;
    validation may instead be a held-out share of the training snapshots' entities."""

    train: list[dt.date] | Schedule
    validation: list[dt.date] | HeldOutEntities
    test: list[dt.date]


@dataclasses.dataclass(frozen=True)
class RelativeSchedule:
    """Training as-of dates counted back from the run date ``D``: ``D - latest``,
    ``D - latest - every``, ... and none before ``D - earliest``."""

    earliest: str
    latest: str
    every: str = "14d"


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """The split of ``sparkml-prod retrain --as-of D``, as durations before the run date
    ``D`` (e.g. ``test: [30d]`` with a 30-day horizon: the newest snapshot whose labels
    are complete at ``D``); ``backtest`` dates likewise (none by default)."""

    train: RelativeSchedule | list[str]
    validation: list[str] | HeldOutEntities
    test: list[str]
    backtest: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model stage: ``xgboost`` (sparkml_prod's ``BoosterClassifier``: ``xgboost.train``
    in Spark tasks) or a pyspark.ml classifier's class path, e.g.
    ``pyspark.ml.classification.LogisticRegression``.

    ``params`` of XGBoost use XGBClassifier's names (``n_estimators``, ``learning_rate``,
    ``max_depth``, ``subsample``, ``min_child_weight``, ``colsample_bytree``,
    ``reg_lambda``, ...). ``num_workers`` XGBoost workers (each a Spark task with
    ``task_cpus`` threads: it must equal the session's ``spark.task.cpus``);
    ``early_stopping_rounds`` on the validation snapshot; ``standardize`` scales features
    for linear models (non-XGBoost models also get missing values imputed with the
    training median, as they cannot take NaN).
    """

    type: str = "xgboost"
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_workers: int = 1
    task_cpus: int = 1
    early_stopping_rounds: int | None = 20
    standardize: bool = False


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Random search: ``trials`` candidates drawn from ``space`` (0: the params as given).

    Each ``space`` entry maps a model param to one of ``{int: [low, high]}``,
    ``{uniform: [low, high]}``, ``{log_uniform: [low, high]}`` or ``{choice: [...]}``.
    Candidates are ranked by ``metric`` on the validation snapshot (``roc_auc`` or
    ``pr_auc``: higher is better; ``log_loss``: lower is better).
    """

    trials: int = 0
    seed: int = 0
    metric: str = "roc_auc"
    space: dict[str, dict[str, list[Any]]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Test-set evaluation: score bins, calibration bins, and the business value of
    acting (both business numbers or neither)."""

    bins: int = 10_000
    calibration_bins: int = 10
    value_per_true_positive: float | None = None
    cost_per_action: float | None = None


@dataclasses.dataclass(frozen=True)
class BacktestConfig:
    """Rolling test dates: for each, train on the snapshots whose labels end before it."""

    test: list[dt.date] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class MlflowTrainConfig:
    """Also log the run to MLflow and register the model there (needs the ``mlflow``
    extra): params, test metrics, the report and the model card go to a run of
    ``experiment`` (created if missing) on ``tracking_uri`` (default: the
    ``MLFLOW_TRACKING_URI`` environment variable), named ``run_name``; the pipeline is
    registered under the model's name in the registry at ``registry_uri`` (default: the
    tracking server's). ``artifact_location``: where a new experiment keeps its artifacts
    (default: the server's choice). ``dfs_tmpdir``: where ``mlflow.spark`` stages the
    saved pipeline on the cluster's file system (default: MLflow's, ``/tmp/mlflow``)."""

    experiment: str
    tracking_uri: str | None = None
    registry_uri: str | None = None
    run_name: str | None = None
    artifact_location: str | None = None
    dfs_tmpdir: str | None = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``sparkml-prod train``: matrix, model, search, evaluation and registration.

    ``promote_to`` (e.g. ``production``) moves that alias to the new version when it
    beats the current holder on this run's test snapshot by ``promotion_margin`` of
    ``search.metric`` (or when the alias is not set yet). ``allowed_stage_classes``:
    stage classes (or package prefixes ending in ``.``) that may load from the registry
    besides pyspark.ml, xgboost.spark and sparkml_prod ones. ``refit``: once the search
    has chosen the params (and XGBoost's number of trees) on the time-gapped split, fit
    them again on every snapshot of the split (all have complete labels) and register
    that fit; the card keeps the time-gapped metrics it was judged by. ``retrain``: the
    split relative to the run date, for ``sparkml-prod retrain``.
    """

    model_name: str
    registry_root: str
    feature_spec: str
    sources: dict[str, str]
    spine: TrainingSpineConfig
    label: LabelConfig
    split: SplitConfig
    matrix_table: str
    report_dir: str
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    backtest: BacktestConfig = dataclasses.field(default_factory=BacktestConfig)
    promote_to: str | None = None
    promotion_margin: float = 0.0
    allowed_stage_classes: list[str] = dataclasses.field(default_factory=list)
    refit: bool = False
    retrain: RetrainConfig | None = None
    mlflow: MlflowTrainConfig | None = None


@dataclasses.dataclass(frozen=True)
class ChallengerConfig:
    """A second model: ``share`` of users (by a salted hash of the id) scored by it, or,
    with ``shadow``, everyone scored by it into ``shadow_table`` while the champion serves."""

    model: str
    share: float = 0.0
    salt: str = "challenger"
    shadow: bool = False
    shadow_table: str | None = None


@dataclasses.dataclass(frozen=True)
class HoldoutConfig:
    """A ``share`` of users (by a hash of ``salt`` and the id, independent of the variant
    split) flagged ``holdout``: the action is not taken for them, so monitoring can
    measure its impact."""

    share: float
    salt: str = "holdout"


@dataclasses.dataclass(frozen=True)
class ScoringSpineConfig:
    """Who is scored: every entity of ``users_table``, or by default the model's training
    spine rule (its model card): every entity with an event of ``source`` in ``lookback``
    before as-of, each defaulting to the training spine's."""

    users_table: str | None = None
    source: str | None = None
    lookback: str | None = None


@dataclasses.dataclass(frozen=True)
class JdbcSinkConfig:
    """Scores also upserted into a PostgreSQL table after the Delta write.

    ``url`` is a ``jdbc:postgresql://host:port/database`` URL (no password in it),
    ``table`` a ``table`` or ``schema.table`` name (letters, digits, underscores; folded
    to lower case as PostgreSQL does), created with a primary key ``(user_id, as_of)``
    when absent. The password is read from the environment variable named by
    ``password_env``, never from the file. ``batch_size`` rows per JDBC insert batch;
    ``write_partitions`` parallel connections writing the staging table.
    """

    url: str
    table: str
    user: str
    password_env: str
    batch_size: int = 10_000
    write_partitions: int = 2


@dataclasses.dataclass(frozen=True)
class MlflowScoreConfig:
    """Where ``models:/name@alias`` and ``models:/name/3`` refs are resolved (needs the
    ``mlflow`` extra): the tracking server at ``tracking_uri`` (default: the
    ``MLFLOW_TRACKING_URI`` environment variable) and its registry, or ``registry_uri``.
    ``dfs_tmpdir``: a directory on the cluster's file system to copy the downloaded
    pipeline into before loading it, for executors that do not share the driver's disk
    (default: load from the driver's local temp directory)."""

    tracking_uri: str | None = None
    registry_uri: str | None = None
    dfs_tmpdir: str | None = None


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """``sparkml-prod score`` / ``jobs/score.py``: which model scores whom, and where to.

    ``model`` (and ``challenger.model``) is a ref of the directory registry at
    ``registry_root`` (``name@alias``, ``name/3``), or an MLflow registry's
    (``models:/name@alias``, ``models:/name/3``; see ``mlflow``).

    ``sources`` maps a table the model was trained on to the table to read instead
    (e.g. a production copy); ``allow_empty`` lets an empty result replace the partition;
    ``allowed_stage_classes`` as for :class:`TrainConfig`; ``holdout`` flags users the
    action skips; ``features_table`` also keeps every scored row's features (partitioned
    by ``as_of``, replaced like the scores) for drift monitoring; ``jdbc_sink`` also
    upserts the date's scores into a PostgreSQL table (:mod:`sparkml_prod.sinks.jdbc`).
    """

    model: str
    output_table: str
    registry_root: str | None = None
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    spine: ScoringSpineConfig = dataclasses.field(default_factory=ScoringSpineConfig)
    challenger: ChallengerConfig | None = None
    allow_empty: bool = False
    allowed_stage_classes: list[str] = dataclasses.field(default_factory=list)
    holdout: HoldoutConfig | None = None
    features_table: str | None = None
    jdbc_sink: JdbcSinkConfig | None = None
    mlflow: MlflowScoreConfig | None = None


@dataclasses.dataclass(frozen=True)
class DriftThresholdsConfig:
    """When drift warns and alerts: PSI of a feature or the score, the change of a missing
    rate (absolute), and the relative change of the row count against the previous run."""

    psi_warn: float = 0.1
    psi_alert: float = 0.25
    missing_rate_warn: float = 0.05
    missing_rate_alert: float = 0.2
    row_count_warn: float = 0.2
    row_count_alert: float = 0.5


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """``sparkml-prod monitor``: watch a model's scores after deployment.

    For the scored date of the run: drift of every feature (``features_table``, written
    by scoring) and of the score against the reference profile in each version's model
    card, and the row count against the previous scored date. For every scored date whose
    labels are complete by now (the card's label rule) and not yet evaluated: realised
    performance per variant and version (and champion vs challenger), and the impact of
    the action against the holdout among the ``targeted_share`` of users with the highest
    scores. Everything is appended to ``history_table``; ``fail_on_alert`` makes the job
    exit non-zero when anything alerts. ``dashboard_dir`` is where ``monitor report``
    writes the dashboard.
    """

    model_name: str
    registry_root: str
    scores_table: str
    history_table: str
    features_table: str | None = None
    dashboard_dir: str | None = None
    thresholds: DriftThresholdsConfig = dataclasses.field(default_factory=DriftThresholdsConfig)
    targeted_share: float = 1.0
    fail_on_alert: bool = False
    allowed_stage_classes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class EventTimeConfig:
    """Which source column holds the event time, and how to read it.

    By the column's type in ``source.schema``: ``timestamp`` (CSV: text with an offset is
    that instant, text without one is UTC; ``format`` is the Spark datetime pattern),
    ``timestamp_ntz`` (a wall clock, read as UTC), ``date`` (midnight UTC), ``string``
    (parsed with ``format``, default ISO 8601; no offset: UTC), or a number of epoch
    ``unit`` (``seconds``, ``milliseconds`` or ``microseconds``).
    """

    column: str
    format: str | None = None
    unit: str | None = None


@dataclasses.dataclass(frozen=True)
class IngestSourceConfig:
    """Where ``sparkml-prod ingest`` reads events: CSV or Parquet files, or a JDBC table.

    ``format``: ``csv``, ``parquet`` or ``jdbc``. ``schema``: column -> Spark SQL type of
    the columns to ingest, in order (CSV: the file's columns by position; Parquet and
    JDBC: columns by name, cast to the type; a value that does not cast is quarantined).
    Files: ``paths`` (globs on any Hadoop file system; ``{date}`` is each ingested date,
    YYYY-MM-DD), CSV's ``header``, ``delimiter``, ``quote``, ``escape``. JDBC: ``url``,
    ``table`` or ``query``, ``user``, ``password_env`` (the environment variable holding
    the password, never the password), ``driver``, and partitioned reads by
    ``partition_column`` (numeric, date or timestamp) in ``num_partitions`` between
    ``lower_bound`` and ``upper_bound`` (both, or neither: then one MIN/MAX query over the
    ingested dates finds them); ``fetch_size`` rows per round trip.
    """

    format: str
    schema: dict[str, str]
    paths: list[str] = dataclasses.field(default_factory=list)
    header: bool = True
    delimiter: str = ","
    quote: str = '"'
    escape: str = "\\"
    url: str | None = None
    table: str | None = None
    query: str | None = None
    user: str | None = None
    password_env: str | None = None
    driver: str | None = None
    partition_column: str | None = None
    num_partitions: int = 1
    lower_bound: int | dt.date | str | None = None
    upper_bound: int | dt.date | str | None = None
    fetch_size: int = 10_000


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """``sparkml-prod ingest``: events from outside Delta into the Delta events table.

    ``required``: columns whose null makes a row malformed (the event time always is);
    ``rename``: source column -> column of ``events_table``. Malformed rows go to
    ``quarantine_table``. ``allow_empty``: a source with no record for the dates empties
    them (default: an error, nothing replaced). See :mod:`sparkml_prod.data.ingest`.
    """

    source: IngestSourceConfig
    event_time: EventTimeConfig
    events_table: str
    quarantine_table: str
    required: list[str] = dataclasses.field(default_factory=list)
    rename: dict[str, str] = dataclasses.field(default_factory=dict)
    allow_empty: bool = False
