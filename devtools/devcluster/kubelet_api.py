"""The part of the kubelet API the API server proxies to: container logs.

`kubectl logs` and `read_namespaced_pod_log` reach the node through the API
server at `/containerLogs/{namespace}/{pod}/{container}`, with `follow`,
`tailLines`, `limitBytes` and `previous`. Only clients holding a certificate
from the cluster's CA (the API server) are served.
"""

from __future__ import annotations

import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlparse

if TYPE_CHECKING:
    from devcluster.node_agent import Agent


def tail(data: bytes, lines: int) -> bytes:
    if lines < 0:
        return data
    if lines == 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def serve(agent: Agent, port: int, cert: str, key: str, client_ca: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            url = urlparse(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if parts[:1] == ["healthz"]:
                self._reply(200, b"ok")
                return
            if len(parts) != 4 or parts[0] != "containerLogs":
                self._reply(404, b"not found")
                return
            _, namespace, pod, container = parts
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            worker = agent.worker_for(namespace, pod)
            state = worker.container(container) if worker else None
            if worker is None or state is None:
                self._reply(404, f'container "{container}" in pod "{pod}" is not known on this node'.encode())
                return
            path = worker.log_path(container)
            whole = path.read_bytes() if path.exists() else b""
            data = tail(whole, int(query.get("tailLines", "-1")))
            if "limitBytes" in query:
                data = data[: int(query["limitBytes"])]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            if query.get("follow") not in ("true", "1"):
                return
            # Follow from what was read, not from the file's size now: lines written in between count.
            offset = len(whole)
            while not agent.stopping.is_set():
                finished = state.terminated or worker.deleting.is_set()
                if path.exists() and path.stat().st_size > offset:
                    with open(path, "rb") as f:
                        f.seek(offset)
                        chunk = f.read()
                    offset += len(chunk)
                    self.wfile.write(chunk)
                    self.wfile.flush()
                elif finished:
                    return
                time.sleep(0.1)

        def _reply(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
