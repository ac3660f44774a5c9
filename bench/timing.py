"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def best_of(repeats: int, run: Callable[[], Any]) -> float:
    """The shortest wall time of ``repeats`` calls of ``run``, in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def tree_cpu_ticks() -> dict[tuple[int, int], int]:
    """CPU clock ticks (user + system, with reaped children) used so far by this process
    and every process below it (a local Spark JVM, its Python workers), from ``/proc``
    (Linux), by ``(pid, start time)`` so that a reused pid is another process.
    """
    parents: dict[int, int] = {}
    ticks: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
        except OSError:  # ended meanwhile
            continue
        fields = text[text.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        # utime stime cutime cstime; starttime
        ticks[int(entry)] = (int(fields[19]), sum(int(v) for v in fields[11:15]))
    me, out = os.getpid(), {}
    for pid, (started, used) in ticks.items():
        ancestor = pid
        while ancestor > 1 and ancestor != me:
            ancestor = parents.get(ancestor, 0)
        if ancestor == me:
            out[(pid, started)] = used
    return out


def cpu_seconds_between(
    before: dict[tuple[int, int], int], after: dict[tuple[int, int], int]
) -> float:
    """CPU seconds the process tree used between two :func:`tree_cpu_ticks` samples.

    On a shared machine wall time moves with the other jobs; the CPU time a run costs much
    less so. Only processes alive at the second sample count, each from its first sample
    (or its start): a Python worker that ended in between, unreaped by a process of the
    tree, is missed (an undercount), while one of an earlier run that ended no longer
    subtracts its whole history.
    """
    used = sum(ticks - before.get(process, 0) for process, ticks in after.items())
    return used / os.sysconf("SC_CLK_TCK")


def best_of_with_cpu(repeats: int, run: Callable[[], Any]) -> tuple[float, float]:
    """The shortest wall time and the least CPU time (:func:`cpu_seconds_between`) of
    ``repeats`` calls of ``run``, in seconds."""
    walls, cpus = [], []
    for _ in range(repeats):
        before, started = tree_cpu_ticks(), time.perf_counter()
        run()
        walls.append(time.perf_counter() - started)
        cpus.append(cpu_seconds_between(before, tree_cpu_ticks()))
    return min(walls), min(cpus)
