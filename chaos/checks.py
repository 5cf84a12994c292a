"""The invariants, checked at the end from what the run saw (see chaos/__init__.py).

With two clusters, each is checked from its own audit log and pod watch, and a fault that hit one
cluster explains only what happened in it (`schedule.cluster_hit`); the tasks' DAG says which
cluster they ran in (`load.dag_id_for`)."""

from __future__ import annotations

import datetime
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devcluster.airflow_stack import AirflowStack

from chaos import load
from chaos.faults import FAULT_WORDS, Record, TryKey
from chaos.observe import OUR_POD_TRY, PodWatch, audit_time
from chaos.schedule import DISRUPTION_KINDS, cluster_hit

TERMINAL = ("success", "failed")
# Airflow's own words when it takes back the tries of a scheduler that is gone, and no executor
# adopts them (their pod was never made): each is recorded as a failed try, and queued again.
_RESET = re.compile(
    r"<TaskInstance: (?P<dag>[^.\s]+)\.(?P<task>\S+) (?P<run>\S+) map_index=(?P<index>-?\d+) \["
)
_RESET_HEADER = "Reset the following"
# The executor's note in the log of a try handed over with no pod (k8s_executor.adoption).
EXECUTOR_RESET = "the try is reset, and airflow runs the task again"
# Airflow's execution API fails a try outright, retries or not, when its state update meets any
# exception (routes/task_instances.py, ti_update_state): a database dropping its connections does.
# Its log line carries the task instance's id (bound to the request's log context).
_FAILED_BY_EXECUTION_API = "Error updating Task Instance state. Setting the task to failed."
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The executor's words for a call of Airflow's that held its scheduler loop (metrics.CallTimes),
# and its periodic summary of every call.
_HELD = re.compile(
    r"(?P<call>\w+) held Airflow's scheduler loop for (?P<s>[\d.]+) s"
    r"(?: \((?P<cpu>[\d.]+) s of it on the loop's own CPU(?:, (?P<queued>[\d.]+) s waiting for a CPU)?"
    r"(?:, (?P<gc>\d+) full garbage collections?)?)?"
)
_CALLS = re.compile(r"executor calls since start: (?P<calls>.*)$")
_CALL = re.compile(r"(?P<call>\w+) n=(?P<n>\d+) p99=(?P<p99>[\d.]+) s max=(?P<max>[\d.]+) s")
_TURN = re.compile(r"Airflow's loop turn p99=(?P<p99>[\d.]+) s max=(?P<max>[\d.]+) s")
# A failed try's reason is looked for in what was written while it ran, and for this long after.
REASON_WINDOW_S = 120.0


@dataclass
class Try:
    key: TryKey
    state: str | None
    start: float | None
    end: float | None
    queued: float | None = None


@dataclass
class Findings:
    tasks: Counter[str] = field(default_factory=Counter)
    # Task instances (and pods the executors created) by the cluster they ran in.
    tasks_by_cluster: Counter[str] = field(default_factory=Counter)
    pods_created_by_cluster: Counter[str] = field(default_factory=Counter)
    lost: list[dict[str, Any]] = field(default_factory=list)
    duplicated: list[dict[str, Any]] = field(default_factory=list)
    extra_pods: list[dict[str, Any]] = field(default_factory=list)
    left_behind: list[dict[str, Any]] = field(default_factory=list)
    wrong_reasons: list[dict[str, Any]] = field(default_factory=list)
    failed_tries: Counter[str] = field(default_factory=Counter)
    recovery: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    refusals: dict[str, int] = field(default_factory=dict)
    # Tries a disruption hit that then failed though their task was not written to fail then:
    # a retry spent on the cluster's doing.
    retries_spent_on_disruptions: list[dict[str, Any]] = field(default_factory=list)
    # Tasks that ended failed short of their retries because Airflow's execution API failed their
    # try outright on a database error during the PostgreSQL fault (its own log says so): Airflow's
    # doing, not the executor's, so not lost; counted apart.
    failed_by_airflow_on_db_error: list[dict[str, Any]] = field(default_factory=list)


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.timestamp()
    return float(value)


Instance = tuple[str, str, str, int]  # dag_id, run_id, task_id, map_index


def tries(
    stack: AirflowStack, dag_ids: tuple[str, ...] = (load.DAG_ID,)
) -> tuple[list[Try], dict[Instance, tuple[str | None, int, str]]]:
    """Every try of the load's tasks (earlier ones from task_instance_history), and each task
    instance's current state, try number and id."""
    columns = "dag_id, run_id, task_id, map_index, state, try_number, start_date, end_date, queued_dttm"
    where = "WHERE dag_id = ANY(%s)"
    current = stack.sql(f"SELECT {columns}, id FROM task_instance {where}", list(dag_ids))
    history = stack.sql(f"SELECT {columns}, NULL FROM task_instance_history {where}", list(dag_ids))
    found: dict[TryKey, Try] = {}
    for dag_id, run_id, task_id, map_index, state, number, start, end, queued, _ in [*history, *current]:
        key: TryKey = (dag_id, task_id, run_id, int(map_index), int(number))
        found[key] = Try(key, state, _epoch(start), _epoch(end), _epoch(queued))
    instances = {(row[0], row[1], row[2], int(row[3])): (row[4], int(row[5]), str(row[9])) for row in current}
    return list(found.values()), instances


def failed_by_execution_api(home: Path, windows: list[tuple[float, float]]) -> set[str]:
    """The ids of the task instances whose try Airflow's execution API failed outright on an error
    (its API server's log says so) within one of `windows`."""
    found: set[str] = set()
    for path in home.glob("api-server*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if _FAILED_BY_EXECUTION_API not in line:
                continue
            try:
                at = audit_time(line.split()[0])
            except (ValueError, IndexError):
                continue
            if any(since <= at <= until for since, until in windows):
                found.update(_UUID.findall(line))
    return found


def failure_text(stack: AirflowStack, key: TryKey) -> str:
    """Everything said about why a try failed: its log (the worker's traceback, our executor's note
    of its pod's end) and what Airflow recorded of the executor's report ("state mismatch")."""
    rows = stack.sql(
        "SELECT extra FROM log WHERE event = 'state mismatch' AND dag_id = %s AND task_id = %s "
        "AND run_id = %s AND map_index = %s AND try_number = %s",
        *key,
    )
    dag_id, task_id, run_id, map_index, try_number = key
    log = stack.log_file(dag_id, run_id, task_id, try_number, map_index)
    return log + "\n" + "\n".join(str(extra) for (extra,) in rows)


def reset_by_airflow(
    stack: AirflowStack, dag_ids: tuple[str, ...] = (load.DAG_ID,)
) -> dict[tuple[str, str, str, int], list[float]]:
    """When some scheduler's log says Airflow reset each task instance (dag, task, run, map index)."""
    found: dict[tuple[str, str, str, int], list[float]] = defaultdict(list)
    for log in stack.home.glob("scheduler*.log"):
        at: float | None = None
        for line in log.read_text(errors="replace").splitlines():
            if _RESET_HEADER in line:
                at = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
            elif at is not None and not line.startswith("\t"):
                at = None
            if at is not None and (match := _RESET.search(line)) and match["dag"] in dag_ids:
                found[(match["dag"], match["task"], match["run"], int(match["index"]))].append(at)
    return found


def check_tasks(
    stack: AirflowStack,
    records: list[Record],
    victims: dict[TryKey, str],
    findings: Findings,
    disrupted: frozenset[TryKey] = frozenset(),
    clusters: tuple[str, ...] = (load.DEFAULT_CLUSTER,),
) -> list[Try]:
    """`disrupted`: the tries of pods the run's watch saw the cluster end (DisruptionTarget), the
    faults' victims or not (a pod that was still starting, or came to a node while it was hit).
    `clusters`: the executor's names of the clusters the load ran in, each with its DAG."""
    cluster_of = {load.dag_id_for(c): c for c in clusters}
    all_tries, instances = tries(stack, tuple(cluster_of))
    resets = reset_by_airflow(stack, tuple(cluster_of))
    # Each fault, when it went on, and the cluster it hit (None: what all clusters share).
    windows = [
        (r.fault.kind, r.started, (r.over or r.started) + REASON_WINDOW_S, cluster_hit(r.fault))
        for r in records
        if r.started is not None and not r.skipped
    ]
    database_down = [(since, until) for kind, since, until, _ in windows if kind == "postgres_restart"]
    failed_by_airflow = failed_by_execution_api(stack.home, database_down)
    for (dag_id, run_id, task_id, map_index), (state, number, ti_id) in sorted(instances.items()):
        reached = load.outcome(task_id, state, number)
        findings.tasks[reached] += 1
        findings.tasks_by_cluster[cluster_of[dag_id]] += 1
        if reached != load.expected_outcome(task_id):
            ended = {
                "task": f"{run_id} {task_id}[{map_index}]",
                "cluster": cluster_of[dag_id],
                "state": state,
                "try_number": number,
                "expected": load.expected_outcome(task_id),
            }
            if state == "failed" and ti_id in failed_by_airflow:
                findings.failed_by_airflow_on_db_error.append(ended)
            else:
                findings.lost.append(ended)
    queued_at = {t.key: t.queued for t in all_tries}
    for attempt in all_tries:
        if attempt.state not in ("failed", "up_for_retry"):
            continue
        dag_id, task_id, run_id, map_index, number = attempt.key
        text = failure_text(stack, attempt.key).lower()
        begin = attempt.start or attempt.end or 0.0
        end = attempt.end or begin
        # A fault that hit another cluster explains nothing here.
        active = [
            kind
            for kind, since, until, hit in windows
            if since <= end and begin <= until and hit in (None, cluster_of[dag_id])
        ]
        # A fault going on then may have failed any try; its words are then the right reason.
        fault_words = tuple(w for kind in active for w in FAULT_WORDS.get(kind, ()))
        if attempt.key in victims:
            cause = victims[attempt.key]
            words = FAULT_WORDS[cause]
            if load.written_to_fail(task_id, number):
                # It may have failed by itself before the fault reached it.
                words = (load.WRITTEN_TO_FAIL, *words)
            if cause in DISRUPTION_KINDS and not load.written_to_fail(task_id, number):
                findings.retries_spent_on_disruptions.append(
                    {"try": f"{run_id} {task_id}[{map_index}] try {number}", "disrupted_by": cause}
                )
        elif attempt.key in disrupted:
            cause, words = "a disruption", ("disruptiontarget", *fault_words)
            if load.written_to_fail(task_id, number):
                words = (load.WRITTEN_TO_FAIL, *words)
            else:
                findings.retries_spent_on_disruptions.append(
                    {"try": f"{run_id} {task_id}[{map_index}] try {number}", "disrupted_by": cause}
                )
        elif any(
            _between(at, attempt.queued, queued_at.get((*attempt.key[:4], number + 1)))
            for at in resets.get((dag_id, task_id, run_id, map_index), [])
        ):
            # Airflow took the try back from a scheduler it held dead (between its queueing and the
            # next try's; it records it as failed) and queued it again: Airflow's log line is the
            # reason, whatever a pod still on its way for it said later.
            findings.failed_tries["reset by Airflow (its scheduler held dead)"] += 1
            continue
        elif EXECUTOR_RESET in text:
            # Handed over by Airflow from a scheduler it held dead, with no pod found: the executor
            # reset the try as Airflow would have (its note in the try's log is the reason).
            findings.failed_tries["reset by the executor (handed over with no pod)"] += 1
            continue
        elif load.written_to_fail(task_id, number):
            cause, words = "the task itself", (load.WRITTEN_TO_FAIL, *fault_words)
        else:
            # Failed though written to succeed and not hit by name: the reason must name a fault
            # that was going on then (a quota that refused its pod, a 429).
            cause = ", ".join(sorted(set(active))) or "no fault"
            words = fault_words
        findings.failed_tries[cause] += 1
        if not any(word in text for word in words):
            findings.wrong_reasons.append(
                {
                    "try": f"{run_id} {task_id}[{map_index}] try {number}",
                    "cluster": cluster_of[dag_id],
                    "caused_by": cause,
                    "expected_words": list(words),
                    "reason": _last_lines(text),
                }
            )
    return all_tries


def _ended_before_next(name: str, ran: list[str], watch: PodWatch) -> bool:
    """Whether `name` was disrupted and gone (ended or deleted) before any later pod of its try
    first ran."""
    pod = watch.pods.get(name)
    if pod is None or not pod.disrupted or pod.ran_at is None:
        return False
    gone = min((t for t in (pod.ended, pod.deleted) if t is not None), default=None)
    later = [
        p.ran_at
        for n in ran
        if n != name
        and (p := watch.pods.get(n)) is not None
        and p.ran_at is not None
        and p.ran_at > pod.ran_at
    ]
    return gone is not None and all(gone <= at for at in later)


def _between(at: float, since: float | None, until: float | None) -> bool:
    return since is not None and since - 1 <= at and (until is None or at <= until + 1)


def _last_lines(text: str, count: int = 6) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-count:])[-1500:]


def check_pods(
    executor: str,
    watch: PodWatch,
    entries: list[dict[str, Any]],
    users: set[str],
    remaining: list[Any],
    findings: Findings,
    cluster: str = load.DEFAULT_CLUSTER,
) -> list[float]:
    """Two pods that both ran one try (from the audit log's creates, mapped to tries by the
    watch), pods still there at the end, in `cluster`; returns when the executors created pods."""
    created: dict[str, float] = {}
    bound: set[str] = set()
    for e in entries:
        ref = e.get("objectRef") or {}
        if e.get("stage") != "ResponseComplete" or ref.get("resource") != "pods" or e.get("verb") != "create":
            continue
        code = (e.get("responseStatus") or {}).get("code", 0)
        if ref.get("subresource") == "binding" and code == 201:
            bound.add(str(ref.get("name")))
        # A create that timed out (5xx) may still have made its pod, as the HA test counts it.
        elif not ref.get("subresource") and _user(e) in users and (code == 201 or code >= 500):
            created.setdefault(ref["name"], audit_time(e["requestReceivedTimestamp"]))
    # A pod the watch never saw (created and gone while it was cut) is mapped by its name, which
    # for our executor names the try: to the try of a pod of that name the watch did see.
    base_key: dict[str, TryKey] = {}
    for name, watched in watch.pods.items():
        if watched.key is not None and (match := OUR_POD_TRY.match(name)):
            base_key[match["base"]] = watched.key
    by_try: dict[TryKey | str, list[str]] = defaultdict(list)
    for name in sorted(created):
        if name not in bound:
            continue
        pod = watch.pods.get(name)
        key: TryKey | str | None = pod.key if pod else None
        if key is None and executor == "ours" and (match := OUR_POD_TRY.match(name)):
            key = base_key.get(match["base"], match["base"])
        by_try[key or f"unmapped:{name}"].append(name)
    for key, names in by_try.items():
        if len(names) < 2:
            continue
        ran = [n for n in names if (p := watch.pods.get(n)) is None or p.ran]
        entry = {
            "try": " ".join(map(str, key)) if isinstance(key, tuple) else key,
            "cluster": cluster,
            "pods": names,
            "ran": ran,
        }
        findings.extra_pods.append(entry)
        # A pod that never started its task (a launch failure, relaunched under a new name by
        # design) is no second run of the try, nor one the cluster ended before the next pod of
        # its try ran (disrupted: its try is launched again by design, once it has ended); two
        # others that ran are.
        if len([n for n in ran if not _ended_before_next(n, ran, watch)]) > 1:
            findings.duplicated.append(entry)
    for pod in remaining:
        findings.left_behind.append({"pod": pod.metadata.name, "cluster": cluster, "phase": pod.status.phase})
    findings.pods_created_by_cluster[cluster] += len(created)
    return sorted(created.values())


# A request whose credential is refused is logged with no user (authentication failed): it is
# counted in the minute after the invalidation, when only the executors hold such a token.
CREDENTIAL_REFUSALS_S = 60.0


def _user(entry: dict[str, Any]) -> str | None:
    return (entry.get("user") or {}).get("username")


def count_refusals(
    entries: list[dict[str, Any]],
    users: set[str],
    records: list[Record],
    findings: Findings,
    cluster: str = load.DEFAULT_CLUSTER,
) -> None:
    """How many of the executors' requests each overload, quota and credential fault that hit
    `cluster` refused (429, 403, 401), from that cluster's audit `entries`."""
    codes = {"apiserver_overload": 429, "resource_quota": 403, "credential_invalidated": 401}
    for record in records:
        if record.fault.kind not in codes or record.started is None or cluster_hit(record.fault) != cluster:
            continue
        code = codes[record.fault.kind]
        end = record.started + CREDENTIAL_REFUSALS_S if code == 401 else (record.over or record.started) + 1
        findings.refusals[f"{record.fault.kind}@{record.fault.at_s}"] = sum(
            1
            for e in entries
            # A refused credential's request ends at ResponseStarted, with no user.
            if (
                (e.get("stage") == "ResponseComplete" and _user(e) in users)
                or (code == 401 and e.get("stage") == "ResponseStarted")
            )
            and (e.get("responseStatus") or {}).get("code") == code
            and record.started <= audit_time(e["requestReceivedTimestamp"]) <= end
        )


def recovery(
    records: list[Record],
    creates: dict[str, list[float]],
    all_tries: list[Try],
    findings: Findings,
) -> None:
    """From the moment a fault was over to the first pod the executors created after it and the
    first try that ended after it, whichever came later: in the cluster it hit (`creates` by
    cluster; a try's cluster is its DAG's), or in any for a fault of what all share."""
    cluster_of = {load.dag_id_for(c): c for c in creates}
    for record in records:
        if record.over is None or record.skipped:
            continue
        hit = cluster_hit(record.fault)
        if hit is not None and hit not in creates:
            continue
        ends = sorted(
            t.end for t in all_tries if t.end is not None and hit in (None, cluster_of.get(t.key[0]))
        )
        creates_in = sorted(c for name, times in creates.items() if hit in (None, name) for c in times)
        over = record.over
        first_create = next((c for c in creates_in if c >= over), None)
        first_end = next((e for e in ends if e >= over), None)
        if first_create is not None and first_end is not None:
            findings.recovery[record.fault.kind].append(max(first_create, first_end) - over)


def percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1)


def summary(findings: Findings) -> dict[str, Any]:
    return {
        kind: {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99)}
        for kind, values in sorted(findings.recovery.items())
    }


def loop_holds(logs: list[str]) -> dict[str, Any]:
    """How long the executor held Airflow's scheduler loop, from the schedulers' logs: the longest
    call (`end`, the scheduler's shutdown, apart), the p99 of each call in each scheduler's last
    summary (the highest among schedulers), and how many calls took longer than 100 ms."""
    slow: list[tuple[str, float]] = []
    own_cpu: list[tuple[float, float, float | None, int]] = []
    longest: list[tuple[str, float]] = []
    p99: dict[str, float] = {}
    turns: list[tuple[float, float]] = []
    for text in logs:
        held = list(_HELD.finditer(text))
        slow += [(m["call"], float(m["s"])) for m in held]
        own_cpu += [
            (
                float(m["s"]),
                float(m["cpu"]),
                float(m["queued"]) if m["queued"] else None,
                int(m["gc"]) if m["gc"] else 0,
            )
            for m in held
            if m["call"] != "end" and m["cpu"] is not None
        ]
        summaries = [m["calls"] for line in text.splitlines() if (m := _CALLS.search(line))]
        for m in _CALL.finditer(summaries[-1] if summaries else ""):
            p99[m["call"]] = max(p99.get(m["call"], 0.0), float(m["p99"]))
            longest.append((m["call"], float(m["max"])))
        if summaries and (turn := _TURN.search(summaries[-1])):
            turns.append((float(turn["p99"]), float(turn["max"])))
    every = slow + longest
    worst = max(own_cpu, key=lambda hold: hold[0], default=None)
    return {
        "loop_hold_max_s": max((s for call, s in every if call != "end"), default=0.0),
        "loop_hold_p99_s": dict(sorted(p99.items())),
        "slow_calls": sum(1 for call, _ in slow if call != "end"),
        # Of the slow calls, the loop thread's own CPU in the longest: the rest of it was waiting.
        "loop_hold_max_own_cpu_s": worst[1] if worst else None,
        # And how much of it the loop's thread was ready to run while the machine's CPUs were busy.
        "loop_hold_max_cpu_wait_s": worst[2] if worst else None,
        # And how many of Python's full garbage collections, which hold the GIL, it had in it.
        "loop_hold_max_full_collections": worst[3] if worst else None,
        "end_max_s": max((s for call, s in every if call == "end"), default=0.0),
        # How often Airflow's loop came round, from one heartbeat to the next: the executor's
        # events reach Airflow once a turn.
        "airflow_loop_turn_p99_s": max((p for p, _ in turns), default=None),
        "airflow_loop_turn_max_s": max((m for _, m in turns), default=None),
    }
