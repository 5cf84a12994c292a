"""Container shim: runs one container's command and records how it ended.

The node agent may be restarted while containers run (as kubelet may), so the
exit code cannot live only in the agent's memory. The shim waits for the
command, writes `{"exitCode": N, "reason": ...}` to its exit file and leaves.
Run inside a mount namespace of its own (`unshare --mount`), it first bind-mounts
the container's volumes at their mount paths (`--mount`), so the mounts are seen
by this container only, as a runtime's are. It ignores SIGTERM itself, so the agent's SIGTERM to the process group reaches
the command the way a container's PID 1 receives it. It also plays the cgroup
memory limit as the kernel's OOM killer does on cgroup v1 (mm/oom_kill.c): when the
container's processes together pass the limit, the largest one is killed with SIGKILL, and
the container is reported `OOMKilled` when it ends, whatever its exit code (containerd keeps
the OOM event's reason). A main process that survives its child's death goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from devcluster import process_tree


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exit-file", required=True)
    parser.add_argument("--memory-limit", type=int, default=0)
    parser.add_argument("--mount", action="append", default=[], type=json.loads)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reason = None
    try:
        for mount in args.mount:
            bind_mount(mount["source"], mount["target"], mount["readOnly"])
        # The child gets default signal handling back (ignored dispositions are inherited).
        child = subprocess.Popen(
            command, restore_signals=True, preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL)
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        Path(args.exit_file).write_text(
            json.dumps({"exitCode": 128, "reason": "StartError", "message": str(exc)})
        )
        return
    while True:
        try:
            code = child.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            members = process_tree.tree(child.pid) if args.memory_limit else {}
            sizes = {pid: process_tree.resident_bytes(proc) for pid, proc in members.items()}
            if sum(sizes.values()) > args.memory_limit > 0:
                reason = "OOMKilled"
                with contextlib.suppress(ProcessLookupError):
                    os.kill(max(sizes, key=lambda pid: sizes[pid]), signal.SIGKILL)
    if code < 0:
        code = 128 - code
    if reason is None:
        reason = "Completed" if code == 0 else "Error"
    tmp = Path(args.exit_file + ".tmp")
    tmp.write_text(json.dumps({"exitCode": code, "reason": reason, "finishedAt": time.time()}))
    tmp.rename(args.exit_file)


def bind_mount(source: str, target: str, read_only: bool) -> None:
    """Mount `source` at `target` in this mount namespace; the mount point is made if missing
    (on the host's filesystem, which the namespace shares: an empty directory or file)."""
    path = Path(target)
    if Path(source).is_dir():
        path.mkdir(parents=True, exist_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    subprocess.run(["mount", "--bind", source, target], check=True, capture_output=True)
    if read_only:
        subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True, capture_output=True)


if __name__ == "__main__":
    main()
