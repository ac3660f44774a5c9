"""Rebuild a registered model's training matrix exactly, from its model card.

The card holds the training config as run, the as-of dates of every split, and the Delta
version of every source that training pinned its reads to. :func:`rebuild_matrix`
rebuilds the spine, the labels and the features with the model's own fitted feature
stages (nothing is refitted), every read pinned to those versions, and checks the result
against the recorded row count and content hash
(:func:`~sparkml_prod.data.fingerprint.content_hash`). Events appended since training do
not change it; a source whose recorded version can no longer be read (vacuumed, or a
table recreated) is refused before the rebuild starts.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import SparkSession

from sparkml_prod.core.config import TrainConfig, from_mapping
from sparkml_prod.core.errors import ConfigError, ModelCardError, RebuildMismatchError
from sparkml_prod.core.tables import read_table, write_table
from sparkml_prod.data.fingerprint import content_hash
from sparkml_prod.data.matrix import rebuild_training_matrix
from sparkml_prod.data.spine import as_of_timestamps
from sparkml_prod.registry import ModelRegistry

__all__ = ["RebuildResult", "rebuild_matrix"]


@dataclass(frozen=True)
class RebuildResult:
    """A rebuild that matched the recorded matrix."""

    model: str
    rows: int
    content_hash: str
    output_table: str | None
    seconds: float


def rebuild_matrix(
    spark: SparkSession, registry: ModelRegistry, ref: str, output_table: str | None = None
) -> RebuildResult:
    """Rebuild the training matrix of the model ``ref`` names and check it is the recorded
    one; with ``output_table`` also write it there (replacing that table).

    Raises
    ------
    SourceVersionError
        A recorded source version can no longer be read (before any rebuild job).
    RebuildMismatchError
        The rebuilt matrix differs from the recorded one (rows or content).
    """
    started = time.perf_counter()
    version = registry.get(ref)
    card = version.card
    try:
        config = from_mapping(
            card.training_config, TrainConfig, source=f"The model card of {card.label_ref}"
        )
    except ConfigError as error:
        raise ModelCardError(f"{error} (training_config)") from None
    versions = card.matrix.source_versions
    for table, pinned in versions.items():
        if pinned is not None:
            read_table(spark, table, version=pinned)  # refuses a version it cannot read
    pipeline = registry.load_version(version)
    dates = {
        split: as_of_timestamps([dt.date.fromisoformat(d) for d in days])
        for split, days in card.as_of_dates.items()
    }
    matrix = rebuild_training_matrix(
        spark, config, dates, pipeline.stages[: card.feature_stage_count], versions
    )
    if output_table is not None:
        write_table(matrix, output_table, mode="overwrite", options={"overwriteSchema": "true"})
        rows, digest = content_hash(read_table(spark, output_table))
    else:
        matrix = matrix.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            rows, digest = content_hash(matrix)
        finally:
            matrix.unpersist()
    recorded = card.matrix
    if (rows, digest) != (recorded.rows, recorded.content_hash):
        pinned_at = ", ".join(f"{t} @ {v}" for t, v in versions.items())
        raise RebuildMismatchError(
            f"The rebuilt training matrix of model {card.label_ref} differs from the recorded "
            f"one: {rows} rows with content hash {digest[:16]}, recorded {recorded.rows} rows "
            f"with content hash {recorded.content_hash[:16]} (table '{recorded.table}' "
            f"version {recorded.delta_version}). The sources were read at the recorded "
            f"versions ({pinned_at}); a source without a version (a view) or a changed "
            "table history makes a rebuild inexact."
        )
    return RebuildResult(
        model=card.label_ref,
        rows=rows,
        content_hash=digest,
        output_table=output_table,
        seconds=time.perf_counter() - started,
    )
