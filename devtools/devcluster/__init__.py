"""The development cluster: a real control plane built from Go modules, a process node agent
playing kubelet, and the Airflow stacks the demo, the tests and the benchmark run.

A distribution of its own (devtools/pyproject.toml), installed editable beside the executor by
./dev; the executor never imports it.
"""

from pathlib import Path

# The repository this package is developed in: its manifests, examples and DAGs.
REPOSITORY = Path(__file__).resolve().parents[2]
