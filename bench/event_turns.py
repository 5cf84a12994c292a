"""When Airflow's loop took the executor's events in a run's completion burst, turn by turn.

    python -m bench.event_turns /tmp/k8s-executor-bench-ours_default-<id> [--turns 12]

The executor hands its events over only when Airflow's loop calls `sync`, once a turn, so an
event waits at least for the turn in progress. This reads a run's scheduler log (kept in the run's
directory after the bench) from the moment the harness told every pod to end (the finish file's
time, written right after it marked every task instance done) and prints each turn that took
events: when, how many, and the gap since the turn before; and when Airflow marked the DAG run
done, the turn that loaded every task instance of it once more.
"""

from __future__ import annotations

import argparse
import itertools
import re
from collections.abc import Iterable
from pathlib import Path

from bench.measure import _stamp, executor_events

_RUN_DONE = re.compile(r"^(\S+Z) .*Marking run .*bench-1.* (successful|failed)")


def turns(taken: Iterable[float]) -> list[tuple[float, int]]:
    """The turns that took events at the times `taken` (seconds since the pods were told to end):
    when each began and how many it took. Events logged in one turn are written within a few
    milliseconds of each other; one a quarter second after the line before is another turn."""
    grouped: list[tuple[float, int]] = []
    last = 0.0
    for at in sorted(t for t in taken if t >= 0):
        # Measured from the turn's previous line, so that a turn whose lines take long stays one.
        if grouped and at - last < 0.25:
            grouped[-1] = (grouped[-1][0], grouped[-1][1] + 1)
        else:
            grouped.append((at, 1))
        last = at
    return grouped


def run_done(log: Path) -> float | None:
    """When Airflow marked the bench's DAG run done (epoch seconds), if it did."""
    for line in log.read_text(errors="replace").splitlines():
        if m := _RUN_DONE.match(line):
            return _stamp(m.group(1))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the run's directory (k8s-executor-bench-<config>-...)")
    parser.add_argument("--turns", type=int, default=12, help="how many turns to print from the first")
    args = parser.parse_args()
    told = (args.run / "finish").stat().st_mtime
    # With several schedulers (ours_ha) each logs the events it took; their turns are told apart.
    for log in sorted(args.run.glob("scheduler*.log")):
        print(f"{log.name}:")
        done = run_done(log)
        taken = [at - told for at in executor_events(log, "bench-1").values()]
        report(turns(taken), None if done is None else done - told, args.turns)


def report(grouped: list[tuple[float, int]], done: float | None, shown: int) -> None:
    if done is not None:
        print(f"DAG run marked done {done:.2f} s after the pods were told to end")
    previous = 0.0
    for at, count in grouped[:shown]:
        print(f"  {at:7.2f} s  {count:6d} events  (gap {at - previous:5.2f} s)")
        previous = at
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(grouped)]
    if gaps:
        print(f"{len(grouped)} turns took events; the longest gap between two {max(gaps):.2f} s")


if __name__ == "__main__":
    main()
