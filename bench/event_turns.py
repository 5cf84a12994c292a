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
from pathlib import Path

from bench.measure import _EVENT, _stamp

_RUN_DONE = re.compile(r"^(\S+Z) .*Marking run .*bench-1.* (successful|failed)")


def turns(log: str, told: float) -> tuple[list[tuple[float, int]], float | None]:
    """The turns that took events after `told` (seconds since it, events taken), and when the DAG
    run was marked done (seconds since `told`). Events logged in one turn are written within a
    few milliseconds of each other; one a quarter second after the line before is another turn."""
    taken: list[float] = []
    done = None
    for line in log.splitlines():
        if (m := _EVENT.match(line)) and m.group(3) == "bench-1" and m.group(2) in ("success", "failed"):
            taken.append(_stamp(m.group(1)) - told)
        elif (m := _RUN_DONE.match(line)) and done is None:
            done = _stamp(m.group(1)) - told
    grouped: list[tuple[float, int]] = []
    last = 0.0
    for at in sorted(t for t in taken if t >= 0):
        # Measured from the turn's previous line, so that a turn whose lines take long stays one.
        if grouped and at - last < 0.25:
            grouped[-1] = (grouped[-1][0], grouped[-1][1] + 1)
        else:
            grouped.append((at, 1))
        last = at
    return grouped, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the run's directory (k8s-executor-bench-<config>-...)")
    parser.add_argument("--turns", type=int, default=12, help="how many turns to print from the first")
    args = parser.parse_args()
    told = (args.run / "finish").stat().st_mtime
    # With several schedulers (ours_ha) each logs the events it took; their turns are told apart.
    for log in sorted(args.run.glob("scheduler*.log")):
        print(f"{log.name}:")
        report(*turns(log.read_text(errors="replace"), told), args.turns)


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
