"""Running the project's jobs as a user does: ``spark-submit`` with the library zipped for
``--py-files``, in a clean environment, from another directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

from standalone import log_tail, stop_process_groups

from sparkml_prod.core.jars import cached_jars, delta_packages

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # the virtualenv's interpreter, not resolved: the venv needs its path
SPARK_SUBMIT = Path(PYTHON).parent / "spark-submit"
DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"
LOG4J2 = ROOT / "conf" / "log4j2.properties"


def delta_jar_args() -> list[str]:
    """``--jars`` with Delta's remembered local classpath (no Ivy resolution at each
    submit), or ``--packages`` when none is remembered yet."""
    jars = cached_jars(delta_packages())
    return ["--jars", ",".join(jars)] if jars else ["--packages", DELTA_PACKAGE]


def package_zip(target: Path) -> Path:
    """``sparkml_prod`` zipped for ``--py-files``, the same files as ``make dist``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted((ROOT / "sparkml_prod").rglob("*")):
            name = path.relative_to(ROOT)
            if path.is_file() and "__pycache__" not in name.parts:
                archive.write(path, name)
    return target


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Python or Spark settings, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "PYTHONPATH" and not key.startswith(("SPARK_", "PYSPARK_"))
    }
    return {**env, **extra}


def submit_local(
    job: str, args: Sequence[str], workdir: Path, log: Path, py_files: Path, **env: str
) -> int:
    """``spark-submit --master local[2] jobs/<job> <args>`` from ``workdir``; the exit code.

    The job's output goes to ``log``; the submit is always stopped on return.
    """
    command = [
        str(SPARK_SUBMIT),
        "--master",
        "local[2]",
        *delta_jar_args(),
        "--py-files",
        str(py_files),
        "--driver-memory",
        "2g",
        "--driver-java-options",
        f"-Dlog4j2.configurationFile=file:{LOG4J2}",
        "--conf",
        "spark.sql.shuffle.partitions=4",
        "--conf",
        "spark.databricks.delta.snapshotPartitions=2",
        str(ROOT / "jobs" / job),
        *args,
    ]
    with log.open("wb") as out:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=clean_env(PYSPARK_PYTHON=PYTHON, PYSPARK_DRIVER_PYTHON=PYTHON, **env),
            start_new_session=True,
        )
    try:
        return child.wait(timeout=600)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"spark-submit timed out; last lines:\n{log_tail(log)}") from None
    finally:
        stop_process_groups([child])
