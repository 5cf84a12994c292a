"""The benchmark's ceiling must create the pods the executor created, not what the API server added."""

from __future__ import annotations

from bench.bare_client import executor_shaped

TEMPLATE = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"annotations": {"finish": "/bare/finish"}},
    "spec": {"restartPolicy": "Never", "containers": [{"name": "base", "image": "simulated"}]},
}

# A pod as the API server returns it: what the executor sent, and what the server filled in.
CREATED = {
    "metadata": {
        "name": "bench-unit-1",
        "uid": "f595",
        "resourceVersion": "296",
        "labels": {"dag_id": "bench", "try_number": "1"},
        "annotations": {"finish": "/executor/finish", "task_id": "unit"},
        "managedFields": [{"manager": "OpenAPI-Generator"}],
    },
    "spec": {
        "restartPolicy": "Never",
        "nodeName": "devsim-1",
        "dnsPolicy": "ClusterFirst",
        "volumes": [{"name": "kube-api-access-cl92n", "projected": {}}],
        "containers": [
            {
                "name": "base",
                "image": "simulated",
                "args": ["python", "-m", "airflow.sdk.execution_time.execute_workload"],
                "env": [{"name": "AIRFLOW_IS_K8S_EXECUTOR_POD", "value": "True"}],
                "imagePullPolicy": "Always",
                "volumeMounts": [{"name": "kube-api-access-cl92n", "mountPath": "/var/run/secrets"}],
            }
        ],
    },
    "status": {"phase": "Pending"},
}


def test_the_bare_pod_has_what_the_executor_added_and_nothing_the_server_filled_in() -> None:
    assert executor_shaped(TEMPLATE, CREATED) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "labels": {"dag_id": "bench", "try_number": "1"},
            # The bare run's own finish file, not the executor run's.
            "annotations": {"finish": "/bare/finish", "task_id": "unit"},
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "base",
                    "image": "simulated",
                    "args": ["python", "-m", "airflow.sdk.execution_time.execute_workload"],
                    "env": [{"name": "AIRFLOW_IS_K8S_EXECUTOR_POD", "value": "True"}],
                }
            ],
        },
    }


def test_the_template_is_left_as_it_was() -> None:
    before = repr(TEMPLATE)
    executor_shaped(TEMPLATE, CREATED)
    assert repr(TEMPLATE) == before


def test_each_ratio_is_taken_within_its_pair_and_a_bare_run_far_from_the_rest_is_flagged() -> None:
    from bench.__main__ import flag_bare_outliers, spread

    pairs = {
        "ours_best": [{"bare_client_pods_per_s": 150.0}, {"bare_client_pods_per_s": 100.0}],
        "official_best": [{"bare_client_pods_per_s": 148.0}, {"bare_client_pods_per_s": 152.0}],
    }
    flag_bare_outliers(pairs)
    assert [p["bare_outlier"] for p in pairs["ours_best"]] == [False, True]
    assert not any(p["bare_outlier"] for p in pairs["official_best"])
    assert spread([0.8, None, 0.9, 0.7]) == {"median": 0.8, "min": 0.7, "max": 0.9, "n": 3}
    assert spread([None]) == {"median": None, "min": None, "max": None, "n": 0}
