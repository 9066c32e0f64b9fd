"""Rank-0 console (rich progress bar, end-of-stage table) and metric files (CSV, TensorBoard)."""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class MetricsWriter:
    """Appends one row per log step to ``metrics.csv`` (header from the first row) and to TensorBoard."""

    def __init__(self, stage_dir: Path, enabled: bool, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(stage_dir) / "metrics.csv"
        self._fields: Optional[list[str]] = None
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(stage_dir) / "tensorboard"))
            except Exception as e:  # tensorboard missing or broken: CSV still works
                Console(stderr=True).print(f"[yellow]TensorBoard disabled: {e}[/]")

    def write(self, step: int, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **row}
        if self._fields is None:
            if self.path.is_file() and self.path.stat().st_size > 0:  # resumed: keep the existing header
                with self.path.open() as f:
                    self._fields = next(csv.reader(f))
            else:
                self._fields = list(row)
                with self.path.open("w", newline="") as f:
                    csv.writer(f).writerow(self._fields)
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._fields, extrasaction="ignore").writerow(row)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class StageConsole:
    """Progress bar per stage with the latest losses, LR, throughput and skipped samples; rank 0 only."""

    def __init__(self, stage: int, total_steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        self.console = Console()
        self.start_time = time.perf_counter()
        self.progress = None
        if enabled:
            self.progress = Progress(
                TextColumn(f"[bold cyan]stage {stage}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=False, refresh_per_second=4)
            self.progress.start()
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="")

    def update(self, step: int, info: dict[str, float]) -> None:
        if not self.enabled:
            return
        text = "  ".join(_fmt(k, v) for k, v in info.items())
        self.progress.update(self.task, completed=step, info=text)

    def advance_to(self, step: int) -> None:
        if self.enabled:
            self.progress.update(self.task, completed=step)

    def close(self) -> None:
        if self.enabled and self.progress is not None:
            self.progress.stop()

    def print_summary(self, title: str, rows: dict[str, float]) -> None:
        if not self.enabled:
            return
        table = Table(title=title)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in rows.items():
            table.add_row(k, _fmt_value(v))
        self.console.print(table)


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def _fmt(k: str, v) -> str:
    return f"{k}={_fmt_value(v)}"
