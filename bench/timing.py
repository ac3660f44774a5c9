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


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and every process below it
    (a local Spark JVM, its Python workers), from ``/proc`` (Linux).

    On a shared machine wall time moves with the other jobs; the CPU time a run costs much
    less so. Processes that ended count once their parent has reaped them.
    """
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
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
        ticks[int(entry)] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    me, total = os.getpid(), 0
    for pid, used in ticks.items():
        ancestor = pid
        while ancestor > 1 and ancestor != me:
            ancestor = parents.get(ancestor, 0)
        total += used if ancestor == me else 0
    return total / os.sysconf("SC_CLK_TCK")


def best_of_with_cpu(repeats: int, run: Callable[[], Any]) -> tuple[float, float]:
    """The shortest wall time and the least CPU time (:func:`tree_cpu_seconds`) of
    ``repeats`` calls of ``run``, in seconds."""
    walls, cpus = [], []
    for _ in range(repeats):
        cpu, started = tree_cpu_seconds(), time.perf_counter()
        run()
        walls.append(time.perf_counter() - started)
        cpus.append(tree_cpu_seconds() - cpu)
    return min(walls), min(cpus)
