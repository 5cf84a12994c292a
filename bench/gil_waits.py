"""What Airflow's loop pays for things the executor does in its calls, while other threads of the
scheduler's process are busy: starting a helper process, reading the thread's CPU wait, and asking
whether a helper process lives (`Popen.poll`, a system call, at every `sync`).

    python -m bench.gil_waits --busy 0,1,3

A thread that lets go of the GIL (a system call, a wait) takes it back from a busy thread only after
a switch interval (5 ms) or more. `--busy` threads stand for the scheduler's busy threads: they
unpickle, as the pipes' readers do. Each figure is the median and the longest of its runs, in milliseconds of
the calling thread's wall-clock time. The read of /proc/thread-self/schedstat with Python's own file
read is what each timed call did before e38fb53; `metrics.cpu_wait_s` is what it does since. To
measure an older commit, run this from a worktree of it with `PYTHONPATH=<worktree>/src:<worktree>`.
"""

from __future__ import annotations

import argparse
import pickle
import queue
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from k8s_executor import metrics
from k8s_executor.processes import Helper


def idle(channel: Any) -> None:
    """In the helper: wait to be killed."""
    channel.get()


def _times(action: Callable[[], object], runs: int, pause_s: float = 0.0) -> list[float]:
    took = []
    for _ in range(runs):
        time.sleep(pause_s)
        started = time.perf_counter()
        action()
        took.append((time.perf_counter() - started) * 1000)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", default="0,1,3", help="numbers of busy threads, comma-separated")
    args = parser.parse_args()
    stop = threading.Event()

    # What a busy thread of the scheduler does most: unpickle what came up a pipe.
    payload = pickle.dumps([{"a": i, "b": str(i)} for i in range(2000)])

    def busy() -> None:
        while not stop.is_set():
            pickle.loads(payload)

    helpers: list[Helper] = []
    answers: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def start_helper() -> None:
        helpers.append(Helper("bench.gil_waits:idle", {}, "probe", answers.put))

    schedstat = Path("/proc/thread-self/schedstat")
    print(
        "| busy threads | start a helper (6 runs) | schedstat, Python read (50) | `metrics.cpu_wait_s` (50) "
        "| a helper's liveness, `Helper.is_alive` (50) |"
    )
    print("|---|---|---|---|---|")
    for count in (int(n) for n in args.busy.split(",")):
        workers = [threading.Thread(target=busy, daemon=True) for _ in range(count)]
        stop.clear()
        for worker in workers:
            worker.start()
        cells = []
        for action, runs, pause in (
            (start_helper, 6, 0.3),
            (schedstat.read_text, 50, 0.0),
            (metrics.cpu_wait_s, 50, 0.0),
            (lambda: helpers[0].is_alive(), 50, 0.0),
        ):
            took = _times(action, runs, pause)
            cells.append(f"{statistics.median(took):.2f} ms (max {max(took):.2f})")
        stop.set()
        for worker in workers:
            worker.join()
        for helper in helpers:
            helper.kill()
            helper.join(5)
        helpers.clear()
        print(f"| {count} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
