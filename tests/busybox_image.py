"""A tiny test image, built once from the host's static busybox and cached by content hash.

    image = ensure_test_image(docker.from_env())     # "labdock/test-busybox:<hash>"
    spec = ServerSpec(..., image=image, command=(), env={"LABDOCK_TEST_MODE": "exit"})

The image is ``FROM scratch`` with busybox and its applets in /bin, a user
``analyst`` (1000:1000) who owns /home/analyst, and ``/app/start``, whose
behaviour the environment chooses:

- ``LABDOCK_TEST_MODE=serve`` (default): ``busybox httpd`` on ``$LABDOCK_PORT``,
  answering 200 at ``$LABDOCK_PREFIX``; SIGTERM makes it say so and exit 0.
- ``ignore-term``: serves, but ignores SIGTERM (so only the kill after the grace ends it).
- ``never-ready``: logs a line and sleeps without listening.
- ``exit``: prints ``$LABDOCK_TEST_LINES`` (30) numbered lines and exits with
  ``$LABDOCK_TEST_EXIT_CODE`` (1).
- ``oom``: allocates ``$LABDOCK_TEST_OOM_MB`` (256) MiB in one buffer, which a
  smaller memory limit answers with the OOM killer.

No registry is needed: nothing is pulled. Set ``LABDOCK_TEST_BUSYBOX`` to use
another statically linked busybox than the one on ``PATH``.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import docker
import docker.errors

REPOSITORY = "labdock/test-busybox"
HELPER_VERSION = "1"

DOCKERFILE = """\
FROM scratch
COPY rootfs/ /
COPY --chown=1000:1000 home/ /home/
CMD ["/app/start"]
"""

START = r"""#!/bin/sh
# The labdock test app: LABDOCK_TEST_MODE picks how it behaves (see tests/busybox_image.py).
mode="${LABDOCK_TEST_MODE:-serve}"
echo "test app: mode=$mode uid=$(id -u) port=$LABDOCK_PORT prefix=$LABDOCK_PREFIX"
case "$mode" in
serve|ignore-term)
    root=/tmp/www
    mkdir -p "$root$LABDOCK_PREFIX"
    echo ok > "$root$LABDOCK_PREFIX/index.html"
    httpd -f -p "$LABDOCK_PORT" -h "$root" &
    pid=$!
    if [ "$mode" = ignore-term ]; then
        trap 'echo "ignoring SIGTERM"' TERM
    else
        trap 'echo "got SIGTERM, exiting"; kill $pid; exit 0' TERM
    fi
    while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
    echo "httpd ended"
    exit 3
    ;;
never-ready)
    echo "not listening on purpose"
    exec sleep 3600
    ;;
exit)
    i=1
    while [ "$i" -le "${LABDOCK_TEST_LINES:-30}" ]; do echo "line $i"; i=$((i + 1)); done
    exit "${LABDOCK_TEST_EXIT_CODE:-1}"
    ;;
oom)
    echo "allocating ${LABDOCK_TEST_OOM_MB:-256} MiB"
    exec dd if=/dev/zero of=/dev/null bs="${LABDOCK_TEST_OOM_MB:-256}M" count=1
    ;;
*)
    echo "unknown LABDOCK_TEST_MODE $mode" >&2
    exit 2
    ;;
esac
"""


def find_busybox() -> Path:
    """The static busybox to copy into the image, or a clear error."""
    named = os.environ.get("LABDOCK_TEST_BUSYBOX") or shutil.which("busybox") or "/bin/busybox"
    path = Path(named)
    if not path.is_file():
        raise RuntimeError(
            f"no busybox at {path}: install a static one (apt install busybox-static) "
            "or set LABDOCK_TEST_BUSYBOX"
        )
    if _needs_loader(path.read_bytes()):
        raise RuntimeError(
            f"{path} is dynamically linked and cannot run FROM scratch: install busybox-static "
            "or set LABDOCK_TEST_BUSYBOX to a static build"
        )
    return path


def _needs_loader(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF asks for a dynamic loader (PT_INTERP)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise RuntimeError("busybox is not a 64-bit ELF binary")
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        (p_type,) = struct.unpack_from("<I", elf, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return True
    return False


def _applets(busybox: Path) -> list[str]:
    out = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True)
    return sorted({name for name in out.stdout.split() if name and "/" not in name})


def _context(busybox: Path) -> tuple[bytes, str]:
    """The build context as a tar, and its content hash."""
    binary = busybox.read_bytes()
    applets = _applets(busybox)
    digest = hashlib.sha256()
    for part in (HELPER_VERSION, DOCKERFILE, START, "\n".join(applets)):
        digest.update(part.encode())
    digest.update(binary)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(name: str, data: bytes | None = None, mode: int = 0o644, **kw: object) -> None:
            info = tarfile.TarInfo(name)
            info.mode = mode
            for key, value in kw.items():
                setattr(info, key, value)
            if data is None and info.type == tarfile.REGTYPE:
                info.type = tarfile.DIRTYPE
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("Dockerfile", DOCKERFILE.encode())
        for folder in ("rootfs", "rootfs/bin", "rootfs/etc", "rootfs/app", "home"):
            add(folder, mode=0o755)
        add("rootfs/tmp", mode=0o1777)
        add("rootfs/bin/busybox", binary, mode=0o755)
        for applet in applets:
            if applet != "busybox":
                add(f"rootfs/bin/{applet}", type=tarfile.SYMTYPE, linkname="busybox", mode=0o777)
        add(
            "rootfs/etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nanalyst:x:1000:1000:analyst:/home/analyst:/bin/sh\n",
        )
        add("rootfs/etc/group", b"root:x:0:\nanalyst:x:1000:\n")
        add("rootfs/app/start", START.encode(), mode=0o755)
        add("home/analyst", mode=0o755)
    return buffer.getvalue(), digest.hexdigest()[:12]


def ensure_test_image(client: docker.DockerClient) -> str:
    """Build the test image unless this content was built before; return its tag."""
    context, digest = _context(find_busybox())
    tag = f"{REPOSITORY}:{digest}"
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        client.images.build(
            fileobj=io.BytesIO(context), custom_context=True, tag=tag, rm=True, forcerm=True
        )
    return tag
