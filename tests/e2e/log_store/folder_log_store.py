"""A remote log store for the test stack: Airflow 3's `RemoteLogIO` over a folder.

Stands in for an object store (S3, GCS, Azure Blob): it is reached only through the interface
Airflow's components use (`upload` from the process that wrote a log, `read` from the API
server), and it lives outside every component's `base_log_folder`, as a bucket would.
On the stack's PYTHONPATH; `[logging] logging_config_class` names its `LOGGING_CONFIG`. The
store is `$AIRFLOW_HOME/remote-log-store`, which every component of the stack (and every worker
pod: the node agent runs them on this host) finds from its own environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.config_templates.airflow_local_settings import DEFAULT_LOGGING_CONFIG
from airflow.configuration import conf

LOGGING_CONFIG = DEFAULT_LOGGING_CONFIG
STORE = Path(os.environ["AIRFLOW_HOME"]) / "remote-log-store"


class FolderLogIO:
    processors: tuple[Any, ...] = ()

    def upload(self, path: os.PathLike[str] | str, ti: Any = None) -> None:
        local = Path(path)
        base = Path(conf.get("logging", "base_log_folder"))
        relative = local.relative_to(base) if local.is_absolute() else local
        if not (base / relative).is_file():
            return
        target = STORE / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        # Appended, as the S3 and GCS stores do: a worker's upload and the executor's note add up.
        with target.open("a") as out:
            out.write((base / relative).read_text())

    def read(self, relative_path: str, ti: Any) -> tuple[list[str], list[str] | None]:
        target = STORE / relative_path
        if not target.is_file():
            return [f"{target} not in the store"], None
        return [f"{target} (test store)"], [target.read_text()]


REMOTE_TASK_LOG = FolderLogIO()
