"""LocalKubernetesExecutor's slots: each side counts its own, the scheduler sees the sum."""

from __future__ import annotations

from airflow.executors.local_executor import LocalExecutor
from airflow.models.taskinstancekey import TaskInstanceKey

from k8s_executor import KubernetesExecutor, LocalKubernetesExecutor


def key(i: int) -> TaskInstanceKey:
    return TaskInstanceKey("dag", f"task{i}", "run", 1, -1)


def test_each_side_counts_its_own_slots_and_the_scheduler_sees_the_sum() -> None:
    local, pods = LocalExecutor(parallelism=2), KubernetesExecutor(parallelism=3)
    both = LocalKubernetesExecutor(local, pods)
    assert (both.parallelism, both.slots_available, both.slots_occupied) == (5, 5, 0)

    pods.running.update(key(i) for i in range(3))
    assert (both.slots_available, both.slots_occupied) == (2, 3)
    # The two free slots are the local side's: a full pod side offers none of them to pod tasks.
    assert (pods.slots_available, local.slots_available) == (0, 2)

    local.running.add(key(9))
    assert both.running == {key(0), key(1), key(2), key(9)}
    assert (both.slots_available, both.slots_occupied) == (1, 4)
