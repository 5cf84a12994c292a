"""Taking over the pods of a scheduler that died.

Airflow hands a new scheduler the task instances queued by a dead one. Their
pods are found by the task try their annotations name, in one list of this
executor's pods (every scheduler's: the watchers see only their own). Each pod
adopted is relabelled with its adopter (scheduler.py), which brings it into the
adopter's watch and shows the other schedulers that it is claimed.

Pods launched before pods had an owner label (by this executor, or by the
official provider's) are outside that list: the tries Airflow hands over that
are not found are looked for among them (`legacy_orphans`), and adopting one
gives it this executor's labels.
"""

from __future__ import annotations

from collections.abc import Iterable

from k8s_executor import identity
from k8s_executor.shapes import HandedTry, Orphan, PodSeen


def held_elsewhere(holder: str | None, scheduler_label: str | None) -> bool:
    """Whether a pod labelled as held by `holder` is another scheduler's than this one's (by its
    label `scheduler_label`; None for a reader that holds no pods, such as the CLI). The one rule
    the watchers, the ledger and adoption share: a pod another scheduler holds is never reported,
    deleted or adopted here but through adoption."""
    return bool(holder) and scheduler_label is not None and holder != scheduler_label


def select_orphans(
    sightings: Iterable[PodSeen],
    tries: Iterable[identity.WorkloadRef],
    dead_scheduler_ids: Iterable[str],
) -> list[Orphan]:
    """The pods that run one of `tries`, and the finished pods of the dead schedulers.

    A dead scheduler's pod that still runs a try not handed to this scheduler is left alone: its
    try was handed to another live scheduler, which adopts it, or its end is the disposer's.
    """
    wanted = set(tries)
    dead = {identity.safe_label_value(i) for i in dead_scheduler_ids}
    orphans = []
    for seen in sightings:
        if seen.ref is None:
            continue
        ours = seen.ref in wanted
        if ours or (seen.scheduler_id in dead and seen.state.terminal):
            orphans.append(_orphan(seen, ours=ours))
    return orphans


def dead_schedulers(tries: Iterable[HandedTry], own_id: str) -> set[str]:
    """The schedulers that had queued the tries handed over. A try whose row already names this
    scheduler (Airflow wrote its hand-over before the row was read) names none: the finished pods
    of its old scheduler are then left to the sweep of unclaimed pods (ledger.py)."""
    return {str(t.queued_by) for t in tries if t.queued_by is not None} - {own_id}


def still_handed(tries: Iterable[HandedTry], alive: set[str], own_id: str) -> list[HandedTry]:
    """Of the rows read after a hand-over, the tries still this scheduler's: a row queued since by
    another live scheduler (`alive`, by label) is that scheduler's, its try retried or queued
    again between the hand-over and the read."""
    own = identity.safe_label_value(own_id)
    return [
        t
        for t in tries
        if t.queued_by is None
        or (label := identity.safe_label_value(str(t.queued_by))) == own
        or label not in alive
    ]


def legacy_orphans(sightings: Iterable[PodSeen], tries: Iterable[identity.WorkloadRef]) -> list[Orphan]:
    """The legacy pods (identity.LEGACY_SELECTOR) that run one of `tries`: handed over, so ours."""
    wanted = set(tries)
    return [_orphan(seen, ours=True, legacy=True) for seen in sightings if seen.ref in wanted]


def _orphan(seen: PodSeen, ours: bool, legacy: bool = False) -> Orphan:
    return Orphan(
        namespace=seen.namespace,
        name=seen.name,
        ref=seen.ref,
        scheduler_id=seen.scheduler_id,
        state=seen.state,
        resource_version=seen.resource_version,
        ours=ours,
        legacy=legacy,
    )


def unadopted_reason(ti_state: object, dead: Iterable[str], adopter: str) -> str:
    """What the log of a try handed over with no pod says: such a try is reset and Airflow runs it
    again, and the try's own log would otherwise end mid-run, with no word of why."""
    held_by = _held_by(dead)
    if getattr(ti_state, "value", ti_state) == "running":
        what = "its pod ran this try, and is gone: it was deleted while no scheduler watched it"
    else:
        what = f"no pod of this try exists ({held_by} may have died before creating it, or it was deleted)"
    return (
        f"scheduler {adopter} took this try over from {held_by} and found no pod: {what}. "
        "The try is reset, and Airflow runs the task again."
    )


def unlisted_reason(dead: Iterable[str], adopter: str, error: str) -> str:
    """What the log of a try says when its pod could not be looked for, for about a minute: it is
    reset too."""
    return (
        f"scheduler {adopter} could not take this try over from {_held_by(dead)}: listing its pod "
        f"failed ({error}). The try is reset, and Airflow runs the task again; a pod of this try that "
        "still exists is deleted by a live scheduler's sweep."
    )


def _held_by(dead: Iterable[str]) -> str:
    ids = sorted(dead)
    return f"scheduler{'s' * (len(ids) > 1)} {', '.join(ids)}" if ids else "a scheduler held dead"
