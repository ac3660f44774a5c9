"""One monitoring run: what ``sparkml-prod monitor`` (and ``jobs/monitor.py``) does.

For the scored date ``as_of`` of the run, per model version and variant in the scores
table:

1. **drift** of every feature (from ``features_table``, which scoring writes) and of the
   score against the reference profile in that version's model card, the score's share
   per reference bin (for the dashboard), and the row count with its change against the
   previous scored date;
2. **realised performance** of every scored date up to ``as_of`` that has no complete
   evaluation in the history yet: labelled by the card's label rule once its horizon
   has passed in the events (``pending`` with the date it becomes evaluable before);
3. **the action's impact** on those dates: outcome rate of acted-upon vs holdout users
   among the ``targeted_share`` with the highest scores;

then every record goes into the history table under the run id ``<model>@<as_of>`` (a
rerun replaces its rows) and, with ``fail_on_alert``, an alert fails the run after the
history is written.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.config import MonitorConfig
from sparkml_prod.core.errors import ConfigError, EmptyResultError
from sparkml_prod.core.tables import read_table
from sparkml_prod.core.time import require_utc_session, utc_now
from sparkml_prod.data.labels import labels_complete_until
from sparkml_prod.monitoring.dashboard import SCORE_SHARE
from sparkml_prod.monitoring.drift import DriftResult, DriftThresholds, measure_drift
from sparkml_prod.monitoring.history import (
    check_alerts,
    collect_records,
    read_history,
    write_history,
)
from sparkml_prod.monitoring.impact import action_impact
from sparkml_prod.monitoring.profile import ReferenceProfile
from sparkml_prod.monitoring.realised import realised_labels, realised_performance
from sparkml_prod.monitoring.records import MetricRecord, status_of
from sparkml_prod.registry import ModelRegistry
from sparkml_prod.registry.card import ModelCard

__all__ = ["MonitoringRun", "run_monitoring"]

log = logging.getLogger("sparkml_prod.runs.monitor")


@dataclass
class MonitoringRun:
    """What a monitoring run recorded."""

    run_id: str
    as_of: dt.date
    records: list[MetricRecord]
    seconds: float


def _thresholds(config: MonitorConfig) -> DriftThresholds:
    t = config.thresholds
    try:
        return DriftThresholds(
            psi_warn=t.psi_warn,
            psi_alert=t.psi_alert,
            missing_rate_warn=t.missing_rate_warn,
            missing_rate_alert=t.missing_rate_alert,
        )
    except ValueError as error:
        raise ConfigError(f"thresholds: {error}") from None


def _check(config: MonitorConfig) -> None:
    if not 0.0 < config.targeted_share <= 1.0:
        raise ConfigError(
            f"targeted_share must be in (0, 1], the share of users with the highest scores "
            f"the action targets; got {config.targeted_share}."
        )
    t = config.thresholds
    if not 0.0 <= t.row_count_warn <= t.row_count_alert:
        raise ConfigError(
            "thresholds.row_count_warn must be between 0 and thresholds.row_count_alert; got "
            f"{t.row_count_warn} and {t.row_count_alert}."
        )


def _score_shares(result: DriftResult, profile: ReferenceProfile, base: MetricRecord) -> list:
    """One ``score_share`` record per reference bin of the score (the dashboard's input;
    the missing bin is left out, as the reference distribution has none)."""
    if result.score_shares is None or profile.score is None:
        return []
    bounds = [-math.inf, *profile.score.edges, math.inf]
    out = []
    for index, share in enumerate(result.score_shares[: len(bounds) - 1]):
        detail = {"bin": index, "edge_low": bounds[index], "edge_high": bounds[index + 1]}
        out.append(
            MetricRecord(
                base.as_of,
                base.model_name,
                base.model_version,
                base.variant,
                SCORE_SHARE,
                "score",
                float(share),
                None,
                None,
                "ok",
                json.dumps(detail),
            )
        )
    return out


def _drift(
    spark: SparkSession,
    config: MonitorConfig,
    scores: DataFrame,
    card: ModelCard,
    variant: str,
    as_of: dt.date,
    thresholds: DriftThresholds,
) -> list[MetricRecord]:
    profile = ReferenceProfile.from_dict(card.reference_profile)
    on_date = F.col("as_of") == F.lit(as_of.isoformat()).cast("date")
    mine = (F.col("model_version") == card.version) & (F.col("variant") == variant)
    if config.features_table:
        rows = read_table(spark, config.features_table).where(on_date & mine)
    else:  # the score only: the scores table has no features
        rows = scores.where(on_date & mine)
        profile = ReferenceProfile(profile.row_count, (), profile.score)
    result = measure_drift(
        rows,
        profile,
        as_of=as_of,
        model_name=card.name,
        model_version=card.version,
        variant=variant,
        thresholds=thresholds,
        table=config.features_table or config.scores_table,
    )
    base = MetricRecord(as_of, card.name, card.version, variant, "", None, None, None, None, "ok")
    return [*result.records, *_score_shares(result, profile, base)]


def _row_count_change(
    scores: DataFrame, config: MonitorConfig, as_of: dt.date, counts: dict[tuple[int, str], int]
) -> list[MetricRecord]:
    """Relative change of each variant's row count against the previous scored date."""
    earlier = scores.where(F.col("as_of") < F.lit(as_of.isoformat()).cast("date"))
    last = earlier.agg(F.max("as_of")).head()
    if last is None or last[0] is None:
        return []
    previous_date = last[0]
    previous = {
        r["variant"]: int(r["n"])
        for r in scores.where(F.col("as_of") == F.lit(previous_date))
        .groupBy("variant")
        .agg(F.count(F.lit(1)).alias("n"))
        .collect()
    }
    t, out = config.thresholds, []
    for (version, variant), n in sorted(counts.items()):
        before = previous.get(variant)
        if not before:
            continue
        change = abs(n / before - 1.0)
        detail = json.dumps({"previous_as_of": str(previous_date), "previous_rows": before})
        out.append(
            MetricRecord(
                as_of,
                config.model_name,
                version,
                variant,
                "row_count_change",
                None,
                change,
                t.row_count_warn,
                t.row_count_alert,
                status_of(change, t.row_count_warn, t.row_count_alert),
                detail,
            )
        )
    return out


def _evaluated_dates(spark: SparkSession, config: MonitorConfig, run_id: str) -> set[dt.date]:
    """Scored dates whose realised AUC the history already holds as complete, from runs
    other than ``run_id`` (a rerun replaces that run's rows, so it evaluates them again)."""
    history = read_history(spark, config.history_table, config.model_name, metrics=["roc_auc"])
    kept = (F.col("status") != "pending") & (F.col("run_id") != F.lit(run_id))
    done = history.where(kept).select("as_of").distinct().collect()
    return {r["as_of"] for r in done}


def _realised(
    spark: SparkSession,
    config: MonitorConfig,
    registry: ModelRegistry,
    scores: DataFrame,
    dates: Sequence[dt.date],
) -> list[MetricRecord]:
    records: list[MetricRecord] = []
    complete: dict[str, dt.datetime] = {}
    for day in dates:
        on_day = scores.where(F.col("as_of") == F.lit(day.isoformat()).cast("date"))
        top = on_day.agg(F.max("model_version")).head()
        assert top is not None  # a global aggregate always gives one row
        card = registry.get(f"{config.model_name}/{top[0]}").card
        rule = card.label
        if rule.source not in complete:
            complete[rule.source] = labels_complete_until(spark, rule.source, rule.timestamp_col)
        labels = realised_labels(on_day, rule, as_of=day)
        found = realised_performance(
            on_day,
            labels,
            as_of=day,
            horizon=rule.horizon,
            complete_until=complete[rule.source],
            model_name=config.model_name,
        )
        records += found
        ready = any(r.metric == "roc_auc" and r.status != "pending" for r in found)
        if ready and on_day.where(F.col("holdout")).limit(1).count():
            outcomes = labels.select("user_id", F.col("label").alias("outcome"))
            records += action_impact(
                on_day,
                outcomes,
                as_of=day,
                model_name=config.model_name,
                target_share=None if config.targeted_share == 1.0 else config.targeted_share,
            )
    return records


def run_monitoring(spark: SparkSession, config: MonitorConfig, as_of: dt.date) -> MonitoringRun:
    """Monitor the scores of ``as_of`` and every date that became evaluable (module docs)."""
    started = time.perf_counter()
    require_utc_session(spark, "run_monitoring")
    _check(config)
    thresholds = _thresholds(config)
    registry = ModelRegistry(spark, config.registry_root, config.allowed_stage_classes)
    scores = read_table(
        spark,
        config.scores_table,
        required={"user_id": (), "as_of": "date", "score": "double", "variant": "string"},
    ).where(F.col("model_name") == config.model_name)
    on_date = scores.where(F.col("as_of") == F.lit(as_of.isoformat()).cast("date"))
    groups = on_date.groupBy("model_version", "variant").agg(F.count(F.lit(1)).alias("n")).collect()
    if not groups:
        raise EmptyResultError(
            f"Table '{config.scores_table}' has no scores of model '{config.model_name}' at "
            f"as-of {as_of}: nothing to monitor. Score that date first, or check model_name."
        )
    records: list[MetricRecord] = []
    counts: dict[tuple[int, str], int] = {}
    for row in sorted(groups, key=lambda r: (r["model_version"], r["variant"])):
        card = registry.get(f"{config.model_name}/{row['model_version']}").card
        records += _drift(spark, config, scores, card, row["variant"], as_of, thresholds)
        counts[(int(row["model_version"]), row["variant"])] = int(row["n"])
    records += _row_count_change(scores, config, as_of, counts)

    scored_dates = sorted(
        r["as_of"]
        for r in scores.where(F.col("as_of") <= F.lit(as_of.isoformat()).cast("date"))
        .select("as_of")
        .distinct()
        .collect()
    )
    run_id = f"{config.model_name}@{as_of.isoformat()}"
    done = _evaluated_dates(spark, config, run_id)
    records += _realised(
        spark, config, registry, scores, [d for d in scored_dates if d not in done]
    )

    write_history(spark, config.history_table, run_id, records, computed_at=utc_now())
    log.info("monitoring run %s: %d records into %s", run_id, len(records), config.history_table)
    check_alerts(records, config.fail_on_alert)
    return MonitoringRun(run_id, as_of, records, time.perf_counter() - started)


def latest_records(spark: SparkSession, config: MonitorConfig) -> list[MetricRecord]:
    """The history's records of this model (bounded: a metrics table), for summaries."""
    return collect_records(read_history(spark, config.history_table, config.model_name))
