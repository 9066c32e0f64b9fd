"""Rank-0 console (rich progress bar, end-of-stage table) and metric files (CSV, TensorBoard)."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from momo_ds.engine.checkpoint import atomic_write_text


class MetricsWriter:
    """Appends one row per log step to ``metrics.csv`` and to TensorBoard.

    The header is the first row's keys (or, on resume, the existing file's). A later row with a key that is not a
    column rewrites the file with the union of columns, earlier rows blank there, instead of dropping the value.
    """

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
            self._fields = self._existing_header()
        new = [k for k in row if k not in self._fields]
        if new:
            self._rewrite(self._fields + new)
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._fields).writerow(row)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(k, v, step)

    def _existing_header(self) -> list[str]:
        """The columns of a resumed stage's metrics.csv; none for a new (or empty) file."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return []
        with self.path.open(newline="") as f:
            return next(csv.reader(f), [])

    def _rewrite(self, fields: list[str]) -> None:
        """Write the file anew under ``fields`` (earlier rows kept, blank in new columns), atomically: a run
        killed mid-rewrite leaves the old file, never a half-written one."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        if self._fields:  # columns known: the file exists
            with self.path.open(newline="") as f:
                writer.writerows(csv.DictReader(f))
        atomic_write_text(self.path, out.getvalue())
        self._fields = fields

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
