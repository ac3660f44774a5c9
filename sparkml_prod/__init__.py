"""sparkml-prod: point-in-time features, XGBoost training and batch scoring on Spark."""

from sparkml_prod._version import __version__
from sparkml_prod.core.errors import (
    ConfigError,
    EmptyResultError,
    SchemaError,
    SparkmlProdError,
    TableNotFoundError,
)
from sparkml_prod.core.session import get_spark

__all__ = [
    "__version__",
    "get_spark",
    "ConfigError",
    "EmptyResultError",
    "SchemaError",
    "SparkmlProdError",
    "TableNotFoundError",
]
