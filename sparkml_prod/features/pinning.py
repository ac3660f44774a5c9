"""Pin feature stages to the Delta versions their sources had when a matrix was built.

Training records each source's Delta version; pinning a copy of the fitted stages to
those versions makes them read the sources exactly as training did, however many events
were appended since.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

from pyspark.ml import PipelineModel, Transformer

from sparkml_prod.core.tables import table_expression
from sparkml_prod.features.params import HasSource
from sparkml_prod.features.spec import PipelineStage

__all__ = ["pin_source_versions", "unpin_source_versions"]


def pin_source_versions(
    stages: Sequence[PipelineStage] | PipelineModel, versions: Mapping[str, int | None]
) -> list[PipelineStage]:
    """Copies of ``stages`` whose sources read the recorded Delta ``versions``.

    ``versions`` maps a source table reference to a version, as training records it
    (``TrainingMatrix.source_versions``); None unpins (the latest version is read). A
    reference matches a stage's ``sourceTable`` however it is spelled (``/data/events``
    and ``delta.`/data/events``` are one table). Each stage whose source is in
    ``versions`` is returned as ``stage.copy()`` with ``sourceVersion`` set; every other
    stage is returned as it is, and the stages given are never modified. The stages of a
    ``PipelineModel`` (given, or nested in ``stages``) are pinned the same way.

    Raises
    ------
    ValueError
        Two references in ``versions`` that name one table give it different versions,
        or a stage without a ``sourceVersion`` Param reads a table in ``versions``.

    Examples
    --------
    >>> from sparkml_prod.features import Recency
    >>> stage = Recency(sourceTable="/data/events")
    >>> [pinned] = pin_source_versions([stage], {"/data/events": 3})
    >>> pinned.getSourceVersion(), stage.getSourceVersion()
    (3, None)
    """
    by_table: dict[str, tuple[str, int | None]] = {}
    for ref, version in versions.items():
        key = table_expression(ref)
        if key in by_table and by_table[key][1] != version:
            other, other_version = by_table[key]
            raise ValueError(
                f"The versions to pin name table '{key}' twice with different versions: "
                f"'{other}' at {other_version} and '{ref}' at {version}. Keep one of them."
            )
        by_table[key] = (ref, version)

    def pin(stage: PipelineStage) -> PipelineStage:
        if isinstance(stage, PipelineModel):
            pinned = pin_source_versions(stage.stages, versions)  # copies of Transformers
            return PipelineModel(cast(list[Transformer], pinned))
        if not stage.hasParam("sourceTable") or not stage.isDefined("sourceTable"):
            return stage
        ref = stage.getOrDefault("sourceTable")
        if table_expression(ref) not in by_table:
            return stage
        if not isinstance(stage, HasSource):
            raise ValueError(
                f"Stage {type(stage).__name__} reads table '{ref}' but has no 'sourceVersion' "
                "parameter, so it cannot be pinned to a version: rebuild it with the "
                "library's feature stages, or leave the table out of the versions."
            )
        return stage.copy().setSourceVersion(by_table[table_expression(ref)][1])

    model_stages = stages.stages if isinstance(stages, PipelineModel) else stages
    return [pin(stage) for stage in model_stages]


def unpin_source_versions(stages: Sequence[PipelineStage]) -> list[PipelineStage]:
    """Copies of ``stages`` that read the latest version of every source again (what a
    registered model must do when it scores); the stages given are never modified.

    Examples
    --------
    >>> from sparkml_prod.features import Recency
    >>> [latest] = unpin_source_versions([Recency(sourceTable="/e", sourceVersion=3)])
    >>> latest.getSourceVersion() is None
    True
    """
    sources = {
        stage.getOrDefault("sourceTable"): None
        for stage in stages
        if stage.hasParam("sourceTable") and stage.isDefined("sourceTable")
    }
    return pin_source_versions(stages, sources)
