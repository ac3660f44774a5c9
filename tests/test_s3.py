"""Delta tables and the model registry on ``s3a://`` (a moto S3 server on 127.0.0.1).

The registry's commit on an object store, where a rename is a copy, is proven by fault
injection at the :class:`~sparkml_prod.registry.storage.Storage` layer: a subclass logs
every write of a registration and runs a reader, a second registration or a crash at a
chosen write, so each property is checked at every step, deterministically.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cards import make_card
from chispa import assert_df_equality
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import SQLTransformer
from pyspark.sql import SparkSession
from pyspark.sql.types import DateType, LongType, StringType, StructField, StructType
from s3 import S3Bucket

from sparkml_prod.core.errors import ModelIntegrityError
from sparkml_prod.core.tables import delta_version, overwrite_partition, read_table
from sparkml_prod.registry import ModelRegistry
from sparkml_prod.registry.loading import verify_pipeline_files
from sparkml_prod.registry.storage import Storage

SCORES = StructType(
    [
        StructField("user_id", LongType()),
        StructField("as_of", DateType()),
        StructField("variant", StringType()),
    ]
)
JUNE1, JUNE2 = dt.date(2024, 6, 1), dt.date(2024, 6, 2)


def _keys(bucket: S3Bucket, prefix: str) -> list[str]:
    """Every object key under ``prefix/`` on the server (not through S3A), relative."""
    client: Any = bucket.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix=prefix)
    found = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return sorted(k[len(prefix) + 1 :] for k in found)


def _object(bucket: S3Bucket, key: str) -> bytes:
    client: Any = bucket.client()
    return bytes(client.get_object(Bucket=bucket.name, Key=key)["Body"].read())


@pytest.fixture(scope="module")
def model(spark: SparkSession) -> PipelineModel:
    df = spark.createDataFrame([(1,), (2,)], "x bigint")
    sql = SQLTransformer(statement="SELECT *, x * 2 AS y FROM __THIS__")
    return Pipeline(stages=[sql]).fit(df)


def _verified(spark: SparkSession, registry: ModelRegistry, ref: str) -> int:
    """The version ``ref`` resolves to, after checking every file against its card (the
    check a load makes first; cheaper than a load, so tests can make it at every step)."""
    version = registry.get(ref)
    expected = version.card.pipeline_sha256
    verify_pipeline_files(spark, version.model_path, expected, f"m/{version.version}")
    return version.version


def _scores_of(spark: SparkSession, registry: ModelRegistry, ref: str) -> None:
    """Load ``ref`` verified and check it scores exactly as the test model does."""
    scored = registry.load(ref).transform(spark.createDataFrame([(1,), (3,)], "x bigint"))
    expected = spark.createDataFrame([(1, 2), (3, 6)], "x bigint, y bigint")
    assert_df_equality(scored, expected, ignore_row_order=True)


@pytest.fixture
def report(tmp_path: Path) -> str:
    directory = tmp_path / "report"
    directory.mkdir()
    (directory / "metrics.json").write_text('{"roc_auc": 0.8}')
    return str(directory)


def test_the_session_has_s3a_with_sdk_modules_not_the_sdk_bundle(spark: SparkSession) -> None:
    jars = {Path(j).name for j in spark.sparkContext.getConf().get("spark.jars", "").split(",")}
    wanted = {
        "org.apache.hadoop_hadoop-aws-3.5.0.jar",
        "software.amazon.awssdk_s3-2.35.4.jar",
        "software.amazon.awssdk_s3-transfer-manager-2.35.4.jar",
        "software.amazon.awssdk_sts-2.35.4.jar",
    }
    assert wanted <= jars
    assert [j for j in jars if j.startswith("software.amazon.awssdk_bundle")] == []


# -- Delta ---------------------------------------------------------------------------------


def test_delta_table_on_s3a_replaces_one_partition(
    spark: SparkSession, s3_bucket: S3Bucket
) -> None:
    ref = s3_bucket.url("tables/scores")
    first = spark.createDataFrame([(1, JUNE1, "a"), (2, JUNE1, "a")], SCORES)
    other = spark.createDataFrame([(1, JUNE2, "x"), (3, JUNE2, "x")], SCORES)
    second = spark.createDataFrame([(2, JUNE1, "b"), (4, JUNE1, "b")], SCORES)

    overwrite_partition(first, ref, {"as_of": JUNE1})
    overwrite_partition(other, ref, {"as_of": JUNE2})
    overwrite_partition(second, ref, {"as_of": JUNE1})  # replaceWhere as_of = 2024-06-01

    expected = spark.createDataFrame(
        [(2, JUNE1, "b"), (4, JUNE1, "b"), (1, JUNE2, "x"), (3, JUNE2, "x")], SCORES
    )
    assert_df_equality(read_table(spark, ref), expected, ignore_row_order=True)
    assert delta_version(spark, ref) == 2
    commits = [k for k in _keys(s3_bucket, "tables/scores") if k.endswith(".json")]
    assert commits == [f"_delta_log/{n:020d}.json" for n in range(3)]


# -- the registry ------------------------------------------------------------------------


def test_registry_on_s3a_registers_loads_and_moves_an_alias(
    spark: SparkSession, s3_bucket: S3Bucket, model: PipelineModel, report: str
) -> None:
    registry = ModelRegistry(spark, s3_bucket.url("basic"))
    first = registry.register("m", model, make_card(params={"run": 1}), report_dir=report)
    second = registry.register("m", model, make_card(params={"run": 2}))

    assert (first.version, second.version) == (1, 2)
    assert first.path == s3_bucket.url("basic/m/1")
    assert [v.version for v in registry.versions("m")] == [1, 2]
    assert registry.names() == ["m"]
    stored = registry.get("m/1")
    assert stored.card.params == {"run": 1}
    assert stored.report_path == s3_bucket.url("basic/m/1/report")
    # Written in place: the claim, the pipeline's files, the report (with the directory
    # marker S3A creates for it), the card; no temporary copy anywhere.
    model_files = sorted(f"model/{f}" for f in stored.card.pipeline_sha256)
    assert _keys(s3_bucket, "basic/m/1") == sorted(
        [".claim", "card.json", "report/", "report/metrics.json", *model_files]
    )
    assert [k for k in _keys(s3_bucket, "basic") if ".tmp-" in k] == []
    second_files = sorted(f"model/{f}" for f in registry.get("m/2").card.pipeline_sha256)
    assert _keys(s3_bucket, "basic/m/2") == sorted([".claim", "card.json", *second_files])
    _scores_of(spark, registry, "m/1")

    registry.set_alias("m", "production", 1)
    assert registry.get("m@production").version == 1
    registry.promote("m", 2, "production")
    assert registry.aliases("m") == {"production": 2}
    record = json.loads(_object(s3_bucket, "basic/m/aliases/production"))
    assert (record["version"], record["previous_version"]) == (2, 1)
    assert registry.get("m@production").version == 2


def test_verified_load_on_s3a_refuses_a_changed_file(
    spark: SparkSession, s3_bucket: S3Bucket, model: PipelineModel
) -> None:
    registry = ModelRegistry(spark, s3_bucket.url("tampered"))
    version = registry.register("m", model, make_card())
    stage_metadata = next(
        f for f in version.card.pipeline_sha256 if f.startswith("stages/") and "part-" in f
    )
    client: Any = s3_bucket.client()
    key = f"tampered/m/1/model/{stage_metadata}"
    client.put_object(Bucket=s3_bucket.name, Key=key, Body=_object(s3_bucket, key) + b" ")
    with pytest.raises(ModelIntegrityError, match=stage_metadata):
        registry.load("m")


# -- commit safety where renames are copies ------------------------------------------------


class Crash(Exception):
    """The registering process dies: this write and every later one never happen."""


class ScriptedStorage(Storage):
    """A Storage that logs each write of a registration and runs ``hooks`` around it.

    ``before[i]`` runs before the i-th write (from 1), ``after[i]`` after it; ``crash_at``
    makes the i-th write and all later ones raise :class:`Crash` without writing, as if
    the process died there (so not even its clean-up reaches the store).
    """

    def __init__(self, spark: SparkSession, root: str, crash_at: int | None = None) -> None:
        super().__init__(spark, root)
        self.log: list[str] = []
        self.before: dict[int, Callable[[], None]] = {}
        self.after: dict[int, Callable[[], None]] = {}
        self.crash_at = crash_at
        self.root = root

    def _write(self, op: str, location: str, write: Callable[[], Any]) -> Any:
        number = len(self.log) + 1
        self.log.append(f"{op} {location[len(self.root) + 1 :]}")
        if self.crash_at is not None and number >= self.crash_at:
            raise Crash(f"crashed at write {number}")
        if number in self.before:
            self.before[number]()
        result = write()
        if result is not None:
            self.log[-1] += f" -> {result}"
        if number in self.after:
            self.after[number]()
        return result

    def create_new(self, location: str, text: str) -> bool:
        return bool(
            self._write(
                "create_new",
                location,
                lambda: super(ScriptedStorage, self).create_new(location, text),
            )
        )

    def write_bytes(self, location: str, data: bytes, alias: bool = False) -> None:
        self._write(
            "write",
            location,
            lambda: super(ScriptedStorage, self).write_bytes(location, data, alias),
        )

    def save_pipeline(self, model: PipelineModel, location: str) -> None:
        self._write(
            "save_pipeline",
            location,
            lambda: super(ScriptedStorage, self).save_pipeline(model, location),
        )

    def copy_in(self, source: str, target: str) -> None:
        self._write("copy_in", target, lambda: super(ScriptedStorage, self).copy_in(source, target))

    def delete(self, location: str) -> None:
        self._write("delete", location, lambda: super(ScriptedStorage, self).delete(location))


def _scripted(
    spark: SparkSession, root: str, crash_at: int | None = None
) -> tuple[ModelRegistry, ScriptedStorage]:
    storage = ScriptedStorage(spark, root, crash_at)
    return ModelRegistry(spark, root, storage=storage), storage


def test_a_reader_sees_a_version_only_once_all_its_files_are_there(
    spark: SparkSession, s3_bucket: S3Bucket, model: PipelineModel, report: str
) -> None:
    root = s3_bucket.url("reader")
    ModelRegistry(spark, root).register("m", model, make_card(params={"run": 1}))
    registry, storage = _scripted(spark, root)
    reader = ModelRegistry(spark, root)  # another process's view of the same root
    seen: list[tuple[list[int], int]] = []

    def look() -> None:
        # Whatever is latest has all its files, as its card records them.
        seen.append(([v.version for v in reader.versions("m")], _verified(spark, reader, "m")))

    storage.after = {i: look for i in range(1, 5)}
    registry.register("m", model, make_card(params={"run": 2}), report_dir=report)

    assert storage.log == [
        "create_new m/2/.claim -> True",
        "save_pipeline m/2/model",
        "copy_in m/2/report",
        "write m/2/card.json",
    ]
    assert seen == [([1], 1), ([1], 1), ([1], 1), ([1, 2], 2)]
    assert reader.get("m/2").card.params == {"run": 2}
    _scores_of(spark, reader, "m")


@pytest.mark.parametrize("other_starts", ["before the claim", "after the claim"])
def test_two_registrations_never_share_a_version_directory(
    spark: SparkSession, s3_bucket: S3Bucket, model: PipelineModel, other_starts: str
) -> None:
    prefix = f"concurrent-{other_starts.split()[0]}"
    root = s3_bucket.url(prefix)
    registry, storage = _scripted(spark, root)
    other = ModelRegistry(spark, root)
    registered = {}

    def register_other() -> None:
        registered["other"] = other.register("m", model, make_card(params={"run": "other"}))

    # "before": both chose number 1 (each saw an empty registry), the other claims it
    # first, as two registrations that both passed an existence check would;
    # "after": the other starts once this one holds 1, and takes 2.
    if other_starts == "before the claim":
        storage.before = {1: register_other}
    else:
        storage.after = {1: register_other}
    mine = registry.register("m", model, make_card(params={"run": "mine"}))

    expected_mine, expected_other = (2, 1) if other_starts == "before the claim" else (1, 2)
    assert (mine.version, registered["other"].version) == (expected_mine, expected_other)
    claims = (
        ["create_new m/1/.claim -> False", "create_new m/2/.claim -> True"]
        if other_starts == "before the claim"
        else ["create_new m/1/.claim -> True"]
    )
    assert storage.log == [
        *claims,
        f"save_pipeline m/{expected_mine}/model",
        f"write m/{expected_mine}/card.json",
    ]
    for version, run in ((expected_mine, "mine"), (expected_other, "other")):
        stored = ModelRegistry(spark, root).get(f"m/{version}")
        assert stored.card.params == {"run": run}
        model_files = sorted(f"model/{f}" for f in stored.card.pipeline_sha256)
        # Each directory holds exactly one registration's files: nothing merged.
        assert _keys(s3_bucket, f"{prefix}/m/{version}") == [".claim", "card.json", *model_files]
        assert _verified(spark, registry, f"m/{version}") == version
    assert [v.version for v in registry.versions("m")] == [1, 2]
    _scores_of(spark, registry, f"m/{expected_mine}")


def test_create_new_on_s3a_lets_exactly_one_writer_create_a_file(
    spark: SparkSession, s3_bucket: S3Bucket
) -> None:
    storage = Storage(spark, s3_bucket.url())
    location = s3_bucket.url("claims/one")
    assert storage.create_new(location, "first") is True
    assert storage.create_new(location, "second") is False
    assert _object(s3_bucket, "claims/one") == b"first"


def test_a_crash_at_any_write_leaves_a_latest_that_loads(
    spark: SparkSession, s3_bucket: S3Bucket, model: PipelineModel, report: str
) -> None:
    root = s3_bucket.url("crash")
    ModelRegistry(spark, root).register("m", model, make_card(params={"run": 1}))
    reader = ModelRegistry(spark, root)
    # Writes of a registration with a report: 1 claim, 2 pipeline, 3 report, 4 card;
    # crash_at=5 is past the last write: the card landed, so dying from then on leaves
    # the new version whole.
    outcomes = []
    for crash_at in (1, 2, 3, 4, 5):
        registry, _ = _scripted(spark, root, crash_at)
        try:
            registry.register("m", model, make_card(params={"run": crash_at}), report_dir=report)
            crashed = False
        except Crash:
            crashed = True
        latest = _verified(spark, reader, "m")
        outcomes.append((crash_at, crashed, [v.version for v in reader.versions("m")], latest))

    # A crash before the card leaves the previous latest; a claimed number is never
    # reused (2, 3 and 4 hold a claim and maybe files, no card); past the card, the new
    # version is whole.
    assert outcomes == [
        (1, True, [1], 1),
        (2, True, [1], 1),
        (3, True, [1], 1),
        (4, True, [1], 1),
        (5, False, [1, 5], 5),
    ]
    assert _keys(s3_bucket, "crash/m/2") == [".claim"]
    assert _keys(s3_bucket, "crash/m/4")[:2] == [".claim", "model/metadata/_SUCCESS"]
    assert "report/metrics.json" in _keys(s3_bucket, "crash/m/4")
    assert "card.json" not in _keys(s3_bucket, "crash/m/4")
    assert reader.get("m").card.params == {"run": 5}
    assert reader.names() == ["m"]
    _scores_of(spark, reader, "m")


def test_a_failed_registration_removes_its_files_but_keeps_the_claim(
    spark: SparkSession, s3_bucket: S3Bucket, model: PipelineModel, report: str
) -> None:
    root = s3_bucket.url("failed")
    registry, storage = _scripted(spark, root)

    def disk_full() -> None:
        raise OSError("disk full")

    storage.before = {3: disk_full}  # the report copy
    with pytest.raises(OSError, match="disk full"):
        registry.register("m", model, make_card(), report_dir=report)

    assert storage.log == [
        "create_new m/1/.claim -> True",
        "save_pipeline m/1/model",
        "copy_in m/1/report",
        "delete m/1/model",
        "delete m/1/report",
    ]
    assert _keys(s3_bucket, "failed/m/1") == [".claim"]
    assert registry.names() == []
    assert registry.register("m", model, make_card()).version == 2
