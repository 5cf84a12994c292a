"""The scheduler's helper processes (the launcher, the watchers): separate, light, and tied to it.

Separate: each is a new interpreter, `python -m k8s_executor.helper`, never a fork. The
scheduler process holds threads, database connections and a SIGTERM handler that a forked
child would inherit.

Light: the child imports neither Airflow nor the scheduler's main module, only the kubernetes
client and the executor's core. (multiprocessing's spawn would first run the parent's main
module again: under `airflow scheduler` that is Airflow's command line, 1.7 s of imports paid
by every helper started or restarted.)

Tied: the two talk over a pair of pipes carrying pickled messages. When the scheduler dies,
even by SIGKILL, the child reads the end of its pipe and exits, so no helper of a dead
scheduler goes on creating or watching pods. The child's log records travel up the same pipe
and are logged in the scheduler, where Airflow's logging settings apply.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from logging.handlers import QueueHandler
from pathlib import Path
from typing import Any, BinaryIO

from k8s_executor.own_cpu import ThreadCpuMeter

log = logging.getLogger(__name__)

# Where `k8s_executor` is imported from, so `python -m k8s_executor.helper` finds the same copy.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


class Helper:
    """A helper process running `target(channel, **options)` ("module:function") in a new interpreter.

    `send` never blocks the caller (messages are pickled and written by a thread of their own);
    every message the child sends is given to `on_message`, in a thread of this object's.
    """

    def __init__(
        self, target: str, options: dict[str, Any], name: str, on_message: Callable[[Any], None]
    ) -> None:
        self.name = name
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(
            [_PACKAGE_ROOT, *filter(None, environ.get("PYTHONPATH", "").split(os.pathsep))]
        )
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "k8s_executor.helper", str(down_r), str(up_w), name],
                pass_fds=(down_r, up_w),
                stdin=subprocess.DEVNULL,
                env=environ,
            )
        finally:
            os.close(down_r)
            os.close(up_w)
        self._down: BinaryIO = os.fdopen(down_w, "wb")
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._outbox.put((target, options, sys.path, log_level()))
        threading.Thread(target=self._write, name=f"{name}-send", daemon=True).start()
        self._reader = threading.Thread(
            target=self._read, args=(os.fdopen(up_r, "rb"), on_message), name=f"{name}-receive", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def send(self, message: Any) -> None:
        self._outbox.put(message)

    def _write(self) -> None:
        meter = ThreadCpuMeter()
        with self._down:
            while (message := self._outbox.get()) is not _CLOSE:
                meter.tick()
                try:
                    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception:
                    # A bug (something unpicklable handed over): said once, and this message only
                    # is lost; the helper goes on hearing the rest.
                    log.exception("%s: a message could not be sent to the helper", self.name)
                    continue
                try:
                    self._down.write(data)
                    self._down.flush()
                except (BrokenPipeError, ValueError):
                    return  # the child is gone: whoever owns this helper sees it dead and decides

    def _read(self, up: BinaryIO, on_message: Callable[[Any], None]) -> None:
        meter = ThreadCpuMeter()
        with up:
            while True:
                try:
                    message = pickle.load(up)
                except (EOFError, OSError, pickle.UnpicklingError):
                    return
                on_message(message)
                meter.tick()

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        """Wait for the child to exit; then, for everything it sent to have been handed on."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        if not self.is_alive():
            self._reader.join(timeout=5)
            self._outbox.put(_CLOSE)

    def forget(self) -> None:
        """The child has exited: its writer stops. Nothing is waited for: the reader still hands on
        what the child sent before it died, and ends by itself at the end of the pipe (`drained`)."""
        self._outbox.put(_CLOSE)

    @property
    def drained(self) -> bool:
        """Whether everything the child sent has been handed on (its pipe is at its end)."""
        return not self._reader.is_alive()

    def terminate(self) -> None:
        """Stop the helper now (it ignores SIGTERM, which a process group's shutdown sends it)."""
        self.kill()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()


_CLOSE = object()


class Channel:
    """In a helper: its pipes to the scheduler. `put` sends up (thread-safe), `get` reads down."""

    def __init__(self, up: BinaryIO) -> None:
        self._up = up
        self._lock = threading.Lock()
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def put(self, message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self._up.write(data)
            self._up.flush()

    # What logging's QueueHandler calls.
    put_nowait = put

    def get(self) -> Any:
        """The next message from the scheduler."""
        return self.inbox.get()


def send_logs_to(messages: Any, level: int) -> None:
    """In a child: every log record at `level` or above goes to the parent through `messages`."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(QueueHandler(messages))
    root.setLevel(level)


def log_in_parent(record: logging.LogRecord) -> None:
    """Log a child's record in this process, under the child's logger name."""
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


def log_level() -> int:
    """The level the children should send at: the executor's loggers' level in the scheduler."""
    return logging.getLogger("k8s_executor").getEffectiveLevel()
