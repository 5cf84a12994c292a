"""The entry module of a helper process: `python -m k8s_executor.helper DOWN UP NAME`.

DOWN and UP are the pipes from and to the scheduler (processes.py). The first message down
names the function to run, its options, the scheduler's import path and log level; the
function gets the channel and runs until it returns, or until the scheduler is gone.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import sys
import threading
import time
from typing import BinaryIO

from k8s_executor.processes import PIPE_BUFFER, Channel, send_logs_to


def _read_down(down: BinaryIO, channel: Channel) -> None:
    while True:
        try:
            channel.inbox.put(pickle.load(down))
        except (EOFError, OSError, pickle.UnpicklingError):
            # The scheduler is gone (exited, or killed): nothing this process does has a
            # reader any more, and a launcher left running would create pods nobody watches.
            os._exit(0)


def _watch_parent(parent: int) -> None:
    # The scheduler's own forks (LocalExecutor's workers, say) inherit its end of the pipe, which
    # then stays open after the scheduler dies: its death is seen here too, as a new parent.
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(0)


PARENT_CHECK_S = 1.0


def main(argv: list[str]) -> None:
    # Ctrl-C, and a SIGTERM sent to the whole process group (dumb-init, `kill -- -PGID`), reach the
    # helpers too; the scheduler decides when they stop. Its graceful end still needs the launcher
    # (creates in flight land), and a helper whose scheduler is gone exits by itself (below).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    down = os.fdopen(int(argv[1]), "rb", PIPE_BUFFER)
    channel = Channel(os.fdopen(int(argv[2]), "wb", PIPE_BUFFER))
    try:
        target, options, path, level = pickle.load(down)
    except EOFError:
        return
    sys.path[:] = [p for p in path if p not in sys.path] + sys.path
    send_logs_to(channel, level)
    threading.Thread(target=_read_down, args=(down, channel), name=f"{argv[3]}-receive", daemon=True).start()
    threading.Thread(
        target=_watch_parent, args=(os.getppid(),), name=f"{argv[3]}-parent", daemon=True
    ).start()
    module, _, function = target.partition(":")
    getattr(importlib.import_module(module), function)(channel, **options)


if __name__ == "__main__":
    main(sys.argv)
