"""`k8s-executor-dev`: the development cluster and the demo, for people."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from devcluster import build, control_plane


def _cluster(args: argparse.Namespace) -> int:
    directory = Path(args.dir) if args.dir else control_plane.default_cluster_dir(args.name)
    if args.action == "up":
        started = time.monotonic()
        state = control_plane.up(directory, node_args=[f"--node={n}" for n in args.node or []])
        print(f"cluster ready in {time.monotonic() - started:.1f}s at {state.server}")
        print(f"export KUBECONFIG={state.kubeconfig}")
        print(f"kubectl of the same release: {build.bin_dir() / 'kubectl'}")
        return 0
    if args.action == "down":
        stopped = control_plane.down(directory)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    report = control_plane.status(directory)
    print(json.dumps(report, indent=2))
    return 0 if report["running"] else 1


def _demo(args: argparse.Namespace) -> int:
    from devcluster.demo import run_demo

    if args.in_cluster and args.real_node:
        print(
            "--in-cluster runs on the process node; --real-node runs the workers on the real node: choose one"
        )
        return 2
    return run_demo(in_cluster=args.in_cluster, real_node=args.real_node)


def _image(args: argparse.Namespace) -> int:
    from devcluster import image

    return image.build_command(no_cache=args.no_cache)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="k8s-executor-dev")
    commands = parser.add_subparsers(dest="command", required=True)
    cluster = commands.add_parser("cluster", help="the local development cluster")
    cluster.add_argument("action", choices=["up", "down", "status"])
    cluster.add_argument("--name", default="default", help="several clusters can run side by side")
    cluster.add_argument("--dir", help="cluster directory (default: under the cache directory)")
    cluster.add_argument(
        "--node",
        action="append",
        help="node spec, e.g. name=gpu-1,runtime=process,cpu=4,label.accelerator=nvidia-gpu (repeatable)",
    )
    cluster.set_defaults(func=_cluster)
    demo = commands.add_parser("demo", help="run the example DAG as pods on the development cluster")
    demo.add_argument(
        "--in-cluster",
        action="store_true",
        help="install Airflow into the cluster from deploy/in-cluster/ (the scheduler as a pod)",
    )
    demo.add_argument(
        "--real-node",
        action="store_true",
        help="run the tasks as real containers (kubelet, containerd) from the image built from deploy/Dockerfile",
    )
    demo.set_defaults(func=_demo)
    image = commands.add_parser("image", help="build the deployable image here (buildah), as OCI archives")
    image.add_argument("action", choices=["build"])
    image.add_argument("--no-cache", action="store_true", help="build again even if the archives are cached")
    image.set_defaults(func=_image)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
