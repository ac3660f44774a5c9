"""The data matrix: a spine with its point-in-time features (and labels), written once as
Delta."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from pyspark.ml import Pipeline, PipelineModel, Transformer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_prod.core.config import FeaturesConfig, HeldOutEntities, TrainConfig
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
from sparkml_prod.data.fingerprint import content_hash
from sparkml_prod.data.labels import add_labels
from sparkml_prod.data.spine import active_entity_spine
from sparkml_prod.data.split import held_out_entity
from sparkml_prod.features import (
    declared_outputs,
    load_feature_spec,
    pin_source_versions,
    unpin_source_versions,
)
from sparkml_prod.features.spec import PipelineStage

__all__ = [
    "fit_feature_pipeline",
    "build_feature_matrix",
    "build_training_matrix",
    "rebuild_training_matrix",
    "model_inputs",
    "labelled_spine",
    "source_ref",
    "source_versions",
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
# Model inputs are numeric or boolean; a declared string output feeds a categorical stage.
_MODEL_INPUT_TYPES = (*NUMERIC, "boolean")


@dataclass
class TrainingMatrix:
    """A written training matrix and what is needed to train on it and rebuild it.

    ``feature_model`` is the fitted feature pipeline with its sources *unpinned* (what
    the registered model reads at scoring time); the matrix itself was built with every
    read pinned to ``source_versions``.
    """

    table: str
    version: int
    rows: int
    content_hash: str
    source_versions: dict[str, int | None]
    feature_model: PipelineModel
    feature_columns: list[str]
    categorical_columns: list[str]
    counts: dict[str, dict[str, int]]
    spine_schema: dict[str, str]
    source_schemas: dict[str, dict[str, str]]

    def read(self, spark: SparkSession) -> DataFrame:
        """The matrix at the version written by this run (Delta time travel)."""
        return read_table(spark, self.table, version=self.version)


def source_versions(spark: SparkSession, sources: Mapping[str, str]) -> dict[str, int | None]:
    """The current Delta version of each source (None for a table that is not Delta)."""
    out: dict[str, int | None] = {}
    for ref in sources.values():
        try:
            out[ref] = delta_version(spark, ref)
        except Exception:  # a view or a non-Delta catalog table: no time travel
            out[ref] = None
    return out


def source_ref(config: TrainConfig, source: str) -> str:
    """A spine or label ``source``: a name of ``sources``, or a table reference itself
    (a path made absolute)."""
    ref = config.sources.get(source, source)
    return table_path(ref) if is_path(ref) else ref


def _pinned(versions: Mapping[str, int | None]) -> dict[str, int]:
    return {ref: v for ref, v in versions.items() if v is not None}


def labelled_spine(
    spark: SparkSession,
    config: TrainConfig,
    dates_by_split: Mapping[str, Sequence[dt.datetime]],
    versions: Mapping[str, int | None] | None = None,
) -> DataFrame:
    """Active entities at every date, with the label and the split each date belongs to;
    the spine and label sources read at ``versions`` (ref -> Delta version) when given.
    With validation on held-out entities, their rows of the training dates are the
    ``validation`` split."""
    spine_source = source_ref(config, config.spine.source)
    label_source = source_ref(config, config.label.source)
    pinned = _pinned(versions or {})
    all_dates = sorted({d for dates in dates_by_split.values() for d in dates})
    spine = active_entity_spine(
        spark,
        spine_source,
        all_dates,
        lookback=config.spine.lookback,
        entity_col=config.spine.entity_col,
        timestamp_col=config.spine.timestamp_col,
        source_version=pinned.get(spine_source),
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
        source_version=pinned.get(label_source),
    )
    split = F.lit(None).cast("string")
    for name, dates in dates_by_split.items():
        split = F.when(instant_in("as_of", dates), F.lit(name)).otherwise(split)
    held_out = config.split.validation
    if isinstance(held_out, HeldOutEntities):
        entity = F.col(config.spine.entity_col)
        split = F.when(
            (split == "train") & held_out_entity(entity, held_out), F.lit("validation")
        ).otherwise(split)
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
    counts: Mapping[str, Mapping[str, int]],
    dates_by_split: Mapping[str, Sequence[dt.datetime]],
    held_out: HeldOutEntities | None = None,
) -> None:
    """Each split must have rows and both label classes, or training cannot be honest
    (with ``held_out``, also the validation rows of the held-out entities)."""
    described = {
        name: f"The {name} snapshot(s) at " + ", ".join(d.strftime("%Y-%m-%d") for d in dates)
        for name, dates in dates_by_split.items()
        if dates or name != "validation"
    }
    if held_out is not None:
        described["validation"] = (
            f"The validation rows (the {held_out.entity_share:.0%} of entities held out of "
            f"the training snapshots, salt '{held_out.salt}')"
        )
    for name, what in described.items():
        found = counts.get(name, {"rows": 0, "positives": 0})
        if found["rows"] == 0:
            cause = (
                "no entity was active in the spine lookback before them. Check the dates "
                "against the events."
                if name != "validation" or held_out is None
                else "no entity of the training snapshots fell in the share; raise it."
            )
            raise TrainingDataError(f"{what} have no rows: {cause}")
        if found["positives"] in (0, found["rows"]):
            only = "0 (negative)" if found["positives"] == 0 else "1 (positive)"
            raise TrainingDataError(
                f"{what} have a single label class: all "
                f"{found['rows']} rows are {only}. A classifier needs both; check the label "
                "filter and horizon, or choose other dates."
            )


def build_training_matrix(
    spark: SparkSession,
    config: TrainConfig,
    dates_by_split: Mapping[str, Sequence[dt.datetime]],
    stages: Sequence[PipelineStage],
    versions: Mapping[str, int | None],
    labelled: DataFrame | None = None,
) -> TrainingMatrix:
    """Spine + labels + features for every snapshot, written once as a Delta table.

    Every read (spine, labels, feature sources) is pinned to ``versions`` (ref -> Delta
    version, recorded by the caller before anything is read), so the matrix can be
    rebuilt exactly. The split counts are checked before the features are computed (a
    bad split fails in seconds, not after the long feature build). Feature stages that
    learn (categorical indexers) are fitted on the training snapshots only. The model's
    features are the stages' declared numeric outputs, never other matrix columns (such
    as extra columns of a ``labelled`` spine given instead of :func:`labelled_spine`'s).
    """
    pinned = _pinned(versions)
    schemas = {
        ref: schema_of(read_table(spark, ref, version=pinned.get(ref)))
        for ref in config.sources.values()
    }
    if labelled is None:
        labelled = labelled_spine(spark, config, dates_by_split, versions)
    labelled = labelled.cache()
    try:
        counts = split_counts(labelled)
        held_out = config.split.validation
        check_split_counts(
            counts, dates_by_split, held_out if isinstance(held_out, HeldOutEntities) else None
        )
        feature_model = fit_feature_pipeline(
            pin_source_versions(stages, pinned), labelled.where(F.col(SPLIT_COL) == "train")
        )
        matrix = feature_model.transform(labelled)
        write_table(
            matrix, config.matrix_table, mode="overwrite", options={"overwriteSchema": "true"}
        )
    finally:
        labelled.unpersist()
    version = delta_version(spark, config.matrix_table)
    written_table = read_table(spark, config.matrix_table, version=version)
    written = schema_of(written_table)
    features, categorical = model_inputs(feature_model.stages, written)
    rows, digest = content_hash(written_table)
    spine_schema = {k: v for k, v in written.items() if k in (config.spine.entity_col, "as_of")}
    return TrainingMatrix(
        table=config.matrix_table,
        version=version,
        rows=rows,
        content_hash=digest,
        source_versions=dict(versions),
        feature_model=PipelineModel(
            stages=cast(list[Transformer], unpin_source_versions(feature_model.stages))
        ),
        feature_columns=features,
        categorical_columns=categorical,
        counts=counts,
        spine_schema=spine_schema,
        source_schemas=schemas,
    )


def model_inputs(
    feature_stages: Sequence[Any], matrix_schema: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """The model's features and which of them are categorical indexes: the stages'
    declared outputs of a numeric or boolean type, in order. A declared string column is
    an input of a categorical stage, not a feature; one that no stage indexes is logged."""
    declared = declared_outputs(feature_stages)
    features = [c for c in declared if matrix_schema[c].split("(")[0] in _MODEL_INPUT_TYPES]
    categorical = [
        c
        for stage in feature_stages
        if stage.hasParam("stringOrderType")
        for c in stage.getOrDefault(stage.getParam("outputCols"))
    ]
    indexed = {
        c
        for stage in feature_stages
        if stage.hasParam("stringOrderType")
        for c in stage.getOrDefault(stage.getParam("inputCols"))
    }
    for column in declared:
        if column not in features and column not in indexed:
            log.warning(
                "feature column '%s' is %s: not a model input; index it with a categorical "
                "stage to use it",
                column,
                matrix_schema[column],
            )
    return features, [c for c in categorical if c in features]


def rebuild_training_matrix(
    spark: SparkSession,
    config: TrainConfig,
    dates_by_split: Mapping[str, Sequence[dt.datetime]],
    fitted_feature_stages: Sequence[Any],
    versions: Mapping[str, int | None],
) -> DataFrame:
    """The training matrix again, from the fitted feature stages of a registered model with
    every read pinned to the recorded ``versions`` (nothing is refitted or written)."""
    pinned = _pinned(versions)
    labelled = labelled_spine(spark, config, dates_by_split, versions)
    model = PipelineModel(
        stages=cast(list[Transformer], pin_source_versions(fitted_feature_stages, pinned))
    )
    return model.transform(labelled)
