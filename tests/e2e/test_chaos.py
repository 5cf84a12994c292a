"""The seeded fault run (python -m chaos) for five minutes: nothing lost, doubled, left or misexplained.

It starts its own two clusters ("chaos", and "chaos-east" for `--second-cluster east`: half the
tasks of every kind run there, and half the faults of a cluster's kind hit it) and Airflow, so it
needs neither of this suite's fixtures. It
runs when K8S_EXECUTOR_CHAOS=1: `.ci/run` sets it and runs this test on its own, after the suite,
so that two clusters do not share the machine (and `./dev test` stays as long as it was).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from devcluster.airflow_stack import AIRFLOW_MAJOR

from chaos.__main__ import INVARIANTS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        AIRFLOW_MAJOR < 3, reason="the chaos run drives Airflow 3 (its REST API, two schedulers)"
    ),
    pytest.mark.skipif(
        not os.environ.get("K8S_EXECUTOR_CHAOS"), reason="set K8S_EXECUTOR_CHAOS=1 (.ci/run does)"
    ),
    # Five minutes of load, the settling of the last runs, and the stacks' start and stop.
    pytest.mark.timeout(1800),
]

ROOT = Path(__file__).resolve().parents[2]
SEED = 1717  # its five minutes meet every kind of fault (tests/unit/test_chaos_schedule.py)
SECOND = "east"


def test_five_minutes_of_mixed_faults_in_two_clusters_lose_double_leave_and_misexplain_nothing(
    tmp_path: Path,
) -> None:
    out = tmp_path / "chaos.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chaos",
            "--minutes",
            "5",
            "--seed",
            str(SEED),
            "--executor",
            "ours",
            "--second-cluster",
            SECOND,
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert out.exists(), done.stdout[-5000:] + done.stderr[-5000:]
    result = json.loads(out.read_text())
    detail = json.dumps({k: v for k, v in result.items() if k != "fault_log"}, indent=1)[-6000:]
    assert result["runs_triggered"] > 0 and result["runs_settled"], detail
    assert sum(result["faults"].values()) > 0, detail
    for invariant in INVARIANTS:
        assert result[invariant] == 0, f"{invariant}: {detail}"
    # The second cluster was used: its runs' tasks, pods created there (its own audit log), and
    # faults that hit it.
    assert set(result["clusters"]) == {"default", SECOND}, detail
    for name, cluster in result["clusters"].items():
        assert cluster["runs_triggered"] > 0 and cluster["task_instances"] > 0, f"{name}: {detail}"
        assert cluster["pods_created"] >= cluster["task_instances"], f"{name}: {detail}"
        assert sum(cluster["faults"].values()) > 0, f"{name}: {detail}"
    assert result["clusters"][SECOND]["development_cluster"] == f"chaos-{SECOND}", detail
    assert done.returncode == 0, done.stdout[-3000:]
