"""`LocalKubernetesExecutor`: tasks of the Kubernetes queue run as pods, all others locally.

Airflow 3 no longer routes by queue and the official provider's class refuses
to start there; this one routes on every Airflow line. Each side keeps its own
parallelism (both `[core] parallelism` when Airflow builds it; given sides keep
theirs); the scheduler sees the sum, and a side with no free slot keeps its
tasks queued, so no more tasks run on a side than it has slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.configuration import conf
from airflow.executors.base_executor import BaseExecutor

from k8s_executor import airflow_adapter
from k8s_executor.executor import KubernetesExecutor
from k8s_executor.settings import LOCAL_SECTION, LocalKubernetesSettings


def _local_executor() -> BaseExecutor:
    from airflow.executors.local_executor import LocalExecutor

    return LocalExecutor()


class LocalKubernetesExecutor(BaseExecutor):
    supports_ad_hoc_ti_run: bool = True
    is_local: bool = False
    serve_logs: bool = True

    def __init__(
        self,
        local_executor: BaseExecutor | None = None,
        kubernetes_executor: BaseExecutor | None = None,
        **kwargs: Any,
    ) -> None:
        self.local_executor = local_executor or _local_executor()
        self.kubernetes_executor = kubernetes_executor or KubernetesExecutor()
        kwargs.setdefault(
            "parallelism", self.local_executor.parallelism + self.kubernetes_executor.parallelism
        )
        super().__init__(**kwargs)
        raw = {}
        if conf.has_option(LOCAL_SECTION, "kubernetes_queue"):
            raw["kubernetes_queue"] = conf.get(LOCAL_SECTION, "kubernetes_queue")
        self.kubernetes_queue = LocalKubernetesSettings(**raw).kubernetes_queue
        self._job_id: Any = None

    # The scheduler sets these on the executor it knows; both sides need them.
    @property
    def job_id(self) -> Any:
        return self._job_id

    @job_id.setter
    def job_id(self, value: Any) -> None:
        self._job_id = value
        self.local_executor.job_id = value
        self.kubernetes_executor.job_id = value

    @property
    def callback_sink(self) -> Any:
        return self.local_executor.callback_sink

    @callback_sink.setter
    def callback_sink(self, value: Any) -> None:
        self.local_executor.callback_sink = value
        self.kubernetes_executor.callback_sink = value

    @property
    def executors(self) -> tuple[BaseExecutor, BaseExecutor]:
        return self.local_executor, self.kubernetes_executor

    def _route(self, queue: str | None) -> BaseExecutor:
        return self.kubernetes_executor if queue == self.kubernetes_queue else self.local_executor

    def _holder(self, key: Any) -> BaseExecutor | None:
        for executor in self.executors:
            if key in executor.running or key in executor.queued_tasks:
                return executor
        return None

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        # Its pods are this executor's (alias or class, and team), not a plain KubernetesExecutor's.
        self.kubernetes_executor.owner = airflow_adapter.executor_identity(self)  # type: ignore[attr-defined]
        for executor in self.executors:
            executor.start()

    def heartbeat(self) -> None:
        for executor in self.executors:
            executor.heartbeat()
            self._task_event_logs.extend(executor._task_event_logs)
            executor._task_event_logs.clear()

    def sync(self) -> None:
        for executor in self.executors:
            executor.sync()

    def end(self) -> None:
        for executor in self.executors:
            executor.end()

    def terminate(self) -> None:
        for executor in self.executors:
            executor.terminate()

    # --- tasks -----------------------------------------------------------
    def queue_workload(self, workload: Any, session: Any = None) -> None:
        ti = getattr(workload, "ti", None)
        self._route(getattr(ti, "queue", None)).queue_workload(workload, session)

    def execute_async(
        self, key: Any, command: Any, queue: str | None = None, executor_config: Any = None
    ) -> None:
        self._route(queue).execute_async(key, command, queue, executor_config)  # type: ignore[attr-defined]

    def queue_command(
        self, task_instance: Any, command: Any, priority: int = 1, queue: str | None = None
    ) -> None:
        """Airflow 2's scheduler path."""
        self._route(queue).queue_command(task_instance, command, priority, queue)  # type: ignore[attr-defined]

    def queue_task_instance(self, task_instance: Any, **kwargs: Any) -> None:
        """Airflow 2's backfill path."""
        executor = self._route(task_instance.queue)
        executor.queue_task_instance(task_instance, **kwargs)  # type: ignore[attr-defined]

    def has_task(self, task_instance: Any) -> bool:
        return any(executor.has_task(task_instance) for executor in self.executors)

    @property
    def queued_tasks(self) -> dict[Any, Any]:
        return {**self.local_executor.queued_tasks, **self.kubernetes_executor.queued_tasks}

    @queued_tasks.setter
    def queued_tasks(self, value: dict[Any, Any]) -> None:
        """BaseExecutor.__init__ assigns it; the real queues are the two sides'."""

    @property
    def running(self) -> set[Any]:
        return self.local_executor.running | self.kubernetes_executor.running

    @running.setter
    def running(self, value: set[Any]) -> None:
        """BaseExecutor.__init__ assigns it; the real sets are the two sides'."""

    @property
    def slots_available(self) -> int:
        return sum(executor.slots_available for executor in self.executors)

    @property
    def slots_occupied(self) -> int:
        return sum(executor.slots_occupied for executor in self.executors)

    def change_state(self, key: Any, state: Any, info: Any = None, remove_running: bool = True) -> None:
        holder = self._holder(key) or self.kubernetes_executor
        holder.change_state(key, state, info, remove_running=remove_running)

    def get_event_buffer(self, dag_ids: Any = None) -> dict[Any, Any]:
        events = {}
        for executor in self.executors:
            events.update(executor.get_event_buffer(dag_ids))
        return events

    def try_adopt_task_instances(self, tis: Sequence[Any]) -> Sequence[Any]:
        kubernetes = [ti for ti in tis if ti.queue == self.kubernetes_queue]
        local = [ti for ti in tis if ti.queue != self.kubernetes_queue]
        return [
            *self.local_executor.try_adopt_task_instances(local),
            *self.kubernetes_executor.try_adopt_task_instances(kubernetes),
        ]

    def revoke_task(self, *, ti: Any) -> None:
        self._route(ti.queue).revoke_task(ti=ti)

    def get_task_log(self, ti: Any, try_number: int) -> tuple[list[str], list[str]]:
        return self._route(ti.queue).get_task_log(ti=ti, try_number=try_number)

    def send_callback(self, request: Any) -> None:
        self.local_executor.send_callback(request)

    @staticmethod
    def get_cli_commands() -> list[Any]:
        return KubernetesExecutor.get_cli_commands()
