"""Running a job as users run it (``spark-submit``, or any command) and measuring it from
outside: wall time, CPU seconds of the whole process tree, and the peak resident memory
(``VmHWM``) of each process in it, polled from ``/proc`` while it runs.

Also reads a Spark event log (``spark.eventLog.enabled``) into a profile: when the
application started, every Spark job with its description and duration.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
# the tests' helpers: the same --py-files zip and Delta jar arguments as the tests submit
from submit import delta_jar_args, package_zip  # noqa: E402

__all__ = ["package_zip"]

PYTHON = sys.executable  # the virtualenv's interpreter, not resolved: the venv needs its path
SPARK_SUBMIT = str(Path(PYTHON).parent / "spark-submit")
LOG4J2 = ROOT / "conf" / "log4j2.properties"
#: The executor of a standalone run (the driver keeps the 4g of local mode).
EXECUTOR_MEMORY = "6g"
_TICK = os.sysconf("SC_CLK_TCK")


def submit_command(
    script: Path | str,
    args: Sequence[str],
    py_files: Path,
    conf: dict[str, str] | None = None,
    master: str = "local[2]",
) -> list[str]:
    """The Makefile's ``SUBMIT``: ``local[2]``, Delta's remembered jars by ``--jars``
    (``--packages`` when none are remembered), the library by ``--py-files``, a 4g
    driver, 8 shuffle partitions, the project's log4j2 settings.

    With a standalone ``master`` (``spark://...``): client mode, one executor of 2 cores
    and ``EXECUTOR_MEMORY`` running this venv's Python, so that the driver's process
    tree holds the driver alone."""
    settings = {
        "spark.sql.shuffle.partitions": "8",
        "spark.databricks.delta.snapshotPartitions": "2",
        **(conf or {}),
    }
    cluster: list[str] = []
    if master.startswith("spark://"):
        cluster = ["--deploy-mode", "client", "--total-executor-cores", "2"]
        cluster += ["--executor-memory", EXECUTOR_MEMORY]
        settings = {"spark.pyspark.python": PYTHON, **settings}
    command = [
        SPARK_SUBMIT,
        "--master",
        master,
        *cluster,
        *delta_jar_args(),
        "--py-files",
        str(py_files),
        "--driver-memory",
        "4g",
        "--driver-java-options",
        f"-Dlog4j2.configurationFile=file:{LOG4J2}",
    ]
    for key, value in settings.items():
        command += ["--conf", f"{key}={value}"]
    return [*command, str(script), *args]


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a running job's process group is stopped too."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Python or Spark settings, with the venv's Python for the
    driver and the workers, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "PYTHONPATH" and not key.startswith(("SPARK_", "PYSPARK_"))
    }
    return {**env, "PYSPARK_PYTHON": PYTHON, "PYSPARK_DRIVER_PYTHON": PYTHON, **extra}


@dataclass
class Measured:
    """One run of a command, measured from outside."""

    command: list[str]
    wall_s: float
    cpu_s: float
    returncode: int
    log: str
    # peak VmHWM (MiB) per role: driver_jvm, driver_python, worker_python, other
    peak_rss_mib: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall_s, 2),
            "cpu_s": round(self.cpu_s, 2),
            "peak_rss_mib": {k: round(v, 1) for k, v in self.peak_rss_mib.items()},
        }


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _children() -> dict[int, int]:
    """pid -> parent pid of every process."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            text = _read(f"/proc/{entry}/stat")
            if text:
                parents[int(entry)] = int(text[text.rindex(")") + 2 :].split()[1])
    return parents


def _descendants(root: int, parents: dict[int, int]) -> list[int]:
    out, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        out.append(pid)
        frontier += [p for p, parent in parents.items() if parent == pid]
    return out


def _role(pid: int) -> str:
    cmdline = (_read(f"/proc/{pid}/cmdline") or "").replace("\0", " ")
    if "java" in cmdline.split(" ")[0] and "org.apache.spark.deploy.SparkSubmit" in cmdline:
        return "driver_jvm"
    if "pyspark.daemon" in cmdline or "pyspark/daemon" in cmdline or "pyspark.worker" in cmdline:
        return "worker_python"
    if "python" in cmdline.split(" ")[0]:
        return "driver_python"
    return "other"


def _sample(pid: int) -> tuple[float, float] | None:
    """(own CPU seconds, VmHWM MiB) of a live process, None once it has ended."""
    stat, status = _read(f"/proc/{pid}/stat"), _read(f"/proc/{pid}/status")
    if stat is None or status is None:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICK
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return cpu, int(line.split()[1]) / 1024
    return None  # a zombie: its memory is gone, keep its last live sample


def run_measured(
    command: Sequence[str],
    env: dict[str, str],
    log: Path,
    cwd: Path = ROOT,
    timeout_s: float = 3600,
    poll_s: float = 0.25,
) -> Measured:
    """Run ``command``, polling its process tree; fail with the log's tail if it fails.

    CPU seconds: the larger of the children's CPU reaped by this process (exact when every
    process of the tree is waited for) and the sum of each process's own CPU last seen
    while polling (which also counts processes that end unreaped, such as Python workers
    killed at shutdown, but misses what they used after the last poll).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    before = os.times()
    started = time.perf_counter()
    seen_cpu: dict[int, float] = {}
    hwm: dict[int, float] = {}
    roles: dict[int, str] = {}
    with log.open("wb") as out:
        child = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        try:
            returncode = _poll(child, started, timeout_s, poll_s, seen_cpu, hwm, roles)
        except BaseException:  # a timeout, Ctrl-C: stop the job's whole process group
            os.killpg(child.pid, 9)
            child.wait()
            raise
    wall = time.perf_counter() - started
    after = os.times()
    reaped = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    peaks: dict[str, float] = {}
    for pid, role in roles.items():
        peaks[role] = max(peaks.get(role, 0.0), hwm[pid])
    text = log.read_text(errors="replace")
    if returncode != 0:
        tail = "\n".join(text.splitlines()[-40:])
        raise RuntimeError(f"{' '.join(command[:3])}... exited with {returncode}:\n{tail}")
    return Measured(
        list(command), wall, max(reaped, sum(seen_cpu.values())), returncode, text, peaks
    )


def _poll(
    child: subprocess.Popen[bytes],
    started: float,
    timeout_s: float,
    poll_s: float,
    seen_cpu: dict[int, float],
    hwm: dict[int, float],
    roles: dict[int, str],
) -> int:
    """Wait for ``child``, sampling its process tree every ``poll_s``; its exit code."""
    while True:
        try:
            return child.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            pass
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError(f"{child.args[0]} timed out after {timeout_s}s")
        for pid in _descendants(child.pid, _children()):
            sample = _sample(pid)
            if sample is None:
                continue
            # the last sample of a pid: a shell that execs java keeps its pid, and
            # VmHWM, the peak so far, restarts with the new program
            seen_cpu[pid], hwm[pid] = sample
            roles[pid] = _role(pid)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# -- the Spark event log ----------------------------------------------------------------


def event_log_profile(directory: Path, process_start: float) -> dict[str, Any]:
    """The application of the one event log in ``directory``: its phases and Spark jobs.

    ``process_start`` is the epoch time the command was started, so the profile shows how
    long it took until the SparkContext was up.
    """
    logs = sorted(p for p in directory.iterdir() if p.is_file())
    if len(logs) != 1:
        raise RuntimeError(f"expected one event log in {directory}, found {len(logs)}")
    app_start = app_end = None
    jobs: dict[int, dict[str, Any]] = {}
    stages_done = 0
    tasks = 0
    sql_descriptions: dict[int, str] = {}
    for line in logs[0].read_text().splitlines():
        event = json.loads(line)
        kind = event.get("Event", "")
        if kind == "SparkListenerApplicationStart":
            app_start = event["Timestamp"] / 1000
        elif kind == "SparkListenerApplicationEnd":
            app_end = event["Timestamp"] / 1000
        elif kind.endswith("SparkListenerSQLExecutionStart"):
            sql_descriptions[event["executionId"]] = event.get("description", "")
        elif kind == "SparkListenerJobStart":
            props = event.get("Properties", {})
            execution = props.get("spark.sql.execution.id")
            description = props.get("spark.job.description") or (
                sql_descriptions.get(int(execution), "") if execution is not None else ""
            )
            jobs[event["Job ID"]] = {
                "job": event["Job ID"],
                "start": event["Submission Time"] / 1000,
                "description": description,
                "callsite": props.get("callSite.short", ""),
                "stages": len(event.get("Stage IDs", [])),
            }
        elif kind == "SparkListenerJobEnd":
            job = jobs.get(event["Job ID"])
            if job is not None:
                job["end"] = event["Completion Time"] / 1000
        elif kind == "SparkListenerStageCompleted":
            info = event["Stage Info"]
            if "Completion Time" in info:
                stages_done += 1
                tasks += info.get("Number of Tasks", 0)
    listed = sorted(jobs.values(), key=lambda j: j["start"])
    for job in listed:
        job["seconds"] = round(job.get("end", job["start"]) - job["start"], 3)
        job["at_s"] = round(job["start"] - (app_start or job["start"]), 3)
        job["description"] = _short(job["description"])
        job["callsite"] = _short(job["callsite"])
    first = listed[0]["start"] if listed else None
    last = max((j.get("end", j["start"]) for j in listed), default=None)
    return {
        "process_to_context_s": round(app_start - process_start, 2) if app_start else None,
        "context_to_first_job_s": round(first - app_start, 2) if first and app_start else None,
        "first_to_last_job_s": round(last - first, 2) if first and last else None,
        "in_jobs_s": round(sum(j["seconds"] for j in listed), 2),
        "last_job_to_context_end_s": round(app_end - last, 2) if app_end and last else None,
        "spark_jobs": len(listed),
        "stages_completed": stages_done,
        "tasks": tasks,
        "by_call_site": _by_call_site(listed),
        "jobs": [
            {k: j[k] for k in ("job", "at_s", "seconds", "stages", "description", "callsite")}
            for j in listed
        ],
    }


def _short(text: str) -> str:
    """A description or call site without the directories before the library's modules."""
    text = " ".join(str(text).split())
    for marker in ("sparkml_prod.zip/", "/site-packages/"):
        while marker in text:
            head, _, tail = text.partition(marker)
            text = head[: head.rfind(" ") + 1] + tail if " " in head else tail
    return text[:100]


def _by_call_site(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive jobs from the same line of Python (a job without one joins the group
    before it, except a Delta write): each group's span and the time inside its jobs."""
    groups: list[dict[str, Any]] = []
    for job in jobs:
        site = job["callsite"] or (
            "Delta write (save)"
            if job["description"].startswith("save at")
            else (groups[-1]["callsite"] if groups else "")
        )
        end = job["at_s"] + job["seconds"]
        if groups and groups[-1]["callsite"] == site:
            group = groups[-1]
            group["jobs"] += 1
            group["in_jobs_s"] += job["seconds"]
            group["last_end_s"] = max(group["last_end_s"], end)
        else:
            groups.append(
                {"callsite": site, "jobs": 1, "first_at_s": job["at_s"], "last_end_s": end,
                 "in_jobs_s": job["seconds"]}
            )  # fmt: skip
    for group in groups:
        group["span_s"] = round(group["last_end_s"] - group["first_at_s"], 2)
        group["in_jobs_s"] = round(group["in_jobs_s"], 2)
        group["last_end_s"] = round(group["last_end_s"], 2)
    return groups
