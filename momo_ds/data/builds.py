"""Atomic builds of the built-in datasets: a private build folder per process, renamed into place, and a
manifest written last (its presence means the build finished); stale folders of killed builds are removed."""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Optional


# A generation builds in ``<root>/.tmp-<pid>-<token>-<host>``: the process, a random token (a reused pid never
# meets an old directory) and the host (``root`` may be on a file system several hosts share).
_BUILD_DIR = re.compile(r"^\.tmp-(?P<pid>\d+)(?:-(?P<token>[0-9a-f]{8})-(?P<host>.+))?$")


def build_dir_name() -> str:
    return f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{socket.gethostname()}"


def clean_stale_builds(root: Path) -> list[Path]:
    """Remove the build directories of generations that were killed: on this host, their process is gone, or the
    process now holding that pid started after the directory last changed (so it is not the one that made it).
    Directories of other hosts are left alone (their processes cannot be seen from here); ``.tmp-<pid>`` (no
    host, written before this naming) counts as this host's. Returns what was removed."""
    if not root.is_dir():
        return []
    host, removed = socket.gethostname(), []
    for path in root.iterdir():
        m = _BUILD_DIR.match(path.name)
        if m is None or (m["host"] is not None and m["host"] != host) or m["pid"] == str(os.getpid()):
            continue
        try:
            changed = path.stat().st_mtime
        except FileNotFoundError:
            continue
        if _process_alive_since(int(m["pid"]), changed):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _process_alive_since(pid: int, changed: float) -> bool:
    """Whether a process ``pid`` is alive and may have written at time ``changed`` (it started before it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return True  # alive, age unknown: keep its directory
    started = boot + ticks / os.sysconf("SC_CLK_TCK")
    return started <= changed + 1.0  # btime is whole seconds


def write_manifest(root: Path, manifest: dict) -> None:
    """``root/manifest.json``, atomically: it is written last, so its presence means the build finished."""
    (root / "manifest.json.tmp").write_text(json.dumps(manifest, indent=1))
    os.replace(root / "manifest.json.tmp", root / "manifest.json")


def read_manifest(root: Path, params: dict) -> Optional[dict]:
    """The manifest of a finished build with these parameters, else None (absent, unreadable, other params)."""
    try:
        m = json.loads((root / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return m if isinstance(m, dict) and m.get("params") == params else None


def publish_build(tmp: Path, root: Path) -> None:
    """Move every file of the build folder ``tmp`` to the same place under ``root`` (a rename each: concurrent
    builders write identical files), then remove ``tmp``. The caller writes the manifest after this."""
    for path in sorted(tmp.rglob("*")):
        if path.is_file():
            dest = root / path.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
    shutil.rmtree(tmp, ignore_errors=True)
