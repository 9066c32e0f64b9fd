"""One error line per failed multi-rank run.

When one rank stops on a data or config error, the others are left inside a collective and fail there with a
communication error (gloo: "Connection closed by peer"), each with a traceback that hides the real cause. The
failing rank therefore records its one-line message under ``<out>/.failures/`` before it exits; a rank whose
run then breaks checks for a record written since it started and, finding one, exits quietly: the line that
says why has been printed by the rank that saw the cause.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

FAILURE_DIR = ".failures"


def record(out: Path, rank: int, message: str) -> None:
    """Write this rank's error line (best effort: an unwritable ``out`` must not hide the error itself)."""
    try:
        folder = Path(out) / FAILURE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".rank{rank:05d}.tmp{os.getpid()}"
        tmp.write_text(message + "\n")
        os.replace(tmp, folder / f"rank{rank:05d}.txt")
    except OSError:
        pass


def peer_failure(out: Path, rank: int, since: float) -> Optional[str]:
    """The first error line another rank recorded at or after ``since`` (a ``time.time()``), else None.
    Records of earlier runs in the same ``out`` are older than this process and never match."""
    folder = Path(out) / FAILURE_DIR
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("rank*.txt")):
        try:
            if path.name != f"rank{rank:05d}.txt" and path.stat().st_mtime >= since:
                return path.read_text().strip()
        except OSError:
            continue
    return None
