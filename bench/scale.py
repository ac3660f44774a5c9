"""Scale series of the scoring job: wall time and peak driver memory at growing sizes.

Run from the repository root (see ``bench/README.md``)::

    .venv/bin/python bench/scale.py                                  # 1M, 5M, 20M events
    .venv/bin/python bench/scale.py --events 200000 1000000          # smoke run

For each size, the scoring job of ``bench/scoring.py`` (``spark-submit jobs/score.py``,
same flags and config) on a clickstream of as many users as give about that many events
(90 days, 0.1 events per user per day: ~9 events per user, measured on the 10k-user
set). Nothing the driver holds should grow with the data: it plans, and collects only
the per-variant row counts. While the job runs, ``VmHWM`` (peak resident set) of each
process of its tree is polled from ``/proc``: the driver JVM and the driver Python.

By default (``--master standalone``) the job runs on a standalone cluster on 127.0.0.1
started for the series (one worker, one executor of 2 cores and 6g, client mode), so
that the driver JVM holds the driver alone; with ``--master local`` it runs in
``local[2]``, where the driver JVM also runs the tasks and grows into its 4g heap.

Goals (``bench/results/scale.json``): ``scale_driver_memory``, the peak driver RSS (JVM
plus Python) at the largest size against the smallest, bound 1.5; and, information only,
``scale_time_per_event``: wall seconds per million events at the largest size against
the smallest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from jobrun import exit_on_sigterm, package_zip  # noqa: E402
from results import Goal, write_results  # noqa: E402
from scoring import Contenders, job_seconds, prepare  # noqa: E402
from scoring_data import data_dir  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from standalone import standalone_cluster  # noqa: E402  (the cluster the tests start)

PROBE_USERS = 10_000
MEMORY_BOUND = 1.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    parser.add_argument("--repeats", type=int, default=1, help="runs per size (best wall)")
    parser.add_argument("--output", default=str(ROOT / "bench-output" / "scoring"))
    parser.add_argument("--results", default=None, help="directory of <bench>.json")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument(
        "--master",
        choices=["standalone", "local"],
        default="standalone",
        help="standalone: a cluster on 127.0.0.1, the driver alone in its JVM (default); "
        "local: local[2], tasks in the driver JVM",
    )
    args = parser.parse_args(argv)
    exit_on_sigterm()
    if args.master == "local":
        return series(args, "local[2]")
    output = Path(args.output).resolve()
    with standalone_cluster(output / "cluster", workers=1, cores=2, memory="8g") as master:
        return series(args, master)


def series(args: Any, master: str) -> int:
    """The series, each job submitted to ``master``."""
    output = Path(args.output).resolve()
    sizes = sorted(set(args.events))
    print(f"== scale series: {', '.join(f'{n:,}' for n in sizes)} events ==", flush=True)
    probe = prepare(output, [PROBE_USERS], args.regenerate)["data"][PROBE_USERS]
    per_user = probe["events"] / probe["users"]
    users = {n: max(1, round(n / per_user)) for n in sizes}
    inputs = prepare(output, sorted(users.values()), False)
    run = Contenders(output, package_zip(output / "sparkml_prod.zip"), inputs["model"], master)

    rows: list[dict[str, Any]] = []
    best: dict[int, dict[str, Any]] = {}
    for n in sizes:
        n_users = users[n]
        events = inputs["data"][n_users]["events"]
        shutil.rmtree(data_dir(output, n_users) / "out", ignore_errors=True)
        for repeat in range(1, args.repeats + 1):
            m = run.job(n_users)
            peaks = m.peak_rss_mib
            row = {
                "events_target": n,
                "events": events,
                "users": n_users,
                "repeat": repeat,
                "wall_s": round(m.wall_s, 2),
                "cpu_s": round(m.cpu_s, 2),
                "job_reported_s": job_seconds(m.log),
                "s_per_m_events": round(m.wall_s / events * 1e6, 2),
                "driver_jvm_mib": round(peaks.get("driver_jvm", 0.0)),
                "driver_python_mib": round(peaks.get("driver_python", 0.0)),
                "worker_python_mib": round(peaks.get("worker_python", 0.0)),
                "driver_mib": round(peaks.get("driver_jvm", 0.0) + peaks.get("driver_python", 0.0)),
                "load_1m": round(os.getloadavg()[0], 2),
            }
            rows.append(row)
            print(
                f"  {events:>11,} events {n_users:>9,} users run {repeat}: {m.wall_s:6.1f}s "
                f"wall {m.cpu_s:6.1f}s CPU, driver JVM {row['driver_jvm_mib']} MiB, "
                f"driver Python {row['driver_python_mib']} MiB (load {row['load_1m']})",
                flush=True,
            )
            if n not in best or row["wall_s"] < best[n]["wall_s"]:
                best[n] = row
            write_goals(rows, best, [m for m in sizes if m in best], args)
    target = write_goals(rows, best, sizes, args)
    print(f"written {target}", flush=True)
    return 0


def write_goals(
    rows: list[dict[str, Any]], best: dict[int, dict[str, Any]], sizes: list[int], args: Any
) -> Path:
    """The goals over the sizes done so far (the largest against the smallest), written
    after every size: a series stopped before its end keeps what it measured."""
    low, high = best[sizes[0]], best[sizes[-1]]
    peak = {n: max(r["driver_mib"] for r in rows if r["events_target"] == n) for n in sizes}
    low_label, high_label = f"{low['events'] / 1e6:.1f}M", f"{high['events'] / 1e6:.1f}M"
    goals = [
        Goal(
            "scale_driver_memory",
            f"peak driver RSS (JVM + Python VmHWM) at {high_label} vs {low_label} events",
            peak[sizes[-1]],
            f"{low_label} events",
            peak[sizes[0]],
            MEMORY_BOUND,
            sizes={
                "events": [r["events"] for r in best.values()],
                "users": [r["users"] for r in best.values()],
            },  # fmt: skip
            note=(
                f"driver JVM {low['driver_jvm_mib']} -> {high['driver_jvm_mib']} MiB, driver "
                f"Python {low['driver_python_mib']} -> {high['driver_python_mib']} MiB. "
                + (
                    "In local[2] the driver JVM also runs the tasks (4g heap limit): its "
                    "peak is the heap the executor grew into, not state the driver keeps."
                    if args.master == "local"
                    else "On a standalone cluster (one executor of 2 cores, 6g, client "
                    "mode): the driver JVM runs no task."
                )
            ),
            unit="MiB",
        ),
        Goal(
            "scale_time_per_event",
            f"job wall seconds per million events at {high_label} vs {low_label} events",
            high["s_per_m_events"],
            f"{low_label} events",
            low["s_per_m_events"],
            None,
            sizes={"events": [r["events"] for r in best.values()]},
            note=(
                "information only: below 1 the fixed cost is being amortised; "
                f"best of {args.repeats} per size, CPU s {low['cpu_s']} -> {high['cpu_s']}"
                + (
                    " (of the driver alone: the executor runs under the worker)."
                    if args.master == "standalone"
                    else "."
                )
            ),
        ),
    ]
    settings = {
        "args": {"events": sizes, "repeats": args.repeats, "master": args.master},
        "full_size": sizes[0] <= 1_000_000 and sizes[-1] >= 20_000_000,
    }
    kwargs: dict[str, Any] = {"directory": Path(args.results)} if args.results else {}
    target = write_results("scale", goals, rows, settings=settings, **kwargs)
    return target


if __name__ == "__main__":
    sys.exit(main())
