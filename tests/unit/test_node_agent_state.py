"""The node agent's record of a pod's containers, saved from many threads at once."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from devcluster.node_agent import ProcessPod
from devcluster.pod_status import ContainerState


def test_saves_from_every_container_thread_at_once_are_all_kept(tmp_path: Path) -> None:
    """Each container of a pod saves the pod's state from its own thread as it starts and ends. A
    save that fails kills the thread recording a container's end, and the pod then never shows it
    (a task container beside a sidecar stayed running for good)."""
    pod = ProcessPod.__new__(ProcessPod)
    pod.dir = tmp_path
    pod.procs = {}
    pod.proc_lock = threading.Lock()
    pod.save_lock = threading.Lock()
    pod.init = [ContainerState(name="sidecar", image="x", restartable=True)]
    pod.main = [ContainerState(name=f"c{i}", image="x") for i in range(6)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(pod.main))

    def container_thread(state: ContainerState) -> None:
        start.wait()
        try:
            for n in range(150):
                with pod.proc_lock:
                    pod.procs[state.name] = n
                state.exit_code = n
                pod._save()
        except BaseException as exc:  # what the container's thread would die of
            errors.append(exc)

    threads = [threading.Thread(target=container_thread, args=(s,)) for s in pod.main]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    saved = json.loads((tmp_path / "state.json").read_text())
    assert {name: c["exit_code"] for name, c in saved["containers"].items() if name != "sidecar"} == {
        s.name: 149 for s in pod.main
    }
