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
import ctypes
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from logging.handlers import QueueHandler
from pathlib import Path
from typing import Any, BinaryIO

from k8s_executor.own_cpu import ThreadCpuMeter

log = logging.getLogger(__name__)

# Where `k8s_executor` is imported from, so `python -m k8s_executor.helper` finds the same copy.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def _load_waitid() -> Any:
    """libc's waitid(2), called through `ctypes.PyDLL`, which holds the GIL; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        waitid = ctypes.PyDLL(None).waitid
    except (OSError, AttributeError, TypeError):
        return None
    waitid.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_char_p, ctypes.c_int]
    waitid.restype = ctypes.c_int
    return waitid


_WAITID = _load_waitid()
_P_PID, _WEXITED, _WNOHANG, _WNOWAIT = 1, 4, 1, 0x01000000
# siginfo_t's si_pid on Linux: after si_signo, si_errno and si_code, where its union begins (at
# 8-byte alignment on 64-bit machines).
_SI_PID = 16 if ctypes.sizeof(ctypes.c_void_p) == 8 else 12


def has_exited(popen: subprocess.Popen[bytes]) -> bool:
    """Whether the child has exited; if so, `popen` reaps it and keeps its exit code.

    Asked at every `sync`, once per helper. `Popen.poll` lets go of the GIL for its waitpid, and
    taking the GIL back from busy threads of the scheduler (the pipes' readers) can take far longer
    than the call (`python -m bench.gil_waits`: up to 140 ms with three busy threads). waitid(2)
    with WNOWAIT, called holding the GIL, says whether there is anything to reap and reaps nothing:
    only a child that has exited costs a `poll`."""
    if popen.returncode is not None:
        return True
    if _WAITID is not None:
        info = ctypes.create_string_buffer(128)
        found = _WAITID(_P_PID, popen.pid, info, _WEXITED | _WNOHANG | _WNOWAIT)
        if found == 0 and info.raw[_SI_PID : _SI_PID + 4] == bytes(4):
            return False  # nothing to reap: running
    # Exited, or waitid could not tell: Popen's own poll decides.
    return popen.poll() is not None


class Helper:
    """A helper process running `target(channel, **options)` ("module:function") in a new interpreter.

    Nothing here waits on the caller's thread, which is Airflow's scheduler loop when a dead helper
    is restarted: the process is started by the scheduler process's spawner thread (below), and
    `send` only queues (messages are pickled and written by a thread of their own). Every message
    the child sends is given to `on_message`, in a thread of this object's.
    """

    def __init__(
        self, target: str, options: dict[str, Any], name: str, on_message: Callable[[Any], None]
    ) -> None:
        self.name = name
        self._on_message = on_message
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._outbox.put((target, options, list(sys.path), log_level()))
        self.popen: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        # Set once `_spawn` is done, started or not (then `failed` says why).
        self._spawned = threading.Event()
        self.failed: Exception | None = None
        self._killed = False
        self._dead_since: float | None = None
        self._lock = threading.Lock()
        _SPAWNER.start(self)

    def _spawn(self) -> None:
        """On the spawner thread: start the process, then its pipes' reader and writer. Whatever
        fails, the helper ends up started or counted as dead, never left starting."""
        try:
            with self._lock:
                if self._killed:
                    return
                self.popen, down_w, up_r = _start_process(self.name)
            self._reader = threading.Thread(
                target=self._read,
                args=(os.fdopen(up_r, "rb", PIPE_BUFFER),),
                name=f"{self.name}-receive",
                daemon=True,
            )
            self._reader.start()
            threading.Thread(
                target=self._write,
                args=(os.fdopen(down_w, "wb", PIPE_BUFFER),),
                name=f"{self.name}-send",
                daemon=True,
            ).start()
        except Exception as error:
            log.error("%s: could not start its process (%s); it counts as dead", self.name, error)
            self.failed = error
            self.kill()
        finally:
            self._spawned.set()

    @property
    def pid(self) -> int:
        self._spawned.wait()
        if self.popen is None:
            raise RuntimeError(f"{self.name} has no process: {self.failed or 'killed before it started'}")
        return self.popen.pid

    @property
    def exitcode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    @property
    def how_it_ended(self) -> str:
        if self.failed is not None:
            return f"could not start: {self.failed}"
        return f"exit code {self.exitcode}"

    def send(self, message: Any) -> None:
        self._outbox.put(message)

    def _write(self, down: BinaryIO) -> None:
        meter = ThreadCpuMeter()
        try:
            while True:
                # What queued meanwhile goes down in the same write. Each write lets go of the GIL,
                # and may have to take it back from a busy thread (Airflow's loop over thousands of
                # task instances): with one such thread, pod-sized messages go about 2,500 a
                # second written one by one, 35,000 in batches (bench/pipe_rate.py).
                batch = next_batch(self._outbox)
                meter.tick()
                closing = _CLOSE in batch
                if closing:
                    batch = batch[: batch.index(_CLOSE)]
                data = pickled(batch, self.name)
                try:
                    if data:
                        down.write(data)
                        down.flush()
                except (BrokenPipeError, ValueError):
                    return  # the child is gone: whoever owns this helper sees it dead and decides
                if closing:
                    return
        finally:
            # Closing flushes what a dead child left unread, and fails; the pipe is closed anyway.
            with contextlib.suppress(OSError):
                down.close()

    def _read(self, up: BinaryIO) -> None:
        meter = ThreadCpuMeter()
        with up:
            while True:
                try:
                    message = pickle.load(up)
                except (EOFError, OSError, pickle.UnpicklingError):
                    return
                self._on_message(message)
                meter.tick()

    def is_alive(self) -> bool:
        """Running, or still being started (unless killed first)."""
        if not self._spawned.is_set():
            return not self._killed
        return self.popen is not None and not has_exited(self.popen)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the child to exit; then, for everything it sent to have been handed on."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._spawned.wait(timeout) or self.popen is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self.popen.poll() is not None:
            if self._reader is not None:
                self._reader.join(timeout=5)
            self._outbox.put(_CLOSE)

    def forget(self) -> None:
        """The child has exited: its writer stops. Nothing is waited for: the reader still hands on
        what the child sent before it died, and ends by itself at the end of the pipe (`drained`)."""
        self._outbox.put(_CLOSE)

    @property
    def drained(self) -> bool:
        """Whether everything the child sent has been handed on (its pipe is at its end)."""
        if not self._spawned.is_set():
            return False
        return self._reader is None or not self._reader.is_alive()

    def settled(self) -> bool:
        """Dead, and everything it sent handed on; or dead for DRAIN_GRACE_S with its pipe still
        open, which only another holder of the pipe's write end explains (a process this one forked
        at the wrong moment): what it sent is then as much as will come."""
        if self.is_alive():
            return False
        if self.drained:
            return True
        if self._dead_since is None:
            self._dead_since = time.monotonic()
        return time.monotonic() - self._dead_since >= DRAIN_GRACE_S

    def terminate(self) -> None:
        """Stop the helper now (it ignores SIGTERM, which a process group's shutdown sends it)."""
        self.kill()

    def kill(self) -> None:
        with self._lock:
            self._killed = True
            if self.popen is not None:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()


def _start_process(name: str) -> tuple[subprocess.Popen[bytes], int, int]:
    """`python -m k8s_executor.helper`, and this process's ends of its two pipes (down, up).

    The child's ends are closed here once it has them. Until then a fork of this process (the
    scheduler forks LocalExecutor's workers on another thread) would take copies along, and a copy
    of the child's write end would keep its pipe open after it died: so forks wait (`_PIPES`)."""
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(
        [_PACKAGE_ROOT, *filter(None, environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    with _PIPES:
        down_r, down_w = os.pipe()
        try:
            up_r, up_w = os.pipe()
        except OSError:
            os.close(down_r)
            os.close(down_w)
            raise
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "k8s_executor.helper", str(down_r), str(up_w), name],
                pass_fds=(down_r, up_w),
                stdin=subprocess.DEVNULL,
                env=environ,
            )
        except BaseException:
            os.close(down_w)
            os.close(up_r)
            raise
        finally:
            os.close(down_r)
            os.close(up_w)
    return popen, down_w, up_r


# Held while a child's pipe ends are open in this process, and by every fork of it (see above).
# `subprocess` itself runs no fork handlers, so a helper's own start does not wait on it.
_PIPES = threading.Lock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_PIPES.acquire, after_in_parent=_PIPES.release, after_in_child=_PIPES.release)


class _Spawner:
    """The thread that starts the scheduler process's helpers, one after another.

    Starting a process makes a dozen system calls, each letting go of the GIL; taking it back from
    a busy thread of the scheduler costs a switch interval each. On the loop's thread, a launcher
    restarted by `sync` would hold Airflow's loop a tenth of a second or more on a busy machine;
    here it holds nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.SimpleQueue[Helper] = queue.SimpleQueue()

    def start(self, helper: Helper) -> None:
        with self._lock:
            # Once per process: a fork of the scheduler's (LocalExecutor's workers) has no thread.
            if self._pid != os.getpid():
                helpers: queue.SimpleQueue[Helper] = queue.SimpleQueue()
                threading.Thread(
                    target=self._run, args=(helpers,), name="k8s-executor-spawner", daemon=True
                ).start()
                self._queue, self._pid = helpers, os.getpid()
        self._queue.put(helper)

    @staticmethod
    def _run(helpers: queue.SimpleQueue[Helper]) -> None:
        while True:
            helper = helpers.get()
            try:
                helper._spawn()
            except Exception:  # _spawn counts its own failures; this thread must outlive any bug
                log.exception("%s: starting it failed", helper.name)


_SPAWNER = _Spawner()
_CLOSE = object()
# How long a dead helper's pipe may stay open before it is restarted anyway (Helper.settled).
DRAIN_GRACE_S = 10.0
# Each pipe end's buffer: a read or write of the pipe lets go of the GIL, so the fewer the better.
PIPE_BUFFER = 1 << 16


class Channel:
    """In a helper: its pipes to the scheduler. `put` sends up (thread-safe), `get` reads down."""

    def __init__(self, up: BinaryIO) -> None:
        self._up = up
        self._lock = threading.Lock()
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def put(self, message: Any) -> None:
        self.put_many([message])

    def put_many(self, messages: list[Any]) -> None:
        """Send several messages in one write (a write lets go of the GIL, see Helper._write)."""
        data = pickled(messages, "the scheduler")
        with self._lock:
            self._up.write(data)
            self._up.flush()

    # What logging's QueueHandler calls.
    put_nowait = put

    def get(self) -> Any:
        """The next message from the scheduler."""
        return self.inbox.get()


def pickled(messages: list[Any], to: str) -> bytes:
    """The messages, pickled one after another for a pipe. One that cannot be pickled (a bug) is
    said and left out: the others still go."""
    parts = []
    for message in messages:
        try:
            parts.append(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:
            log.exception("a message could not be sent to %s", to)
    return b"".join(parts)


# At most this many messages in one write to a pipe.
BATCH = 256


def next_batch(messages: queue.SimpleQueue[Any]) -> list[Any]:
    """The next message (waited for) and what queued behind it, up to BATCH: one write's worth."""
    batch = [messages.get()]
    with contextlib.suppress(queue.Empty):
        while len(batch) < BATCH:
            batch.append(messages.get_nowait())
    return batch


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
