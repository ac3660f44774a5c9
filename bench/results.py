"""The one result format of the benchmarks: ``bench/results/<bench>.json``.

Each benchmark states its goals as rows of :class:`Goal`: a measure, the value measured
for the library, the baseline measured in the same run, their ratio and the goal's bound.
``bench/report.py`` turns every result file into ``docs/benchmarks.md``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
_PACKAGES = ("pyspark", "delta-spark", "xgboost-cpu", "xgboost", "pandas", "pyarrow", "duckdb")


@dataclass(frozen=True)
class Goal:
    """One goal of the performance issue, as measured in one run.

    ``ratio`` is ``value / baseline_value``; the goal is met when ``ratio <= bound``
    (``direction="<="``) or ``ratio >= bound`` (``">="``); a row with no ``bound`` is
    information only (``met`` is None). ``note`` says what remains where a goal is not
    met, or what the measure includes. ``unit`` is that of both values (seconds unless
    said otherwise, e.g. ``"MiB"``).
    """

    goal_id: str
    measure: str
    value_s: float
    baseline: str
    baseline_s: float
    bound: float | None
    direction: str = "<="
    sizes: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    unit: str = "s"

    @property
    def ratio(self) -> float:
        return self.value_s / self.baseline_s

    @property
    def met(self) -> bool | None:
        if self.bound is None:
            return None
        return self.ratio <= self.bound if self.direction == "<=" else self.ratio >= self.bound

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": round(self.ratio, 3), "met": self.met}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    memory_kib = 0
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as info:
            memory_kib = int(info.readline().split()[1])
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_kib / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "java": java.splitlines()[0] if java else "unknown",
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_results(
    bench: str,
    goals: list[Goal],
    rows: list[dict[str, Any]],
    directory: Path = RESULTS,
    settings: dict[str, Any] | None = None,
) -> Path:
    """Write one benchmark's goals and raw rows; print the goals; return the file.

    ``settings``: how it was run, e.g. ``{"args": {...}, "full_size": False}`` when the
    sizes are smaller than the issue's (the report says so).
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{bench}.json"
    payload = {
        "bench": bench,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "settings": settings or {},
        "goals": [g.as_dict() for g in goals],
        "rows": rows,
    }
    target.write_text(json.dumps(payload, indent=2) + "\n")
    for g in goals:
        verdict = {True: "met", False: "NOT met", None: "information"}[g.met]
        bound = f"goal {g.direction} {g.bound}x" if g.bound is not None else "no bound"
        print(
            f"  goal {g.goal_id}: {g.value_s:.2f}{g.unit} vs {g.baseline} "
            f"{g.baseline_s:.2f}{g.unit} = {g.ratio:.2f}x ({bound}): {verdict}",
            flush=True,
        )
    return target
