"""One local SparkSession (with Delta) shared by the whole test session, and the servers
of the storage tests, each started only when a test asks for it: one HDFS (a
MiniDFSCluster in its own JVM) and one PostgreSQL (``postgres``, see tests/postgres.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hdfs import MiniDfs, mini_dfs_cluster
from postgres import postgres  # noqa: F401  (the session fixture, see tests/postgres.py)
from pyspark.sql import SparkSession
from s3 import s3_bucket  # noqa: F401  (one S3 server per test session, started on demand)
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


_started: list[MiniDfs] = []


@pytest.fixture(scope="session")
def hdfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MiniDfs]:
    """A one-DataNode HDFS on 127.0.0.1 (``hdfs.uri`` is ``hdfs://127.0.0.1:PORT``),
    started by the first test that asks and stopped by PID at the end of the session.

    The session's HDFS client (pyspark's ``hadoop-client-runtime``) needs no Hadoop
    setting for it: full ``hdfs://127.0.0.1:PORT/...`` URIs, and the DataNode registers
    as 127.0.0.1, which the client dials by address.
    """
    with mini_dfs_cluster(tmp_path_factory.mktemp("hdfs")) as cluster:
        _started.append(cluster)
        yield cluster


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for cluster in _started:
        terminalreporter.write_line(
            f"HDFS (MiniDFSCluster, pid {cluster.pid}) at {cluster.uri} started in "
            f"{cluster.startup_s:.1f} s"
        )
