"""What `trigger_tasks` costs Airflow's loop when it takes a large batch of tries, outside a scheduler.

    python -m bench.accept_tries --queued 20000 --batch 8192 [--collector off]

Airflow 3 workloads for `--queued` tries are queued on an executor that is not started; its one
cluster's ledger stands in for the cluster's scheduler shell, and the builds the call hands on are
not run. Python's collector is set as the executor sets it in a scheduler, by the same function
(the heap frozen first, the oldest threshold raised), or turned off. Each line is one call: its wall-clock time and the full
collections in it.
"""

from __future__ import annotations

import argparse
import gc
import time
import types
import uuid

from airflow.executors.workloads.base import BundleInfo
from airflow.executors.workloads.task import ExecuteTask, TaskInstanceDTO

from k8s_executor import metrics
from k8s_executor.executor import KubernetesExecutor, _set_the_schedulers_collector
from k8s_executor.ledger import DisposalRule, PodLedger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--collector", choices=("on", "off"), default="on")
    args = parser.parse_args()
    executor = KubernetesExecutor()
    ledger = PodLedger("1", DisposalRule(), clock=time.monotonic)
    executor.clusters = {"default": types.SimpleNamespace(scheduler=ledger)}  # type: ignore[dict-item]
    executor._start_builds = lambda: None  # type: ignore[method-assign]
    _set_the_schedulers_collector()
    bundle = BundleInfo(name="dags-folder", version=None)
    for i in range(args.queued):
        ti = TaskInstanceDTO(
            id=uuid.uuid4(),
            dag_version_id=uuid.uuid4(),
            task_id="unit",
            dag_id="bench",
            run_id="bench-1",
            try_number=1,
            map_index=i,
            pool_slots=1,
            priority_weight=1,
            queue="default",
        )
        workload = ExecuteTask(ti=ti, dag_rel_path="bench.py", bundle_info=bundle, token="x", log_path="l")
        executor.queued_tasks[ti.key] = workload
    if args.collector == "off":
        gc.disable()
    for call in range(args.calls):
        before = metrics.full_collections()
        started = time.perf_counter()
        executor.trigger_tasks(args.batch)
        took = time.perf_counter() - started
        print(
            f"call {call}: {args.batch} of {args.queued} queued tries taken in {took:.3f} s, "
            f"{metrics.full_collections() - before} full collection(s)"
        )


if __name__ == "__main__":
    main()
