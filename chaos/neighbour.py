"""Another tenant of the API server: the client whose requests crowd the executors out when the
API server is overloaded.

In a real cluster the executors share API Priority and Fairness levels with other clients (every
ServiceAccount falls into `workload-low` by default), so an overload is other clients' requests
holding the level's seats while the executors' are refused. The neighbour does that on purpose:
while it crowds, a few threads keep one request each in flight, and each request holds its seat
for about three seconds at almost no cost, by listing ConfigMaps at a resourceVersion the API
server has not reached (its watch cache waits up to 3 s to catch up, then answers 504 "Too large
resource version"). A level of no nominal seats runs one request at a time, so an executor's
request is served only in the few milliseconds between two of the neighbour's: each executor is
refused whether it sends its requests one by one or many at once.

ConfigMaps, not pods: the audit log records pod requests only, and the checks read it.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

from kubernetes import client

from chaos import identities
from k8s_executor import credentials

NAME = "chaos-neighbour"
THREADS = 3
# A refused request is sent again this much later: the seat is taken again within a few ms of
# being freed, at a cost of some tens of 429s a second.
RETRY_S = 0.05
# Far beyond any resourceVersion a run reaches: the watch cache waits for it until it gives up.
FUTURE_RESOURCE_VERSION = "999999999999"


def create(core: client.CoreV1Api, namespace: str, directory: Path, ca_file: Path) -> identities.Identity:
    """Its ServiceAccount and token, allowed to list ConfigMaps in `namespace` and nothing else."""
    identity = identities.create(core, namespace, NAME, directory, ca_file)
    rbac = client.RbacAuthorizationV1Api(core.api_client)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": NAME},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": NAME},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "namespace": namespace, "name": NAME}],
        },
    )
    return identity


class Crowd:
    """The neighbour's requests, kept in flight from `start` to `stop`."""

    def __init__(self, identity: identities.Identity, host: str) -> None:
        cfg = client.Configuration(host=host)
        cfg.ssl_ca_cert = str(identity.directory / "ca.crt")
        token = credentials.FreshCredential(credentials.TokenFile(identity.directory / "token"))
        self.core = client.CoreV1Api(credentials.RefreshingApiClient(cfg, token))
        self.namespace = identity.namespace
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._crowd, daemon=True) for _ in range(THREADS)]
        # Answers by status: 504 for a request that held the seat through its wait, 429 for one
        # refused. Anything else means the neighbour is not crowding (its RBAC, its token).
        self.answers: Counter[int] = Counter()

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def _crowd(self) -> None:
        while not self.done.is_set():
            try:
                self.core.list_namespaced_config_map(
                    self.namespace,
                    resource_version=FUTURE_RESOURCE_VERSION,
                    resource_version_match="NotOlderThan",
                    _request_timeout=10,
                )
            except client.ApiException as e:
                with self.lock:
                    self.answers[e.status] += 1
                if e.status != 504:
                    self.done.wait(RETRY_S)
            except Exception:
                # The API server may be restarting under another fault: try again shortly.
                self.done.wait(1)
