"""Verified loading: a saved PipelineModel is loaded only as registered, with allowed classes.

``PipelineModel.load`` imports whatever class a stage's metadata names, and xgboost.spark
unpickles (cloudpickle) the ``serialized_callbacks`` it finds there: whoever can write to
the registry could run code on every driver that loads the model. The checks here read
the saved files as bytes and JSON, never importing anything from them:

- :func:`pipeline_file_hashes` takes the SHA-256 of every file at registration;
  :func:`verify_pipeline_files` refuses a changed, missing or unexpected file at load.
- :func:`check_stage_classes` refuses a stage whose metadata names a class outside an
  allowlist, or carries pickled XGBoost callbacks.
- :func:`load_verified_pipeline` runs both, then ``PipelineModel.load``.

The layout pyspark 4.2 saves (``PipelineModel.write().save``)::

    metadata/part-00000-<uuid>-c000.txt   one JSON line: class, uid, paramMap.stageUids
    metadata/_SUCCESS                     empty
    stages/<idx>_<uid>/metadata/part-*    the stage's JSON line; <idx> zero-padded to the
                                          width of the stage count, <uid> from stageUids
    stages/<idx>_<uid>/model/part-00000   stage data: here the XGBoost booster (JSON text)
    stages/<idx>_<uid>/stages/...         a nested pipeline: the same layout again

JVM stages record their ``org.apache.spark.ml.*`` class, which pyspark imports as
``pyspark.ml.*``. On the local file system every file has a hidden ``.<name>.crc``
checksum side file beside it.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pyspark.ml import PipelineModel
from pyspark.ml.util import DefaultParamsReader
from pyspark.sql import SparkSession

from sparkml_prod.core.errors import ModelIntegrityError
from sparkml_prod.registry.storage import Storage

__all__ = [
    "ALLOWED_CLASS_PREFIXES",
    "check_stage_classes",
    "load_verified_pipeline",
    "pipeline_file_hashes",
    "verify_pipeline_files",
]

# Packages whose classes a saved stage may name (always; extra_allowed adds to them).
ALLOWED_CLASS_PREFIXES: tuple[str, ...] = (
    "pyspark.ml.",
    "org.apache.spark.ml.",
    "xgboost.spark.",
    "sparkml_prod.",
)

_CHECKSUM_FILE = re.compile(r"\..+\.crc\Z")
# A stage uid names a directory under stages/: no '/', and no '.' or '..' to climb out.
_STAGE_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
# The line ends of Hadoop's LineRecordReader, which Spark's text source reads metadata with.
_LINE_END = re.compile(r"\r\n|\r|\n")


def _join(model_path: str, relative: str) -> str:
    return f"{model_path.rstrip('/')}/{relative}" if relative else model_path


def _model_files(storage: Storage, model_path: str) -> list[str]:
    """Every file of the saved pipeline but the checksum side files, relative, sorted."""
    return [
        relative
        for relative, _ in storage.walk_files(model_path)
        if not _CHECKSUM_FILE.match(relative.rsplit("/", 1)[-1])
    ]


def _hashes(storage: Storage, model_path: str) -> dict[str, str]:
    return {
        relative: storage.sha256(_join(model_path, relative))
        for relative in _model_files(storage, model_path)
    }


def pipeline_file_hashes(spark: SparkSession, model_path: str) -> dict[str, str]:
    """SHA-256 (lowercase hex) of every file of a saved pipeline, by relative POSIX path.

    Files are listed and read through Hadoop's ``FileSystem`` (local, HDFS, S3A, ...) as
    stored, streaming, so a booster of tens of MB is never whole in memory. Hadoop's
    checksum side files (``.<name>.crc``) are left out: they are not part of the model
    but re-derived by the local file system on every write, which only checks reads
    against them (a changed one fails the load, it cannot change what loads). Everything
    else is hashed, the empty ``_SUCCESS`` markers included. Directories are not: an
    empty one holds nothing a loader reads.

    Parameters
    ----------
    spark : SparkSession
        A classic (JVM-backed) session whose Hadoop configuration reaches ``model_path``.
    model_path : str
        The directory ``PipelineModel.write().save`` wrote.

    Returns
    -------
    dict
        ``{"metadata/part-00000-...-c000.txt": "9f86d0...", ...}``, sorted by path.

    Raises
    ------
    FileNotFoundError
        When ``model_path`` holds no file.

    Examples
    --------
    >>> hashes = pipeline_file_hashes(spark, "/models/churn/3/model")  # doctest: +SKIP
    >>> sorted(hashes)[0]  # doctest: +SKIP
    'metadata/_SUCCESS'
    """
    hashes = _hashes(Storage(spark, model_path), model_path)
    if not hashes:
        raise FileNotFoundError(
            f"No saved pipeline at '{model_path}': the directory holds no file (or does not "
            "exist). Save the model there first with PipelineModel.write().save()."
        )
    return hashes


def verify_pipeline_files(
    spark: SparkSession, model_path: str, expected: Mapping[str, str], model_label: str
) -> None:
    """Refuse a saved pipeline whose files differ from ``expected``.

    Hashes every file as :func:`pipeline_file_hashes` does and compares: a file whose
    hash differs, an expected file that is missing and a file that was not expected each
    refuse, all listed in one error.

    Parameters
    ----------
    spark : SparkSession
        A classic session whose Hadoop configuration reaches ``model_path``.
    model_path : str
        The saved pipeline's directory.
    expected : Mapping[str, str]
        :func:`pipeline_file_hashes` of the pipeline as registered.
    model_label : str
        How the error names the model, e.g. ``"purchase_30d/3"``.

    Raises
    ------
    ModelIntegrityError
        Listing each changed, missing and unexpected file with both hashes.

    Examples
    --------
    >>> verify_pipeline_files(spark, v.model_path, v.metadata["file_hashes"],
    ...                       "purchase_30d/3")  # doctest: +SKIP
    """
    found = _hashes(Storage(spark, model_path), model_path)
    problems = []
    for relative in sorted({*expected, *found}):
        want, got = expected.get(relative), found.get(relative)
        if got is None:
            problems.append(f"  missing: {relative} (expected sha256 {want}, found no file)")
        elif want is None:
            problems.append(f"  unexpected: {relative} (expected no file, found sha256 {got})")
        elif want != got:
            problems.append(f"  changed: {relative} (expected sha256 {want}, found sha256 {got})")
    if problems:
        raise ModelIntegrityError(
            "\n".join(
                [
                    f"Model '{model_label}' at '{model_path}' does not match the files "
                    "recorded when it was registered; nothing was loaded.",
                    *problems,
                    "Re-register the model from training, or restore the model directory as "
                    "registered (put back the changed and missing files, delete the "
                    "unexpected ones).",
                ]
            )
        )


# (package prefixes, exact class names)
_Allowlist = tuple[tuple[str, ...], frozenset[str]]


def _allowlist(extra_allowed: Sequence[str]) -> _Allowlist:
    """(package prefixes, exact class names) a stage may name."""
    if isinstance(extra_allowed, str) or not all(
        isinstance(entry, str) and entry.strip(".") for entry in extra_allowed
    ):
        raise ValueError(
            "The 'extra_allowed' parameter of check_stage_classes must be a sequence of "
            "class names ('mypkg.stages.MyStage') or package prefixes ending in '.' "
            f"('mypkg.'). Got {extra_allowed!r} instead."
        )
    prefixes = (*ALLOWED_CLASS_PREFIXES, *(e for e in extra_allowed if e.endswith(".")))
    return prefixes, frozenset(e for e in extra_allowed if not e.endswith("."))


def _stage_metadata(storage: Storage, model_path: str) -> dict[str, list[str]]:
    """The metadata files of each saved stage, by its directory ('' for the pipeline).

    Every file under a directory named ``metadata`` counts (not only ``part-*``), so a
    file that Spark's text source would read cannot slip past unchecked.
    """
    stages: dict[str, list[str]] = {}
    for relative in _model_files(storage, model_path):
        parts = relative.split("/")
        folders = parts[:-1]
        if "metadata" in folders:
            cut = len(folders) - 1 - folders[::-1].index("metadata")
            stages.setdefault("/".join(parts[:cut]), []).append(relative)
    return stages


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a repeated key (Python and the JVM could read different
    values of it)."""
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise ValueError(f"duplicate key {key!r}")
        record[key] = value
    return record


def _read_record(
    storage: Storage, model_path: str, label: str, where: str, files: list[str]
) -> tuple[str, str, dict[str, Any]]:
    """(file, line, JSON object) of a stage's one metadata line, split as Spark's text
    source splits it."""
    lines = []
    for relative in files:
        try:
            text = storage.read_text(_join(model_path, relative), alias=True) or ""
        except UnicodeDecodeError as error:
            raise ModelIntegrityError(
                f"Model '{label}': the metadata file '{relative}' of the stage in '{where}' "
                f"is not UTF-8 text ({error}); nothing was loaded. Re-register the model "
                "from training."
            ) from None
        records = _LINE_END.split(text)
        if records[-1] == "":
            records.pop()
        lines += [(relative, line) for line in records]
    if len(lines) != 1:
        sources = sorted({relative for relative, _ in lines}) or files
        raise ModelIntegrityError(
            f"Model '{label}': the metadata of the stage in '{where}' holds {len(lines)} "
            f"records ({', '.join(repr(f) for f in sources)}), expected exactly one JSON "
            "line; nothing was loaded. Re-register the model from training."
        )
    relative, line = lines[0]
    try:
        record = json.loads(line, object_pairs_hook=_no_duplicates)
    except ValueError as error:
        raise ModelIntegrityError(
            f"Model '{label}': the metadata file '{relative}' of the stage in '{where}' is "
            f"not valid JSON ({error}); nothing was loaded. Re-register the model from "
            "training."
        ) from None
    if not isinstance(record, dict):
        raise ModelIntegrityError(
            f"Model '{label}': the metadata file '{relative}' of the stage in '{where}' "
            f"holds {type(record).__name__} JSON, expected an object with 'class'; nothing "
            "was loaded. Re-register the model from training."
        )
    return relative, line, record


def _check_class(name: Any, relative: str, label: str, where: str, allowlist: _Allowlist) -> None:
    prefixes, exact = allowlist
    if isinstance(name, str) and name in exact:
        return
    if isinstance(name, str) and not name.startswith(prefixes):
        allowed = ", ".join([*(f"{p}*" for p in prefixes), *sorted(exact)])
        raise ModelIntegrityError(
            f"Model '{label}': the stage in '{where}' names class '{name}' ('{relative}'), "
            f"which is not on the allowlist of loadable classes: {allowed}; nothing was "
            "loaded. PipelineModel.load would import that class and run its code. If the "
            "class is yours and trusted, add it (or its package prefix, ending in '.') to "
            "the configured allowlist (extra_allowed); otherwise re-register the model "
            "from training."
        )
    parts = name.split(".") if isinstance(name, str) else []
    if not (len(parts) > 1 and all(p.isidentifier() for p in parts) and parts[-1][0].isupper()):
        raise ModelIntegrityError(
            f"Model '{label}': the stage in '{where}' names class {name!r} ('{relative}'), "
            "which is not a class name: expected dotted identifiers ending in a capitalised "
            "class, e.g. 'pyspark.ml.feature.VectorAssembler'; nothing was loaded. "
            "PipelineModel.load would import whatever that name resolves to. Re-register "
            "the model from training."
        )


def _check_stage_dirs(
    uids: Any, relative: str, label: str, where: str, stage_dirs: set[str], stage: str
) -> None:
    """The stages a (nested) pipeline lists: plain uids, each with a saved stage directory."""
    if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
        raise ModelIntegrityError(
            f"Model '{label}': the pipeline in '{where}' lists its stages as {uids!r} "
            f"('{relative}'), expected a list of stage uids; nothing was loaded. "
            "Re-register the model from training."
        )
    width = len(str(len(uids)))
    for index, uid in enumerate(uids):
        if not _STAGE_UID.match(uid):
            raise ModelIntegrityError(
                f"Model '{label}': the pipeline in '{where}' lists stage {index} with uid "
                f"{uid!r} ('{relative}'), which is not a plain name (a letter or digit, then "
                "letters, digits, '_', '.', '-'), so its directory could lie outside the "
                "model; nothing was loaded. Re-register the model from training."
            )
        name = f"stages/{str(index).zfill(width)}_{uid}"
        directory = f"{stage}/{name}" if stage else name
        if directory not in stage_dirs:
            raise ModelIntegrityError(
                f"Model '{label}': the pipeline in '{where}' lists stage {index} as '{uid}', "
                f"but '{directory}/metadata' holds no saved stage; nothing was loaded. "
                "Restore the stage directory, or re-register the model from training."
            )


def check_stage_classes(
    spark: SparkSession,
    model_path: str,
    model_label: str,
    extra_allowed: Sequence[str] = (),
) -> None:
    """Refuse a saved pipeline whose stages name classes outside the allowlist.

    Reads the metadata of the pipeline and of every stage below it (nested pipelines and
    models included: every ``metadata`` directory in the tree) as JSON, without
    importing anything, and refuses:

    - a class that is not under ``pyspark.ml.``, ``org.apache.spark.ml.``,
      ``xgboost.spark.``, ``sparkml_prod.`` or an ``extra_allowed`` prefix, and is not
      an ``extra_allowed`` exact name;
    - a name under those prefixes that is not a class name (its last part capitalised),
      such as ``pyspark.ml.util.os``: pyspark would load whatever a module holds there;
    - a stage whose metadata carries ``serialized_callbacks``: xgboost.spark saves the
      ``callbacks`` param there (a top-level key, ``_SparkXGBSharedReadWrite.saveMetadata``)
      as cloudpickle, which loading would unpickle;
    - metadata that is not exactly one JSON object (duplicate keys included), and a
      pipeline whose ``stageUids`` are not plain names of saved stage directories.

    Parameters
    ----------
    spark : SparkSession
        A classic session whose Hadoop configuration reaches ``model_path``.
    model_path : str
        The saved pipeline's directory.
    model_label : str
        How the error names the model, e.g. ``"purchase_30d/3"``.
    extra_allowed : Sequence[str]
        More allowed classes: exact names (``"mypkg.stages.MyStage"``) or package
        prefixes ending in ``.`` (``"mypkg."``).

    Raises
    ------
    ModelIntegrityError
        Naming the stage directory, the class and the allowlist.

    Examples
    --------
    >>> check_stage_classes(spark, "/models/churn/3/model", "churn/3",
    ...                     extra_allowed=["mypkg.stages."])  # doctest: +SKIP
    """
    _checked_metadata(spark, model_path, model_label, extra_allowed)


def _checked_metadata(
    spark: SparkSession, model_path: str, model_label: str, extra_allowed: Sequence[str]
) -> dict[str, str]:
    """:func:`check_stage_classes`; returns each stage directory's checked metadata line."""
    checked: dict[str, str] = {}
    allowlist = _allowlist(extra_allowed)
    storage = Storage(spark, model_path)
    stages = _stage_metadata(storage, model_path)
    if "" not in stages:
        raise ModelIntegrityError(
            f"Model '{model_label}': '{model_path}' holds no pipeline metadata "
            "('metadata/part-*'), so it is not a saved PipelineModel; nothing was loaded. "
            "Check the path, or re-register the model from training."
        )
    for stage in sorted(stages):
        where = stage or "."
        relative, line, record = _read_record(
            storage, model_path, model_label, where, stages[stage]
        )
        checked[_join(model_path, stage).rstrip("/")] = line
        _check_class(record.get("class"), relative, model_label, where, allowlist)
        if "serialized_callbacks" in record:
            raise ModelIntegrityError(
                f"Model '{model_label}': the stage in '{where}' (class '{record['class']}') "
                f"carries 'serialized_callbacks' in its metadata ('{relative}'). "
                "XGBoost callbacks are saved as pickled code (cloudpickle) that loading "
                "would run, so they are refused; nothing was loaded. Train the model "
                "without callbacks (drop 'callbacks' from the model params) and register "
                "it again."
            )
        params = record.get("paramMap")
        if isinstance(params, dict) and "stageUids" in params:
            uids = params["stageUids"]
            _check_stage_dirs(uids, relative, model_label, where, set(stages), stage)
        elif not stage:
            raise ModelIntegrityError(
                f"Model '{model_label}': '{relative}' names class "
                f"'{record['class']}' with no 'paramMap.stageUids', so '{model_path}' holds "
                "a single saved stage, not a PipelineModel; nothing was loaded. Register "
                "the fitted PipelineModel."
            )
    return checked


def load_verified_pipeline(
    spark: SparkSession,
    model_path: str,
    expected_hashes: Mapping[str, str],
    model_label: str,
    extra_allowed: Sequence[str] = (),
) -> PipelineModel:
    """``PipelineModel.load``, only after :func:`verify_pipeline_files` and
    :func:`check_stage_classes` pass.

    The checks read the files, then the load reads them again: a writer who changes a
    file in between (time of check to time of use) is not caught; registry directories
    are written once, so that window is accepted.

    Raises
    ------
    ModelIntegrityError
        From either check; nothing was imported or loaded.

    Examples
    --------
    >>> model = load_verified_pipeline(spark, v.model_path, v.metadata["file_hashes"],
    ...                                "purchase_30d/3")  # doctest: +SKIP
    >>> scores = model.transform(features)  # doctest: +SKIP
    """
    verify_pipeline_files(spark, model_path, expected_hashes, model_label)
    checked = _checked_metadata(spark, model_path, model_label, extra_allowed)
    with _metadata_served_from(checked):
        return PipelineModel.load(model_path)


_serving_lock = threading.Lock()


@contextmanager
def _metadata_served_from(lines: Mapping[str, str]) -> Iterator[None]:
    """While loading, each stage's metadata comes from the line the checks just read, not
    from ``spark.read.text(...).first()``: one Spark job per stage fewer, and the load
    sees exactly what was checked. Any other path is read as pyspark reads it."""
    original = DefaultParamsReader.__dict__["loadMetadata"]
    read = original.__func__

    def load_metadata(path: str, sc: Any, expectedClassName: str = "") -> dict[str, Any]:  # noqa: N803
        line = lines.get(str(path).rstrip("/"))
        if line is None:
            return read(path, sc, expectedClassName)
        return DefaultParamsReader._parseMetaData(line, expectedClassName)

    with _serving_lock:
        DefaultParamsReader.loadMetadata = staticmethod(load_metadata)  # type: ignore[method-assign]
        try:
            yield
        finally:
            DefaultParamsReader.loadMetadata = original  # type: ignore[method-assign]
