from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession
from session_packages import TEST_PACKAGES

from sparkml_prod.core.jars import (
    cache_file,
    cached_jars,
    delta_packages,
    env_packages,
    hadoop_version,
    remember_jars,
)
from sparkml_prod.core.session import REQUIRED_DEFAULTS

DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"


def test_local_session_has_delta_utc_and_project_python(spark: SparkSession) -> None:
    assert spark.conf.get("spark.sql.extensions") == "io.delta.sql.DeltaSparkSessionExtension"
    assert (
        spark.conf.get("spark.sql.catalog.spark_catalog")
        == "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    )
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.sparkContext.master == "local[2]"
    assert spark.conf.get("spark.ui.enabled") == "false"
    assert os.environ["PYSPARK_PYTHON"] == sys.executable


def test_delta_sql_table_round_trip(spark: SparkSession) -> None:
    spark.sql("CREATE TABLE session_round_trip (id BIGINT, name STRING) USING delta")
    try:
        spark.sql("INSERT INTO session_round_trip VALUES (1, 'a'), (2, 'b')")
        spark.sql("UPDATE session_round_trip SET name = 'c' WHERE id = 2")
        expected = spark.createDataFrame([(1, "a"), (2, "c")], "id BIGINT, name STRING")
        assert_df_equality(spark.table("session_round_trip"), expected, ignore_row_order=True)
        history = spark.sql("DESCRIBE HISTORY session_round_trip").select("operation")
        assert sorted(r[0] for r in history.collect()) == ["CREATE TABLE", "UPDATE", "WRITE"]
    finally:
        spark.sql("DROP TABLE IF EXISTS session_round_trip")


PROBE = """
import json
from sparkml_prod.core.session import get_spark
spark = get_spark("probe")
keys = ["spark.master", "spark.sql.shuffle.partitions", "spark.sql.session.timeZone",
        "spark.sql.extensions", "spark.app.name"]
print("PROBE " + json.dumps({k: spark.conf.get(k) for k in keys}))
spark.stop()
"""


@pytest.mark.slow
def test_under_spark_submit_the_given_master_and_conf_are_kept(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    spark_submit = Path(sys.executable).parent / "spark-submit"
    result = subprocess.run(
        [
            str(spark_submit),
            "--master",
            "local[1]",
            "--name",
            "submitted",
            "--packages",
            DELTA_PACKAGE,
            "--conf",
            "spark.sql.shuffle.partitions=3",
            "--conf",
            "spark.sql.session.timeZone=America/New_York",
            str(script),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("PROBE "))
    assert json.loads(line[len("PROBE ") :]) == {
        "spark.master": "local[1]",
        "spark.sql.shuffle.partitions": "3",
        "spark.sql.session.timeZone": "America/New_York",
        "spark.sql.extensions": REQUIRED_DEFAULTS["spark.sql.extensions"],
        "spark.app.name": "submitted",
    }


def test_delta_packages_follow_the_installed_versions() -> None:
    assert delta_packages() == [DELTA_PACKAGE]
    assert delta_packages(["org.postgresql:postgresql:42.7.4"]) == [
        DELTA_PACKAGE,
        "org.postgresql:postgresql:42.7.4",
    ]


def test_remembered_jars_serve_until_one_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPARKML_PROD_CACHE", str(tmp_path / "cache"))
    jars = [tmp_path / "ivy" / "a b.jar", tmp_path / "ivy" / "c.jar"]
    jars[0].parent.mkdir()
    for jar in jars:
        jar.write_bytes(b"PK")
    packages = ["g:a:1"]
    assert cached_jars(packages) is None

    remember_jars(packages, ",".join(jar.as_uri() for jar in jars))
    assert cached_jars(packages) == [str(jars[0]), str(jars[1])]
    assert cached_jars(["g:a:2"]) is None  # another package list, another file

    jars[1].unlink()
    assert cached_jars(packages) is None
    remember_jars(["g:b:1"], ",".join(jar.as_uri() for jar in jars))  # a jar missing
    assert not cache_file(["g:b:1"]).exists()


def test_the_test_session_loads_delta_from_the_remembered_classpath(
    spark: SparkSession,
) -> None:
    # `make setup` resolved Delta (and the test session's packages) once; every later
    # start (this suite's session) takes the remembered jars instead of resolving
    # spark.jars.packages again.
    assert len(cached_jars(delta_packages()) or []) == 33
    remembered = cached_jars(delta_packages(TEST_PACKAGES))
    assert remembered is not None
    assert spark.conf.get("spark.jars.packages", None) is None
    loaded = [urlparse(uri).path for uri in spark.conf.get("spark.jars").split(",")]
    assert loaded == remembered


def test_env_packages_are_resolved_after_delta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARKML_PROD_PACKAGES", " org.postgresql:postgresql:42.7.4 ,, a:b:1")
    assert env_packages() == ["org.postgresql:postgresql:42.7.4", "a:b:1"]
    assert delta_packages(env_packages())[1:] == ["org.postgresql:postgresql:42.7.4", "a:b:1"]
    monkeypatch.delenv("SPARKML_PROD_PACKAGES")
    assert env_packages() == []


def test_hadoop_version_is_the_bundled_client_line() -> None:
    # pyspark 4.2.0 bundles hadoop-client-api-3.5.0.jar; hadoop-aws must match it
    assert hadoop_version() == "3.5.0"
