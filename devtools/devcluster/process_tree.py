"""A process and its descendants, read from /proc: what a container (or a scheduler) is made of."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 of proc(5) comes first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def tree(root: int) -> dict[int, list[str]]:
    """Process id -> stat fields, for `root` and every descendant.

    Descendants, not a process group: a worker may start children in sessions of their own,
    and a cgroup holds them all the same.
    """
    stats = {int(e): f for e in os.listdir("/proc") if e.isdigit() and (f := stat_fields(int(e))) is not None}
    members, frontier = {root}, [root]
    while frontier:
        current = frontier.pop()
        children = [pid for pid, f in stats.items() if int(f[1]) == current and pid not in members]
        members.update(children)
        frontier.extend(children)
    return {pid: stats[pid] for pid in members if pid in stats}


def resident_bytes(fields: list[str]) -> int:
    return int(fields[21]) * PAGE


def cpu_seconds(fields: list[str]) -> float:
    """User and system time, with that of reaped children."""
    return sum(int(f) for f in fields[11:15]) / TICKS


def kill(root: int) -> None:
    """SIGKILL for `root`, its process group and every descendant, those in sessions of their own
    too (the disruption guard runs its task in one): a container's end takes its whole PID
    namespace with it (the kernel's zap_pid_ns_processes), where a process group would miss them.
    The descendants are read first: once `root` is gone, they are no longer its children."""
    members = tree(root)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(root, signal.SIGKILL)
    for pid in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
