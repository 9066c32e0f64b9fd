"""One error line per failed multi-rank run.

When one rank stops on a data or config error, the others are left inside a collective and fail there with a
communication error (gloo: "Connection closed by peer"), each with a traceback that hides the real cause. The
failing rank therefore records its one-line message under ``<out>/.failures/`` before it exits; a rank whose
run then breaks checks for a record written since it started and, finding one, exits without a traceback.
The line that says why is printed once: by the failing rank, or by rank 0 from the record when the failing rank
left it unprinted (errors every rank would meet alike are printed by rank 0 only).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

FAILURE_DIR = ".failures"


@dataclass
class Failure:
    rank: int
    message: str
    printed: bool  # the failing rank printed the line itself


def record(out: Path, rank: int, message: str, printed: bool) -> None:
    """Write this rank's error line (best effort: an unwritable ``out`` must not hide the error itself)."""
    try:
        folder = Path(out) / FAILURE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".rank{rank:05d}.tmp{os.getpid()}"
        tmp.write_text(json.dumps({"rank": rank, "message": message, "printed": printed}))
        os.replace(tmp, folder / f"rank{rank:05d}.json")
    except OSError:
        pass


def peer_failure(out: Path, rank: int, since: float) -> Optional[Failure]:
    """The first failure another rank recorded at or after ``since`` (a ``time.time()``), else None. Records of
    earlier runs in the same ``out`` are older than this process and never match; an unreadable one is skipped."""
    folder = Path(out) / FAILURE_DIR
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("rank*.json")):
        try:
            if path.name == f"rank{rank:05d}.json" or path.stat().st_mtime < since:
                continue
            d = json.loads(path.read_text())
            return Failure(int(d["rank"]), str(d["message"]), bool(d["printed"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None
