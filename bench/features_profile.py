"""Where the feature build's time goes: one library run per goal scenario of
``bench/features.py``, profiled through Spark's own REST API (``/api/v1``).

    .venv/bin/python bench/features_profile.py                  # after bench/features.py
    .venv/bin/python bench/features_profile.py --runs 5000000=snapshots_26

It reuses the data ``bench/features.py`` wrote under ``--output`` (it generates it when
missing) and, for each ``EVENTS=SCENARIO`` run, records per Spark stage the wall time,
the tasks' run and CPU time, rows read, shuffled and spilled, and per SQL plan node the
rows it produced (how many rows the range join makes of the events). It writes no goal:
``bench/results/features_profile.json`` holds the tables and a summary per run, which
``docs/benchmarks.md`` shows beside the goals they explain.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from features import SCENARIOS, Paths, as_of_dates, prepare, run_contender  # noqa: E402
from results import write_results  # noqa: E402

from sparkml_prod.core.session import get_spark  # noqa: E402

DEFAULT_RUNS = [
    "5000000=snapshots_1",
    "5000000=snapshots_26",
    "20000000=scoring",
    "20000000=training",
]
#: Stages under this (wall and task time) are listed in the summary only.
SMALL_STAGE_S = 0.5
#: Plan nodes whose row counts say where rows are made or reduced.
COUNTED_NODES = (
    "Scan",
    "Filter",
    "Exchange",
    "Join",
    "Window",
    "Sort",
    "HashAggregate",
    "Expand",
    "WholeStageCodegen",
)
#: Timing metrics of plan nodes (their totals over all tasks).
TIME_METRICS = ("duration", "sort time", "time in aggregation build", "build time")
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def _get(base: str, path: str) -> Any:
    with urllib.request.urlopen(f"{base}/api/v1/{path}", timeout=60) as response:
        return json.loads(response.read())


def _instant(text: str | None) -> float | None:
    """An instant of the REST API ("2026-12-01T17:51:43.123GMT") as epoch seconds."""
    if not text:
        return None
    parsed = dt.datetime.strptime(text.replace("GMT", ""), "%Y-%m-%dT%H:%M:%S.%f")
    return parsed.replace(tzinfo=dt.timezone.utc).timestamp()


def _seconds(metric_value: str) -> float:
    """A timing metric's total ("total (min, med, max ...)\n6.1 s (...)") in seconds."""
    lines = metric_value.strip().split("\n")
    amount, unit = lines[-1].split()[:2] if len(lines) > 1 else lines[0].split()[:2]
    return float(amount.replace(",", "")) * _UNITS[unit]


def _rows(metric_value: str) -> int:
    """``number of output rows`` as the SQL API gives it ("3,886,938")."""
    return int(metric_value.split("\n")[0].replace(",", "").split()[0])


def _what_it_does(stage: dict[str, Any]) -> str:
    """A stage by its rows in and out (AQE names most stages after a closure)."""
    source = "scan" if stage["inputRecords"] else "shuffle" if stage["shuffleReadRecords"] else ""
    sink = "shuffle" if stage["shuffleWriteRecords"] else "write" if stage["outputRecords"] else ""
    return f"{source} -> {sink}" if source and sink else stage["name"].split(" at ")[0][:40]


def stage_rows(base: str, app: str, group: str, label: str) -> list[dict[str, Any]]:
    """Every completed stage of the jobs in ``group``, in order."""
    jobs = [j for j in _get(base, f"applications/{app}/jobs") if j.get("jobGroup") == group]
    stage_ids = sorted({s for j in jobs for s in j["stageIds"]})
    out = []
    for stage_id in stage_ids:
        attempts = [
            s for s in _get(base, f"applications/{app}/stages/{stage_id}")
            if s["status"] == "COMPLETE"
        ]  # fmt: skip
        if not attempts:
            continue  # skipped: its shuffle output was reused
        s = attempts[-1]
        start, end = _instant(s.get("submissionTime")), _instant(s.get("completionTime"))
        out.append(
            {
                "table": "stages",
                "run": label,
                "stage": stage_id,
                "does": _what_it_does(s),
                "tasks": s["numTasks"],
                "wall_s": round(end - start, 2) if start and end else None,
                "task_run_s": round(s["executorRunTime"] / 1000, 2),
                "task_cpu_s": round(s["executorCpuTime"] / 1e9, 2),
                "input_rows": s["inputRecords"],
                "shuffle_read_rows": s["shuffleReadRecords"],
                "shuffle_write_rows": s["shuffleWriteRecords"],
                "output_rows": s["outputRecords"],
                "spill_mib": round(s["diskBytesSpilled"] / 2**20, 1),
            }
        )
    return out


def node_rows(base: str, app: str, description: str, label: str) -> list[dict[str, Any]]:
    """Rows out of each counted plan node of the SQL executions with ``description``."""
    executions = [
        e
        for e in _get(base, f"applications/{app}/sql?details=true&planDescription=false")
        if e.get("description") == description
    ]
    out = []
    # the feature query itself: Delta's log reads and the spine checks join nothing
    for execution in executions:
        if not any("Join" in node["nodeName"] for node in execution.get("nodes", [])):
            continue
        for node in execution.get("nodes", []):
            name = node["nodeName"]
            if not any(word in name for word in COUNTED_NODES):
                continue
            metrics = {m["name"]: m["value"] for m in node["metrics"]}
            times = {k: _seconds(metrics[k]) for k in TIME_METRICS if k in metrics}
            if "number of output rows" in metrics or times:
                out.append(
                    {
                        "table": "plan_nodes",
                        "run": label,
                        "node": f"{node['nodeId']} {name}"[:60],
                        "output_rows": _rows(metrics["number of output rows"])
                        if "number of output rows" in metrics
                        else None,
                        **{f"{k.replace(' ', '_')}_s": round(v, 2) for k, v in times.items()},
                    }
                )
    return out


def summary(label: str, wall: float, stages: list[dict], nodes: list[dict], events: int) -> str:
    run_s = sum(s["task_run_s"] for s in stages)
    top = sorted(stages, key=lambda s: s["task_run_s"], reverse=True)[:3]
    joins = [n["output_rows"] for n in nodes if "Join" in n["node"]]
    spilled = sum(s["spill_mib"] for s in stages)
    small = [s for s in stages if max(s["wall_s"] or 0, s["task_run_s"]) < SMALL_STAGE_S]
    parts = [
        f"{label}: {wall:.1f} s wall, {len(stages)} stages, tasks ran {run_s:.1f} s in all",
        f"{len(small)} of the stages under {SMALL_STAGE_S} s each (Delta's log, spine "
        f"checks, broadcasts: {sum(s['wall_s'] or 0 for s in small):.1f} s of wall together)",
        "the largest: "
        + ", ".join(f"stage {s['stage']} ({s['does']}) {s['task_run_s']:.1f} s" for s in top),
    ]
    if joins:
        parts.append(
            f"the largest join made {max(joins):,} rows of {events:,} events "
            f"({max(joins) / events:.1f} per event)"
        )
    parts.append(f"{spilled:,.0f} MiB spilled")
    return "; ".join(parts) + "."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, metavar="EVENTS=SCENARIO")
    parser.add_argument("--output", default=str(ROOT / "bench-output"))
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    runs = [(int(n), scenario) for n, scenario in (r.split("=", 1) for r in args.runs)]
    unknown = sorted({s for _, s in runs} - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {sorted(SCENARIOS)}")

    spark = get_spark(
        app_name="bench-features-profile",
        master="local[2]",
        ui=True,
        conf={
            "spark.driver.memory": "8g",
            "spark.ui.showConsoleProgress": "false",
            "spark.ui.port": "0",  # a free port
            "spark.sql.ui.retainedExecutions": "1000",
        },
    )
    base = spark.sparkContext.uiWebUrl
    app = spark.sparkContext.applicationId
    paths, rows, paragraphs = Paths(Path(args.output)), [], []
    for n_events, scenario in runs:
        data = prepare(spark, paths, n_events, [scenario], regenerate=False)
        label = f"{n_events:,} events, {scenario} ({len(as_of_dates(scenario))} as-of)"
        run_contender(spark, paths, "library", n_events, scenario)  # warm-up, not profiled
        group = f"profile {n_events} {scenario}"
        spark.sparkContext.setJobGroup(group, group)
        t0 = time.perf_counter()
        run_contender(spark, paths, "library", n_events, scenario)
        wall = time.perf_counter() - t0
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
        spark.sparkContext.setLocalProperty("spark.job.description", None)
        stages = stage_rows(base, app, group, label)
        nodes = node_rows(base, app, group, label)
        paragraphs.append(summary(label, wall, stages, nodes, data["rows"]))
        # the page lists the stages that matter; the summary counts the rest
        rows += [s for s in stages if max(s["wall_s"] or 0, s["task_run_s"]) >= SMALL_STAGE_S]
        rows += nodes
        print(paragraphs[-1], flush=True)
    settings = {"args": {"runs": args.runs}, "summary": paragraphs}
    directory = Path(args.results)
    print(f"written {write_results('features_profile', [], rows, directory, settings)}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
