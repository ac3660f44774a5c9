"""Benchmark of the whole batch-scoring job, as users run it, against two baselines.

Run from the repository root (see ``bench/README.md``)::

    .venv/bin/python bench/scoring.py                           # 10k and 1M users
    .venv/bin/python bench/scoring.py --large-users 100000 --repeats 1   # smoke run

The job is ``spark-submit jobs/score.py --config <score.yaml> --as-of 2024-07-01`` with the
Makefile's flags (``local[2]``, Delta's jars by ``--jars``, the library by ``--py-files``, a
4g driver), on a config like ``conf/score.yaml`` (the model's training population, a
holdout, the scores and the scored features written to Delta) pointed at generated data.
Its inputs (:mod:`bench.scoring_data`: a model trained once with ``run_training`` and
registered, a clickstream per size) are prepared in another process, untimed, and reused.

Goals (``bench/results/scoring.json``):

* ``scoring_fixed_cost``: the job at ``--small-users`` against a bare ``spark-submit`` of
  ``bench/minimal_job.py`` (same flags: a Delta session, one small Delta table counted);
  median of ``--repeats`` each; bound 1.5.
* ``scoring_marginal``: the job at ``--large-users`` minus the job at ``--small-users``,
  against the same difference for the single-node pipeline of ``bench/single_node.py``
  (DuckDB SQL for the same features, ``Booster.inplace_predict`` with the registered
  booster, a Parquet write of ``(user_id, score)``), each a median of ``--repeats`` runs
  of its own process; bound 2.0.

Before timing, one untimed run of each at the small size is checked: the same users and
scores within 1e-6. The untimed runs of the job (both sizes) write a Spark event log,
from which the profile (phases, Spark jobs) is read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from jobrun import (  # noqa: E402
    PYTHON,
    Measured,
    clean_env,
    event_log_profile,
    exit_on_sigterm,
    median,
    package_zip,
    run_measured,
    submit_command,
)
from results import Goal, write_results  # noqa: E402
from scoring_data import AS_OF, data_dir, model_dir  # noqa: E402

SCORE_YAML = """\
# conf/score.yaml pointed at the bench's registry and generated tables.
model: purchase_30d@production
registry_root: {registry}
output_table: {data}/out/scores
sources:
  {trained_events}: {data}/delta/events
  {trained_attributes}: {data}/delta/user_attributes
allow_empty: false
features_table: {data}/out/scored_features
holdout:
  share: 0.1
  salt: purchase-holdout
"""
FIXED_BOUND, MARGINAL_BOUND, TOLERANCE = 1.5, 2.0, 1e-6


def prepare(output: Path, users: list[int], regenerate: bool) -> dict[str, Any]:
    """Model and data (another process, untimed); their metadata."""
    command = [PYTHON, str(ROOT / "bench" / "scoring_data.py"), "--output", str(output)]
    command += ["--users", *map(str, users)] + (["--regenerate"] if regenerate else [])
    started = time.perf_counter()
    run_measured(command, clean_env(PYTHONPATH=str(ROOT)), output / "logs" / "prepare.log")
    print(f"  inputs ready in {time.perf_counter() - started:.0f}s", flush=True)
    return {
        "model": json.loads((model_dir(output) / "meta.json").read_text()),
        "data": {n: json.loads((data_dir(output, n) / "meta.json").read_text()) for n in users},
    }


def score_config(output: Path, n_users: int, model: dict[str, Any]) -> Path:
    data = data_dir(output, n_users)
    path = data / "score.yaml"
    path.write_text(
        SCORE_YAML.format(
            registry=model["registry"],
            data=data,
            trained_events=model["trained_sources"]["events"],
            trained_attributes=model["trained_sources"]["user_attributes"],
        )
    )
    return path


class Contenders:
    """The three commands, each run as its own process and measured from outside."""

    def __init__(
        self, output: Path, py_files: Path, model: dict[str, Any], master: str = "local[2]"
    ) -> None:
        self.output, self.py_files, self.model, self.master = output, py_files, model, master
        self.logs = output / "logs"

    def job(self, n_users: int, event_log: Path | None = None) -> Measured:
        conf = {}
        if event_log is not None:
            shutil.rmtree(event_log, ignore_errors=True)
            event_log.mkdir(parents=True)
            conf = {
                "spark.eventLog.enabled": "true",
                "spark.eventLog.dir": f"file:{event_log}",
                "spark.eventLog.rolling.enabled": "false",
                "spark.eventLog.compress": "false",
            }
        config = score_config(self.output, n_users, self.model)
        command = submit_command(
            ROOT / "jobs" / "score.py",
            ["--config", str(config), "--as-of", str(AS_OF)],
            self.py_files,
            conf,
            self.master,
        )
        env = clean_env(SPARK_LOCAL_IP="127.0.0.1") if self.master != "local[2]" else clean_env()
        return run_measured(command, env, self.logs / f"job_{n_users}.log")

    def minimal(self, n_users: int) -> Measured:
        table = data_dir(self.output, n_users) / "delta" / "users"
        command = submit_command(ROOT / "bench" / "minimal_job.py", [str(table)], self.py_files)
        return run_measured(command, clean_env(), self.logs / "minimal.log")

    def single_node(self, n_users: int) -> Measured:
        data = data_dir(self.output, n_users)
        command = [
            PYTHON,
            str(ROOT / "bench" / "single_node.py"),
            "--data",
            str(data / "parquet"),
            "--model",
            str(model_dir(self.output) / "single_node"),
            "--as-of",
            str(AS_OF),
            "--out",
            str(data / "out" / "single_node.parquet"),
        ]
        return run_measured(command, clean_env(), self.logs / f"single_node_{n_users}.log")


def job_seconds(log: str) -> float | None:
    """``run_scoring``'s own time, from the line ``scored N users ... in X.Ys (run ...)``."""
    for line in log.splitlines():
        if line.startswith("scored ") and " in " in line:
            return float(line.rsplit(" in ", 1)[1].split("s", 1)[0])
    return None


def check_scores(data: Path) -> dict[str, Any]:
    """The job's scores (the Delta partition's files, the table freshly written) against
    the single-node scores: same users, scores within ``TOLERANCE``."""
    import duckdb

    partition = data / "out" / "scores" / f"as_of={AS_OF}"
    job = duckdb.sql(
        f"SELECT user_id, score FROM read_parquet('{partition}/*.parquet') ORDER BY user_id"
    ).fetchnumpy()
    single = duckdb.sql(
        f"SELECT user_id, score FROM read_parquet('{data / 'out' / 'single_node.parquet'}') "
        "ORDER BY user_id"
    ).fetchnumpy()
    same_users = len(job["user_id"]) == len(single["user_id"]) and bool(
        (job["user_id"] == single["user_id"]).all()
    )
    diff = float(abs(job["score"] - single["score"]).max()) if same_users else float("nan")
    return {
        "rows_job": len(job["user_id"]),
        "rows_single_node": len(single["user_id"]),
        "same_users": same_users,
        "max_abs_diff": diff,
        "match": same_users and diff <= TOLERANCE,
    }


def run_row(contender: str, n_users: int, events: int, repeat: int, m: Measured) -> dict:
    return {
        "table": "runs",
        "contender": contender,
        "users": n_users,
        "events": events,
        "repeat": repeat,
        "wall_s": round(m.wall_s, 2),
        "cpu_s": round(m.cpu_s, 2),
        "job_reported_s": job_seconds(m.log) if contender == "job" else None,
        "driver_jvm_mib": round(m.peak_rss_mib.get("driver_jvm", 0.0)),
        "driver_python_mib": round(m.peak_rss_mib.get("driver_python", 0.0)),
        "worker_python_mib": round(m.peak_rss_mib.get("worker_python", 0.0)),
        "load_1m": round(os.getloadavg()[0], 2),
    }


def profile_rows(n_users: int, profile: dict[str, Any], measured: Measured) -> list[dict]:
    """The untimed job run's phases and its Spark jobs (grouped by the line of the library
    that started them; every job is in ``profile.json``), as rows of two tables."""
    reported = job_seconds(measured.log)
    phases = [
        ("start -> SparkContext up (JVM, Delta jars, Python driver)", "process_to_context_s"),
        ("SparkContext up -> first Spark job (model load, spine)", "context_to_first_job_s"),
        ("first -> last Spark job", "first_to_last_job_s"),
        ("  Spark job durations summed (concurrent jobs overlap)", "in_jobs_s"),
        ("last Spark job -> SparkContext stopped", "last_job_to_context_end_s"),
    ]
    rows = [
        {"table": "profile", "users": n_users, "phase": name, "seconds": profile[key]}
        for name, key in phases
    ]
    rows.append(
        {"table": "profile", "users": n_users, "phase": "run_scoring (its own timer)",
         "seconds": reported}
    )  # fmt: skip
    rows.append(
        {"table": "profile", "users": n_users, "phase": "whole process (wall)",
         "seconds": round(measured.wall_s, 2)}
    )  # fmt: skip
    for group in profile["by_call_site"]:
        rows.append({"table": "spark_jobs_by_call_site", "users": n_users, **group})
    return rows


_SITES = (  # what the lines of the library that start Spark jobs are doing
    ("registry/loading.py", "loading the PipelineModel (stage metadata reads)"),
    ("transform at", "pipeline.transform (eager jobs while planning: Delta file lists, "
     "the spine's as-of range per stage, null-key counts)"),
    ("collect at sparkml_prod/runs/score.py", "computing and caching the scores (the "
     "count per variant)"),
    ("Delta write", "the Delta writes (scores, scored features)"),
)  # fmt: skip


def profile_summary(n_users: int, events: int, profile: dict[str, Any], wall: float) -> str:
    """One paragraph: where the profiled run's time went."""
    parts = []
    for group in profile["by_call_site"]:
        label = next((text for key, text in _SITES if key in group["callsite"]), None)
        label = label or f"`{group['callsite']}`"
        parts.append(
            f"{label}: {group['jobs']} jobs over {group['span_s']:.1f} s "
            f"(job durations sum to {group['in_jobs_s']:.1f} s)"
        )
    spans = sum(g["span_s"] for g in profile["by_call_site"])
    between = (profile["first_to_last_job_s"] or 0.0) - spans
    return (
        f"Profile at {n_users:,} users ({events:,} events, the untimed run with an event "
        f"log, {wall:.1f} s wall): {profile['process_to_context_s']:.1f} s until the "
        "SparkContext is up (JVM, Delta's jars, the Python driver), "
        f"{profile['context_to_first_job_s']:.1f} s more until the first Spark job, then "
        f"{profile['spark_jobs']} Spark jobs ({profile['stages_completed']} stages, "
        f"{profile['tasks']} tasks): " + "; ".join(parts) + f"; {between:.1f} s between "
        f"those groups with no job running (driver-side planning), and "
        f"{profile['last_job_to_context_end_s']:.1f} s to stop."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-users", type=int, default=10_000)
    parser.add_argument("--large-users", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (median)")
    parser.add_argument("--output", default=str(ROOT / "bench-output" / "scoring"))
    parser.add_argument("--results", default=None, help="directory of <bench>.json")
    parser.add_argument("--regenerate", action="store_true")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    output = Path(args.output).resolve()
    small, large = args.small_users, args.large_users
    print(f"== scoring job: {small:,} and {large:,} users ==", flush=True)
    inputs = prepare(output, [small, large], args.regenerate)
    events = {n: inputs["data"][n]["events"] for n in (small, large)}
    py_files = package_zip(output / "sparkml_prod.zip")
    run = Contenders(output, py_files, inputs["model"])
    rows: list[dict[str, Any]] = []

    # Untimed: fresh output tables, the event-log profile, the check, page caches warm.
    profiles, profile_walls = {}, {}
    for n in (small, large):
        shutil.rmtree(data_dir(output, n) / "out", ignore_errors=True)
        log_dir = output / "eventlog" / str(n)
        started = time.time()
        measured = run.job(n, event_log=log_dir)
        profiles[n] = event_log_profile(log_dir, started)
        profile_walls[n] = measured.wall_s
        rows += profile_rows(n, profiles[n], measured)
        print(
            f"  profile {n:,} users: {measured.wall_s:.1f}s wall, "
            f"{profiles[n]['spark_jobs']} Spark jobs ({profiles[n]['in_jobs_s']}s inside)",
            flush=True,
        )
        single = run.single_node(n)
        print(f"  single node {n:,} users: {single.wall_s:.1f}s  {single.log.strip()}", flush=True)
    check = check_scores(data_dir(output, small))
    print(f"  check at {small:,} users: {check}", flush=True)
    rows.append({"table": "check", "users": small, **check})
    (output / "profile.json").write_text(json.dumps(profiles, indent=2))
    if not check["match"]:
        print("  the single-node scores do not equal the job's: no timings", flush=True)
        return 1

    timed: dict[tuple[str, int], list[Measured]] = {}
    plan = [("minimal", small), ("job", small), ("single_node", small)]
    plan += [("job", large), ("single_node", large)]
    for repeat in range(1, args.repeats + 1):
        for contender, n in plan:
            m = getattr(run, contender)(n)
            timed.setdefault((contender, n), []).append(m)
            rows.append(run_row(contender, n, events[n], repeat, m))
            print(
                f"  {contender:12s} {n:>9,} users run {repeat}: {m.wall_s:6.1f}s wall "
                f"{m.cpu_s:6.1f}s CPU (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )

    def wall(contender: str, n: int) -> float:
        return median([m.wall_s for m in timed[(contender, n)]])

    def cpu(contender: str, n: int) -> float:
        return median([m.cpu_s for m in timed[(contender, n)]])

    scored = check["rows_job"]
    job_large_rows = profiles[large]
    goals = [
        Goal(
            "scoring_fixed_cost",
            f"spark-submit jobs/score.py at {small:,} users (median of {args.repeats})",
            wall("job", small),
            "bare spark-submit: Delta session + count of a small Delta table",
            wall("minimal", small),
            FIXED_BOUND,
            sizes={"users": small, "events": events[small], "scored_users": scored},
            note=(
                f"CPU s: job {cpu('job', small):.1f}, bare submit {cpu('minimal', small):.1f} "
                f"({cpu('job', small) / cpu('minimal', small):.2f}x). The job also writes the "
                f"scored features table and a holdout flag, as conf/score.yaml does; "
                f"{profiles[small]['spark_jobs']} Spark jobs."
            ),
        ),
        Goal(
            "scoring_marginal",
            f"job at {large:,} minus job at {small:,} users (medians of {args.repeats})",
            wall("job", large) - wall("job", small),
            "DuckDB features + Booster.inplace_predict + Parquet, same difference",
            wall("single_node", large) - wall("single_node", small),
            MARGINAL_BOUND,
            sizes={"users": [small, large], "events": [events[small], events[large]]},
            note=(
                f"CPU s of the difference: job "
                f"{cpu('job', large) - cpu('job', small):.1f}, single node "
                f"{cpu('single_node', large) - cpu('single_node', small):.1f}. "
                f"Scores equal the job's within {TOLERANCE:g} at {small:,} users "
                f"(max diff {check['max_abs_diff']:.1e}). The job writes 2 Delta tables "
                f"(scores and the {inputs['model']['features']} scored features), the "
                f"single node one Parquet file of (user_id, score); "
                f"{job_large_rows['spark_jobs']} Spark jobs at {large:,} users."
            ),
        ),
    ]
    settings = {
        "args": {"small_users": small, "large_users": large, "repeats": args.repeats},
        "full_size": small == 10_000 and large >= 1_000_000 and args.repeats >= 3,
        "summary": [
            profile_summary(n, events[n], profiles[n], profile_walls[n]) for n in (small, large)
        ],
    }
    kwargs: dict[str, Any] = {"directory": Path(args.results)} if args.results else {}
    target = write_results("scoring", goals, rows, settings=settings, **kwargs)
    print(f"written {target} at {dt.datetime.now():%H:%M}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
