"""The pure core imports no I/O: the ledger and the verdict run under simulation exactly as in
the scheduler, and a change that pulls a client, a process or Airflow into them fails here."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Modules that talk to the network, start processes, read credentials or need Airflow.
IO_MODULES = (
    "airflow",
    "kubernetes",
    "urllib3",
    "k8s_executor.kube_client",
    "k8s_executor.credentials",
    "k8s_executor.processes",
    "k8s_executor.watching",
    "k8s_executor.launching",
    "k8s_executor.scheduler",
    "k8s_executor.executor",
    "k8s_executor.airflow_adapter",
)


def test_the_ledger_imports_with_every_io_module_made_unimportable() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from importlib.abc import MetaPathFinder

        BLOCKED = {IO_MODULES!r}

        class Block(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                    raise ImportError(f"{{name}} is I/O, and the pure core imported it")
                return None

        sys.meta_path.insert(0, Block())
        import k8s_executor.ledger, k8s_executor.shapes, k8s_executor.state_mapping, k8s_executor.adoption
        loaded = sorted(m for m in sys.modules if m.startswith("k8s_executor"))
        print(" ".join(loaded))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "k8s_executor.ledger" in done.stdout.split()


def test_the_blocker_does_block() -> None:
    """The check above can fail: the same blocker refuses a module that does I/O."""
    code = textwrap.dedent(
        f"""
        import sys
        from importlib.abc import MetaPathFinder

        class Block(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in {IO_MODULES!r}):
                    raise ImportError(name)
                return None

        sys.meta_path.insert(0, Block())
        import k8s_executor.scheduler
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "ImportError" in done.stderr
