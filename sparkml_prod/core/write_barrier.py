"""A test-only barrier that makes concurrent partition replaces overlap deterministically.

``$SPARKML_PROD_TEST_WRITE_BARRIER`` (``<directory>,<parties>``) makes each
:func:`~sparkml_prod.core.tables.overwrite_partition` of a process wait inside its write
job (after Delta read the table's snapshot, before it commits) until ``<parties>``
processes reached the same write. Unset, which it always is outside tests, the data is
written unchanged and nothing here runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from pyspark.sql import DataFrame

__all__ = ["BARRIER_ENV", "behind_write_barrier"]

# Test-only: "<directory>,<parties>" makes each partition replace wait, inside its write
# job (after Delta read the table's snapshot, before it commits), until <parties>
# processes reached the same write; see :func:`behind_write_barrier`.
BARRIER_ENV = "SPARKML_PROD_TEST_WRITE_BARRIER"
BARRIER_TIMEOUT_S = 180.0


_barrier_rounds = 0


def behind_write_barrier(df: DataFrame) -> DataFrame:
    """``df``, or with ``$SPARKML_PROD_TEST_WRITE_BARRIER`` set, ``df`` behind a barrier.

    Test-only, to make concurrent writers overlap deterministically: the write job's
    tasks pass the rows through a function that first marks this process as arrived at
    this process's n-th partition replace (``<directory>/<n>/<pid>``) and waits until
    ``<parties>`` processes have. The write job runs inside Delta's transaction, after it
    read the table's snapshot and before it commits, so every party commits against the
    snapshot it read before any other party committed. A retried attempt finds the
    barrier passed. Unset (always, outside tests), the data is written unchanged.
    """
    setting = os.environ.get(BARRIER_ENV)
    if not setting:
        return df
    global _barrier_rounds
    _barrier_rounds += 1
    directory, parties = setting.rsplit(",", 1)
    arrival = os.path.join(directory, str(_barrier_rounds), str(os.getpid()))
    return df.mapInArrow(_BarrierPass(arrival, int(parties)), df.schema)


class _BarrierPass:
    """The task side of :func:`behind_write_barrier` (a picklable callable)."""

    def __init__(self, arrival: str, parties: int) -> None:
        self.arrival, self.parties = arrival, parties

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        round_dir = os.path.dirname(self.arrival)
        os.makedirs(round_dir, exist_ok=True)
        with open(self.arrival, "w"):
            pass
        deadline = time.monotonic() + BARRIER_TIMEOUT_S
        while len(os.listdir(round_dir)) < self.parties:
            if time.monotonic() > deadline:
                raise TimeoutError(f"write barrier {round_dir}: fewer than {self.parties} came")
            time.sleep(0.05)
        yield from batches
