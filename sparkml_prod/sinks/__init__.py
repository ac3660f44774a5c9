"""Where results go besides Delta: a PostgreSQL table of the scores (:mod:`.jdbc`)."""

from sparkml_prod.sinks.jdbc import (
    DRIVER_CLASS,
    DRIVER_PACKAGE,
    ScoresSink,
    check_sink,
    prepare_target,
    upsert_scores,
)

__all__ = [
    "DRIVER_CLASS",
    "DRIVER_PACKAGE",
    "ScoresSink",
    "check_sink",
    "prepare_target",
    "upsert_scores",
]
