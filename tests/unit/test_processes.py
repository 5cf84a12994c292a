"""The scheduler's helper processes start without Airflow, their log lines reach the scheduler,
and they do not outlive it."""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import processes
from k8s_executor.processes import Helper, log_in_parent

REPO = Path(__file__).parents[2]


def report_imports(channel: Any) -> None:
    """Run in the helper: say whether Airflow was imported there, and echo one message back."""
    logging.getLogger("k8s_executor.watching").debug("below the level: not sent")
    logging.getLogger("k8s_executor.watching").info("airflow imported: %s", "airflow" in sys.modules)
    channel.put(("echo", channel.get()))


def wait_forever(channel: Any) -> None:
    channel.put(os.getpid())
    while True:
        time.sleep(60)


def alive(pid: int) -> bool:
    """Running, not a zombie left for whoever inherited it to reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def run_main(tmp_path: Path, body: str) -> subprocess.Popen[str]:
    main = tmp_path / "scheduler_main.py"
    main.write_text(textwrap.dedent(body))
    return subprocess.Popen(
        [sys.executable, str(main)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )


def test_a_helper_of_a_main_module_that_imports_airflow_does_not_import_it(tmp_path: Path) -> None:
    # As under `airflow scheduler`, whose main module is Airflow's command line: a spawned
    # multiprocessing child would run that module again before its target.
    run = run_main(
        tmp_path,
        """
        import logging
        import queue

        import airflow  # noqa: F401

        from k8s_executor.processes import Helper

        if __name__ == "__main__":
            logging.getLogger("k8s_executor").setLevel(logging.INFO)
            received = queue.Queue()
            helper = Helper("tests.unit.test_processes:report_imports", {}, "probe", received.put)
            helper.send({"a": [1, 2]})
            record = received.get(timeout=60)
            print(record.name, record.levelname, record.getMessage())
            print(received.get(timeout=10))
            helper.join(30)
            print("exit code", helper.exitcode, "more messages:", not received.empty())
        """,
    )
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert out.splitlines()[-3:] == [
        "k8s_executor.watching INFO airflow imported: False",
        "('echo', {'a': [1, 2]})",
        "exit code 0 more messages: False",
    ]


def test_a_helper_exits_when_its_scheduler_is_killed_even_with_a_fork_holding_its_pipe(
    tmp_path: Path,
) -> None:
    # The scheduler forks after its helpers started (LocalExecutor's workers): the fork holds the
    # scheduler's end of the pipe, so the helper must see its scheduler's death another way.
    run = run_main(
        tmp_path,
        """
        import os
        import queue
        import time

        from k8s_executor.processes import Helper

        if __name__ == "__main__":
            received = queue.Queue()
            Helper("tests.unit.test_processes:wait_forever", {}, "probe", received.put)
            print(received.get(timeout=60), flush=True)
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            time.sleep(600)
        """,
    )
    assert run.stdout is not None
    helper_pid = int(run.stdout.readline())
    assert alive(helper_pid)
    run.send_signal(signal.SIGKILL)
    run.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not alive(helper_pid):
            break
        time.sleep(0.1)
    else:
        os.kill(helper_pid, signal.SIGKILL)
        pytest.fail("the helper outlived its scheduler")


def test_a_childs_record_is_logged_in_the_parent_under_its_own_name(caplog: pytest.LogCaptureFixture) -> None:
    record = logging.LogRecord("k8s_executor.watching", logging.WARNING, "w.py", 1, "watch broke", None, None)
    with caplog.at_level(logging.INFO, logger="k8s_executor"):
        log_in_parent(record)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("k8s_executor.watching", "WARNING", "watch broke")
    ]


def echo(channel: Any) -> None:
    while True:
        channel.put(channel.get())


def test_starting_a_helper_never_hands_the_gil_to_a_busy_thread_of_the_scheduler() -> None:
    """A dead helper is restarted in Airflow's `sync`: starting a process there let go of the GIL
    a dozen times, and taking it back from a busy thread of the scheduler cost a switch interval
    each. With a long switch interval, the busy thread runs only when this one lets go of it."""
    received: queue.Queue[Any] = queue.Queue()
    first = Helper("tests.unit.test_processes:echo", {}, "probe", received.put)  # the spawner thread
    ran = [0]
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            ran[0] += 1

    interval = sys.getswitchinterval()
    thread = threading.Thread(target=busy, daemon=True)
    helpers = [first]
    try:
        thread.start()
        sys.setswitchinterval(0.5)
        time.sleep(0)  # from its return, the busy thread waits for the GIL
        before = ran[0]
        for number in range(5):
            helpers.append(Helper("tests.unit.test_processes:echo", {}, f"probe-{number}", received.put))
            helpers[-1].send(number)  # before its process even started: it still gets it
        # Neither the busy thread nor the spawner (woken by the first Helper) got the GIL.
        assert ran[0] == before
        assert not any(helper._spawned.is_set() for helper in helpers[1:])
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        thread.join()
    try:
        assert sorted(received.get(timeout=60) for _ in range(5)) == [0, 1, 2, 3, 4]
    finally:
        for helper in helpers:
            helper.kill()
            helper.join(10)
    assert not any(helper.is_alive() for helper in helpers)


class Blocker:
    """Put on the spawner's queue, it holds the spawner until released."""

    name = "blocker"

    def __init__(self) -> None:
        self.release = threading.Event()

    def _spawn(self) -> None:
        self.release.wait(60)


def test_a_helper_killed_before_its_process_started_never_runs() -> None:
    blocker = Blocker()
    processes._SPAWNER.start(blocker)  # type: ignore[arg-type]
    helper = Helper("tests.unit.test_processes:wait_forever", {}, "probe", queue.Queue().put)
    assert helper.is_alive()  # starting
    helper.kill()
    assert not helper.is_alive()
    blocker.release.set()
    helper.join(10)
    assert helper.popen is None
    assert helper.drained and helper.settled()


def fork_and_die(channel: Any) -> None:
    """Leave a process holding the pipe up to the scheduler open (as a fork of the wrong moment
    would), and die."""
    holder = os.fork()
    if holder == 0:
        time.sleep(60)
        os._exit(0)
    channel.put(holder)
    time.sleep(0.5)
    os._exit(1)


def test_a_dead_helper_whose_pipe_another_process_holds_open_is_settled_after_a_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(processes, "DRAIN_GRACE_S", 1.0)
    received: queue.Queue[Any] = queue.Queue()
    helper = Helper("tests.unit.test_processes:fork_and_die", {}, "probe", received.put)
    holder = received.get(timeout=60)
    try:
        deadline = time.monotonic() + 30
        while helper.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert helper.exitcode == 1
        assert not helper.drained  # the holder keeps the pipe open
        assert not helper.settled()
        time.sleep(1.2)
        assert helper.settled()
    finally:
        os.kill(holder, signal.SIGKILL)


def test_a_fork_waits_while_a_helpers_pipe_ends_are_open() -> None:
    """A fork taken while the spawner holds a child's pipe ends (LocalExecutor's workers start on
    another thread) would keep the child's pipe open after its death."""
    forked = threading.Event()

    def fork() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        forked.set()

    thread = threading.Thread(target=fork)
    with processes._PIPES:
        thread.start()
        assert not forked.wait(0.5)
    assert forked.wait(30)
    thread.join()


def test_whether_a_child_has_exited_is_told_without_a_poll_until_it_has() -> None:
    """`Popen.poll` lets go of the GIL (bench.gil_waits): a running child is never polled."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        polled = []
        real_poll = child.poll
        child.poll = lambda: polled.append(1) or real_poll()  # type: ignore[method-assign]
        assert not processes.has_exited(child) and not processes.has_exited(child)
        assert polled == [] and child.returncode is None and alive(child.pid)
        child.kill()
        deadline = time.monotonic() + 10
        while not processes.has_exited(child):
            assert time.monotonic() < deadline, "the killed child was never seen to exit"
            time.sleep(0.01)
        assert polled and child.returncode == -signal.SIGKILL  # reaped by Popen, its exit code kept
        assert processes.has_exited(child)
    finally:
        child.kill()
        child.wait()
