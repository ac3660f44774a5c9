"""Categorical columns encoded for XGBoost, safe against unseen categories.

The choice: pyspark's own ``StringIndexer`` with ``handleInvalid="keep"`` and
``stringOrderType="frequencyDesc"``. Fitted on the training matrix, each category seen
there gets an index by descending frequency (0 = most frequent, ties by name); a
category never seen in training, and a null, get the one extra index ``n_categories``,
so scoring never fails on a new country or plan. XGBoost splits on the index; passing
the index columns as ``'c'`` feature types lets it treat them as native categoricals.
Frequency order keeps the codes stable when rare categories come and go.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.ml.feature import StringIndexer

__all__ = ["categorical_indexer", "INDEX_SUFFIX"]

INDEX_SUFFIX = "_index"


def categorical_indexer(columns: Sequence[str], suffix: str = INDEX_SUFFIX) -> StringIndexer:
    """A ``StringIndexer`` (an Estimator: fit it in the training Pipeline) for ``columns``.

    Examples
    --------
    >>> indexer = categorical_indexer(["plan", "country"])
    >>> indexer.getOutputCols()
    ['plan_index', 'country_index']
    """
    if not columns:
        raise ValueError("categorical_indexer needs at least one column.")
    return StringIndexer(
        inputCols=list(columns),
        outputCols=[f"{c}{suffix}" for c in columns],
        handleInvalid="keep",
        stringOrderType="frequencyDesc",
    )
