"""How many pod-sized messages a second reach a helper process while the scheduler's loop is busy.

    python -m bench.pipe_rate --messages 5000 --busy 1

A burst's creates go from the pod builder's thread to the launcher process through
`processes.Helper`: queued, pickled and written down a pipe by the helper's writer thread. The
loop's thread (Airflow's `_do_scheduling` over thousands of task instances) holds the GIL most
of the time, and a thread that lets go of the GIL for a write takes it back only after a switch
interval. Here `--busy` threads stand for that loop; the child answers each message, and the
rate is taken from the first message sent to the last answer read, as the launcher's results
come back. Each number of busy threads is measured twice, interleaved. To compare two commits, run
it from a worktree of each with `PYTHONPATH=<worktree>/src:<worktree>`.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

from k8s_executor.identity import TaskRef
from k8s_executor.pod_building import PodDefaults, PodRequest, build_pod
from k8s_executor.processes import Helper


def _pod(number: int) -> dict[str, Any]:
    """A pod as the launcher gets it from the builder."""
    request = PodRequest(
        ref=TaskRef("bench_dag", "task", "run", map_index=number),
        command=["airflow", "tasks", "run", "bench_dag", "task", "run"],
        scheduler_id="1",
        airflow_version="3.3.2",
    )
    return build_pod(request, PodDefaults("bench", None, None, "apache/airflow:3.3.2"))


def answer(channel: Any) -> None:
    """In the helper: answer every message with its number, as the launcher answers each create."""
    while True:
        number, _ = channel.get()
        channel.put(number)


def _rate(messages: int) -> float:
    done = threading.Event()
    answered = [0]

    def received(_: Any) -> None:
        answered[0] += 1
        if answered[0] == messages:
            done.set()

    helper = Helper("bench.pipe_rate:answer", {}, "pipe-rate", received)
    pods = [_pod(number) for number in range(messages)]
    helper.send((-1, pods[0]))  # started and answering before the clock starts
    while answered[0] < 1:
        time.sleep(0.01)
    answered[0] = 0
    started = time.perf_counter()
    for number in range(messages):
        helper.send((number, pods[number]))
    done.wait(120)
    took = time.perf_counter() - started
    helper.kill()
    helper.join(5)
    return messages / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--busy", type=int, default=1, help="threads standing for Airflow's loop")
    args = parser.parse_args()
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            sum(range(1000))

    rates: dict[int, list[float]] = {0: [], args.busy: []}
    for _ in range(2):
        for threads in rates:
            workers = [threading.Thread(target=busy, daemon=True) for _ in range(threads)]
            stop.clear()
            for worker in workers:
                worker.start()
            rates[threads].append(_rate(args.messages))
            stop.set()
            for worker in workers:
                worker.join()
    print("| busy threads | messages/s, median of 2 | runs |\n|---|---|---|")
    for threads, measured in rates.items():
        print(
            f"| {threads} | {statistics.median(measured):.0f} | {', '.join(f'{r:.0f}' for r in measured)} |"
        )


if __name__ == "__main__":
    main()
