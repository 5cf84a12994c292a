"""Small images made here, for a real node: no registry is reachable, so the sandbox (pause)
image and a busybox image for tests are built from this machine's files.

Each is written as a `docker save` archive (manifest.json, the config, one layer), which
containerd's `ctr images import` reads and names from its RepoTags.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from devcluster import build

PAUSE_IMAGE = "localhost/pause:3.10.2"  # kubeadm's PauseVersion for Kubernetes 1.37
BUSYBOX_IMAGE = "localhost/busybox:1.35"
_PAUSE_SOURCE = "build/pause/linux/pause.c"


@dataclass
class Layer:
    """A layer's files: path in the image -> (content, mode); symlinks path -> target."""

    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)

    def tar(self) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
            dirs = sorted({str(Path(p).parent) for p in [*self.files, *self.symlinks]} - {".", "/", ""})
            for directory in _with_parents(dirs):
                info = tarfile.TarInfo(directory.lstrip("/"))
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            for path, (content, mode) in sorted(self.files.items()):
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode = len(content), mode
                archive.addfile(info, io.BytesIO(content))
            for path, target in sorted(self.symlinks.items()):
                info = tarfile.TarInfo(path.lstrip("/"))
                info.type, info.linkname = tarfile.SYMTYPE, target
                archive.addfile(info)
        return out.getvalue()


def _with_parents(dirs: list[str]) -> list[str]:
    every: set[str] = set()
    for directory in dirs:
        path = Path(directory)
        every.update(str(p) for p in [path, *path.parents] if str(p) not in (".", "/"))
    return sorted(every, key=lambda p: (p.count("/"), p))


def write_archive(path: Path, name: str, layer: Layer, config: dict[str, object]) -> Path:
    """Write `layer` as the one layer of image `name` (a `docker save` archive) at `path`."""
    blob = layer.tar()
    diff_id = "sha256:" + hashlib.sha256(blob).hexdigest()
    image_config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "devcluster.oci"}],
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(image_config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [name], "Layers": ["layer.tar"]}]).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as archive:
        for member, content in (
            ("layer.tar", blob),
            (config_name, image_config),
            ("manifest.json", manifest),
        ):
            info = tarfile.TarInfo(member)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    tmp.replace(path)
    return path


def images_dir() -> Path:
    return build.cache_root() / "images"


def pause_archive() -> Path:
    """kubelet's sandbox image: Kubernetes' own pause.c, compiled static with this machine's gcc."""
    source = build.kubernetes_module_dir() / _PAUSE_SOURCE
    key = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    path = images_dir() / f"pause-{key}.tar"
    if path.exists():
        return path
    work = images_dir() / "pause-build"
    work.mkdir(parents=True, exist_ok=True)
    binary = work / "pause"
    subprocess.run(
        ["gcc", "-Os", "-static", "-Wall", "-DVERSION=v3.10.2-devcluster", "-o", str(binary), str(source)],
        check=True,
    )
    layer = Layer(files={"/pause": (binary.read_bytes(), 0o755)})
    shutil.rmtree(work)
    return write_archive(path, PAUSE_IMAGE, layer, {"Entrypoint": ["/pause"], "User": "65535:65535"})


def busybox_archive() -> Path:
    """A shell and the usual tools, from Debian's busybox-static: what the conformance specs run."""
    binary = Path("/bin/busybox")
    if not binary.exists():
        raise RuntimeError("the busybox image needs Debian's busybox-static (/bin/busybox)")
    content = binary.read_bytes()
    path = images_dir() / f"busybox-{hashlib.sha256(content).hexdigest()[:12]}.tar"
    if path.exists():
        return path
    applets = subprocess.run(
        [str(binary), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    layer = Layer(
        files={
            "/bin/busybox": (content, 0o755),
            "/etc/passwd": (
                b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
                0o644,
            ),
            "/etc/group": (b"root:x:0:\nnobody:x:65534:\n", 0o644),
            "/tmp/.keep": (b"", 0o644),
        },
        symlinks={f"/bin/{applet}": "busybox" for applet in applets if applet != "busybox"},
    )
    return write_archive(path, BUSYBOX_IMAGE, layer, {"Cmd": ["sh"], "Env": ["PATH=/bin"]})
