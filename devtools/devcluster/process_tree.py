"""A process and its descendants, read from /proc: what a container (or a scheduler) is made of."""

from __future__ import annotations

import os
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
