"""Watching the executor's pods: list, then watch from the list's resourceVersion.

One watcher process per namespace (or one for all namespaces; started by the
scheduler shell, scheduler.py, and free of Airflow, see processes.py)
keeps a small cache of the pods it has seen, as client-go's informer does:
- the stream is read as raw JSON lines (model objects would cost 30x the CPU);
- bookmarks are requested, so a quiet stream still moves its resourceVersion;
- a broken or timed-out stream resumes from the last resourceVersion seen;
- a 410 Gone (history compacted) is answered by a fresh list, whose snapshot
  is sent to the executor as a resync so pods that vanished in the gap are
  reported, never forgotten;
- pending and terminating pods are re-judged every few seconds, so an
  Unschedulable pod fails after its timeout, and a pod stuck terminating past
  its grace period fails, even when the API server has nothing new to say.
Each message to the executor is a small tuple, sent only when a pod's verdict
changes; the pod itself stays here.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

from kubernetes import client
from urllib3.exceptions import HTTPError

from k8s_executor import identity
from k8s_executor.adoption import held_elsewhere
from k8s_executor.kube_client import connect_in_helper, json_lines, list_pods, pod_events, read_json, read_pod
from k8s_executor.processes import Channel
from k8s_executor.settings import ExecutorSettings
from k8s_executor.shapes import Bookmark, PodEvent, PodState, Read, Released, Resync
from k8s_executor.state_mapping import deletion_began_first, observe, with_events

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 300
READ_REPORT_INTERVAL_S = 2.0
REJUDGE_INTERVAL_S = 5.0
EVENTS_TIMEOUT_S = 5.0
MAX_EXPLAINED = 4096


class Gone(Exception):
    """The resourceVersion we hold is older than the server's history."""


class PodWatch:
    """The list-then-watch loop of one namespace (or of all), as run in a watcher process."""

    def __init__(
        self,
        namespace: str | None,
        watcher_queue: Any,
        resource_version: str | None,
        settings: ExecutorSettings,
        fatal_waiting_reasons: frozenset[str] = frozenset(),
        unschedulable_timeout_s: float = 300.0,
        executor_id: str = identity.DEFAULT_EXECUTOR,
        scheduler_id: str | None = None,
    ) -> None:
        self.namespace = namespace
        # Only this executor's pods, and only this scheduler's (launched or adopted by it), selected
        # by the API server: never another executor's or team's, and in HA mode a watch traffic
        # proportional to the scheduler's own pods.
        self.selector = identity.selector(executor_id, scheduler_id, settings.cluster)
        self.executor_selector = identity.selector(executor_id, cluster=settings.cluster)
        self.scheduler_label = identity.safe_label_value(scheduler_id) if scheduler_id is not None else None
        self.watcher_queue = watcher_queue
        self.resource_version = resource_version
        self.fatal_waiting_reasons = fatal_waiting_reasons
        self.unschedulable_timeout_s = unschedulable_timeout_s
        self.api = client.CoreV1Api(connect_in_helper(settings))
        self.cache: dict[str, dict[str, Any]] = {}
        self.explained: dict[str, PodState] = {}
        # What the executor was last told of each pod (verdict, launching scheduler). A pod on its
        # way to Running changes three or four times while its verdict stays "pending": only news
        # is sent, since the scheduler loop that reads it shares its core with Airflow's.
        self.told: dict[str, tuple[PodState, str]] = {}
        # Pods seen being deleted while their task ran: kubelet's last delete (grace 0) hides
        # when a deletion began, so a task that then ends with 0 is known stopped only from here.
        self.deleting_while_running: set[str] = set()
        self.unreported_reads = 0
        self.reads_reported_at = time.monotonic()

    def run(self) -> None:
        rv = self.resource_version
        backoff = 0.5
        while True:
            try:
                if rv is None:
                    rv = self._list()
                rv = self._watch(rv)
                backoff = 0.5
            except Gone:
                log.info("watch of %s: resourceVersion %s is gone, relisting", self._where, rv)
                rv = None
            except (client.ApiException, HTTPError, OSError) as exc:
                log.warning(
                    "watch of %s broke (%s); resuming from %s in %.1fs", self._where, exc, rv, backoff
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    @property
    def _where(self) -> str:
        return self.namespace or "all namespaces"

    def _call(self, **kwargs: Any) -> Any:
        return list_pods(
            self.api, self.namespace, label_selector=self.selector, _preload_content=False, **kwargs
        )

    def _list(self) -> str:
        # The ledger's clock (monotonic, the same in every process of the machine).
        listed_at = time.monotonic()
        body = read_json(self._call())
        rv = body["metadata"]["resourceVersion"]
        self.cache, self.told = {}, {}
        self.deleting_while_running &= {pod["metadata"]["uid"] for pod in body["items"]}
        names = set()
        self.unreported_reads += len(body["items"])
        for pod in body["items"]:
            names.add((pod["metadata"]["namespace"], pod["metadata"]["name"]))
            self._judge(pod, rv=pod["metadata"]["resourceVersion"])
        elsewhere = self._held_elsewhere() if self.scheduler_label is not None else frozenset()
        self.watcher_queue.put(Resync(self.namespace, frozenset(names), listed_at, rv, elsewhere))
        return rv

    def _held_elsewhere(self) -> frozenset[tuple[str, str]]:
        """This executor's pods labelled for another scheduler. Listed after this scheduler's own,
        so a pod relabelled between the two lists is in both (and its DELETED follows in the watch):
        none falls between them, and a pod a peer adopted during a 410 is handed over, not taken
        for vanished and deleted under its new holder."""
        body = read_json(
            list_pods(self.api, self.namespace, label_selector=self.executor_selector, _preload_content=False)
        )
        self.unreported_reads += len(body["items"])
        return frozenset(
            (pod["metadata"]["namespace"], pod["metadata"]["name"])
            for pod in body["items"]
            if held_elsewhere(identity.scheduler_of(pod["metadata"].get("labels")), self.scheduler_label)
        )

    def _watch(self, rv: str) -> str:
        try:
            response = self._call(
                watch=True,
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_TIMEOUT_S,
                _request_timeout=(10, REJUDGE_INTERVAL_S * 2),
            )
        except client.ApiException as exc:
            # Refused before the stream opened: the same gap as a 410 inside the stream.
            if exc.status == 410:
                raise Gone() from exc
            raise
        last_rejudge = time.monotonic()
        try:
            for event in json_lines(response):
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise client.ApiException(status=obj.get("code"), reason=obj.get("message"))
                rv = obj["metadata"]["resourceVersion"]
                if kind == "BOOKMARK":
                    self.watcher_queue.put(Bookmark(self.namespace, rv))
                else:
                    self.unreported_reads += 1
                    if (
                        kind == "DELETED"
                        and not obj["metadata"].get("deletionTimestamp")
                        # A finished pod's end is known: marked done, it needs no second look.
                        and (obj.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                    ):
                        obj = self._left_watch(obj)
                        if obj is None:
                            continue
                    self._judge(obj, rv=rv, deleted=kind == "DELETED")
                if time.monotonic() - last_rejudge > REJUDGE_INTERVAL_S:
                    self._rejudge(rv)
                    last_rejudge = time.monotonic()
                    self._report_reads()
        except HTTPError as exc:
            # A read timeout on a quiet stream is the moment to re-judge pending pods.
            if "timed out" not in str(exc).lower():
                raise
        self._rejudge(rv)
        self._report_reads()
        return rv

    def _report_reads(self) -> None:
        """What the watch costs this scheduler (in HA mode it reads every scheduler's pods)."""
        if self.unreported_reads and time.monotonic() - self.reads_reported_at >= READ_REPORT_INTERVAL_S:
            self.watcher_queue.put(Read(self.namespace, self.unreported_reads))
            self.unreported_reads, self.reads_reported_at = 0, time.monotonic()

    def _explained(self, meta: dict[str, Any], state: PodState, forget: bool) -> PodState:
        """The failed verdict with the pod's events, read once per pod however often it is judged."""
        uid = meta["uid"]
        known = self.explained.pop(uid, None) if forget else self.explained.get(uid)
        if known is not None:
            return known
        state = with_events(state, self._events_of(meta))
        if not forget:
            self.explained[uid] = state
            while len(self.explained) > MAX_EXPLAINED:
                del self.explained[next(iter(self.explained))]
        return state

    def _left_watch(self, last: dict[str, Any]) -> dict[str, Any] | None:
        """A DELETED event for a pod that was not being deleted: it may only have left this watch's
        selector (the API server then sends the pod as it was before). Read as it is now: gone (its
        last state stands), marked done (its state now is its end), or relabelled by an adopter
        (None: released, told to the scheduler)."""
        meta = last["metadata"]
        now = read_pod(self.api, meta["namespace"], meta["name"])
        if now is None or now["metadata"].get("uid") != meta.get("uid"):
            return last
        adopter = identity.scheduler_of(now["metadata"].get("labels"))
        if held_elsewhere(adopter, self.scheduler_label):
            self.told.pop(meta["uid"], None)
            self.cache.pop(meta["uid"], None)
            self.watcher_queue.put(Released(meta["namespace"], meta["name"], adopter))
            return None
        return now

    def _events_of(self, meta: dict[str, Any]) -> list[dict[str, Any]]:
        """The pod's events; a failure to read them must not hold back the verdict."""
        try:
            return pod_events(self.api, meta["namespace"], meta["name"], meta.get("uid"), EVENTS_TIMEOUT_S)
        except (client.ApiException, HTTPError, OSError, ValueError) as exc:
            log.warning("events of pod %s not read: %s", meta["name"], exc)
            return []

    def _rejudge(self, rv: str) -> None:
        for pod in list(self.cache.values()):
            self._judge(pod, rv=rv, only_if_terminal=True)

    def _judge(
        self, pod: dict[str, Any], rv: str, deleted: bool = False, only_if_terminal: bool = False
    ) -> None:
        meta = pod["metadata"]
        if deletion_began_first(pod):
            self.deleting_while_running.add(meta["uid"])
        seen = observe(
            pod,
            fatal_waiting_reasons=self.fatal_waiting_reasons,
            unschedulable_timeout_s=self.unschedulable_timeout_s,
            now=datetime.datetime.now(datetime.timezone.utc),
            deleted=deleted,
            deletion_seen_first=meta["uid"] in self.deleting_while_running,
        )
        state, scheduler_id = seen.state, seen.scheduler_id
        if state.terminal or deleted:
            self.cache.pop(meta["uid"], None)
        if deleted:
            self.deleting_while_running.discard(meta["uid"])
        elif state.verdict == "pending" or meta.get("deletionTimestamp"):
            # Judged again as time passes: an Unschedulable pod's timeout, a deleted pod's grace.
            self.cache[meta["uid"]] = pod
        else:
            self.cache.pop(meta["uid"], None)
        if only_if_terminal and not state.terminal:
            return
        if deleted:
            self.told.pop(meta["uid"], None)
        elif self.told.get(meta["uid"]) == (state, scheduler_id):
            return
        else:
            self.told[meta["uid"]] = (state, scheduler_id)
        if state.verdict == "failed":
            state = self._explained(meta, state, forget=deleted)
        self.watcher_queue.put(
            PodEvent(
                namespace=seen.namespace,
                name=seen.name,
                ref=seen.ref,
                scheduler_id=scheduler_id,
                state=state,
                resource_version=rv,
                deleted=deleted,
            )
        )


def serve(channel: Channel, **options: Any) -> None:
    """A watcher process (see processes.py): its messages go up the channel to the scheduler."""
    PodWatch(watcher_queue=channel, **options).run()
