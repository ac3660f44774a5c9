"""Batch scoring: the registered ``PipelineModel`` applied to a scoring spine, into Delta.

:func:`run_scoring` is what ``jobs/score.py`` (``spark-submit``) and ``sparkml-prod
score`` do, in this order:

1. resolve the model reference (``name@production`` or ``name/3`` in the directory
   registry, ``models:/name@production`` or ``models:/name/3`` in MLflow's:
   :mod:`sparkml_prod.registry.mlflow_registry`) ONCE, and the challenger's if
   configured, and load the fitted pipelines, each verified against its model card
   (file hashes, allowlisted stage classes) before it is loaded;
2. build the scoring spine at the as-of instant (midnight UTC of ``as_of``): by default
   the population the model was trained on (the card's spine rule: every entity with an
   event of the training spine's source in its lookback before as-of), with
   ``spine.source`` / ``spine.lookback`` overriding parts of the rule, or every entity of
   a configured users table;
3. check the spine and every source table against the input schema recorded in the
   model card (missing column, changed type, missing table: an error naming them)
   before any long job;
4. score with the loaded pipeline: the same object training produced, no feature code
   here;
5. write ``user_id, as_of, score, model_name, model_version, variant, scored_at, run_id``
   into the scores table, partitioned by ``as_of`` (a date), replacing that partition in
   one Delta commit: a rerun of the same date leaves no duplicates, other dates are
   untouched, a killed run leaves the previous content. An empty result is refused
   (previous output kept) unless ``allow_empty``;
6. with ``jdbc_sink``, upsert the partition just written (this run's rows) into a
   PostgreSQL table in one transaction (:mod:`sparkml_prod.sinks.jdbc`): one row per user
   and date, readers see the previous rows until the commit. The section is checked (URL,
   table name, password variable) before anything runs, and the connection and the
   target table before any long job.

Champion/challenger: a user's variant comes from ``xxhash64(salt, user_id)`` modulo
10,000 buckets; buckets below ``share * 10000`` go to the challenger. The assignment is
stable across runs and machines, and raising the share only moves users from champion to
challenger. Each user is scored by exactly one model. In shadow mode the champion serves
everyone and the challenger scores everyone into a separate table.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.config import ScoreConfig
from sparkml_prod.core.errors import ConfigError, EmptyResultError, SchemaError
from sparkml_prod.core.tables import is_path, overwrite_partition, read_table, schema_of, table_path
from sparkml_prod.core.time import naive_utc, require_utc_session, timestamp_lit, utc_now
from sparkml_prod.data.spine import active_entity_spine
from sparkml_prod.monitoring.impact import assign_holdout
from sparkml_prod.registry import ModelRegistry, ModelVersion
from sparkml_prod.registry.mlflow_registry import is_mlflow_ref, load_mlflow_model
from sparkml_prod.sinks.jdbc import ScoresSink, check_sink, prepare_target, upsert_scores

__all__ = [
    "ScoringRun",
    "LoadedModel",
    "run_scoring",
    "assign_variant",
    "variant_bucket",
    "BUCKETS",
    "check_inputs",
]

log = logging.getLogger("sparkml_prod.runs.score")

BUCKETS = 10_000
ROWS_PER_FILE = 1_000_000
OUTPUT_COLUMNS = (
    "user_id",
    "as_of",
    "score",
    "model_name",
    "model_version",
    "variant",
    "holdout",
    "scored_at",
    "run_id",
)
HOLDOUT_COL = "holdout"
# Tables written before a column was added take it on (older rows read it as null).
_EVOLVE = {"mergeSchema": "true"}


@dataclass
class LoadedModel:
    """A registered version and its fitted pipeline, with sources pointed where configured."""

    version: ModelVersion
    pipeline: PipelineModel

    @property
    def label(self) -> str:
        return f"{self.version.name}/{self.version.version}"


@dataclass
class ScoringRun:
    run_id: str
    as_of: dt.date
    rows: int
    by_variant: dict[str, int]
    seconds: float
    output_table: str
    sink_rows: int | None = None  # rows upserted into the JDBC sink, when configured


def variant_bucket(entity: Column, salt: str) -> Column:
    """The user's bucket in ``[0, BUCKETS)``: a hash of the salt and the id as a string
    (so an int and a bigint id land in the same bucket)."""
    return F.pmod(F.xxhash64(F.lit(salt), entity.cast("string")), F.lit(BUCKETS))


def assign_variant(entity: Column, salt: str, share: float) -> Column:
    """``challenger`` for a ``share`` of users (by bucket), ``champion`` for the rest."""
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"challenger.share must be between 0 and 1, got {share}.")
    cut = int(round(share * BUCKETS))
    return F.when(variant_bucket(entity, salt) < F.lit(cut), "challenger").otherwise("champion")


def _retarget_sources(pipeline: PipelineModel, sources: Mapping[str, str]) -> None:
    """Point the feature stages' sources at the configured tables (training ref -> ref)."""
    for stage in pipeline.stages:
        if stage.hasParam("sourceTable") and stage.isSet(stage.getParam("sourceTable")):
            current = stage.getOrDefault(stage.getParam("sourceTable"))
            if current in sources:
                stage.set(stage.getParam("sourceTable"), sources[current])


def _trained_refs(sources: Mapping[str, str]) -> dict[str, str]:
    """``sources`` keyed as training records tables: paths absolute."""
    return {(table_path(k) if is_path(k) else k): v for k, v in sources.items()}


def load_model(
    spark: SparkSession, config: ScoreConfig, ref: str, sources: Mapping[str, str]
) -> LoadedModel:
    """Resolve ``ref`` once (the directory registry, or MLflow's for ``models:/``), verify
    and load its pipeline, point its sources as configured."""
    if is_mlflow_ref(ref):
        version, pipeline = load_mlflow_model(
            spark, ref, config.mlflow, config.allowed_stage_classes
        )
    else:
        if config.registry_root is None:
            raise ConfigError(
                f"model '{ref}' is a ref of the directory registry, but the score config "
                "sets no registry_root: set it, or name an MLflow model "
                "(models:/<name>@<alias>)."
            )
        registry = ModelRegistry(spark, config.registry_root, config.allowed_stage_classes)
        version = registry.get(ref)
        pipeline = registry.load_version(version)
    _retarget_sources(pipeline, sources)
    return LoadedModel(version, pipeline)


def check_inputs(
    spark: SparkSession, model: LoadedModel, spine: DataFrame, sources: Mapping[str, str]
) -> None:
    """The spine and the sources must have the columns and types the model was trained on.

    Only schemas are read: no Spark job runs.
    """
    recorded = model.version.card.input_schema
    present = schema_of(spine)
    for column, kind in recorded.spine.items():
        if present.get(column) != kind:
            found = present.get(column, "missing")
            raise SchemaError(
                f"The scoring spine's column '{column}' is {found}; model {model.label} was "
                f"trained on {kind}. Spine columns: "
                f"{', '.join(f'{k} {v}' for k, v in present.items())}."
            )
    for trained_ref, columns in recorded.sources.items():
        ref = sources.get(trained_ref, trained_ref)
        have = schema_of(read_table(spark, ref))
        for column, kind in columns.items():
            if have.get(column) != kind:
                problem = "is missing column" if column not in have else "has column"
                found = "" if column not in have else f" of type {have[column]}"
                raise SchemaError(
                    f"Table '{ref}' {problem} '{column}'{found}; model {model.label} was "
                    f"trained with '{column}' {kind} from '{trained_ref}'. Columns present: "
                    f"{', '.join(f'{k} {v}' for k, v in have.items())}. Nothing was scored "
                    "or written."
                )


def scoring_spine(
    spark: SparkSession,
    model: LoadedModel,
    config: ScoreConfig,
    as_of: dt.datetime,
    sources: Mapping[str, str],
) -> DataFrame:
    """Who is scored: every entity of ``spine.users_table``, or the model's training spine
    rule at as-of (its card), with ``spine.source`` and ``spine.lookback`` overriding."""
    rule = model.version.card.spine
    entity = rule.entity_col
    if config.spine.users_table:
        users = read_table(spark, config.spine.users_table, required={entity: ()})
        return (
            users.select(entity)
            .where(F.col(entity).isNotNull())
            .distinct()
            .withColumn("as_of", timestamp_lit(as_of))
        )
    source = config.spine.source or rule.source
    return active_entity_spine(
        spark,
        sources.get(source, source),
        [as_of],
        lookback=config.spine.lookback or rule.lookback,
        entity_col=entity,
        timestamp_col=rule.timestamp_col,
    )


def _scores(
    model: LoadedModel, spine: DataFrame, variant: str, entity: str, meta: dict[str, Any]
) -> DataFrame:
    """The output columns and the model's features (for the features table) of a variant."""
    out = model.pipeline.transform(spine)
    return out.select(
        F.col(entity).alias("user_id"),
        F.to_date(F.col("as_of")).alias("as_of"),
        F.col("score").cast("double").alias("score"),
        F.lit(model.version.name).alias("model_name"),
        F.lit(model.version.version).alias("model_version"),
        F.lit(variant).alias("variant"),
        F.col(HOLDOUT_COL),
        *[F.lit(v).alias(k) for k, v in meta.items()],
        *[F.col(f) for f in model.version.card.feature_names],
    )


def _write(
    scored: DataFrame,
    table: str,
    as_of: dt.date,
    allow_empty: bool,
    features_table: str | None = None,
) -> dict[str, int]:
    """Count (which computes and caches the scores), refuse empty, replace the partition of
    the scores table (and of the features table, when configured) from the cached rows."""
    scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = {
            r["variant"]: int(r["n"])
            for r in scored.groupBy("variant").agg(F.count(F.lit(1)).alias("n")).collect()
        }
        if not counts and not allow_empty:
            raise EmptyResultError(
                f"Scoring as-of {as_of} produced no rows, so nothing was written to '{table}' "
                "(its previous content is kept). Check the spine (active users before "
                "as-of) or set allow_empty: true."
            )
        # About a million rows per file, whatever the shuffle partitioning upstream.
        files = max(1, math.ceil(sum(counts.values()) / ROWS_PER_FILE))
        overwrite_partition(
            scored.select(*OUTPUT_COLUMNS).coalesce(files), table, {"as_of": as_of}, _EVOLVE
        )
        if features_table is not None:
            overwrite_partition(scored.coalesce(files), features_table, {"as_of": as_of}, _EVOLVE)
    finally:
        scored.unpersist()
    return counts


def run_scoring(spark: SparkSession, config: ScoreConfig, as_of: dt.date) -> ScoringRun:
    """Score every user of the spine at ``as_of`` and write the partition (module docs)."""
    started = time.perf_counter()
    require_utc_session(spark, "run_scoring")
    sink = check_sink(config.jdbc_sink) if config.jdbc_sink else None
    instant = naive_utc(as_of)  # midnight UTC
    sources = _trained_refs(config.sources)
    champion = load_model(spark, config, config.model, sources)
    challenger = (
        load_model(spark, config, config.challenger.model, sources) if config.challenger else None
    )
    if config.challenger and config.challenger.shadow and not config.challenger.shadow_table:
        raise ConfigError("challenger.shadow needs challenger.shadow_table to write into.")
    log.info(
        "scoring as-of %s with %s%s",
        as_of,
        champion.label,
        f" and challenger {challenger.label}" if challenger else "",
    )
    spine = scoring_spine(spark, champion, config, instant, sources)
    for model in (champion, challenger):
        if model is not None:
            check_inputs(spark, model, spine, sources)

    entity = champion.version.card.spine.entity_col
    if sink is not None:
        prepare_target(spark, sink, schema_of(spine)[entity])
    holdout = (
        assign_holdout(F.col(entity), config.holdout.salt, config.holdout.share)
        if config.holdout
        else F.lit(False)
    )
    # Cached: every feature stage reads the spine's as-of range while planning, and the
    # scoring job reads the spine again; without the cache each would rebuild it from the
    # events of the lookback.
    spine = spine.withColumn(HOLDOUT_COL, holdout).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return _score_spine(config, as_of, started, champion, challenger, spine, sink)
    finally:
        spine.unpersist()


def _score_spine(
    config: ScoreConfig,
    as_of: dt.date,
    started: float,
    champion: LoadedModel,
    challenger: LoadedModel | None,
    spine: DataFrame,
    sink: ScoresSink | None,
) -> ScoringRun:
    entity = champion.version.card.spine.entity_col
    run_id = uuid.uuid4().hex
    meta = {
        "scored_at": timestamp_lit(utc_now()),  # never F.lit(datetime): read in TZ
        "run_id": run_id,
    }
    if challenger is None or config.challenger is None:
        scored = _scores(champion, spine, "champion", entity, meta)
    elif config.challenger.shadow:
        scored = _scores(champion, spine, "champion", entity, meta)
        shadow = _scores(challenger, spine, "shadow", entity, meta)
        assert config.challenger.shadow_table is not None
        _write(shadow, config.challenger.shadow_table, as_of, config.allow_empty)
    else:
        variant = assign_variant(F.col(entity), config.challenger.salt, config.challenger.share)
        assigned = spine.withColumn("__variant", variant)
        scored = _scores(
            champion,
            assigned.where(F.col("__variant") == "champion").drop("__variant"),
            "champion",
            entity,
            meta,
        ).unionByName(
            _scores(
                challenger,
                assigned.where(F.col("__variant") == "challenger").drop("__variant"),
                "challenger",
                entity,
                meta,
            ),
            allowMissingColumns=True,  # the two models may have other features
        )
    counts = _write(scored, config.output_table, as_of, config.allow_empty, config.features_table)
    sink_rows = None
    if sink is not None:
        # The partition just written, read back from Delta: exactly the committed rows.
        this_run = read_table(spine.sparkSession, config.output_table).where(
            (F.col("as_of") == F.lit(as_of)) & (F.col("run_id") == F.lit(run_id))
        )
        sink_rows = upsert_scores(
            spine.sparkSession,
            sink,
            this_run.select(*OUTPUT_COLUMNS),
            as_of,
            sum(counts.values()),
            run_id=run_id,
        )
    seconds = time.perf_counter() - started
    return ScoringRun(
        run_id=run_id,
        as_of=as_of,
        rows=sum(counts.values()),
        by_variant=counts,
        seconds=seconds,
        output_table=config.output_table,
        sink_rows=sink_rows,
    )
