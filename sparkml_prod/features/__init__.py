"""Point-in-time feature stages: Spark ML transformers over event sources.

Every stage takes a *spine* ``(entity, as_of, ...)`` and returns it with feature columns
added, one output row per input row. Window ``w`` at as-of ``t`` covers
``t - w <= event_time < t``: an event at exactly ``t`` is never seen.
"""

from sparkml_prod.features.aggregates import AGGREGATIONS, WindowAggregates
from sparkml_prod.features.categorical import INDEX_SUFFIX, categorical_indexer
from sparkml_prod.features.derived import DerivedColumns
from sparkml_prod.features.lookup import PointInTimeLookup
from sparkml_prod.features.pinning import pin_source_versions, unpin_source_versions
from sparkml_prod.features.recency import Recency
from sparkml_prod.features.spec import build_feature_stages, declared_outputs, load_feature_spec

__all__ = [
    "AGGREGATIONS",
    "DerivedColumns",
    "INDEX_SUFFIX",
    "PointInTimeLookup",
    "Recency",
    "WindowAggregates",
    "build_feature_stages",
    "declared_outputs",
    "categorical_indexer",
    "load_feature_spec",
    "pin_source_versions",
    "unpin_source_versions",
]
