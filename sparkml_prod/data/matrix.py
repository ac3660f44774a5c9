"""The data matrix: a spine with its point-in-time features (and labels), written once as
Delta."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.config import FeaturesConfig, TrainConfig
from sparkml_prod.core.errors import TrainingDataError
from sparkml_prod.core.tables import (
    NUMERIC,
    delta_version,
    is_path,
    read_table,
    schema_of,
    table_path,
    write_table,
)
from sparkml_prod.core.time import instant_in, require_utc_session
from sparkml_prod.data.labels import add_labels
from sparkml_prod.data.spine import active_entity_spine
from sparkml_prod.features import load_feature_spec
from sparkml_prod.features.spec import PipelineStage

__all__ = [
    "fit_feature_pipeline",
    "build_feature_matrix",
    "build_training_matrix",
    "TrainingMatrix",
    "SPLIT_COL",
    "VALIDATION_FLAG",
]

log = logging.getLogger("sparkml_prod.data.matrix")


def fit_feature_pipeline(stages: Sequence[PipelineStage], spine: DataFrame) -> PipelineModel:
    """Fit the feature stages (only the categorical ones learn anything) on a spine."""
    return Pipeline(stages=list(stages)).fit(spine)


def build_feature_matrix(spark: SparkSession, config: FeaturesConfig) -> tuple[int, int]:
    """Build the spine and its features, write them to ``output_table``; return the shape.

    The output replaces the table in one Delta commit: a failed run leaves the previous
    matrix readable.
    """
    require_utc_session(spark, "build_feature_matrix")
    stages = load_feature_spec(config.feature_spec, sources=config.sources)
    spine_source = config.sources.get(config.spine.source, config.spine.source)
    spine = active_entity_spine(
        spark,
        spine_source,
        config.spine.as_of_dates,
        lookback=config.spine.lookback,
        entity_col=config.spine.entity_col,
        timestamp_col=config.spine.timestamp_col,
    ).cache()
    matrix = fit_feature_pipeline(stages, spine).transform(spine)
    write_table(matrix, config.output_table, mode="overwrite", options={"overwriteSchema": "true"})
    spine.unpersist()
    written = read_table(spark, config.output_table)
    return written.count(), len(written.columns)


SPLIT_COL = "split"
VALIDATION_FLAG = "is_validation"


@dataclass
class TrainingMatrix:
    """A written training matrix and what is needed to train on it and rebuild it."""

    table: str
    version: int
    source_versions: dict[str, int | None]
    feature_model: PipelineModel
    feature_columns: list[str]
    categorical_columns: list[str]
    counts: dict[str, dict[str, int]]
    spine_schema: dict[str, str]
    source_schemas: dict[str, dict[str, str]]

    def read(self, spark: SparkSession) -> DataFrame:
        """The matrix at the version written by this run (Delta time travel)."""
        return (
            spark.read.format("delta")
            .option("versionAsOf", self.version)
            .load(table_path(self.table))
            if is_path(self.table)
            else spark.read.option("versionAsOf", self.version).table(self.table)
        )


def source_versions(spark: SparkSession, sources: Mapping[str, str]) -> dict[str, int | None]:
    """The current Delta version of each source (None for a table that is not Delta)."""
    out: dict[str, int | None] = {}
    for ref in sources.values():
        try:
            out[ref] = delta_version(spark, ref)
        except Exception:  # a view or a non-Delta catalog table: no time travel
            out[ref] = None
    return out


def labelled_spine(
    spark: SparkSession, config: TrainConfig, dates_by_split: Mapping[str, Sequence[dt.datetime]]
) -> DataFrame:
    """Active entities at every date, with the label and the split each date belongs to."""
    spine_source = config.sources.get(config.spine.source, config.spine.source)
    label_source = config.sources.get(config.label.source, config.label.source)
    all_dates = sorted({d for dates in dates_by_split.values() for d in dates})
    spine = active_entity_spine(
        spark,
        spine_source,
        all_dates,
        lookback=config.spine.lookback,
        entity_col=config.spine.entity_col,
        timestamp_col=config.spine.timestamp_col,
    )
    labelled = add_labels(
        spine,
        label_source,
        horizon=config.label.horizon,
        event_filter=config.label.filter,
        kind=config.label.kind,
        value_col=config.label.value_col,
        entity_col=config.spine.entity_col,
        source_entity_col=config.label.entity_col,
        timestamp_col=config.label.timestamp_col,
    )
    split = F.lit(None).cast("string")
    for name, dates in dates_by_split.items():
        split = F.when(instant_in("as_of", dates), F.lit(name)).otherwise(split)
    return labelled.withColumn(SPLIT_COL, split)


def split_counts(labelled: DataFrame, label_col: str = "label") -> dict[str, dict[str, int]]:
    """Rows and positive labels per split (one small aggregation)."""
    rows = (
        labelled.groupBy(SPLIT_COL)
        .agg(F.count(F.lit(1)).alias("rows"), F.sum(label_col).alias("positives"))
        .collect()
    )
    return {
        r[SPLIT_COL]: {"rows": int(r["rows"]), "positives": int(r["positives"] or 0)} for r in rows
    }


def check_split_counts(
    counts: Mapping[str, Mapping[str, int]], dates_by_split: Mapping[str, Sequence[dt.datetime]]
) -> None:
    """Each split must have rows and both label classes, or training cannot be honest."""
    for name, dates in dates_by_split.items():
        shown = ", ".join(d.strftime("%Y-%m-%d") for d in dates)
        found = counts.get(name, {"rows": 0, "positives": 0})
        if found["rows"] == 0:
            raise TrainingDataError(
                f"The {name} snapshot(s) at {shown} have no rows: no entity was active in "
                "the spine lookback before them. Check the dates against the events."
            )
        if found["positives"] in (0, found["rows"]):
            only = "0 (negative)" if found["positives"] == 0 else "1 (positive)"
            raise TrainingDataError(
                f"The {name} snapshot(s) at {shown} have a single label class: all "
                f"{found['rows']} rows are {only}. A classifier needs both; check the label "
                "filter and horizon, or choose other dates."
            )


def build_training_matrix(
    spark: SparkSession,
    config: TrainConfig,
    dates_by_split: Mapping[str, Sequence[dt.datetime]],
    stages: Sequence[PipelineStage],
) -> TrainingMatrix:
    """Spine + labels + features for every snapshot, written once as a Delta table.

    The split counts are checked before the features are computed (a bad split fails in
    seconds, not after the long feature build). Feature stages that learn (categorical
    indexers) are fitted on the training snapshots only. The sources' Delta versions
    are recorded so the matrix can be rebuilt exactly with time travel.
    """
    versions = source_versions(spark, config.sources)
    schemas = {ref: schema_of(read_table(spark, ref)) for ref in config.sources.values()}
    labelled = labelled_spine(spark, config, dates_by_split).cache()
    try:
        counts = split_counts(labelled)
        check_split_counts(counts, dates_by_split)
        feature_model = fit_feature_pipeline(stages, labelled.where(F.col(SPLIT_COL) == "train"))
        matrix = feature_model.transform(labelled)
        write_table(
            matrix, config.matrix_table, mode="overwrite", options={"overwriteSchema": "true"}
        )
    finally:
        labelled.unpersist()
    spine_columns = {config.spine.entity_col, "as_of", "label", SPLIT_COL}
    written = schema_of(read_table(spark, config.matrix_table))
    # Numeric and boolean columns are features; strings (raw categories) are not.
    features = [
        name
        for name, kind in written.items()
        if name not in spine_columns and kind.split("(")[0] in (*NUMERIC, "boolean")
    ]
    categorical = [
        c
        for stage in feature_model.stages
        if hasattr(stage, "getOutputCols") and stage.hasParam("stringOrderType")
        for c in stage.getOutputCols()
    ]
    spine_schema = {k: v for k, v in written.items() if k in (config.spine.entity_col, "as_of")}
    return TrainingMatrix(
        table=config.matrix_table,
        version=delta_version(spark, config.matrix_table),
        source_versions=versions,
        feature_model=feature_model,
        feature_columns=features,
        categorical_columns=[c for c in categorical if c in features],
        counts=counts,
        spine_schema=spine_schema,
        source_schemas=schemas,
    )
