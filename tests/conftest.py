"""One local SparkSession (with Delta) shared by the whole test session, and the
session's PostgreSQL server (``postgres``, started only when a test asks for it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from postgres import postgres  # noqa: F401  (the session fixture, see tests/postgres.py)
from pyspark.sql import SparkSession
from session_packages import TEST_PACKAGES

from sparkml_prod.core.session import get_spark


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    warehouse = tmp_path_factory.mktemp("warehouse")
    session = get_spark(
        app_name="sparkml-prod-tests",
        master="local[2]",
        ui=False,
        conf={
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.sql.warehouse.dir": str(warehouse),
            "spark.driver.memory": "4g",
        },
        extra_packages=TEST_PACKAGES,
    )
    yield session
    session.stop()
