"""A throwaway Spark standalone cluster on 127.0.0.1, for end-to-end tests.

:func:`standalone_cluster` starts one master and some workers from the installed pyspark
(``pyspark/bin/spark-class``, no separate Spark download), each in its own process
session with its log in a file, waits until every worker has registered, yields the
master URL, and stops every process it started (SIGTERM to the process group, SIGKILL
after a grace period) however the ``with`` block ends, a failed start-up included.

:func:`stop_process_groups` and :func:`log_tail` serve any test that starts processes
with ``start_new_session=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import pyspark

__all__ = [
    "SPARK_HOME",
    "free_ports",
    "log_tail",
    "standalone_cluster",
    "stop_process_groups",
]

#: The installed pyspark package: it holds ``bin/spark-class`` and ``jars/``.
SPARK_HOME = Path(pyspark.__file__).resolve().parent
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"
START_TIMEOUT_S = 90.0
STOP_GRACE_S = 10.0
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago.

    All sockets are held open until every port is picked, so the ports differ.

    Examples
    --------
    >>> len(set(free_ports(3)))
    3
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def log_tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log file ("" when it does not exist).

    Examples
    --------
    >>> log_tail(Path("/nonexistent.log"))
    ''
    """
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is left in process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_process_groups(
    processes: Iterable[subprocess.Popen[bytes]], grace: float = STOP_GRACE_S
) -> None:
    """Stop each process and everything in its process group: SIGTERM, then SIGKILL.

    Each process must lead its own group (``start_new_session=True``), so its children
    (a JVM's executors, a Python worker) are stopped with it. Returns once every group
    is empty or was sent SIGKILL, and every leader is reaped.

    Examples
    --------
    >>> p = subprocess.Popen(["sleep", "60"], start_new_session=True)
    >>> stop_process_groups([p])
    >>> p.returncode
    -15
    """
    started = list(processes)
    for process in started:
        _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        for process in started:
            process.poll()  # reap leaders, so they do not count as alive
        if not any(_group_alive(process.pid) for process in started):
            break
        time.sleep(0.1)
    for process in started:
        if _group_alive(process.pid):
            _signal_group(process.pid, signal.SIGKILL)
    for process in started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)


def _daemon_env() -> dict[str, str]:
    """The caller's environment without Python or Spark settings that would leak into
    the daemons and their executors, plus what a loopback-only cluster needs."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "PYTHONPATH" and not key.startswith(("SPARK_", "PYSPARK_"))
    }
    env.update(
        SPARK_HOME=str(SPARK_HOME),
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false",
    )
    return env


def _launch(
    args: Sequence[str], log: Path, env: Mapping[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(SPARK_CLASS), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _alive_workers(webui_port: int) -> int | None:
    """``aliveworkers`` of the master's JSON status page, or None while it cannot answer."""
    # No proxy: a proxy from the environment must not intercept a loopback request.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{webui_port}/json/", timeout=2.0) as response:
            status = json.load(response)
    except (OSError, ValueError, urllib.error.URLError):
        return None
    alive = status.get("aliveworkers") if isinstance(status, dict) else None
    return alive if isinstance(alive, int) else None


def _wait(
    ready: str,
    check: Callable[[], bool],
    processes: Sequence[tuple[str, subprocess.Popen[bytes], Path]],
    deadline: float,
) -> None:
    """Poll ``check`` until it returns True; fail with the logs when a process exits or
    the deadline passes."""
    while not check():
        for name, process, log in processes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"Spark standalone {name} exited with code {process.returncode} while "
                    f"waiting for {ready}. Last lines of {log}:\n{log_tail(log)}"
                )
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {log} ---\n{log_tail(log, 30)}" for _, _, log in processes)
            raise RuntimeError(
                f"Spark standalone cluster not ready after {START_TIMEOUT_S:.0f} s: still "
                f"waiting for {ready}. Logs:\n{logs}"
            )
        time.sleep(0.5)


@contextlib.contextmanager
def standalone_cluster(
    workdir: Path, workers: int = 2, cores: int = 1, memory: str = "1g"
) -> Iterator[str]:
    """Run a master and ``workers`` workers on 127.0.0.1; yield ``spark://127.0.0.1:P``.

    Logs go to ``workdir/master.log`` and ``workdir/worker-<i>.log``; worker ``i`` runs
    its executors under ``workdir/worker-<i>/``. Start-up (the master's port open and
    every worker registered, per the master's ``/json/`` page) must take at most 90 s.

    Examples
    --------
    >>> with standalone_cluster(tmp_path) as master:  # doctest: +SKIP
    ...     subprocess.run(["spark-submit", "--master", master, "job.py"], check=True)
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port, webui, *worker_ports = free_ports(2 + 2 * workers)
    master = f"spark://127.0.0.1:{port}"
    env = _daemon_env()
    started: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        log = workdir / "master.log"
        args = ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(webui)]
        started.append(("master", _launch([MASTER_CLASS, *args], log, env, workdir), log))
        _wait(
            f"the master to listen on port {port}",
            lambda: _accepts_connections(port),
            started,
            deadline,
        )
        for i in range(workers):
            work = workdir / f"worker-{i}"
            work.mkdir(exist_ok=True)
            worker_port, worker_webui = worker_ports[2 * i : 2 * i + 2]
            args = [
                master,
                "--host",
                "127.0.0.1",
                "--port",
                str(worker_port),
                "--webui-port",
                str(worker_webui),
                "--cores",
                str(cores),
                "--memory",
                memory,
                "--work-dir",
                str(work),
            ]
            log = workdir / f"worker-{i}.log"
            started.append((f"worker {i}", _launch([WORKER_CLASS, *args], log, env, workdir), log))
        _wait(
            f"{workers} alive workers on the master's web UI (port {webui})",
            lambda: _alive_workers(webui) == workers,
            started,
            deadline,
        )
        yield master
    finally:
        stop_process_groups([process for _, process, _ in started])
