"""The ``sparkml-prod`` command line: thin wrappers over library functions."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from sparkml_prod.config import FeaturesConfig, GenerateConfig, load_config

__all__ = ["main", "generate_tables"]

log = logging.getLogger("sparkml_prod")


def generate_tables(config: GenerateConfig) -> dict[str, int]:
    """Generate the synthetic users, attributes and events tables; return row counts.

    Each table is replaced in one Delta commit, so a failed run leaves the previous
    version readable.
    """
    from sparkml_prod.datasets.synthetic import (
        SyntheticSpec,
        generate_events,
        generate_user_attributes,
        generate_users,
    )
    from sparkml_prod.session import get_spark
    from sparkml_prod.tables import read_table, write_table

    spark = get_spark("sparkml-prod-generate")
    spec = SyntheticSpec(
        n_users=config.n_users,
        start=config.start,
        end=config.end,
        seed=config.seed,
        events_per_user_per_day=config.events_per_user_per_day,
    )
    counts = {}
    for ref, build in (
        (config.users_table, generate_users),
        (config.user_attributes_table, generate_user_attributes),
        (config.events_table, generate_events),
    ):
        write_table(build(spark, spec), ref, mode="overwrite", options={"overwriteSchema": "true"})
        counts[ref] = read_table(spark, ref).count()
    return counts


def _generate(args: argparse.Namespace) -> int:
    config = load_config(args.config, GenerateConfig)
    if args.n_users is not None:
        config = GenerateConfig(**{**config.__dict__, "n_users": args.n_users})
    started = time.perf_counter()
    counts = generate_tables(config)
    for ref, rows in counts.items():
        print(f"wrote {rows:>12,} rows to Delta table {ref}")
    print(f"generated in {time.perf_counter() - started:.1f}s")
    return 0


def _features(args: argparse.Namespace) -> int:
    from sparkml_prod.matrix import build_feature_matrix
    from sparkml_prod.session import get_spark

    config = load_config(args.config, FeaturesConfig)
    started = time.perf_counter()
    rows, columns = build_feature_matrix(get_spark("sparkml-prod-features"), config)
    print(
        f"feature matrix: {rows:,} rows x {columns} columns "
        f"({len(config.spine.as_of_dates)} as-of dates) in Delta table {config.output_table}, "
        f"built in {time.perf_counter() - started:.1f}s"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparkml-prod", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="write the synthetic clickstream tables")
    generate.add_argument("--config", required=True, help="YAML file (see conf/generate.yaml)")
    generate.add_argument("--n-users", type=int, default=None, help="override n_users")
    generate.set_defaults(run=_generate)
    features = commands.add_parser("features", help="build and write a feature matrix")
    features.add_argument("--config", required=True, help="YAML file (see conf/features_job.yaml)")
    features.set_defaults(run=_features)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
