"""What the benchmarks print and write: rich tables on the console, and the JSON report (what ran, where, with
which versions and settings, and the numbers)."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from rich.console import Console
from rich.table import Table

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


# ------------------------------------------------------------------------------------------- machine, versions
def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "python": platform.python_version(), "gpu": None, "gpu_count": 0}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(), cuda=torch.version.cuda,
                    gpu_memory_gib=round(props.total_memory / 2 ** 30, 1))
    return info


def versions() -> dict[str, Optional[str]]:
    """Installed versions, read from package metadata (no imports)."""
    out: dict[str, Optional[str]] = {"torch": torch.__version__}
    for name in ("deepspeed", "timm", "transformers", "numpy", "flash-attn", "torchvision", "webdataset", "pillow",
                 "tokenizers"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# ---------------------------------------------------------------------------------------------------- console
def make_console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 150)


def print_table(console: Console, title: str, columns: list[str], rows: list[list[Any]],
                caption: Optional[str] = None) -> None:
    """Left-aligned first column, right-aligned numbers."""
    table = Table(title=title, caption=caption, caption_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[fmt(v) for v in row])
    console.print(table)


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-2:
            return f"{v:.3g}"
        return f"{v:.2f}"
    return str(v)


# ------------------------------------------------------------------------------------------------------- JSON
def make_report(name: str, args, config: dict[str, Any], results: Any, **extra) -> dict[str, Any]:
    """The JSON every benchmark writes: what ran, where, with which versions and settings, and the numbers."""
    return {"benchmark": name, "date": time.strftime(DATE_FORMAT), "quick": bool(getattr(args, "quick", False)),
            "argv": sys.argv[1:], "machine": machine_info(), "versions": versions(), "config": config,
            "results": results, **extra}


def write_json(path: Optional[str], report: dict[str, Any], console: Optional[Console] = None) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(p)
    if console is not None:
        console.print(f"wrote {p}")
