"""The data matrix: a spine with its point-in-time features, written once as Delta."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import DataFrame, SparkSession

from sparkml_prod.config import FeaturesConfig
from sparkml_prod.features import load_feature_spec
from sparkml_prod.features.spec import PipelineStage
from sparkml_prod.spine import active_entity_spine
from sparkml_prod.tables import read_table, write_table

__all__ = ["fit_feature_pipeline", "build_feature_matrix"]

log = logging.getLogger("sparkml_prod.matrix")


def fit_feature_pipeline(stages: Sequence[PipelineStage], spine: DataFrame) -> PipelineModel:
    """Fit the feature stages (only the categorical ones learn anything) on a spine."""
    return Pipeline(stages=list(stages)).fit(spine)


def build_feature_matrix(spark: SparkSession, config: FeaturesConfig) -> tuple[int, int]:
    """Build the spine and its features, write them to ``output_table``; return the shape.

    The output replaces the table in one Delta commit: a failed run leaves the previous
    matrix readable.
    """
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
