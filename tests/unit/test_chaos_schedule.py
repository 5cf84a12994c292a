"""The chaos run's fault schedule is a function of its seed (chaos/schedule.py)."""

from __future__ import annotations

import datetime
import itertools
import uuid
from pathlib import Path

from chaos import checks, load
from chaos.schedule import KINDS, QUIET_END_S, WARMUP_S, draw, for_executor


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert draw(1717, 5) == draw(1717, 5)
    assert draw(1717, 30) == draw(1717, 30)
    assert draw(1717, 5) != draw(1718, 5)


def test_a_schedule_stays_inside_the_load_and_meets_every_kind_before_any_twice() -> None:
    schedule = draw(1717, 5)
    times = [f.at_s for f in schedule]
    assert times == sorted(times)
    assert times[0] == WARMUP_S and times[-1] < 5 * 60 - QUIET_END_S
    first_round = [f.kind for f in schedule[: len(KINDS)]]
    assert len(schedule) >= len(KINDS) and sorted(first_round) == sorted(KINDS)


def test_a_longer_run_begins_with_the_shorter_runs_schedule() -> None:
    # The same draws in the same order: a 30-minute run replays the 5-minute one, then goes on.
    short, long = draw(7, 5), draw(7, 30)
    assert long[: len(short)] == short


def test_kinds_can_be_left_out() -> None:
    assert {f.kind for f in draw(3, 10, ("pod_delete", "scheduler_kill"))} == {"pod_delete", "scheduler_kill"}


def test_the_official_executor_meets_the_same_faults_mapped_to_its_one_scheduler_and_watcher() -> None:
    for fault in draw(1717, 30):
        mapped, note = for_executor(fault, "official")
        assert (mapped.kind, mapped.at_s) == (fault.kind, fault.at_s)
        if fault.kind in ("scheduler_kill", "helper_kill", "credential_invalidated"):
            assert mapped.params["scheduler"] == 0 and note
        if fault.kind == "helper_kill":
            assert mapped.params["helper"] == "watcher"
        assert for_executor(fault, "ours") == (fault, "")


def test_outcomes_are_named_as_the_tasks_were_written() -> None:
    assert load.outcome("ok", "success", 1) == load.expected_outcome("ok") == "success"
    assert load.outcome("flaky", "success", 2) == load.expected_outcome("flaky")
    assert load.outcome("fail", "failed", load.RETRIES["fail"] + 1) == load.expected_outcome("fail")
    assert load.outcome("ok", "queued", 1) == "queued"
    assert load.outcome("long", "failed", 3) == "failed"
    assert load.written_to_fail("flaky", 1) and not load.written_to_fail("flaky", 2)


def _create(
    name: str, user: str = "chaos-ours-a", code: int = 201, at: str = "2026-01-01T00:00:00Z"
) -> list[dict]:
    done = {"stage": "ResponseComplete", "requestReceivedTimestamp": at}
    return [
        {**done, "verb": "create", "user": {"username": user}, "responseStatus": {"code": code},
         "objectRef": {"resource": "pods", "name": name}},
        {**done, "verb": "create", "user": {"username": "system:kube-scheduler"}, "responseStatus": {"code": 201},
         "objectRef": {"resource": "pods", "name": name, "subresource": "binding"}},
    ]  # fmt: skip


def test_a_try_counts_as_duplicated_only_when_two_of_its_pods_ran() -> None:
    from types import SimpleNamespace

    from chaos.checks import Findings, check_pods
    from chaos.observe import PodSeen

    key = ("chaos", "long", "chaos-0001", 0, 1)
    watch = SimpleNamespace(
        pods={
            "long-abc-t1": PodSeen(key, 0.0, ran=False),  # failed before its task started
            "long-abc-t1r1": PodSeen(key, 1.0, ran=True),
            "ok-def-t1": PodSeen(("chaos", "ok", "chaos-0001", 0, 1), 0.0, ran=True),
        }
    )
    entries = [*_create("long-abc-t1"), *_create("long-abc-t1r1"), *_create("ok-def-t1")]
    # A pod the run's watch never saw (created and gone in a gap) is mapped by its name.
    entries += _create("ok-def-t1r1", at="2026-01-01T00:00:05Z")
    found = Findings()
    creates = check_pods("ours", watch, entries, {"chaos-ours-a"}, [], found)  # type: ignore[arg-type]
    assert len(creates) == 4
    assert [d["try"] for d in found.extra_pods] == ["chaos long chaos-0001 0 1", "chaos ok chaos-0001 0 1"]
    # Not seen, so not known not to have run: counted.
    assert [d["pods"] for d in found.duplicated] == [["ok-def-t1", "ok-def-t1r1"]]


def test_refused_requests_are_counted_by_the_fault_that_refused_them() -> None:
    from chaos.checks import Findings, count_refusals
    from chaos.faults import Record
    from chaos.observe import audit_time
    from chaos.schedule import Fault

    t0 = audit_time("2026-01-01T00:00:00Z")
    quota = Record(Fault(10.0, "resource_quota"), started=t0, over=t0 + 20)
    credential = Record(Fault(40.0, "credential_invalidated"), started=t0 + 40, over=t0 + 40)
    entries = [
        *_create("a", code=403, at="2026-01-01T00:00:05Z"),
        *_create("b", code=403, at="2026-01-01T00:00:30Z"),  # after the quota was lifted
        *_create("c", user="someone-else", code=403, at="2026-01-01T00:00:06Z"),
        # A credential refused: logged at ResponseStarted, with no user.
        {"stage": "ResponseStarted", "verb": "watch", "user": {}, "responseStatus": {"code": 401},
         "requestReceivedTimestamp": "2026-01-01T00:00:50Z"},
        {"stage": "ResponseStarted", "verb": "create", "user": {}, "responseStatus": {"code": 401},
         "requestReceivedTimestamp": "2026-01-01T00:03:00Z"},  # long after: not this fault's
    ]  # fmt: skip
    found = Findings()
    count_refusals(entries, {"chaos-ours-a"}, [quota, credential], found)
    assert found.refusals == {"resource_quota@10.0": 1, "credential_invalidated@40.0": 1}


def test_the_cluster_s_disruptions_are_drawn_only_when_asked_for() -> None:
    from chaos.schedule import DISRUPTION_KINDS

    assert not {f.kind for f in draw(1717, 30)} & set(DISRUPTION_KINDS)
    drawn = draw(1717, 5, DISRUPTION_KINDS)
    assert {f.kind for f in drawn} == set(DISRUPTION_KINDS)
    assert all("pick" in f.params or "hold_s" in f.params for f in drawn)


def test_a_try_the_execution_api_failed_is_airflows_only_on_its_word_during_the_postgres_fault(
    tmp_path: Path,
) -> None:
    """A task failed short of its retries is counted apart from the lost only where Airflow's API
    server said it failed that very task instance outright, while the database was down."""
    inside, outside, other = (str(uuid.uuid4()) for _ in range(3))
    said = "[error    ] Error updating Task Instance state. Setting the task to failed."
    (tmp_path / "api-server.log").write_text(
        f"2026-12-03T07:40:10.000000Z {said} [airflow.api_fastapi] payload=x ti_id={inside}\n"
        "Traceback (most recent call last):\n"
        f"2026-12-03T07:59:00.000000Z {said} [airflow.api_fastapi] payload=x ti_id={outside}\n"
        f"2026-12-03T07:40:11.000000Z [info     ] Task instance state updated ti_id={other}\n"
    )
    start = datetime.datetime(2026, 12, 3, 7, 40, tzinfo=datetime.timezone.utc).timestamp()
    assert checks.failed_by_execution_api(tmp_path, [(start, start + 60)]) == {inside}
    assert checks.failed_by_execution_api(tmp_path, []) == set()


def test_the_loop_holds_are_read_from_the_schedulers_logs() -> None:
    first = (
        "2026-12-03T07:40:00Z WARNING - sync held Airflow's scheduler loop for 0.250 s "
        "(0.040 s of it on the loop's own CPU, 0.150 s waiting for a CPU)\n"
        "2026-12-03T07:40:00Z WARNING - sync held Airflow's scheduler loop for 0.120 s\n"
        "2026-12-03T07:40:00Z WARNING - heartbeat held Airflow's scheduler loop for 0.110 s "
        "(0.100 s of it on the loop's own CPU)\n"
        "2026-12-03T07:40:00Z WARNING - sync held Airflow's scheduler loop for 0.200 s "
        "(0.130 s of it on the loop's own CPU, 0.010 s waiting for a CPU, 2 full garbage collections)\n"
        "2026-12-03T07:40:01Z WARNING - end held Airflow's scheduler loop for 5.900 s\n"
        "2026-12-03T07:40:30Z INFO - executor calls since start: heartbeat n=10 p99=0.020 s max=0.300 s; "
        "sync n=10 p99=0.010 s max=0.250 s\n"
        "2026-12-03T07:41:00Z INFO - executor calls since start: heartbeat n=20 p99=0.030 s max=0.300 s; "
        "sync n=20 p99=0.012 s max=0.250 s; Airflow's loop turn p99=1.200 s max=4.500 s\n"
    )
    second = "2026-12-03T07:41:00Z INFO - executor calls since start: heartbeat n=5 p99=0.040 s max=0.041 s\n"
    assert checks.loop_holds([first, second]) == {
        "loop_hold_max_s": 0.3,
        "loop_hold_p99_s": {"heartbeat": 0.04, "sync": 0.012},
        "slow_calls": 4,
        "loop_hold_max_own_cpu_s": 0.04,
        "loop_hold_max_cpu_wait_s": 0.15,
        "loop_hold_max_full_collections": 0,
        "end_max_s": 5.9,
        "airflow_loop_turn_p99_s": 1.2,
        "airflow_loop_turn_max_s": 4.5,
    }
    assert checks.loop_holds([])["loop_hold_max_s"] == 0.0
    collected = checks.loop_holds([first.replace("0.250 s ", "0.150 s ").replace("max=0.250", "max=0.150")])
    assert (collected["loop_hold_max_own_cpu_s"], collected["loop_hold_max_full_collections"]) == (0.13, 2)


def test_with_two_clusters_each_fault_of_a_clusters_kind_names_one_and_the_rest_is_unchanged() -> None:
    from chaos.schedule import CLUSTER_KINDS, cluster_hit

    clusters = ("default", "east")
    one, two = draw(1717, 30), draw(1717, 30, clusters=clusters)
    assert two == draw(1717, 30, clusters=clusters)
    # The same times, kinds and parameters as the one-cluster schedule (the official provider's).
    assert [(f.at_s, f.kind) for f in two] == [(f.at_s, f.kind) for f in one]
    for a, b in zip(one, two, strict=True):
        assert {k: v for k, v in b.params.items() if k != "cluster"} == a.params
        assert ("cluster" in b.params) == (b.kind in CLUSTER_KINDS)
        assert cluster_hit(a) == ("default" if a.kind in (*CLUSTER_KINDS, "credential_invalidated") else None)
    # Each kind goes round the clusters: its faults alternate between them.
    for kind in CLUSTER_KINDS:
        hit = [f.params["cluster"] for f in two if f.kind == kind]
        assert all(x != y for x, y in itertools.pairwise(hit)), (kind, hit)
    # A longer run begins with the shorter's schedule, clusters and all.
    assert two[: len(draw(1717, 5, clusters=clusters))] == draw(1717, 5, clusters=clusters)


def test_the_seed_1717_five_minutes_hit_both_clusters_with_half_the_kinds_each() -> None:
    from chaos.schedule import CLUSTER_KINDS, cluster_hit

    schedule = draw(1717, 5, clusters=("default", "east"))
    first_round = [f for f in schedule[: len(KINDS)] if f.kind in CLUSTER_KINDS]
    by_cluster = {c: sorted(f.kind for f in first_round if cluster_hit(f) == c) for c in ("default", "east")}
    assert len(first_round) == 8 and [len(k) for k in by_cluster.values()] == [4, 4], by_cluster
    # The kinds that hit the second cluster in CI's run: faults of the API server, its etcd, its node
    # agent, its pods and the executor's helper for it.
    assert {f.kind for f in schedule if cluster_hit(f) == "east"} >= {
        "pod_delete",
        "node_agent_restart",
        "etcd_compaction",
    }


def test_the_second_clusters_dag_routes_every_task_there_by_its_queue_or_executor_config() -> None:
    east = load.dag_source("east")
    compile(east, "chaos_east.py", "exec")
    assert load.dag_id_for("east") == "chaos_east" and 'DAG("chaos_east"' in east
    assert east.count("@task(queue='east', ") == 3  # ok, fail, flaky
    assert "), cluster='east'\n)" in east  # long: beside its pod_override
    assert load.dag_source() == load.DAG and "queue=" not in load.DAG and "cluster=" not in load.DAG
    assert load.is_load_dag("chaos_east") and load.is_load_dag("chaos") and not load.is_load_dag("other")


def test_each_clusters_refusals_are_counted_from_its_own_audit_log() -> None:
    from chaos.checks import Findings, count_refusals
    from chaos.faults import Record
    from chaos.observe import audit_time
    from chaos.schedule import Fault

    t0 = audit_time("2026-01-01T00:00:00Z")
    east_quota = Record(Fault(10.0, "resource_quota", {"cluster": "east"}), started=t0, over=t0 + 20)
    refused = _create("a", code=403, at="2026-01-01T00:00:05Z")
    found = Findings()
    count_refusals(refused, {"chaos-ours-a"}, [east_quota], found, "default")
    assert found.refusals == {}
    count_refusals(refused, {"chaos-ours-a"}, [east_quota], found, "east")
    assert found.refusals == {"resource_quota@10.0": 1}


def test_a_faults_recovery_is_timed_in_the_cluster_it_hit() -> None:
    from chaos.checks import Findings, Try, recovery
    from chaos.faults import Record
    from chaos.schedule import Fault

    east = Record(Fault(10.0, "apiserver_restart", {"cluster": "east"}), started=100.0, over=110.0)
    shared = Record(Fault(20.0, "postgres_restart"), started=100.0, over=110.0)
    tries = [
        Try(("chaos", "ok", "chaos-0001", 0, 1), "success", 105.0, 112.0),
        Try(("chaos_east", "ok", "chaos-0002", 0, 1), "success", 105.0, 130.0),
    ]
    found = Findings()
    recovery([east, shared], {"default": [111.0], "east": [125.0]}, tries, found)
    # East's first create (125) and first end (130); anything's for the shared fault (111, 112).
    assert dict(found.recovery) == {"apiserver_restart": [20.0], "postgres_restart": [2.0]}
