"""How long a helper process takes to be ready, under a main module that imports Airflow.

    python -m bench.helper_start --runs 20

The scheduler's main module is Airflow's command line. Each time the executor starts (or
restarts) its launcher or a watcher, the scheduler waits this long before that helper serves.
Measured: from the call that starts it until the helper, having imported what the launcher and
the watcher import, says it is ready; for `processes.Helper` (what the executor uses) and, for
comparison, a plain multiprocessing spawn, which runs the parent's main module again first.
This file is run as the main module itself, so it imports Airflow first, as `airflow` does.
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import statistics
import time
from typing import Any

import airflow.cli.cli_parser  # noqa: F401  (what `airflow scheduler`'s main module imports)

from k8s_executor.processes import Helper


def ready(channel: Any) -> None:
    import k8s_executor.launching
    import k8s_executor.watching  # noqa: F401

    channel.put("ready")


def _helper() -> float:
    answers: queue.Queue[Any] = queue.Queue()
    started = time.perf_counter()
    helper = Helper("bench.helper_start:ready", {}, "probe", answers.put)
    answers.get(timeout=60)
    took = time.perf_counter() - started
    helper.kill()
    helper.join(5)
    return took


def _spawn() -> float:
    context = multiprocessing.get_context("spawn")
    answers: Any = context.Queue()
    started = time.perf_counter()
    process = context.Process(target=ready, args=(answers,))
    process.start()
    answers.get(timeout=60)
    took = time.perf_counter() - started
    process.join(10)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    figures: dict[str, list[float]] = {
        "helper (python -m k8s_executor.helper)": [],
        "multiprocessing spawn": [],
    }
    for _ in range(runs):  # interleaved, so a slow moment of the machine hits both
        figures["helper (python -m k8s_executor.helper)"].append(_helper())
        figures["multiprocessing spawn"].append(_spawn())
    print(f"| start → ready, {runs} runs | median s | min s | max s |\n|---|---|---|---|")
    for name, times in figures.items():
        print(f"| {name} | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} |")


if __name__ == "__main__":
    main()
