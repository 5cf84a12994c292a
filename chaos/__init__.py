"""A seeded fault run: steady load, mixed faults, invariants checked at the end from outside.

    python -m chaos --minutes 5 --seed 1717 --executor ours --json build/chaos-ours.json

What it starts: a development cluster of its own (named "chaos", beside "tests" and "bench"),
PostgreSQL and a real Airflow 3 (API server, DAG processor, and two schedulers for this
executor, which supports several; one for the official provider's, which does not). Each
scheduler runs as the Helm chart runs it, with `in_cluster = True`: a ServiceAccount of its own,
its token in a file at the in-cluster path (chaos/identities.py).

With `--second-cluster east` (our executor only: the official provider cannot route to two
clusters, so its run stays on one and says so), a second development cluster of its own
("chaos-east", named after `--cluster`, started and stopped as the first) joins: the schedulers
reach it with a kubeconfig (`[kubernetes_executor] clusters`, `config_file`), a ServiceAccount's
token file bound to deploy/rbac/rbac.yaml's Role in its namespace, seen by each scheduler at one
path as a pod sees a mounted Secret; in_cluster stays the first cluster's connection. Every other
DAG run is of a second DAG whose tasks are routed there (by their queue through `queue_clusters`,
the long ones by their executor_config), so half the tasks of every kind run there. Each fault of
a cluster's kind (helper kill, API server restart, etcd compaction, node agent restart, pod delete
and force delete, overload, quota, and the disruptions) hits the cluster the schedule draws for it
(the same seed, the same clusters; the times and kinds are the one-cluster schedule's), and the
fault log names it. The checks read each cluster's audit log and pod watch, and the JSON has each
cluster's runs, task instances, pods created, faults, duplicated and left behind.

The load: a DAG run every `--run-every` seconds of mapped tasks written to succeed (in a second),
to fail after their retries, to fail once and then succeed, and to run for a minute (chaos/load.py).

The faults: drawn from `random.Random(seed)` (chaos/schedule.py; the same seed gives the same
schedule, printed at the start), each kind once per round in a seeded order, one every 12-24 s
after a 45 s warm-up: scheduler SIGKILL (restarted after a few seconds), SIGKILL of a helper
process (our launcher or watcher; the official executor's watcher), API server restart, etcd
compaction with the API server restarted (the watch meets 410), node agent restart, a running
pod deleted (with its grace period) and force-deleted (grace 0), API overload (the executors'
requests refused with 429 for 10-30 s by an API Priority and Fairness level whose one seat a
neighbour keeps taken: chaos/neighbour.py),
a ResourceQuota that is full for 10-30 s, a scheduler's credential invalidated (a fresh token is
in its file; the one it holds is refused with 401 from then on) (these three start a DAG run as
they begin, so that creates meet them), and a PostgreSQL crash and restart (chaos/faults.py).

The cluster's own disruptions, drawn only with `--faults disruptions` (the mixed run keeps its
schedule): a running pod evicted through the Eviction API (a drain), a NoExecute taint on the node
with the most long tasks for 10-30 s (a spot node reclaimed), a pod of higher priority that needs
that whole node (preemption of the long tasks, which request half a CPU each), and that node's
Node object deleted (the pod garbage collector ends its pods; the node comes back with its
agent's restart once they are gone).

The invariants, checked once the load has stopped and the runs have ended (bounded wait):
- lost: every task instance reached what its task was written to reach (success; failed after
  its retries; up_for_retry then success); none stays queued, running or anything else;
- duplicated: no task try had two pods that both ran (creates from the API server's audit log,
  mapped to their try by the run's own pod watch; each cluster's); left_behind: no pod is left in
  the namespace (of either cluster);
- wrong_reasons: every failed try's reason (its task log, and the executor's report Airflow
  recorded as a "state mismatch") names its cause: the task's own message for tries written to
  fail, "deleted" for the tries whose pod a fault deleted, and for any other failed try the words
  of a fault going on then in its cluster ("quota", "429"); a failed try with no such fault is a
  wrong reason;
- retries_spent_on_disruptions: no try a disruption hit failed (its task not written to fail
  then): the cluster's doing must not spend a task's retries;
- scheduler_exits: no scheduler exited unless the run killed it (an exit is counted, and the
  scheduler started again, as its Deployment would).

Recovery, per fault: from the moment the fault is over (the kill sent, the component ready
again, the limit lifted, the scheduler started again) to the first pod an executor created after
it and the first try that ended after it, whichever is later. Its floor is the load's own rhythm:
a new run every `--run-every` seconds.

The exit status is non-zero when an invariant fails for this executor (the official provider's
run always exits 0 once it completes: its figures are the result).
"""
