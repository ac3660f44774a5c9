"""Proof that bad input fails before any Spark job starts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pyspark.sql import SparkSession


def no_job_runs(spark: SparkSession, action: Callable[[], Any]) -> Exception:
    """Run ``action``, which must raise; prove no Spark job started before it did."""
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("bad-input", "bad input must fail before any job")
    try:
        with pytest.raises(Exception) as err:
            action()
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert tracker.getJobIdsForGroup("bad-input") == []
    return err.value
